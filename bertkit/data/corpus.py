"""The embedded default corpus: documentation text of the Python standard library.

Every machine that runs bertkit has a Python interpreter, and its standard library carries a few
megabytes of English prose in docstrings (plus the language reference topics of
``pydoc_data``). That is the default pretraining corpus and the source of the demo
classification task, so ``bertkit demo`` needs no download.

    default_corpus_documents()      -> list[Document]   (cached per Python version)
    write_default_corpus(path)      -> CorpusStats      (BERT layout: sentence per line)
    default_classification_task(d)  -> dict             ("which module family?" train/dev/test.jsonl)
    default_pretraining_corpus()    -> Path             (cached corpus file without the task's dev/test docs)

Collection imports hundreds of modules, which can start threads, register atexit hooks or
change signal handlers, so it runs in a child interpreter (``python -I``) and the parent only
reads the JSON it writes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, asdict
from pathlib import Path

from bertkit.data.pretraining import split_sentences
from bertkit.jsonfile import utf8_errors_named

__all__ = [
    "Document",
    "CorpusStats",
    "FAMILIES",
    "family_of",
    "cache_dir",
    "default_corpus_documents",
    "write_default_corpus",
    "default_classification_task",
    "default_pretraining_corpus",
]

# Bump when the collection or cleaning rules change, so caches built by older code are not reused.
CORPUS_VERSION = 1
MIN_CHARS = 100
MIN_SENTENCES = 2
TASK_MAX_CHARS = 400
TASK_SPLIT = (0.8, 0.1, 0.1)
TASK_MIN_PER_CLASS = 50

# Top-level modules never imported: side effects on import (antigravity opens a browser, this
# prints), GUI toolkits, the test suite, deprecated tools that write files or hijack imports.
_SKIP_TOP = frozenset(
    "antigravity this idlelib tkinter turtle turtledemo test lib2to3 ensurepip distutils readline".split()
)
# Packages whose submodules are not walked (codec tables: one boilerplate docstring each).
_NO_SUBMODULES = frozenset({"encodings"})

# The label source of the demo task: a family of related top-level modules, after the chapters of
# the library reference. A family is a label only when it has enough documents; modules in no
# family still go into the pretraining corpus.
FAMILIES: dict[str, tuple[str, ...]] = {
    "text": ("string", "re", "textwrap", "difflib", "unicodedata", "stringprep", "locale", "gettext", "shlex", "codecs", "rlcompleter"),
    "data_types": ("datetime", "zoneinfo", "calendar", "collections", "heapq", "bisect", "array", "weakref",
                   "types", "copy", "pprint", "reprlib", "enum", "graphlib", "dataclasses", "itertools",
                   "functools", "operator"),
    "numeric": ("numbers", "math", "cmath", "decimal", "fractions", "random", "statistics"),
    "files_os": ("os", "posixpath", "ntpath", "genericpath", "pathlib", "stat", "filecmp", "tempfile", "glob",
                 "fnmatch", "linecache", "shutil", "io", "fileinput", "time", "platform", "errno", "posix",
                 "pwd", "grp", "fcntl", "resource", "mmap", "select", "selectors", "signal", "argparse",
                 "getopt", "getpass", "curses", "optparse", "ctypes", "termios", "tty", "pty", "spwd", "nis",
                 "crypt"),
    "formats_compression": ("pickle", "copyreg", "shelve", "marshal", "dbm", "sqlite3", "csv", "configparser",
                            "tomllib", "netrc", "plistlib", "zlib", "gzip", "bz2", "lzma", "zipfile", "tarfile",
                            "zipimport", "hashlib", "hmac", "secrets", "struct", "xdrlib"),
    "concurrency": ("threading", "multiprocessing", "concurrent", "subprocess", "sched", "queue",
                    "contextvars", "asyncio", "socket", "ssl", "asyncore", "asynchat"),
    "internet": ("email", "json", "mailbox", "mimetypes", "base64", "binascii", "quopri", "http", "urllib",
                 "ftplib", "poplib", "imaplib", "smtplib", "uuid", "socketserver", "xmlrpc", "ipaddress",
                 "wsgiref", "webbrowser", "html", "xml", "pyexpat", "nntplib", "telnetlib", "cgi", "cgitb",
                 "mailcap", "smtpd", "uu"),
    "dev_tools": ("typing", "pydoc", "doctest", "unittest", "bdb", "pdb", "timeit", "trace", "tracemalloc",
                  "cProfile", "profile", "pstats", "faulthandler", "logging", "warnings", "traceback", "cmd"),
    "python_runtime": ("sys", "builtins", "contextlib", "abc", "atexit", "gc", "inspect", "site", "code",
                       "codeop", "importlib", "ast", "symtable", "token", "keyword", "tokenize", "tabnanny",
                       "pyclbr", "py_compile", "compileall", "dis", "pickletools", "sysconfig", "runpy",
                       "pkgutil", "modulefinder", "imp", "opcode", "venv", "zipapp"),
}
_FAMILY_OF_PACKAGE = {pkg: fam for fam, pkgs in FAMILIES.items() for pkg in pkgs}


def family_of(module: str) -> str | None:
    """The ``FAMILIES`` label of a module name (by its top-level package), or None."""
    return _FAMILY_OF_PACKAGE.get(module.split(".")[0])


@dataclass(frozen=True)
class Document:
    """One documentation text: a module, class, function or reference-topic docstring.

    Attributes:
        text: cleaned text, paragraphs separated by a blank line.
        module: the module that defines it (``"posixpath"`` for ``os.path.join``).
        name: qualified name of the documented object (``"json.dumps"``) or topic.
        kind: ``"module"``, ``"class"``, ``"function"``, ``"method"`` or ``"topic"``.
    """

    text: str
    module: str
    name: str
    kind: str

    @property
    def package(self) -> str:
        """Top-level package, e.g. ``"email"`` for ``"email.mime.text"``."""
        return self.module.split(".")[0]

    @property
    def family(self) -> str | None:
        """The module family (the demo task's label), or None."""
        return family_of(self.module)

    def sentences(self) -> list[str]:
        """The text cut by ``split_sentences``, paragraph by paragraph."""
        return [s for para in self.text.split("\n\n") for s in split_sentences(para)]


@dataclass(frozen=True)
class CorpusStats:
    """Size of a written corpus file."""

    path: str
    documents: int
    sentences: int
    characters: int
    bytes: int

    @property
    def megabytes(self) -> float:
        return self.bytes / 1e6

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.documents:,} documents, {self.sentences:,} sentences, "
            f"{self.characters:,} characters ({self.megabytes:.2f} MB)"
        )


def cache_dir() -> Path:
    """``$BERTKIT_CACHE`` or ``~/.cache/bertkit``."""
    return Path(os.environ.get("BERTKIT_CACHE") or Path.home() / ".cache" / "bertkit")


# --------------------------------------------------------------------------------------------
# Collection (runs in a child interpreter)
# --------------------------------------------------------------------------------------------


def _collect_raw_docstrings(module_names, out_path, skip_top, no_submodules, walk):
    """Import modules and write their raw docstrings as JSON to ``out_path``.

    Runs in a child interpreter from its source text, so it may use only the standard library.
    Output: a list of [module, qualified name, kind, docstring], in a deterministic order.
    """
    # Imported here, not at the top: the child interpreter runs this function's source alone.
    import contextlib, importlib, inspect, io, json, pkgutil, warnings  # noqa: E401

    def wanted(name):
        parts = name.split(".")
        return parts[0] not in skip_top and not any(p.startswith("_") or p in ("test", "tests") for p in parts)

    def import_quietly(name):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                return importlib.import_module(name)
        except BaseException:  # ImportError, platform errors, SystemExit from scripts...
            return None

    def member_doc(member):
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        # Data attributes are skipped: their __doc__ is their type's docstring.
        if inspect.isroutine(member) or isinstance(member, property) or inspect.isdatadescriptor(member):
            return getattr(member, "__doc__", None)
        return None

    records = []
    done = set()

    def visit(name):
        if name in done or not wanted(name):
            return
        done.add(name)
        module = import_quietly(name)
        if module is None:
            return
        if name == "pydoc_data.topics":
            topics = getattr(module, "topics", {})
            for key in sorted(topics):
                records.append([name, key, "topic", topics[key]])
            return
        records.append([name, name, "module", module.__doc__])
        namespace = vars(module)
        for attr in sorted(namespace):
            obj = namespace[attr]
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj):
                records.append([name, f"{name}.{attr}", "class", obj.__doc__])
                members = vars(obj)
                for m in sorted(members):
                    if not m.startswith("_"):
                        doc = member_doc(members[m])
                        if doc:
                            records.append([name, f"{name}.{attr}.{m}", "method", doc])
            elif inspect.isroutine(obj):
                records.append([name, f"{name}.{attr}", "function", obj.__doc__])
        path = getattr(module, "__path__", None)
        if walk and path is not None and name.split(".")[0] not in no_submodules:
            for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
                visit(f"{name}.{info.name}")

    for top in module_names:
        visit(top)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump([r for r in records if isinstance(r[3], str) and r[3].strip()], f)


def _stdlib_modules() -> list[str]:
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in _SKIP_TOP)
    # pydoc_data itself has no text; its topics module holds the language reference.
    return [n for n in names if n != "pydoc_data"] + ["pydoc_data.topics"]


def _run_collector(module_names: Sequence[str], walk: bool) -> list[list[str]]:
    source = inspect.getsource(_collect_raw_docstrings)
    with tempfile.TemporaryDirectory(prefix="bertkit-corpus-") as tmp:
        out = Path(tmp) / "docs.json"
        args = [list(module_names), str(out), sorted(_SKIP_TOP), sorted(_NO_SUBMODULES), walk]
        code = f"{source}\nimport json, sys, os\n_collect_raw_docstrings(*json.loads(sys.argv[1]))\nsys.stdout.flush()\nos._exit(0)\n"
        # -I: no user site, no PYTHON* variables, no script dir on the path; cwd in a temp dir
        # so a module that writes files on import writes them there.
        proc = subprocess.run(
            [sys.executable, "-I", "-c", code, json.dumps(args)],
            cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"collecting stdlib docstrings failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Cleaning
# --------------------------------------------------------------------------------------------

# "name(args) -> result" lines that C functions and older modules put first in their docstring.
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(->.*)?$")
# reST under/overlines and separators: "-----", "=====", "--".
_RULE = re.compile(r"^[-=~*^_+#.`':]{2,}$")


def clean_docstring(doc: str) -> str:
    """Prose paragraphs of a docstring: ``inspect.cleandoc``, then drop signature lines,
    reST rules, doctest paragraphs (any ``>>>`` line) and code blocks (paragraphs indented as a
    whole). Paragraphs are joined with a blank line."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = [line.rstrip() for line in para.split("\n") if line.strip()]
        lines = [line for line in lines if not _RULE.match(line.strip()) and not _SIGNATURE.match(line.strip())]
        if not lines:
            continue
        if any(line.lstrip().startswith(">>>") for line in lines):
            continue
        if all(line[:1].isspace() for line in lines):
            continue
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _documents_from_raw(records: Iterable[Sequence[str]]) -> list[Document]:
    documents, seen = [], set()
    for module, name, kind, raw in records:
        text = clean_docstring(raw)
        if len(text) < MIN_CHARS or text in seen:
            continue
        doc = Document(text=text, module=module, name=name, kind=kind)
        if len(doc.sentences()) < MIN_SENTENCES:
            continue
        seen.add(text)
        documents.append(doc)
    return documents


def _python_tag() -> str:
    return f"{platform.python_implementation().lower()}-{'.'.join(map(str, sys.version_info[:3]))}"


def default_corpus_documents(
    modules: Sequence[str] | None = None,
    *,
    walk_packages: bool = True,
    cache: str | os.PathLike | None = None,
    verbose: bool = True,
) -> list[Document]:
    """The documentation texts of the running interpreter's standard library, deterministic.

    Modules are visited in sorted order (``sys.stdlib_module_names`` minus private ``_x``
    modules and those in ``_SKIP_TOP``), packages recursively; from each module come its
    docstring and those of the public classes, methods and functions it defines, plus the
    language reference topics of ``pydoc_data.topics``. Texts are cleaned (``clean_docstring``),
    kept when at least 100 characters and 2 sentences, and deduplicated (first one wins).

    Args:
        modules: restrict to these module names (for tests); not cached.
        walk_packages: also visit submodules of packages.
        cache: cache directory (default ``cache_dir()``); the full collection is cached as
            ``stdlib-docs-<python>-v<N>.jsonl`` because building it imports the whole library
            in a child process (seconds to tens of seconds).
        verbose: print the build time and size to stderr when building.
    Returns:
        Documents in collection order.
    """
    if modules is not None:
        return _documents_from_raw(_run_collector(list(modules), walk_packages))
    tag = f"stdlib-docs-{_python_tag()}-v{CORPUS_VERSION}{'' if walk_packages else '-flat'}.jsonl"
    path = Path(cache) if cache is not None else cache_dir()
    path = path / tag
    if path.exists():
        return _read_cached_documents(path)
    start = time.perf_counter()
    documents = _documents_from_raw(_run_collector(_stdlib_modules(), walk_packages))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in documents:
            f.write(json.dumps(asdict(doc), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    if verbose:
        chars = sum(len(d.text) for d in documents)
        print(
            f"bertkit: built the default corpus from the Python {platform.python_version()} standard library: "
            f"{len(documents):,} documents, {chars / 1e6:.1f}M characters in {time.perf_counter() - start:.1f}s "
            f"(cached in {path})",
            file=sys.stderr,
        )
    return documents


def _read_cached_documents(path: Path) -> list[Document]:
    """The documents of a cache file, or a one-line ValueError naming it when it is damaged."""
    try:
        with utf8_errors_named(path), open(path, encoding="utf-8") as f:
            return [Document(**json.loads(line)) for line in f if line.strip()]
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: damaged corpus cache ({e}); delete the file to rebuild it") \
            from None


def write_default_corpus(
    path: str | os.PathLike,
    *,
    documents: Sequence[Document] | None = None,
    exclude_texts: Iterable[str] = (),
    verbose: bool = False,
) -> CorpusStats:
    """Write documents in BERT layout: one sentence per line, a blank line between documents.

    Args:
        path: output file (written atomically).
        documents: what to write (default: ``default_corpus_documents()``).
        exclude_texts: document texts (``Document.text``) to leave out, e.g. the dev/test
            documents of the demo task so that pretraining never sees them.
        verbose: print the stats to stderr.
    Returns:
        ``CorpusStats`` of the written file.
    """
    if documents is None:
        documents = default_corpus_documents(verbose=verbose)
    excluded = set(exclude_texts)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n_docs = n_sents = n_chars = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in documents:
            if doc.text in excluded:
                continue
            sentences = doc.sentences()
            if not sentences:
                continue
            if n_docs:
                f.write("\n")
            f.write("\n".join(sentences) + "\n")
            n_docs += 1
            n_sents += len(sentences)
            n_chars += sum(len(s) for s in sentences)
    os.replace(tmp, path)
    stats = CorpusStats(str(path), n_docs, n_sents, n_chars, path.stat().st_size)
    if verbose:
        print(f"bertkit: wrote {stats}", file=sys.stderr)
    return stats


# --------------------------------------------------------------------------------------------
# The demo classification task
# --------------------------------------------------------------------------------------------


def _truncate(doc: Document, max_chars: int = TASK_MAX_CHARS) -> str:
    """The first sentences of a document, at most ``max_chars`` (the first one cut if longer).

    A few sentences keep the task learnable by a tiny model without handing it the whole
    docstring, where module names and long API lists would make it trivial.
    """
    out = ""
    for sentence in doc.sentences():
        candidate = f"{out} {sentence}" if out else sentence
        if len(candidate) > max_chars:
            break
        out = candidate
    return out or doc.sentences()[0][:max_chars]


def _split_key(text: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{text}".encode()).hexdigest()


def _task_examples(documents: Sequence[Document], seed: int, min_per_class: int):
    """(train, dev, test) lists of (truncated text, label, source Documents)."""
    by_text: dict[str, list[Document]] = defaultdict(list)
    for doc in documents:
        if doc.family is not None:
            by_text[_truncate(doc)].append(doc)
    per_label: dict[str, list[tuple[str, list[Document]]]] = defaultdict(list)
    for text, docs in by_text.items():
        labels = {d.family for d in docs}
        if len(labels) == 1:  # the same opening in two families cannot be labelled; drop it
            # All documents with this opening travel together, so a held-out opening is never
            # also the opening of a pretraining document.
            per_label[labels.pop()].append((text, docs))
    splits: tuple[list, list, list] = ([], [], [])
    for label in sorted(per_label):
        items = per_label[label]
        if len(items) < min_per_class:
            continue
        # Stratified and deterministic: each class is ordered by a seeded hash of its texts and
        # cut 80/10/10, so a class keeps its share in every split whatever the others do.
        items.sort(key=lambda item: _split_key(item[0], seed))
        n_test = max(1, round(TASK_SPLIT[2] * len(items)))
        n_dev = max(1, round(TASK_SPLIT[1] * len(items)))
        for part, chunk in zip((2, 1, 0), (items[:n_test], items[n_test : n_test + n_dev], items[n_test + n_dev :])):
            splits[part].extend((text, label, docs) for text, docs in chunk)
    for part in splits:
        part.sort(key=lambda item: _split_key(item[0], seed + 1))  # mix the classes
    return splits


def _heldout_texts(dev, test) -> list[str]:
    return sorted({doc.text for _, _, docs in dev + test for doc in docs})


def default_classification_task(
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    documents: Sequence[Document] | None = None,
    min_per_class: int = TASK_MIN_PER_CLASS,
) -> dict:
    """Write the demo task "which module family does this docstring come from?".

    Labels are the ``FAMILIES`` with at least ``min_per_class`` examples. An example is the first
    sentences of a document (<= 400 characters); openings shared by documents of different
    families are dropped, duplicates kept once. The split is stratified 80/10/10 per class,
    ordered by a hash of (seed, text), so it is deterministic and the three files are disjoint.

    Honest evaluation: the dev and test documents must not be in the pretraining corpus.
    ``default_pretraining_corpus(seed=...)`` writes the corpus without them (the full documents,
    not only the truncated openings); a corpus written another way should pass
    ``exclude_texts=task["heldout_texts"]`` to ``write_default_corpus``.

    Returns:
        ``{"train": path, "dev": path, "test": path, "labels": [...], "counts": {split:
        {label: n}}, "heldout_texts": [full texts of the dev/test documents]}``. Each jsonl line
        is ``{"text": ..., "label": ...}``.
    """
    if documents is None:
        documents = default_corpus_documents()
    train, dev, test = _task_examples(documents, seed, min_per_class)
    if not train:
        raise ValueError(f"no module family has {min_per_class} documents; cannot build the demo task")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"labels": sorted({label for _, label, _ in train}), "counts": {}}
    for name, items in (("train", train), ("dev", dev), ("test", test)):
        path = out / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for text, label, _ in items:
                f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
        result[name] = str(path)
        result["counts"][name] = dict(sorted(Counter(label for _, label, _ in items).items()))
    result["heldout_texts"] = _heldout_texts(dev, test)
    return result


def default_pretraining_corpus(
    seed: int = 0, *, cache: str | os.PathLike | None = None, verbose: bool = True
) -> Path:
    """The default pretraining corpus file, without the demo task's dev/test documents.

    Written once per (Python version, corpus version, task seed) under the cache directory and
    then reused as is: keeping the file (and its mtime) lets ``prepare_corpus`` reuse its shards.
    """
    root = Path(cache) if cache is not None else cache_dir()
    path = root / f"stdlib-corpus-{_python_tag()}-v{CORPUS_VERSION}-seed{seed}.txt"
    if path.exists():
        return path
    documents = default_corpus_documents(cache=root, verbose=verbose)
    _, dev, test = _task_examples(documents, seed, TASK_MIN_PER_CLASS)
    heldout = _heldout_texts(dev, test)
    start = time.perf_counter()
    stats = write_default_corpus(path, documents=documents, exclude_texts=heldout)
    if verbose:
        print(f"bertkit: wrote the default corpus in {time.perf_counter() - start:.1f}s: {stats}", file=sys.stderr)
    return path
