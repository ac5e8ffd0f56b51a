"""Reading the small JSON files of a model folder (config.json, tokenizer_config.json,
adapter_config.json), and reading any text file, with errors that name the file."""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def read_json_object(path: str | os.PathLike, missing: str | None = None) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises FileNotFoundError (``missing``, or a message naming the path) when there is no such
    file, and ValueError naming the file when it is not UTF-8, not valid JSON or not a JSON
    object.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(missing or f"{path} does not exist")
    try:
        with utf8_errors_named(path), open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


@contextmanager
def utf8_errors_named(path: str | os.PathLike) -> Iterator[None]:
    """Turn a ``UnicodeDecodeError`` raised while reading ``path`` into a one-line ValueError
    naming the file and the line of its first byte that is not UTF-8 (see
    :func:`not_utf8_error`).

    The file is scanned again only when the error happens, so reading stays one pass. An error
    that does not come from ``path`` (the file decodes cleanly) is left as it is.
    """
    try:
        yield
    except UnicodeDecodeError:
        error = not_utf8_error(path)
        if error is None:
            raise
        raise error from None


def not_utf8_error(path: str | os.PathLike) -> ValueError | None:
    """A ValueError ``PATH:LINE: not UTF-8 text (byte 0xe9) ...`` for the first byte of
    ``path`` that is not UTF-8, or None when the whole file is UTF-8."""
    path = os.fspath(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                # e.object is this chunk plus at most 3 bytes of a character the previous chunk
                # began; those bytes hold no newline, so counting in e.object is exact.
                line += e.object[:e.start].count(b"\n")
                return ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x});"
                                  " save the file as UTF-8")
            if not chunk:
                return None
            line += chunk.count(b"\n")


def json_object_line(line: str, path: str | os.PathLike, line_no: int) -> dict[str, Any]:
    """One line of a JSON Lines file as a dict; a ValueError ``PATH:LINE: ...`` otherwise."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: malformed JSON line: {e.msg} "
                         f"(column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"{path}:{line_no}: JSON nested too deeply") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object per line, found "
                         f"{type(record).__name__}")
    return record
