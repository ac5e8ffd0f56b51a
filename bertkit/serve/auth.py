"""API keys for ``bertkit serve``: where they come from, how a request's key is checked,
which addresses a server without keys may listen on, and which ``Host`` names it answers to.

Keys come from a file (one key a line; blank lines and ``#`` comments skipped) and/or the
``BERTKIT_API_KEYS`` environment variable (comma-separated). A key is never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re

ENV_VAR = "BERTKIT_API_KEYS"
MIN_KEY_LENGTH = 8


def load_api_keys(path: str | None = None, environ: dict | None = None) -> list[str]:
    """The API keys of ``path`` plus those of ``$BERTKIT_API_KEYS`` (no duplicates, in order).

    A key shorter than 8 characters or holding whitespace is a ValueError that gives its line
    number, never the key itself. A file with no keys is a ValueError too: it would otherwise
    turn auth off without a word.
    """
    environ = os.environ if environ is None else environ
    found: list[tuple[str, str]] = []
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"API keys file {path} does not exist")
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    found.append((line, f"{path} line {number}"))
        if not found:
            raise ValueError(f"API keys file {path} holds no keys")
    for index, key in enumerate(environ.get(ENV_VAR, "").split(",")):
        if key.strip():
            found.append((key.strip(), f"${ENV_VAR} entry {index + 1}"))
    keys: list[str] = []
    for key, where in found:
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
            raise ValueError(f"API key at {where} is too short (< {MIN_KEY_LENGTH} characters) "
                             "or holds whitespace")
        if key not in keys:
            keys.append(key)
    return keys


class KeyChecker:
    """Checks ``Authorization: Bearer <key>`` headers against the configured keys.

    Keys are kept as SHA-256 digests and compared with :func:`hmac.compare_digest` against
    every key (no early exit), so the time taken says nothing about how much of a key matched
    or which key it was.
    """

    def __init__(self, keys: list[str]):
        self._digests = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> bool:
        """True when the header carries one of the keys (always True without keys)."""
        if not self._digests:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).digest()
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def check_bind(host: str, keys: list[str], insecure: bool) -> None:
    """Refuse to serve without API keys on an address other machines can reach."""
    if not keys and not is_loopback(host) and not insecure:
        raise ValueError(f"refusing to listen on {host} without API keys: anyone who can reach "
                         f"it could use the model. Give --api-keys-file or ${ENV_VAR}, listen on "
                         "127.0.0.1, or pass --insecure to serve without keys anyway")


# ============================================================================ Host header

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "[::]", "")
_HOST_NAME = re.compile(r"^(\*|[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\])$")


def host_name(value: str) -> str:
    """``value`` (a Host header or a bind address) as the allow-list compares it: lower case,
    without the port, an IPv6 address in brackets (``::1`` and ``[::1]:8000`` -> ``[::1]``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[:value.find("]") + 1] if "]" in value else value
    if value.count(":") > 1:  # a bare IPv6 address (a bind address; a Host header has [])
        return f"[{value}]"
    return value.partition(":")[0]


def check_allowed_hosts(names) -> list[str]:
    """The ``allowed_hosts`` option, checked: a list of host names, ``*`` for any."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"allowed_hosts must be a list of host names, got {names!r}")
    checked = []
    for name in names:
        cleaned = name.strip().lower() if isinstance(name, str) else ""
        if cleaned.count(":") > 1 and not cleaned.startswith("["):
            cleaned = f"[{cleaned}]"  # a bare IPv6 address
        if not _HOST_NAME.match(cleaned):  # also refuses a port ("x:8000") or a scheme
            raise ValueError(f"allowed_hosts: {name!r} is not a host name (give names such as "
                             "example.org or [::1], without a scheme or port; '*' allows any)")
        checked.append(cleaned)
    return checked


def allowed_host_names(bind_host: str, extra: list[str]) -> frozenset[str] | None:
    """The Host names a server bound to ``bind_host`` answers to, or None for any.

    By default: the bound address and the loopback names, so that a web page whose domain
    was re-pointed at 127.0.0.1 (DNS rebinding) cannot talk to a keyless local server. A
    server bound to every interface (0.0.0.0, ::) is meant to be reached by names it cannot
    know: it takes any Host (it needs API keys, or ``--insecure``, to listen there).
    """
    names = {host_name(n) for n in extra}
    if "*" in names or host_name(bind_host) in {host_name(w) for w in WILDCARD_BINDS}:
        return None
    return frozenset(names | set(LOOPBACK_NAMES) | {host_name(bind_host)})


def host_allowed(header: str | None, names: frozenset[str] | None) -> bool:
    """True when a request's Host header (None: absent, as in HTTP/1.0) names this server."""
    if names is None or header is None:
        return True
    return host_name(header) in names
