"""Request limits and validation for ``bertkit serve``.

Every bad request gets a 4xx answer ``{"error": {"code": ..., "message": ...}}`` that says
what was wrong and where (``texts[3]``), and the server goes on serving:

=====  ======================================================================
400    ``empty_body``, ``invalid_utf8``, ``invalid_json`` (also JSON nested too
       deeply to parse), ``invalid_host`` (a Host header not on the allow-list)
401    ``unauthorized`` (auth.py)
404    ``not_found``, ``no_task_head``, ``no_mlm_head``, ``no_encoder``,
       ``no_gradients`` (/v1/explain on the onnx runtime)
413    ``body_too_large``, ``too_many_texts``, ``text_too_long``
415    ``unsupported_media_type`` (a POST whose Content-Type is not application/json)
422    ``invalid_type``, ``missing_field``, ``unknown_field``, ``empty_input``,
       ``empty_text``, ``invalid_text``, ``length_mismatch``, ``no_mask_token``,
       ``invalid_input`` (also an unknown explain ``target``), ``needs_task_head`` (an
       attribution method on a folder without a task head)
429    ``queue_full`` (with ``Retry-After``: the server holds all the work it takes, or
       ``explain_max_queued`` explanations)
499    ``client_closed_request`` (logged only: the client has gone, its work dropped)
503    ``timeout`` (no answer within the request timeout), ``shutting_down``
=====  ======================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """An error answered to the client as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass
class Limits:
    """What one request may hold."""
    max_texts: int = 64              # inputs per request
    max_chars: int = 10_000          # characters per input text
    max_body_bytes: int = 1_000_000  # bytes of the JSON body
    max_top_k: int = 50              # fill-mask candidates per mask

    def __post_init__(self) -> None:
        for name in ("max_texts", "max_chars", "max_body_bytes", "max_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


async def read_json_object(request, limits: Limits) -> dict:
    """The request's body parsed as a JSON object, within ``limits.max_body_bytes``.

    The size is checked on the Content-Length header and again while reading (a chunked
    body has none), so an oversized body is never held in memory whole. The Content-Type
    must be application/json: a browser sends a cross-site POST of another type (a form,
    text/plain) without asking the server first, and a JSON one only after a CORS
    preflight that this server never grants.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "the request body must be sent with "
                       f"'Content-Type: application/json', got {media_type or 'none'!r}"[:200])
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise ApiError(413, "body_too_large", f"the request body is {int(declared)} bytes; "
                       f"the limit is {limits.max_body_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise ApiError(413, "body_too_large",
                           f"the request body is over the limit of {limits.max_body_bytes} bytes")
    if not body.strip():
        raise ApiError(400, "empty_body", "the request body is empty; send a JSON object such "
                       'as {"texts": ["..."]}')
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, "invalid_utf8", f"the request body is not valid UTF-8 (byte "
                       f"{e.start}: {bytes(body[e.start:e.start + 1])!r})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {e.msg} "
                       f"(line {e.lineno}, column {e.colno})") from None
    except RecursionError:  # e.g. 200,000 "[": the parser's recursion limit, not a bug
        raise ApiError(400, "invalid_json", "the request body is JSON nested too deeply "
                       "to read") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_type", f"the request body must be a JSON object such as "
                       f'{{"texts": ["..."]}}, got {_json_type(data)}')
    return data


def check_fields(data: dict, allowed: tuple[str, ...]) -> None:
    """Refuse fields the route does not know (a typo would otherwise be silently ignored)."""
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field {unknown[0]!r}; this route takes "
                       + ", ".join(repr(a) for a in allowed))


def text_list(data: dict, name: str, limits: Limits, required: bool = True,
              allow_empty_text: bool = False) -> list[str] | None:
    """The field ``name`` as a checked list of strings (None when absent and not required)."""
    if name not in data or data[name] is None:
        if required:
            raise ApiError(422, "missing_field", f"missing field {name!r} (a list of strings)")
        return None
    values = data[name]
    if not isinstance(values, list):
        raise ApiError(422, "invalid_type",
                       f"{name!r} must be a list of strings, got {_json_type(values)}")
    if not values:
        raise ApiError(422, "empty_input", f"{name!r} is empty: give at least one text")
    if len(values) > limits.max_texts:
        raise ApiError(413, "too_many_texts", f"{name!r} holds {len(values)} texts; the limit "
                       f"is {limits.max_texts} per request")
    for i, value in enumerate(values):
        check_text(value, f"{name}[{i}]", limits, allow_empty_text)
    return values


def text_field(data: dict, name: str, limits: Limits, required: bool = True) -> str | None:
    """The field ``name`` as one checked string (None when absent and not required)."""
    if name not in data or data[name] is None:
        if required:
            raise ApiError(422, "missing_field", f"missing field {name!r} (a string)")
        return None
    check_text(data[name], repr(name), limits)
    return data[name]


def check_text(value: Any, where: str, limits: Limits, allow_empty: bool = False) -> None:
    """Refuse a value that is not a non-empty string of at most ``limits.max_chars``."""
    if not isinstance(value, str):
        raise ApiError(422, "invalid_type", f"{where} must be a string, got {_json_type(value)}")
    if not value.strip() and not allow_empty:
        raise ApiError(422, "empty_text", f"{where} is empty")
    if len(value) > limits.max_chars:
        raise ApiError(413, "text_too_long", f"{where} has {len(value)} characters; the "
                       f"limit is {limits.max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON "\ud800" escapes decode to lone surrogates
        raise ApiError(422, "invalid_text", f"{where} holds a lone surrogate "
                       "(an unpaired \\ud800-\\udfff escape), which is not text") from None


def same_length(a_name: str, a: list, b_name: str, b: list) -> None:
    if len(a) != len(b):
        raise ApiError(422, "length_mismatch", f"{len(a)} {a_name} but {len(b)} {b_name}; give "
                       "one per input")


def boolean(data: dict, name: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(422, "invalid_type",
                       f"{name!r} must be true or false, got {_json_type(value)}")
    return value


def choice(data: dict, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = data.get(name, default)
    if value not in choices or not isinstance(value, str):
        raise ApiError(422, "invalid_input", f"{name!r} must be one of "
                       + ", ".join(repr(c) for c in choices) + f", got {str(value)[:50]!r}")
    return value


def integer(data: dict, name: str, default: int, low: int, high: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, "invalid_type", f"{name!r} must be an integer, got {_json_type(value)}")
    if not low <= value <= high:
        raise ApiError(422, "invalid_input",
                       f"{name!r} must be between {low} and {high}, got {value}")
    return value
