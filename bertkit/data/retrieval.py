"""Matching data: retrieval pairs for a bi-encoder, scored pairs for a cross-encoder, and the
docstring retrieval set built from the default corpus.

File formats (``.jsonl``, one JSON object per line, or ``.tsv`` with a header row):

- retrieval: ``query``, ``positive`` (a document that answers it) and an optional
  ``negative`` (a hard negative: a string, or in JSONL a list of strings);
- rerank: ``query``, ``document`` and ``label`` (1/0, or a relevance in [0, 1]).

The loaders reject bad data with one line naming the file and line, as
:mod:`bertkit.data.tasks` does; :class:`RetrievalCollator` pads the query and the documents
of a batch separately (they differ in length). :func:`docstring_retrieval_set` writes the
train/dev/test files of the demo search (query = a docstring's first sentence, document =
the rest; split by module).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from bertkit.data.corpus import Document, default_corpus_documents
from bertkit.data.tasks import (ClassificationExample, PaddingCollator, TaskDataset,
                                _encode_truncating, _open_text, _read_jsonl, _read_table,
                                _warn_truncated, data_format)

RETRIEVAL_FORMATS = ("jsonl", "tsv")
DOCUMENT_PREFIX = "document_"  # batch keys of the documents: document_input_ids ...


# =========================================================================== retrieval


@dataclass(frozen=True)
class RetrievalExample:
    """A query, the document that answers it (None when predicting) and hard negatives;
    ``line``: where it came from (1-based line, or record number)."""

    query: str
    positive: str | None
    negatives: tuple[str, ...] = ()
    line: int = 0


def _records(path: str | os.PathLike, what: str):
    """(line, record) of a ``.jsonl`` or header-row ``.tsv`` file of the ``what`` task."""
    fmt = data_format(path)
    if fmt not in RETRIEVAL_FORMATS:
        raise ValueError(f"{os.fspath(path)}: {what} data must be .jsonl or .tsv, not .{fmt}")
    path = _open_text(path)
    return path, list(_read_jsonl(path) if fmt == "jsonl" else _read_table(path, fmt))


def _text_field(record: Mapping, name: str, where: str, required: bool = True) -> str | None:
    """The string ``record[name]``; a ValueError naming ``where`` when it is missing, empty
    or not a string."""
    value = record.get(name)
    if value is None:
        if not required:
            return None
        fields = ", ".join(map(str, record)) or "(none)"
        raise ValueError(f"{where}: missing field {name!r} (fields found: {fields})")
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be text, found "
                         f"{type(value).__name__} {value!r:.40}")
    if not value.strip():
        raise ValueError(f"{where}: field {name!r} is empty")
    return value


def retrieval_records(records: Sequence[tuple[int, Mapping]] | Sequence[Mapping],
                      source: str = "records",
                      require_positive: bool = True) -> list[RetrievalExample]:
    """The examples of ``records`` (dicts with ``query``, ``positive``, optional ``negative``;
    or (line, dict) pairs as the file readers give); a ValueError names ``source:N``."""
    examples = []
    for n, item in enumerate(records, start=1):
        line, record = item if isinstance(item, tuple) else (n, item)
        where = f"{source}:{line}"
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: expected an object with query and positive, found "
                             f"{type(record).__name__}")
        query = _text_field(record, "query", where)
        positive = _text_field(record, "positive", where, required=require_positive)
        negative: Any = record.get("negative")
        if negative in (None, ""):
            negatives: tuple[str, ...] = ()
        elif isinstance(negative, list):
            negatives = tuple(_text_field({"negative": v}, "negative", where) for v in negative)
        else:
            negatives = (_text_field(record, "negative", where),)
        examples.append(RetrievalExample(query, positive, negatives, line))
    if not examples:
        raise ValueError(f"{source} holds no examples")
    return examples


def load_retrieval(path: str | os.PathLike,
                   require_positive: bool = True) -> list[RetrievalExample]:
    """Read a retrieval file: ``.jsonl`` records or a ``.tsv`` with the header
    ``query<TAB>positive[<TAB>negative]``."""
    path, records = _records(path, "retrieval")
    return retrieval_records(records, path, require_positive)


def write_retrieval(examples: Sequence[RetrievalExample], path: str | os.PathLike) -> None:
    """Write ``examples`` as the ``.jsonl`` file :func:`load_retrieval` reads back."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            record: dict[str, Any] = {"query": ex.query, "positive": ex.positive}
            if ex.negatives:
                record["negative"] = ex.negatives[0] if len(ex.negatives) == 1 \
                    else list(ex.negatives)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def encode_retrieval(examples: Sequence[RetrievalExample], tokenizer,
                     max_length: int) -> TaskDataset:
    """Tokenize each example into ``input_ids`` / ``token_type_ids`` (the query) and, when it
    has a positive, ``documents``: the positive then the hard negatives, each a
    ``[CLS] text [SEP]`` id list. Over-long texts are truncated (one warning with the count)."""
    texts = [ex.query for ex in examples]
    owners = [-1] * len(examples)                  # which example each text belongs to
    for i, ex in enumerate(examples):
        if ex.positive is not None:
            documents = (ex.positive, *ex.negatives)
            texts.extend(documents)
            owners.extend([i] * len(documents))
    ids, _, num_truncated = _encode_truncating(tokenizer, texts, None, max_length)
    items: list[dict] = [{"input_ids": ids[i], "token_type_ids": [0] * len(ids[i])}
                         for i in range(len(examples))]
    for owner, text_ids in zip(owners[len(examples):], ids[len(examples):]):
        items[owner].setdefault("documents", []).append(text_ids)
    _warn_truncated(num_truncated, len(texts), max_length, "texts")
    return TaskDataset(items, num_truncated=num_truncated)


class RetrievalCollator:
    """Pad a batch of :func:`encode_retrieval` items: the queries as ``input_ids``,
    ``token_type_ids``, ``attention_mask`` (B, T); the documents of every item (its positive,
    then its negatives) as ``document_input_ids`` ... (D, T_d), and ``document_owner`` (D,):
    the batch row each document belongs to. The documents are those of the rows in order, so
    row i's positive is document ``positive_index[i]`` (also returned, (B,))."""

    def __init__(self, pad_token_id: int = 0):
        self.padding = PaddingCollator(pad_token_id)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        with_documents = sum("documents" in item for item in items)
        if with_documents not in (0, len(items)):
            raise ValueError("a retrieval batch mixes items with and without documents")
        batch = self.padding([{k: v for k, v in item.items() if k != "documents"}
                              for item in items])
        if not with_documents:
            return batch
        documents, owner, first = [], [], []
        for row, item in enumerate(items):
            first.append(len(documents))
            documents.extend(item["documents"])
            owner.extend([row] * len(item["documents"]))
        padded = self.padding([{"input_ids": d, "token_type_ids": [0] * len(d)}
                               for d in documents])
        batch.update({DOCUMENT_PREFIX + k: v for k, v in padded.items()})
        batch["document_owner"] = torch.tensor(owner)                       # (D,)
        batch["positive_index"] = torch.tensor(first)                       # (B,)
        return batch


# =========================================================================== rerank


def rerank_records(records: Sequence[tuple[int, Mapping]] | Sequence[Mapping],
                   source: str = "records",
                   require_label: bool = True) -> list[ClassificationExample]:
    """Examples (``text`` = query, ``text_pair`` = document, ``label`` = relevance as a float
    in [0, 1]) of records with ``query``, ``document`` and ``label``; errors name
    ``source:N``."""
    examples = []
    for n, item in enumerate(records, start=1):
        line, record = item if isinstance(item, tuple) else (n, item)
        where = f"{source}:{line}"
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: expected an object with query, document and label, "
                             f"found {type(record).__name__}")
        query = _text_field(record, "query", where)
        document = _text_field(record, "document", where)
        label = _relevance(record.get("label"), where, require_label)
        examples.append(ClassificationExample(query, document, label, line))
    if not examples:
        raise ValueError(f"{source} holds no examples")
    return examples


def _relevance(value: Any, where: str, required: bool) -> float | None:
    """A label as a float in [0, 1]; a ValueError naming ``where`` otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValueError(f"{where}: missing field 'label' (1 = relevant, 0 = not, or a "
                             "relevance in [0, 1])")
        return None
    try:
        if isinstance(value, (bool, dict, list)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label must be a number in [0, 1], found "
                         f"{value!r:.40}") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{where}: label {number:g} is outside [0, 1] (scale graded "
                         "relevance to [0, 1])")
    return number


def load_rerank(path: str | os.PathLike,
                require_label: bool = True) -> list[ClassificationExample]:
    """Read a rerank file: ``.jsonl`` records or a ``.tsv`` with the header
    ``query<TAB>document<TAB>label``."""
    path, records = _records(path, "rerank")
    return rerank_records(records, path, require_label)


def write_rerank(examples: Sequence[ClassificationExample], path: str | os.PathLike) -> None:
    """Write rerank ``examples`` as the ``.jsonl`` file :func:`load_rerank` reads back."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"query": ex.text, "document": ex.text_pair, "label": ex.label},
                               ensure_ascii=False) + "\n")


# =========================================================================== docstring set


def _query_and_document(doc: Document, min_document_chars: int) -> tuple[str, str] | None:
    """(first sentence, the rest) of a docstring, or None when either part is too short."""
    sentences = doc.sentences()
    if len(sentences) < 2:
        return None
    query, document = sentences[0], " ".join(sentences[1:])
    if len(query.split()) < 4 or len(document) < min_document_chars:
        return None
    return query, document


def _module_split(module: str, seed: int, dev_share: float, test_share: float) -> str:
    """train / dev / test for a module, from a seeded hash of its top-level package: every
    document of a package lands in one split, so no split shares a package's wording."""
    package = module.split(".")[0]
    digest = hashlib.sha256(f"{seed}\0{package}".encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2 ** 64
    return "test" if share < test_share else "dev" if share < test_share + dev_share else "train"


def docstring_retrieval_set(out_dir: str | os.PathLike, seed: int = 0, *,
                            documents: Sequence[Document] | None = None,
                            min_document_chars: int = 80, max_document_chars: int = 600,
                            dev_share: float = 0.1, test_share: float = 0.1) -> dict:
    """Write the docstring retrieval set: ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` of
    ``{"query", "positive"}`` records in ``out_dir``.

    From each standard-library docstring of the default corpus
    (:func:`~bertkit.data.corpus.default_corpus_documents`): the query is its first sentence
    (at least 4 words), the positive the rest (at least ``min_document_chars``, cut at a
    sentence end to at most ``max_document_chars``). A query that opens two docstrings is
    dropped (it has no single answer). Modules are split by top-level package with a seeded
    hash (about 80/10/10), so the result is deterministic for a Python version and ``seed``.

    Returns ``{"train": path, "dev": path, "test": path, "counts": {split: n}}``.
    """
    documents = default_corpus_documents() if documents is None else documents
    pairs: dict[str, tuple[str, str]] = {}
    seen_twice: set[str] = set()
    for doc in documents:
        parts = _query_and_document(doc, min_document_chars)
        if parts is None:
            continue
        query, document = parts
        if query in pairs:
            seen_twice.add(query)
            continue
        pairs[query] = (_cut(document, max_document_chars), doc.module)
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for query, (document, module) in pairs.items():
        if query not in seen_twice:
            splits[_module_split(module, seed, dev_share, test_share)].append(
                {"query": query, "positive": document})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"counts": {}}
    for name, records in splits.items():
        if not records:
            raise ValueError(f"the docstring retrieval set has no {name} pairs "
                             f"({len(pairs)} pairs in all); use more documents")
        path = out / f"{name}.jsonl"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        result[name] = str(path)
        result["counts"][name] = len(records)
    return result


def _cut(text: str, max_chars: int) -> str:
    """``text`` cut at the last sentence end (". ") within ``max_chars`` (hard cut if none)."""
    if len(text) <= max_chars:
        return text
    end = text.rfind(". ", 0, max_chars)
    return text[:end + 1] if end > 0 else text[:max_chars]
