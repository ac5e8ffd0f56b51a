"""A small summarization set made on the machine from standard-library docstrings, and the
lead-sentence baseline.

Each example is one docstring of at least three sentences: the *summary* is its first sentence
(the line a docstring opens with to say what the object does) and the *document* is the rest of
the docstring. The first sentence is taken out of the document on purpose: left in, the task is
copying the opening sentence, which the lead baseline does perfectly. The lead-sentence
baseline (the document's own first sentence, as in news summarization) is the number a model
must beat. Files are JSONL ``{"source": document, "target": summary}``, the format
``finetune --task summarization`` (and translation) reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

from bertkit.data.corpus import Document, default_corpus_documents
from bertkit.data.pretraining import split_sentences

MIN_SENTENCES = 3             # the summary and at least two sentences of document
MAX_SOURCE_CHARS = 1_000      # documents cut at a sentence boundary below this
MAX_SUMMARY_CHARS = 200       # longer opening sentences are dropped (lists, signatures)
SPLIT = (0.8, 0.1, 0.1)


def summary_pair(document: Document) -> tuple[str, str] | None:
    """(document without its first sentence, first sentence), or None when too short."""
    sentences = document.sentences()
    if len(sentences) < MIN_SENTENCES or len(sentences[0]) > MAX_SUMMARY_CHARS:
        return None
    source = ""
    for sentence in sentences[1:]:
        candidate = f"{source} {sentence}" if source else sentence
        if len(candidate) > MAX_SOURCE_CHARS:
            break
        source = candidate
    return (source, sentences[0]) if source else None


def lead_sentence(text: str) -> str:
    """The lead baseline's summary: the first sentence of ``text``."""
    sentences = split_sentences(" ".join(text.split()))
    return sentences[0] if sentences else text


def docstring_summaries(documents: Sequence[Document], seed: int = 0
                        ) -> tuple[list[tuple[str, str]], list[tuple[str, str]],
                                   list[tuple[str, str]]]:
    """(train, dev, test) lists of (document, summary), split 80/10/10 by a seeded hash of the
    summary (a summary shared by several docstrings stays on one side)."""
    by_summary: dict[str, tuple[str, str]] = {}
    for doc in documents:
        pair = summary_pair(doc)
        if pair is not None:
            by_summary.setdefault(pair[1], pair)  # the first docstring with that opening
    keyed = sorted(by_summary.values(), key=lambda p: hashlib.sha256(
        f"{seed}\0{p[1]}".encode()).hexdigest())
    n_test = round(SPLIT[2] * len(keyed))
    n_dev = round(SPLIT[1] * len(keyed))
    return keyed[n_test + n_dev:], keyed[n_test:n_test + n_dev], keyed[:n_test]


def write_docstring_summarization(out_dir: str | os.PathLike, seed: int = 0,
                                  documents: Sequence[Document] | None = None) -> dict[str, str]:
    """Write ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` of the docstring summarization set
    into ``out_dir`` (made if needed); returns the paths by split name."""
    documents = default_corpus_documents() if documents is None else documents
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, pairs in zip(("train", "dev", "test"), docstring_summaries(documents, seed)):
        path = os.path.join(os.fspath(out_dir), f"{name}.jsonl")
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            for source, target in pairs:
                f.write(json.dumps({"source": source, "target": target}, ensure_ascii=False)
                        + "\n")
        os.replace(tmp, path)
        paths[name] = path
    return paths
