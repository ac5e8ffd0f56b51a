"""Reading a corpus to index: ``.txt`` (one document per line) or ``.jsonl`` (one
``{"id"?, "text"}`` object per line).

Every document must say something: an empty line, a line that is not UTF-8, a JSON line
without a string ``text`` or with a duplicated ``id`` is a ValueError naming the file and the
line. The whole file is read and checked before any document is embedded, so a bad line
costs nothing. A document without an ``id`` gets its position in the index (``"0"``,
``"1"``, ...): a corpus added later continues the count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bertkit.jsonfile import json_object_line, utf8_errors_named

FORMATS = (".txt", ".jsonl")


@dataclass
class Document:
    """One document of a corpus: its ``id`` (a string), ``text``, and the ``line`` it came from."""
    id: str
    text: str
    line: int


def corpus_lines(path: str) -> list[str]:
    """The lines of ``path`` without their line ends; only ``"\\n"`` ends a line (a text may
    hold other Unicode line separators, which ``str.splitlines`` would split on)."""
    # -sig: a byte-order mark must not stick to the first document.
    with utf8_errors_named(path), open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _record_document(line: str, path: str, number: int) -> tuple[str | None, str]:
    """The (id or None, text) of one JSON line."""
    record = json_object_line(line, path, number)
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        found = ", ".join(str(k) for k in record) or "(none)"
        raise ValueError(f"{path}:{number}: field 'text' must be a non-empty string (fields "
                         f"found: {found})")
    doc_id = record.get("id")
    if doc_id is None:
        return None, text
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or not str(doc_id).strip():
        raise ValueError(f"{path}:{number}: field 'id' must be a non-empty string or an "
                         f"integer, got {str(doc_id)[:50]!r}")
    return str(doc_id), text


def read_corpus(path: str | os.PathLike, start_id: int = 0,
                taken_ids: set[str] | frozenset[str] = frozenset()) -> list[Document]:
    """The documents of ``path`` (``.txt`` or ``.jsonl``), checked line by line.

    ``start_id``: the position of the first document in the index (documents without an id
    get their position); ``taken_ids``: ids already in the index, which the corpus may not
    reuse.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"corpus {path} does not exist")
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        raise ValueError(f"{path}: unknown corpus format {extension or '(no extension)'!r}; use "
                         ".txt (one document per line) or .jsonl ({\"id\"?, \"text\"} per line)")
    documents: list[Document] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(corpus_lines(path), start=1):
        if not line.strip():
            raise ValueError(f"{path}:{number}: empty line; every line of a corpus must hold a "
                             "document")
        doc_id, text = (None, line) if extension == ".txt" else _record_document(line, path, number)
        doc_id = str(start_id + len(documents)) if doc_id is None else doc_id
        if doc_id in taken_ids:
            raise ValueError(f"{path}:{number}: id {doc_id!r} is already in the index")
        if doc_id in seen:
            raise ValueError(f"{path}:{number}: id {doc_id!r} was already used on line "
                             f"{seen[doc_id]}")
        seen[doc_id] = number
        documents.append(Document(doc_id, text, number))
    if not documents:
        raise ValueError(f"{path} holds no documents")
    return documents
