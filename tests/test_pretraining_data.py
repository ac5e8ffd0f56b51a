"""Tests of bertkit.data.pretraining: sentences, layouts, shards, NSP/packed examples, masking."""

from __future__ import annotations

import json
import pickle
import random
from array import array

import numpy as np
import pytest
import torch

from bertkit.data.pretraining import (MlmCollator, PretrainingDataset, ShardIndex, _nsp_spans, _truncation_counts,
                                      build_examples, detect_layout, iter_corpus_text, load_corpus,
                                      prepare_corpus, read_documents, split_sentences)
from bertkit.tokenizer import Tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# ------------------------------------------------------------------------------------ helpers


class CountingTokenizer:
    """Wraps a Tokenizer and counts the texts it encodes (to prove a cache hit does no work)."""

    def __init__(self, tok: Tokenizer, fail_after: int | None = None):
        self._tok = tok
        self.texts_encoded = 0
        self.fail_after = fail_after

    def encode_plain(self, texts):
        self.texts_encoded += len(texts)
        if self.fail_after is not None and self.texts_encoded > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        return self._tok.encode_plain(texts)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def identity_corpus(tmp_path, n_docs=40, seed=0, min_sents=2, max_sents=12, max_len=14):
    """A BERT-layout corpus where every token names its document and sentence ("d3s5").

    Returns (file, tokenizer, truth) with truth[d] = list of sentence lengths in tokens.
    """
    rng = random.Random(seed)
    lines, words, truth = [], [], []
    for d in range(n_docs):
        lengths = [rng.randint(1, max_len) for _ in range(rng.randint(min_sents, max_sents))]
        truth.append(lengths)
        for s, n in enumerate(lengths):
            words.append(f"d{d}s{s}")
            lines.append(" ".join([f"d{d}s{s}"] * n))
        lines.append("")
    path = write(tmp_path / "ident.txt", "\n".join(lines) + "\n")
    tok = Tokenizer.from_vocab(SPECIALS + words)
    return path, tok, truth


def parse_ident(tok, ids):
    """Token ids → list of (doc, sentence) pairs (None for special tokens)."""
    out = []
    for t in tok.convert_ids_to_tokens([int(i) for i in ids]):
        if t in SPECIALS:
            out.append(None)
        else:
            d, s = t[1:].split("s")
            out.append((int(d), int(s)))
    return out


@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ident")
    path, tok, truth = identity_corpus(tmp)
    corpus = prepare_corpus([path], tok, out_dir=tmp / "shards", progress=False)
    return corpus, tok, truth


# ------------------------------------------------------------------------------------ sentences


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello world. This is a test.", ["Hello world.", "This is a test."]),
        ("Use e.g. this one. Then i.e. that. See etc. Now", ["Use e.g. this one.", "Then i.e. that.", "See etc. Now"]),
        ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
        ("Pi is 3.14 roughly. Call os.path.join here. Done!", ["Pi is 3.14 roughly.", "Call os.path.join here.", "Done!"]),
        ("Really? Yes! \"Quoted.\" (Bracket.) 42 is next.", ["Really?", "Yes!", "\"Quoted.\"", "(Bracket.)", "42 is next."]),
        ("It ends. lower case goes on.", ["It ends. lower case goes on."]),
        ("J. R. Tolkien in the U.S. Army wrote. Next.", ["J. R. Tolkien in the U.S. Army wrote.", "Next."]),
        ("Wait... Then go.", ["Wait...", "Then go."]),
        ("  line one\n  continues. Second\nline.  ", ["line one continues.", "Second line."]),
        ("", []),
        ("   \n ", []),
    ],
)
def test_split_sentences_hand_cases(text, expected):
    assert split_sentences(text) == expected


def test_split_sentences_is_idempotent():
    text = "First one. Second, e.g. with os.path. Third? \"Fourth.\" 5 is fifth. Last"
    for sentence in split_sentences(text):
        assert split_sentences(sentence) == [sentence]


# ------------------------------------------------------------------------------------ reading


def test_layouts_detected_and_read(tmp_path):
    bert = write(tmp_path / "bert.txt", "First sentence here.\nSecond one, e.g. this.\n\nOther doc.\nAnd more.\n")
    per_line = write(tmp_path / "lines.txt", "One. Two words. Three!\nFour here. Five.\n\nSix. Seven.\n")
    wrapped = write(
        tmp_path / "wrapped.txt",
        "This paragraph is wrapped\nacross lines. It has two\nsentences.\n\nAnother block. With\ntwo.\n",
    )
    assert detect_layout(bert) == "bert"
    assert detect_layout(per_line) == "paragraphs"
    assert detect_layout(wrapped) == "paragraphs"
    assert list(read_documents(bert)) == [["First sentence here.", "Second one, e.g. this."], ["Other doc.", "And more."]]
    assert list(read_documents(per_line)) == [["One.", "Two words.", "Three!", "Four here.", "Five."], ["Six.", "Seven."]]
    assert list(read_documents(wrapped)) == [
        ["This paragraph is wrapped across lines.", "It has two sentences."],
        ["Another block.", "With two."],
    ]
    # Forcing a layout overrides detection.
    assert list(read_documents(per_line, layout="bert"))[0] == ["One. Two words. Three!", "Four here. Five."]
    assert list(iter_corpus_text([bert, wrapped]))[:3] == ["First sentence here.", "Second one, e.g. this.", "Other doc."]


def test_reading_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_documents(tmp_path / "nope.txt")
    empty = write(tmp_path / "empty.txt", "")
    blank = write(tmp_path / "blank.txt", "\n   \n\n")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        read_documents(empty)
    with pytest.raises(ValueError, match=r"blank\.txt is empty"):
        read_documents(blank)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"ok line\nsecond\ncaf\xe9 au lait\n")
    with pytest.raises(ValueError, match=r"latin1\.txt: not valid UTF-8"):
        list(read_documents(bad))
    good = write(tmp_path / "good.txt", "x.\n")
    with pytest.raises(ValueError, match="layout must be one of"):
        read_documents(good, layout="xml")


# ------------------------------------------------------------------------------------ shards


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    rng = random.Random(1)
    vocab = "the a model reads text and learns words from many sentences of data quickly slowly".split()
    docs = []
    for _ in range(30):
        sents = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12))).capitalize() + "." for _ in range(rng.randint(1, 6))]
        docs.append(sents)
    bert = write(tmp / "bert.txt", "\n\n".join("\n".join(d) for d in docs) + "\n")
    paras = write(tmp / "paras.txt", "\n\n".join(" ".join(d) for d in docs[:10]) + "\n")
    tok = Tokenizer.train(iter(vocab * 3 + ["sentences", "quickly"]), vocab_size=120, show_progress=False)
    return tmp, bert, paras, tok


def test_prepare_corpus_round_trip(small_text, tmp_path):
    _, bert, paras, tok = small_text
    corpus = prepare_corpus([bert, paras], tok, out_dir=tmp_path / "out", shard_tokens=100, batch_sentences=7, progress=False)
    # Reference: the documents as read, tokenized independently, sentence by sentence.
    expected = [[tok.encode_plain([s])[0] for s in doc] for f in (bert, paras) for doc in read_documents(f)]
    assert corpus.num_documents == len(expected) == 40
    assert corpus.num_sentences == sum(len(d) for d in expected)
    assert corpus.num_tokens == sum(len(s) for d in expected for s in d)
    got = [[s.tolist() for s in corpus.document(d)] for d in range(corpus.num_documents)]
    assert got == expected
    # Small shards: several files, uint16 for a small vocab, reads that cross shard ends.
    assert len(corpus.meta["shards"]) > 3
    assert corpus.dtype == np.uint16
    flat = [t for d in expected for s in d for t in s]
    assert corpus.tokens(0, corpus.num_tokens).tolist() == flat
    assert corpus.tokens(95, 215).tolist() == flat[95:215]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert [f["layout"] for f in meta["files"]] == ["bert", "paragraphs"]
    assert meta["special_token_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert load_corpus(tmp_path / "out").num_tokens == corpus.num_tokens


def test_prepare_corpus_int32_for_large_vocab(tmp_path):
    words = [f"w{i}" for i in range(70_000)]
    tok = Tokenizer.from_vocab(SPECIALS + words)
    f = write(tmp_path / "c.txt", "w1 w69999 w65536.\nw7\n\nw65535 w3\n")
    corpus = prepare_corpus(f, tok, out_dir=tmp_path / "o", progress=False)
    assert corpus.dtype == np.int32
    expected = [t for s in tok.encode_plain(["w1 w69999 w65536.", "w7", "w65535 w3"]) for t in s]
    assert max(expected) == tok.vocab["w69999"] > 65535
    assert corpus.tokens(0, corpus.num_tokens).tolist() == expected


def test_prepare_corpus_cache_reuse_and_invalidation(small_text, tmp_path):
    _, bert, _, tok = small_text
    src = write(tmp_path / "src.txt", bert.read_text())
    counting = CountingTokenizer(tok)
    first = prepare_corpus([src], counting, cache_root=tmp_path / "cache", progress=False)
    encoded = counting.texts_encoded
    assert encoded > 50
    mtime = (first.directory / "meta.json").stat().st_mtime_ns
    counting.texts_encoded = 0
    again = prepare_corpus([src], counting, cache_root=tmp_path / "cache", progress=False)
    assert again.directory == first.directory
    assert counting.texts_encoded == 1  # only the fingerprint probe, no corpus text
    assert (again.directory / "meta.json").stat().st_mtime_ns == mtime
    # A changed file gives a new key and a new dir.
    write(src, src.read_text() + "\nOne more document here.\n")
    counting.texts_encoded = 0
    third = prepare_corpus([src], counting, cache_root=tmp_path / "cache", progress=False)
    assert third.directory != first.directory and counting.texts_encoded > 50
    assert third.num_documents == first.num_documents + 1
    # A different tokenizer (other normalisation) is another key too.
    cased = Tokenizer(dict(tok.vocab), do_lower_case=False)
    assert prepare_corpus([src], cased, cache_root=tmp_path / "cache", progress=False).directory != third.directory


def test_prepare_corpus_killed_run_leaves_no_complete_dir(small_text, tmp_path):
    _, bert, _, tok = small_text
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus([bert], CountingTokenizer(tok, fail_after=20), cache_root=tmp_path / "cache",
                       batch_sentences=5, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary build dir is removed
    corpus = prepare_corpus([bert], tok, cache_root=tmp_path / "cache", progress=False)
    assert corpus.num_documents == 30
    # A dir without meta.json is never taken as complete.
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "tokens_00000.bin").write_bytes(b"\0\0")
    with pytest.raises(FileNotFoundError, match="not a complete shard dir"):
        load_corpus(partial)
    with pytest.raises(ValueError, match="not a bertkit shard dir"):
        prepare_corpus([bert], tok, out_dir=partial, progress=False)


def test_prepare_corpus_errors(small_text, tmp_path):
    _, bert, _, tok = small_text
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        prepare_corpus([bert, tmp_path / "missing.txt"], tok, out_dir=tmp_path / "o")
    empty = write(tmp_path / "empty.txt", "\n\n")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        prepare_corpus([bert, empty], tok, out_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="exactly one of out_dir and cache_root"):
        prepare_corpus([bert], tok)
    unk_only = write(tmp_path / "ctrl.txt", "\x00\x01\n")  # tokenizes to nothing
    with pytest.raises(ValueError, match="no tokens"):
        prepare_corpus([unk_only], tok, out_dir=tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()


# ------------------------------------------------------------------------------------ examples


def test_truncation_counts_match_the_original_loop():
    def reference(la, lb, m):
        ra = rb = 0
        while la + lb > m:
            if la > lb:
                la, ra = la - 1, ra + 1
            else:
                lb, rb = lb - 1, rb + 1
        return ra, rb

    for la in range(1, 30):
        for lb in range(1, 30):
            for m in (2, 5, 17, 40):
                assert _truncation_counts(la, lb, m) == reference(la, lb, m), (la, lb, m)


def test_nsp_examples(ident):
    corpus, tok, truth = ident
    max_len = 32
    ds = build_examples(corpus, max_len, short_seq_prob=0.1, seed=3, dupe_factor=5)
    n = len(ds)
    assert n > 500
    is_next = 0
    for i in range(n):
        item = ds[i]
        ids, types = item["input_ids"], item["token_type_ids"]
        assert ids.dtype == types.dtype == torch.long and item["next_sentence_label"].shape == ()
        assert len(ids) <= max_len
        seps = (ids == tok.sep_token_id).nonzero().flatten().tolist()
        assert ids[0] == tok.cls_token_id and len(seps) == 2 and seps[1] == len(ids) - 1
        # [CLS] A [SEP] -> type 0, B [SEP] -> type 1
        assert types.tolist() == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
        a, b = parse_ident(tok, ids[1 : seps[0]]), parse_ident(tok, ids[seps[0] + 1 : -1])
        assert a and b
        doc_a, doc_b = {d for d, _ in a}, {d for d, _ in b}
        assert len(doc_a) == 1 and len(doc_b) == 1
        sents = [s for _, s in a + b]
        if item["next_sentence_label"] == 0:
            is_next += 1
            assert doc_a == doc_b
            assert sents == sorted(sents)  # B comes after A in the document
            assert a[-1][1] < b[0][1]      # and they are different sentences
            # Without truncation, B starts at the sentence right after A, both complete.
            d = a[0][0]
            if len(ids) < max_len:
                assert b[0][1] == a[-1][1] + 1
                for s in set(sents):
                    assert sents.count(s) == truth[d][s]
        else:
            assert doc_a != doc_b  # a random B never comes from A's document
    # Half IsNext (the original's one-sentence chunks, always NotNext there, are balanced too).
    assert 0.45 < is_next / n < 0.55, is_next / n


def reference_instances(documents, max_seq_length, short_seq_prob, rng):
    """google-research/bert create_pretraining_data.py, create_instances_from_document and
    truncate_seq_pair, transcribed with bertkit's one documented deviation (masking left out) over all documents: (len A, len B, is_random)."""
    out = []
    for document_index, document in enumerate(documents):
        max_num_tokens = max_seq_length - 3
        target_seq_length = max_num_tokens
        if rng.random() < short_seq_prob:
            target_seq_length = rng.randint(2, max_num_tokens)
        current_chunk, current_length, i = [], 0, 0
        while i < len(document):
            segment = document[i]
            current_chunk.append(segment)
            current_length += len(segment)
            if i == len(document) - 1 or current_length >= target_seq_length:
                if current_chunk:
                    a_end = 1
                    if len(current_chunk) >= 2:
                        a_end = rng.randint(1, len(current_chunk) - 1)
                    tokens_a = [t for j in range(a_end) for t in current_chunk[j]]
                    tokens_b = []
                    if len(current_chunk) == 1 and i > 0 and rng.random() < 0.5:
                        # bertkit's one deviation (see _nsp_spans): a lone sentence is, half the
                        # time, IsNext after the sentence before it.
                        is_random_next = False
                        tokens_a, tokens_b = list(document[i - 1]), list(current_chunk[0])
                    elif len(current_chunk) == 1 or rng.random() < 0.5:
                        is_random_next = True
                        target_b_length = target_seq_length - len(tokens_a)
                        for _ in range(10):
                            random_document_index = rng.randint(0, len(documents) - 1)
                            if random_document_index != document_index:
                                break
                        random_document = documents[random_document_index]
                        random_start = rng.randint(0, len(random_document) - 1)
                        for j in range(random_start, len(random_document)):
                            tokens_b.extend(random_document[j])
                            if len(tokens_b) >= target_b_length:
                                break
                        i -= len(current_chunk) - a_end
                    else:
                        is_random_next = False
                        tokens_b = [t for j in range(a_end, len(current_chunk)) for t in current_chunk[j]]
                    while len(tokens_a) + len(tokens_b) > max_num_tokens:
                        trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
                        if rng.random() < 0.5:
                            del trunc[0]
                        else:
                            trunc.pop()
                    out.append((len(tokens_a), len(tokens_b), is_random_next))
                current_chunk, current_length = [], 0
            i += 1
    return out


# _nsp_spans as it was before its rewrite (issue 12), frozen verbatim: the rewrite must give the
# same examples bit for bit. Do not edit or "tidy" it; it is the reference.
def frozen_nsp_spans(corpus, max_seq_length: int, short_seq_prob: float, seed: int, dupe_factor: int):
    rng = np.random.default_rng(seed)
    # [CLS], [SEP], [SEP] take 3 positions.
    max_num_tokens = max_seq_length - 3
    sent_off = corpus.sentence_offsets
    doc_off = np.asarray(corpus.document_offsets)
    num_docs = corpus.num_documents
    a_start, a_end, b_start, b_end = array("q"), array("q"), array("q"), array("q")
    labels = array("b")

    for _ in range(dupe_factor):
        for d in range(num_docs):
            s0, s1 = int(doc_off[d]), int(doc_off[d + 1])
            starts = sent_off[s0 : s1 + 1].tolist()  # token offsets; sentence j = [starts[j], starts[j+1])
            n = s1 - s0
            # Pretraining mostly sees full-length sequences (the model is cheap to train on them
            # and they carry the most context), but fine-tuning inputs are often short, so a
            # fraction of documents aim for a random shorter length to avoid a train/test mismatch.
            # As in the original, the draw is made once per document.
            target = max_num_tokens
            if rng.random() < short_seq_prob:
                target = int(rng.integers(2, max_num_tokens + 1))
            # Segments are whole sentences, so NSP asks about real discourse continuity and the
            # model does not learn to predict the break from a cut mid-sentence.
            chunk_start, current_length, i = 0, 0, 0
            while i < n:
                current_length += starts[i + 1] - starts[i]
                if i == n - 1 or current_length >= target:
                    k = i + 1 - chunk_start  # sentences in the chunk
                    # A is a random-length prefix of the chunk so segment lengths vary.
                    a_sents = 1 if k < 2 else int(rng.integers(1, k))
                    pa0, pa1 = starts[chunk_start], starts[chunk_start + a_sents]
                    if k == 1 and i > 0 and rng.random() < 0.5:
                        # A lone sentence (a long one, or a document's tail left by a put-back)
                        # has no continuation inside its chunk, and the original then always
                        # makes it NotNext: on corpora of short documents that pushes IsNext far
                        # below one half (38% on the default corpus). Deviation from the
                        # original: half the time it is B after the sentence before it as A, a
                        # real continuation, so IsNext stays at ~50%.
                        is_random = 0
                        pa0, pa1, pb0, pb1 = starts[i - 1], starts[i], starts[i], starts[i + 1]
                    elif k == 1 or rng.random() < 0.5:
                        is_random = 1
                        target_b = target - (pa1 - pa0)
                        # Never the same document: a "random" B from A's own document would often
                        # be a true continuation and teach the model a wrong label.
                        other = int(rng.integers(0, num_docs - 1))
                        other += other >= d
                        r0, r1 = int(doc_off[other]), int(doc_off[other + 1])
                        j = int(rng.integers(r0, r1))
                        pb0 = pb1 = int(sent_off[j])
                        while j < r1:
                            pb1 = int(sent_off[j + 1])
                            j += 1
                            if pb1 - pb0 >= target_b:
                                break
                        # The chunk's sentences not used by A are "put back": the next chunk
                        # starts right after A, so no text of the document is wasted.
                        i -= k - a_sents
                    else:
                        is_random = 0
                        pb0, pb1 = pa1, starts[i + 1]
                    # Truncate the longer segment, from the front or the back at random: always
                    # cutting the end would bias which words sit next to [SEP].
                    cut_a, cut_b = _truncation_counts(pa1 - pa0, pb1 - pb0, max_num_tokens)
                    front_a = int(rng.binomial(cut_a, 0.5)) if cut_a else 0
                    front_b = int(rng.binomial(cut_b, 0.5)) if cut_b else 0
                    a_start.append(pa0 + front_a)
                    a_end.append(pa1 - (cut_a - front_a))
                    b_start.append(pb0 + front_b)
                    b_end.append(pb1 - (cut_b - front_b))
                    labels.append(is_random)
                    chunk_start, current_length = i + 1, 0
                i += 1
    spans = np.stack([np.frombuffer(a, dtype=np.int64) for a in (a_start, a_end, b_start, b_end)], axis=1)
    return spans.reshape(-1, 4), np.frombuffer(labels, dtype=np.int8).copy()


class OffsetsCorpus:
    """The part of ShardIndex that _nsp_spans reads, built from sentence lengths (no files)."""

    def __init__(self, documents):
        lengths = [n for doc in documents for n in doc]
        self.sentence_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.document_offsets = np.concatenate([[0], np.cumsum([len(doc) for doc in documents])]).astype(np.int64)
        self.num_documents = len(documents)

    def document_sentences(self, d):
        return range(int(self.document_offsets[d]), int(self.document_offsets[d + 1]))


def test_nsp_rewrite_matches_the_frozen_original():
    rng = random.Random(7)
    checked = 0
    for trial in range(300):
        max_sents = rng.choice([1, 3, 12, 40])
        max_len = rng.choice([1, 5, 20, 80])
        documents = [[rng.randint(1, max_len) for _ in range(rng.randint(1, max_sents))]
                     for _ in range(rng.randint(2, 12))]
        corpus = OffsetsCorpus(documents)
        max_seq_length = rng.choice([5, 8, 16, 32, 128])
        short_seq_prob = rng.choice([0.0, 0.1, 0.5, 1.0])
        seed, dupe = rng.randint(0, 10_000), rng.randint(1, 3)
        want_spans, want_labels = frozen_nsp_spans(corpus, max_seq_length, short_seq_prob, seed, dupe)
        spans, labels = _nsp_spans(corpus, max_seq_length, short_seq_prob, seed, dupe)
        assert spans.dtype == want_spans.dtype and labels.dtype == want_labels.dtype, trial
        assert np.array_equal(spans, want_spans) and np.array_equal(labels, want_labels), trial
        checked += len(labels)
    assert checked > 5000  # enough examples that every branch (put-back, lone sentence, cuts) ran


def test_nsp_rewrite_matches_the_frozen_original_on_shards(ident):
    corpus, _, _ = ident
    for max_len, short_prob, seed in [(32, 0.1, 0), (64, 0.5, 3), (9, 0.0, 1)]:
        want = frozen_nsp_spans(corpus, max_len, short_prob, seed, 4)
        got = _nsp_spans(corpus, max_len, short_prob, seed, 4)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@pytest.mark.parametrize("max_len, short_prob", [(32, 0.1), (64, 0.5)])
def test_nsp_matches_the_original_algorithm(ident, max_len, short_prob):
    corpus, _, truth = ident
    docs = [[[0] * n for n in lengths] for lengths in truth]
    rng = random.Random(0)
    # Many passes: the short-target draw is per document, so 40 documents vary a lot per pass.
    ref = [x for _ in range(150) for x in reference_instances(docs, max_len, short_prob, rng)]
    ours = build_examples(corpus, max_len, short_seq_prob=short_prob, seed=0, dupe_factor=150)
    spans = ours.spans
    len_a, len_b = spans[:, 1] - spans[:, 0], spans[:, 3] - spans[:, 2]
    ref_a, ref_b, ref_random = (np.array(v, dtype=float) for v in zip(*ref))
    # Same distribution (different random streams): examples per pass, NotNext rate, lengths.
    assert abs(len(ours) / len(ref) - 1) < 0.04
    assert abs(ours.next_sentence_labels.mean() - ref_random.mean()) < 0.02
    assert abs(len_a.mean() / ref_a.mean() - 1) < 0.03
    assert abs(len_b.mean() / ref_b.mean() - 1) < 0.03
    assert (len_a >= 1).all() and (len_b >= 1).all() and (len_a + len_b <= max_len - 3).all()


def test_nsp_half_is_next_on_long_documents(tmp_path):
    path, tok, _ = identity_corpus(tmp_path, n_docs=30, min_sents=60, max_sents=80, max_len=6)
    corpus = prepare_corpus(path, tok, out_dir=tmp_path / "o", progress=False)
    ds = build_examples(corpus, 64, seed=0, dupe_factor=8)
    assert len(ds) > 1000
    # B is the real continuation half of the time.
    assert abs((ds.next_sentence_labels == 0).mean() - 0.5) < 0.03


def test_nsp_short_seq_prob_and_determinism(ident):
    corpus, _, _ = ident
    long_only = build_examples(corpus, 64, short_seq_prob=0.0, seed=1, dupe_factor=3)
    mostly_short = build_examples(corpus, 64, short_seq_prob=0.9, seed=1, dupe_factor=3)
    assert np.median(mostly_short.lengths) < np.median(long_only.lengths) - 10
    assert len(mostly_short) > len(long_only)
    again = build_examples(corpus, 64, short_seq_prob=0.9, seed=1, dupe_factor=3)
    assert np.array_equal(again.spans, mostly_short.spans)
    assert np.array_equal(again.next_sentence_labels, mostly_short.next_sentence_labels)
    other = build_examples(corpus, 64, short_seq_prob=0.9, seed=2, dupe_factor=3)
    assert not np.array_equal(other.spans[: len(again)], again.spans[: len(other)])
    assert [len(mostly_short[i]["input_ids"]) for i in range(50)] == mostly_short.lengths[:50].tolist()


def test_packing_without_nsp(ident):
    corpus, tok, truth = ident
    max_len = 40
    ds = build_examples(corpus, max_len, nsp=False)
    assert not ds.nsp and ds.next_sentence_labels is None
    stream = []
    for i in range(len(ds)):
        item = ds[i]
        ids = item["input_ids"]
        assert set(item) == {"input_ids", "token_type_ids"} and not item["token_type_ids"].any()
        assert len(ids) <= max_len and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        body = parse_ident(tok, ids[1:-1])
        for j, tag in enumerate(body):
            if tag is None:  # an inner [SEP] sits exactly at a document change
                assert 0 < j < len(body) - 1 and body[j - 1][0] + 1 == body[j + 1][0]
            else:
                if j > 0 and body[j - 1] is not None and tag[0] != body[j - 1][0]:
                    raise AssertionError("document change without [SEP]")
                stream.append(tag)
    # Round trip: the packed items, in order, are the whole corpus.
    expected = [(d, s) for d, lengths in enumerate(truth) for s, n in enumerate(lengths) for _ in range(n)]
    assert stream == expected
    # Full: each item (but the last) could not take the next sentence.
    lengths = ds.lengths
    assert [len(ds[i]["input_ids"]) for i in range(len(ds))] == lengths.tolist()
    assert lengths.mean() > 0.85 * max_len
    spans = ds.spans
    sent_len = dict(((d, s), n) for d, ls in enumerate(truth) for s, n in enumerate(ls))
    for i in range(len(ds) - 1):
        nxt = parse_ident(tok, ds[i + 1]["input_ids"][1:2])[0]
        extra = sent_len[nxt] + (1 if nxt[1] == 0 else 0)
        if spans[i + 1][0] == spans[i][1]:  # the next item starts at a sentence we could have taken
            assert lengths[i] + extra > max_len


def test_packing_cuts_overlong_sentences(tmp_path):
    path = write(tmp_path / "long.txt", " ".join(["w"] * 25) + "\nx\n\nx\n")
    tok = Tokenizer.from_vocab(SPECIALS + ["w", "x"])
    corpus = prepare_corpus(path, tok, out_dir=tmp_path / "o", progress=False)
    ds = build_examples(corpus, 10, nsp=False)
    assert ds.lengths.tolist() == [10, 10, 10, 6]  # 8 + 8 + 8 + (w x [SEP] x)
    w, x, cls, sep = tok.vocab["w"], tok.vocab["x"], tok.cls_token_id, tok.sep_token_id
    assert ds[3]["input_ids"].tolist() == [cls, w, x, sep, x, sep]


def test_example_errors(ident, tmp_path):
    corpus, tok, _ = ident
    one = prepare_corpus(write(tmp_path / "one.txt", "d0s0\nd0s1\n"), tok, out_dir=tmp_path / "one", progress=False)
    with pytest.raises(ValueError, match="at least 2 documents"):
        build_examples(one, 16)
    with pytest.raises(ValueError, match="max_seq_length must be >= 5"):
        build_examples(corpus, 4)
    with pytest.raises(ValueError, match="short_seq_prob"):
        build_examples(corpus, 16, short_seq_prob=1.5)
    assert isinstance(build_examples(one, 16, nsp=False), PretrainingDataset)


# ------------------------------------------------------------------------------------ masking


@pytest.fixture(scope="module")
def mask_tok():
    words = [f"w{i}" for i in range(60)] + [f"##p{i}" for i in range(20)]
    return Tokenizer.from_vocab(SPECIALS + words)


def random_items(tok, n, rng, *, max_len=100, with_unk=True, pieces=True):
    """Items like [CLS] ... [SEP] ... [SEP], variable length, with words of 1-3 pieces."""
    word_ids = [tok.vocab[f"w{i}"] for i in range(60)]
    piece_ids = [tok.vocab[f"##p{i}"] for i in range(20)]
    items = []
    for _ in range(n):
        length = rng.randint(8, max_len)
        ids = [tok.cls_token_id]
        while len(ids) < length - 1:
            ids.append(rng.choice(word_ids) if not with_unk or rng.random() > 0.05 else tok.unk_token_id)
            if pieces:
                ids.extend(rng.choice(piece_ids) for _ in range(rng.choice([0, 0, 1, 2])))
        ids = ids[: length - 1]
        ids.insert(len(ids) // 2, tok.sep_token_id)
        ids.append(tok.sep_token_id)
        items.append({"input_ids": ids, "token_type_ids": [0] * len(ids), "next_sentence_label": rng.randint(0, 1)})
    return items


def test_masking_statistics(mask_tok):
    tok = mask_tok
    items = random_items(tok, 600, random.Random(0))
    collate = MlmCollator(tok, mask_prob=0.15, generator=torch.Generator().manual_seed(0))
    batch = collate(items)
    ids, labels, att = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert all(v.dtype == torch.long for v in batch.values())
    assert batch["next_sentence_label"].tolist() == [it["next_sentence_label"] for it in items]
    specials = {tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id}
    original = torch.full_like(ids, tok.pad_token_id)
    for b, it in enumerate(items):
        original[b, : len(it["input_ids"])] = torch.tensor(it["input_ids"])
        assert att[b].tolist() == [1] * len(it["input_ids"]) + [0] * (ids.shape[1] - len(it["input_ids"]))
        n_cand = sum(t not in specials for t in it["input_ids"])  # [UNK] is a candidate
        assert int((labels[b] != -100).sum()) == max(1, round(0.15 * n_cand))
    chosen = labels != -100
    # Labels: the original id at chosen positions, -100 everywhere else.
    assert torch.equal(labels[chosen], original[chosen])
    assert not any(t in specials for t in original[chosen].tolist())
    assert not chosen[att == 0].any()
    assert torch.equal(ids[~chosen], original[~chosen])  # nothing else changes
    # 80 / 10 / 10 among ~4700 chosen positions (binomial sd <= 0.006).
    n = int(chosen.sum())
    assert n > 4000
    to_mask = (ids[chosen] == tok.mask_token_id).float().mean().item()
    kept = (ids[chosen] == original[chosen]).float().mean().item()
    randomised = 1 - to_mask - kept
    assert abs(to_mask - 0.8) < 0.03 and abs(randomised - 0.1) < 0.025 and abs(kept - 0.1) < 0.025
    replaced = ids[chosen][(ids[chosen] != tok.mask_token_id) & (ids[chosen] != original[chosen])]
    assert not any(t in set(tok.all_special_ids) for t in replaced.tolist())
    assert (original[chosen] == tok.unk_token_id).any()  # [UNK] is masked, as in BERT


def test_masking_is_dynamic_and_follows_the_rng(mask_tok):
    items = random_items(mask_tok, 16, random.Random(1))
    collate = MlmCollator(mask_tok)
    torch.manual_seed(123)
    first, second = collate(items), collate(items)
    assert not torch.equal(first["labels"], second["labels"])  # fresh masks on every call
    torch.manual_seed(123)
    replay = collate(items)  # restoring the global RNG state replays the masks exactly
    assert torch.equal(replay["labels"], first["labels"]) and torch.equal(replay["input_ids"], first["input_ids"])


def test_whole_word_masking_never_splits_a_word(mask_tok):
    tok = mask_tok
    items = random_items(tok, 300, random.Random(2))
    collate = MlmCollator(tok, whole_word_mask=True, generator=torch.Generator().manual_seed(5))
    batch = collate(items)
    chosen = batch["labels"] != -100
    specials = {tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id}
    total_chosen = total_cand = 0
    for b, it in enumerate(items):
        ids = it["input_ids"]
        # Reference segmentation into words: a token and its following ## pieces.
        words, current = [], None
        for pos, t in enumerate(ids):
            if t in specials:
                current = None
                continue
            is_piece = tok.convert_ids_to_tokens(t).startswith("##")
            if is_piece and current is not None:
                current.append(pos)
            else:
                current = [pos]
                words.append(current)
        row = chosen[b].tolist()
        for word in words:
            assert len({row[p] for p in word}) == 1, (b, word)  # all pieces or none
        n_cand = sum(len(w) for w in words)
        n = sum(row)
        target = max(1, round(0.15 * n_cand))
        assert n >= 1 and (n <= target or sum(1 for w in words if row[w[0]]) == 1)
        total_chosen, total_cand = total_chosen + n, total_cand + n_cand
    assert chosen.any(1).all()
    assert 0.12 < total_chosen / total_cand <= 0.15


def test_masking_options_and_errors(mask_tok):
    tok = mask_tok
    items = random_items(tok, 64, random.Random(3))
    batch = MlmCollator(tok, mask_unk=False, pad_to_multiple_of=8, max_predictions=3)(items)
    assert batch["input_ids"].shape[1] % 8 == 0
    chosen = batch["labels"] != -100
    assert (chosen.sum(1) <= 3).all()
    assert not (batch["labels"] == tok.unk_token_id).any()
    only_special = [{"input_ids": [tok.cls_token_id, tok.sep_token_id]}]
    out = MlmCollator(tok)(only_special)
    assert (out["labels"] == -100).all() and "next_sentence_label" not in out
    assert out["token_type_ids"].tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="mask_prob"):
        MlmCollator(tok, mask_prob=1.5)
    with pytest.raises(ValueError, match=r"id 999, outside the tokenizer's vocabulary \[0, 85\)"):
        MlmCollator(tok)([{"input_ids": [2, 999, 3]}])
    with pytest.raises(ValueError, match="empty list"):
        MlmCollator(tok)([])


def test_collator_on_dataset_items(ident):
    corpus, tok, _ = ident
    ds = build_examples(corpus, 24, seed=0)
    collate = MlmCollator(tok, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["token_type_ids"].shape
    assert batch["input_ids"].shape[0] == 8 and batch["input_ids"].shape[1] <= 24
    assert batch["next_sentence_label"].shape == (8,)
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([len(ds[i]["input_ids"]) for i in range(8)]))


def test_dataset_pickles_by_path(ident):
    # DataLoader workers started with spawn receive a pickled dataset; the shard index travels
    # as its path and reopens its memmaps.
    corpus, _, _ = ident
    ds = build_examples(corpus, 24, seed=0)
    blob = pickle.dumps(ds)
    assert len(blob) < 100 + 40 * len(ds)  # spans and labels, not the token index
    copy = pickle.loads(blob)
    assert isinstance(copy.corpus, ShardIndex) and copy.corpus.directory == corpus.directory
    for i in (0, 7, len(ds) - 1):
        assert all(torch.equal(copy[i][k], ds[i][k]) for k in ds[i])
