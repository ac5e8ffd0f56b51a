"""Tests of bertkit.data.corpus: the stdlib docstring corpus and the demo classification task."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import pytest

from bertkit.data.corpus import (FAMILIES, MIN_CHARS, MIN_SENTENCES, TASK_MAX_CHARS, Document, clean_docstring,
                                 default_classification_task, default_corpus_documents,
                                 default_pretraining_corpus, family_of, write_default_corpus)
from bertkit.data.pretraining import detect_layout, read_documents


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bertkit-cache")


@pytest.fixture(scope="module")
def documents(cache):
    return default_corpus_documents(cache=cache, verbose=False)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_clean_docstring_keeps_prose_only():
    doc = '''f(x, y) -> int

        Add two numbers.
        The result is exact.

        >>> f(1, 2)
        3

        Example::

            total = f(a, b)
            print(total)

        Notes
        -----
        Works on ints.
        '''
    assert clean_docstring(doc) == "Add two numbers.\nThe result is exact.\n\nExample::\n\nNotes\nWorks on ints."


def test_family_of():
    assert family_of("email.mime.text") == "internet"
    assert family_of("json") == "internet"
    assert family_of("os") == family_of("posixpath") == "files_os"
    assert family_of("colorsys") is None
    pkgs = [p for pkgs in FAMILIES.values() for p in pkgs]
    assert len(pkgs) == len(set(pkgs))  # each package in one family only


def test_restricted_build_is_deterministic():
    modules = ["json", "textwrap", "fractions"]
    first = default_corpus_documents(modules)
    second = default_corpus_documents(modules)
    assert first == second
    names = {d.module for d in first}
    assert {"json", "json.decoder", "textwrap", "fractions"} <= names  # packages are walked
    assert all(d.package in modules for d in first)
    assert not any(part.startswith("_") for d in first for part in d.module.split("."))
    texts = [d.text for d in first]
    assert len(texts) == len(set(texts))
    assert "json.dumps" in {d.name for d in first}
    assert all(len(d.text) >= MIN_CHARS and len(d.sentences()) >= MIN_SENTENCES for d in first)


def test_full_corpus_size_and_cache(documents, cache):
    assert len(documents) > 1500
    chars = sum(len(d.text) for d in documents)
    assert chars > 800_000
    assert len({d.text for d in documents}) == len(documents)
    kinds = Counter(d.kind for d in documents)
    assert set(kinds) == {"module", "class", "function", "method", "topic"}
    assert {"json", "collections", "asyncio.tasks", "pydoc_data.topics"} <= {d.module for d in documents}
    assert not {"antigravity", "this", "tkinter", "idlelib"} & {d.package for d in documents}
    cached = list(cache.glob("stdlib-docs-*.jsonl"))
    assert len(cached) == 1 and f"{sys.version_info[0]}.{sys.version_info[1]}" in cached[0].name
    start = time.perf_counter()
    assert default_corpus_documents(cache=cache) == documents  # read back from the cache
    assert time.perf_counter() - start < 2.0


def test_write_default_corpus_bert_layout(documents, tmp_path):
    docs = documents[:200]
    excluded = {docs[3].text, docs[10].text}
    stats = write_default_corpus(tmp_path / "c.txt", documents=docs, exclude_texts=excluded)
    kept = [d for d in docs if d.text not in excluded]
    assert detect_layout(tmp_path / "c.txt") == "bert"
    assert list(read_documents(tmp_path / "c.txt")) == [d.sentences() for d in kept]
    assert stats.documents == 198
    assert stats.sentences == sum(len(d.sentences()) for d in kept)
    assert stats.characters == sum(len(s) for d in kept for s in d.sentences())
    assert stats.bytes == (tmp_path / "c.txt").stat().st_size and "198 documents" in str(stats)


def test_classification_task(documents, tmp_path):
    task = default_classification_task(tmp_path / "task", documents=documents)
    splits = {name: read_jsonl(task[name]) for name in ("train", "dev", "test")}
    labels = task["labels"]
    assert len(labels) >= 6 and set(labels) <= set(FAMILIES)
    for name, rows in splits.items():
        assert Counter(r["label"] for r in rows) == Counter(task["counts"][name])
        assert all(set(r) == {"text", "label"} and 0 < len(r["text"]) <= TASK_MAX_CHARS for r in rows)
    texts = [set(r["text"] for r in rows) for rows in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])  # disjoint
    assert sum(len(t) for t in texts) == sum(len(rows) for rows in splits.values())  # no duplicates
    for label in labels:  # stratified 80/10/10 per class
        n = sum(task["counts"][s].get(label, 0) for s in splits)
        assert task["counts"]["dev"][label] == max(1, round(0.1 * n))
        assert task["counts"]["test"][label] == max(1, round(0.1 * n))
    # Each text is the opening of a document of its family.
    by_family = {}
    for d in documents:
        by_family.setdefault(d.family, []).append(" ".join(d.sentences()))
    for row in splits["dev"][:30]:
        assert any(full.startswith(row["text"]) for full in by_family[row["label"]])
    # Deterministic for a seed, different across seeds.
    again = default_classification_task(tmp_path / "again", documents=documents)
    assert read_jsonl(again["test"]) == splits["test"]
    other = default_classification_task(tmp_path / "other", seed=1, documents=documents)
    assert read_jsonl(other["test"]) != splits["test"]


def test_pretraining_corpus_excludes_heldout_documents(documents, cache, tmp_path):
    task = default_classification_task(tmp_path / "task", documents=documents)
    path = default_pretraining_corpus(seed=0, cache=cache, verbose=False)
    assert path.parent == cache and detect_layout(path) == "bert"
    corpus_docs = [" ".join(doc) for doc in read_documents(path)]
    heldout = set(task["heldout_texts"])
    assert len(corpus_docs) == len(documents) - len(heldout)
    openings = {text[:TASK_MAX_CHARS] for text in corpus_docs}

    def in_corpus(example_text):
        return any(full.startswith(example_text) for full in openings)

    for name in ("dev", "test"):
        for row in read_jsonl(task[name]):
            assert not in_corpus(row["text"]), row
    # The check can fail: training texts are in the corpus.
    train = read_jsonl(task["train"])[:50]
    assert all(in_corpus(row["text"]) for row in train)
    # Reused, not rewritten (its shards stay valid).
    mtime = path.stat().st_mtime_ns
    assert default_pretraining_corpus(seed=0, cache=cache, verbose=False) == path
    assert path.stat().st_mtime_ns == mtime


def test_document_round_trip():
    d = Document(text="First one. Second one.\n\nThird one.", module="email.mime.text", name="x", kind="module")
    assert d.sentences() == ["First one.", "Second one.", "Third one."]
    assert d.package == "email" and d.family == "internet"


def test_damaged_cache_names_the_file(documents, cache, tmp_path):
    (cached,) = cache.glob("stdlib-docs-*.jsonl")
    lines = cached.read_bytes().splitlines(keepends=True)
    damaged = tmp_path / cached.name
    damaged.write_bytes(b"".join(lines[:2]) + b'{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError) as error:
        default_corpus_documents(cache=tmp_path)
    assert str(error.value) == f"{damaged}:3: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    damaged.write_bytes(b"".join(lines[:2]) + b"[1]\n")
    with pytest.raises(ValueError, match=rf"^{damaged}: damaged corpus cache \(.*\); delete the "
                                         "file to rebuild it$"):
        default_corpus_documents(cache=tmp_path)
