"""Matching: the sentence-transformers folder layout (pooling read and written, vectors equal to
sentence-transformers' in both directions), the ranking metrics against a hand computation and
sentence-transformers' InformationRetrievalEvaluator, the retrieval (bi-encoder) and rerank
(cross-encoder) tasks fine-tuned on tiny models, the docstring retrieval set, bad input."""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
import torch

from bertkit import Tokenizer
from bertkit.data.corpus import Document
from bertkit.data.retrieval import docstring_retrieval_set, load_rerank, load_retrieval
from bertkit.inference import embed, load_sentence_encoder
from bertkit.modeling.pooling import Pooling, pool, read_pooling, write_pooling
from bertkit.tasks.evaluate import evaluate_folder
from bertkit.tasks.folder import folder_task
from bertkit.tasks.metrics import grouped_ranking_metrics, ranking_metrics
from bertkit.tasks.predict import predict_folder
from bertkit.tasks.retrieval import BertForSentenceEmbedding
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from tests.test_finetune import COLORS, FILLER, PEOPLE, tiny_model_folder, training, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

st = pytest.importorskip("sentence_transformers")


def cosines(a, b) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(torch.as_tensor(a), torch.as_tensor(b), dim=-1)


# ============================================================================ metrics


def test_ranking_metrics_by_hand():
    # q1: relevant {a, c}; ranked c b a ... -> recall@1 1/2, recall@5 1, MRR 1,
    #     DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3).
    # q2: relevant {z} at rank 7 -> recall@1 0, recall@5 0, recall@10 1, MRR 1/7,
    #     nDCG = (1/log2(8)) / 1 = 1/3.
    # q3: no relevant document -> left out.
    rankings = [["c", "b", "a", "d"], ["r1", "r2", "r3", "r4", "r5", "r6", "z", "r8"], ["x"]]
    relevance = [{"a": 1, "c": 1}, {"z": 1}, {}]
    m = ranking_metrics(rankings, relevance)
    assert m["queries"] == 2
    assert m["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert m["recall@5"] == pytest.approx((1 + 0) / 2)
    assert m["recall@10"] == pytest.approx((1 + 1) / 2)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 7) / 2)
    assert m["ndcg@10"] == pytest.approx((1.5 / (1 + 1 / math.log2(3)) + 1 / 3) / 2)
    # A relevant document past rank 10 counts for nothing in MRR@10 and nDCG@10.
    late = ranking_metrics([[f"d{i}" for i in range(12)]], [{"d11": 1}])
    assert late["mrr@10"] == 0 and late["ndcg@10"] == 0 and late["recall@10"] == 0
    # Graded relevance: gains are the grades; ideal order 2 then 1.
    graded = grouped_ranking_metrics(["q", "q", "q"], [0.9, 0.5, 0.1], [1.0, 2.0, 0.0])
    assert graded["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert graded["mrr@10"] == 1.0
    with pytest.raises(ValueError, match="no query has a relevant document"):
        ranking_metrics([["a"]], [{"a": 0}])


# ============================================================================ pooling, layout


def test_pool_modes_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, -4.0], [100.0, 100.0]]])   # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, Pooling("mean")).tolist() == [[2.0, -1.0]]
    assert pool(hidden, mask, Pooling("cls")).tolist() == [[1.0, 2.0]]
    assert pool(hidden, mask, Pooling("max")).tolist() == [[3.0, 2.0]]
    unit = pool(hidden, mask, Pooling("max", normalize=True))
    assert unit.tolist()[0] == pytest.approx([3 / 13 ** 0.5, 2 / 13 ** 0.5])


def test_read_pooling_of_folders_and_bad_files(tmp_path, minilm_folder):
    assert read_pooling(minilm_folder) == Pooling("mean", normalize=True)   # the 2.x keys
    assert read_pooling(tmp_path) == Pooling("mean", normalize=False)       # a plain HF folder
    write_pooling(tmp_path, Pooling("cls"), hidden_size=8, max_seq_length=64)
    assert read_pooling(tmp_path) == Pooling("cls")
    modules = tmp_path / "modules.json"
    modules.write_text("[{\"type\": ", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{modules} is not valid JSON"):
        read_pooling(tmp_path)
    modules.write_text(json.dumps([{"path": "", "type": "x.Transformer"},
                                   {"path": "2_Dense", "type": "x.Dense"}]), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{modules}: module Dense is not supported"):
        read_pooling(tmp_path)
    write_pooling(tmp_path, Pooling("mean"), hidden_size=8, max_seq_length=64)
    config = tmp_path / "1_Pooling" / "config.json"
    config.write_text(json.dumps({"pooling_mode": "weightedmean"}), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{config}: pooling mode 'weightedmean' is not "):
        read_pooling(tmp_path)


def test_minilm_folder_gives_the_vectors_of_sentence_transformers(minilm_folder):
    texts = ["How do I open a file?", "a", "Return the sum of the numbers. " * 80]  # > 256 tokens
    model, tokenizer, pooling = load_sentence_encoder(minilm_folder, device="cpu")
    ours = embed(model, tokenizer, texts, pooling=pooling)
    reference = st.SentenceTransformer(minilm_folder, device="cpu").encode(texts)
    assert cosines(ours, reference).min() >= 0.9999
    assert ours.norm(dim=-1).tolist() == pytest.approx([1.0] * 3)   # the folder's Normalize


@pytest.mark.parametrize("pooling", [Pooling("cls"), Pooling("mean", normalize=True),
                                     Pooling("max")])
def test_a_bertkit_folder_loads_in_sentence_transformers(tmp_path, pooling):
    base = tiny_model_folder(tmp_path / "base")
    model = BertForSentenceEmbedding.from_pretrained(base, verbose=False)
    model.config.extra.update(bertkit_pooling=pooling.mode, bertkit_normalize=pooling.normalize)
    out = tmp_path / "st"
    model.save_pretrained(out)
    Tokenizer.from_pretrained(base).save_pretrained(out)
    texts = ["alice went to paris", "the red film", "bob"]
    enc, tok, read = load_sentence_encoder(str(out), device="cpu")
    assert read == pooling
    ours = embed(enc, tok, texts, pooling=read)
    reference = st.SentenceTransformer(str(out), device="cpu").encode(texts)
    assert cosines(ours, reference).min() >= 0.9999
    if pooling.normalize:
        assert np.linalg.norm(reference, axis=1) == pytest.approx([1.0] * 3)


# ============================================================================ retrieval task


def retrieval_records(n: int, seed: int, negatives: bool = False) -> list[dict]:
    """query "<color> <person>", positive: filler words around the same pair."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        color, person = rng.choice(COLORS[:4]), rng.choice(PEOPLE)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        words[rng.randrange(len(words))] += f" {color} {person}"
        record = {"query": f"{color} {person}", "positive": " ".join(words)}
        if negatives:
            other = rng.choice([c for c in COLORS[:4] if c != color])
            record["negative"] = " ".join(words).replace(color, other)
        records.append(record)
    return records


def test_finetune_retrieval_lowers_the_loss_and_the_folder_loads_in_st(tmp_path):
    base = tiny_model_folder(tmp_path / "base")
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", retrieval_records(n, seed, neg))
             for name, n, seed, neg in (("train", 64, 0, True), ("dev", 24, 1, False))}
    before = evaluate_folder(base, files["dev"], device="cpu", task="retrieval")
    assert {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "eval_loss"} <= set(before)

    # The base folder's pooling (mean) and the default scale: the losses compare.
    cfg = FinetuneConfig(task="retrieval", model=base, train=files["train"], dev=files["dev"],
                         normalize=True)
    out = str(tmp_path / "out")
    result = run_finetuning(cfg, training(out, epochs=6, batch_size=16))
    dev = result.metrics["dev"]
    assert dev["eval_loss"] < before["eval_loss"] and dev["mrr@10"] > before["mrr@10"]
    assert folder_task(out) == "retrieval"
    config = json.loads(open(os.path.join(out, "config.json")).read())
    assert config["architectures"] == ["BertModel"]
    assert (config["bertkit_pooling"], config["bertkit_normalize"], config["bertkit_scale"]) \
        == ("mean", True, 20.0)
    assert evaluate_folder(out, files["dev"], device="cpu")["mrr@10"] == \
        pytest.approx(dev["mrr@10"])

    texts = ["red alice", "the film blue bob was very"]
    predicted = predict_folder(out, texts=texts, device="cpu")
    assert [p["normalized"] for p in predicted] == [True, True]
    reference = st.SentenceTransformer(out, device="cpu").encode(texts)
    assert cosines([p["embedding"] for p in predicted], reference).min() >= 0.9999


def test_zero_shot_minilm_metrics_equal_sentence_transformers_evaluator(tmp_path, minilm_folder):
    pairs = [("How do I read a JSON file?", "json.load reads a JSON document from a file."),
             ("Sort a list in place", "list.sort orders the items of the list in place."),
             ("Current date and time", "datetime.now returns the current local date and time."),
             ("Join path components", "os.path.join joins one or more path segments."),
             ("Random integer in a range", "random.randint returns a random integer N."),
             ("Square root of a number", "math.sqrt returns the square root of x.")]
    negative = "zipfile reads and writes ZIP archives."
    records = [{"query": q, "positive": p} for q, p in pairs]
    records[0]["negative"] = negative
    data = write_jsonl(tmp_path / "dev.jsonl", records)
    ours = evaluate_folder(minilm_folder, data, device="cpu", task="retrieval")

    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator)
    corpus = {f"d{i}": p for i, (_, p) in enumerate(pairs)} | {"neg": negative}
    evaluator = InformationRetrievalEvaluator(
        {f"q{i}": q for i, (q, _) in enumerate(pairs)}, corpus,
        {f"q{i}": {f"d{i}"} for i in range(len(pairs))}, mrr_at_k=[10], ndcg_at_k=[10],
        accuracy_at_k=[1], precision_recall_at_k=[1, 5, 10], map_at_k=[10], name="t",
        show_progress_bar=False)
    reference = evaluator(st.SentenceTransformer(minilm_folder, device="cpu"))
    assert ours["corpus_size"] == len(corpus)
    for name in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"):
        assert ours[name] == pytest.approx(reference[f"t_cosine_{name}"], abs=1e-6), name


# ============================================================================ rerank task


def rerank_records(n: int, seed: int) -> list[dict]:
    """label 1 when the document holds the query's pair, else 0 (another color)."""
    records = []
    for i, record in enumerate(retrieval_records(n, seed, negatives=True)):
        records.append({"query": record["query"], "document": record["positive"], "label": 1})
        records.append({"query": record["query"], "document": record["negative"], "label": 0})
    return records


def test_finetune_rerank_scores_equal_cross_encoder(tmp_path):
    base = tiny_model_folder(tmp_path / "base")
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", rerank_records(n, seed))
             for name, n, seed in (("train", 48, 0), ("dev", 12, 1))}
    out = str(tmp_path / "out")
    result = run_finetuning(FinetuneConfig(task="rerank", model=base, train=files["train"],
                                           dev=files["dev"]), training(out, epochs=2))
    assert {"mrr@10", "ndcg@10", "accuracy", "eval_loss"} <= set(result.metrics["dev"])
    assert folder_task(out) == "rerank"
    queries, documents = ["red alice", "red alice"], ["the red alice film", "a blue alice"]
    scores = [p["score"] for p in predict_folder(out, texts=queries, text_pairs=documents,
                                                 device="cpu")]
    cross = st.CrossEncoder(out, device="cpu")
    reference = cross.predict(list(zip(queries, documents)))
    assert scores == pytest.approx(reference.tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="a rerank model scores pairs"):
        predict_folder(out, texts=queries, device="cpu")


# ============================================================================ data


def test_docstring_retrieval_set_is_deterministic_and_split_by_package(tmp_path):
    sentence = "This helper returns the value of the option that the caller asked for."
    documents = [Document(f"Return item {i} of the {pkg} table. {sentence} " * 2, f"{pkg}.sub",
                          f"{pkg}.f{i}", "function")
                 for i in range(6) for pkg in ("alpha", "beta", "gamma", "delta", "eps", "zeta",
                                               "eta", "theta", "iota", "kappa", "lam", "mu")]
    first = docstring_retrieval_set(tmp_path / "a", documents=documents)
    second = docstring_retrieval_set(tmp_path / "b", documents=documents)
    packages = {}
    for name in ("train", "dev", "test"):
        text = open(first[name], encoding="utf-8").read()
        assert text == open(second[name], encoding="utf-8").read()
        for ex in load_retrieval(first[name]):
            assert ex.query.startswith("Return item ") and sentence in ex.positive
            packages.setdefault(ex.query.split()[5], set()).add(name)
    assert all(len(splits) == 1 for splits in packages.values())
    assert sum(first["counts"].values()) == len(documents)


def test_bad_retrieval_and_rerank_files_name_file_and_line(tmp_path):
    cases = [("missing.jsonl", '{"query": "a b"}\n{"positive": "x"}\n',
              r":1: missing field 'positive' \(fields found: query\)$"),
             ("type.jsonl", '{"query": "a", "positive": "b"}\n{"query": 3, "positive": "b"}\n',
              r":2: field 'query' must be text, found int 3$"),
             ("neg.jsonl", '{"query": "a", "positive": "b", "negative": [1]}\n',
              r":1: field 'negative' must be text, found int 1$"),
             ("empty.jsonl", "\n  \n", r" is empty$"),
             ("cols.tsv", "query\tpositive\nq\tp\textra\n", r":2: expected 2 columns"),
             ("notsv.tsv", "question\tanswer\nq\tp\n", r":2: missing field 'query'")]
    for name, text, message in cases:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=rf"^{path}{message}"):
            load_retrieval(path)
        assert path.read_text(encoding="utf-8") == text
    bad = tmp_path / "rerank.jsonl"
    bad.write_text('{"query": "q", "document": "d", "label": 1}\n'
                   '{"query": "q", "document": "d", "label": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{bad}:2: label 3 is outside \[0, 1\]"):
        load_rerank(bad)
    bad.write_text('{"query": "q", "document": "d", "label": "yes"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{bad}:1: label must be a number in \[0, 1\]"):
        load_rerank(bad)
    good = tmp_path / "ok.tsv"
    good.write_text("query\tpositive\tnegative\nq one\tp one\tn one\n", encoding="utf-8")
    assert [(e.query, e.positive, e.negatives) for e in load_retrieval(good)] == \
        [("q one", "p one", ("n one",))]


def test_evaluate_names_the_task_of_a_folder_that_records_another(tmp_path):
    base = tiny_model_folder(tmp_path / "base")
    with pytest.raises(ValueError, match="is not a fine-tuned task model"):
        folder_task(base)
    assert folder_task(base, task="retrieval") == "retrieval"
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    (tmp_path / "base" / "config.json").write_text(json.dumps({**config, "bertkit_task": "ner"}))
    with pytest.raises(ValueError, match=r"is a ner model \(config.json bertkit_task\), not "
                                         r"retrieval$"):
        folder_task(base, task="retrieval")
