"""bertkit.search (issue 16): index folders built with faiss, searched by cosine.

Checked against independent references: flat search equals a numpy brute-force top-k over
the vectors `bertkit.inference.embed` gives; HNSW finds the exact top-1 for most queries; a
build killed in its second chunk resumes to the same index as an uninterrupted one;
add_documents equals building at once, and a failed add leaves the index byte for byte; an
index refuses another model (same dimension, other weights) and another dimension; bad corpus
lines, bad index folders and bad top_k are one clear line; the cross-encoder rerank orders
hits by the scores `predict_folder` gives the same pairs; the real MiniLM finds the right
document; POST /v1/search answers what SearchIndex.search does, behind the same keys and
limits as the other /v1 routes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil

import numpy as np
import pytest

from _serve_helpers import make_folder
from bertkit.cli import main
from bertkit.inference import embed, load_for_inference
from bertkit.modeling.bert import BertForSequenceClassification, BertModel
from bertkit.outputs import partial_path
from bertkit.search import (SearchIndex, add_documents, build_index, read_corpus,
                            run_index_command, run_search_command)
from bertkit.search.encoder import Encoder
from bertkit.tasks.predict import predict_folder
from conftest import TINY_VOCAB

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

WORDS = [w for w in TINY_VOCAB[5:] if not w.startswith("##")]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


DOCS = sentences(40, seed=0)
QUERIES = sentences(8, seed=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-models")
    return {"enc": make_folder(root / "enc", BertModel),
            # same sizes, other weights: the fingerprint, not the dimension, tells them apart
            "other": make_folder(root / "other", BertModel, seed=5),
            "wide": make_folder(root / "wide", BertModel, hidden_size=48),
            # a cross-encoder: one output (id2label of one entry), bertkit_task rerank
            "rerank": make_folder(root / "rerank", BertForSequenceClassification, "rerank",
                                  ["LABEL_0"], seed=3),
            "clf": make_folder(root / "clf", BertForSequenceClassification, "classification",
                               ["neg", "pos"], seed=4)}


def write_lines(path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def flat_index(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("flat")
    corpus = write_lines(root / "docs.txt", DOCS)
    build_index(models["enc"], corpus, str(root / "index"), chunk_size=16, progress=False)
    return str(root / "index")


def reference_vectors(folder: str, texts: list[str]) -> np.ndarray:
    model, tokenizer = load_for_inference(folder, BertModel, device="cpu")
    return embed(model, tokenizer, texts, normalize=True).numpy()


def folder_bytes(folder) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(folder))}


def test_flat_search_equals_numpy_brute_force(models, flat_index):
    index = SearchIndex.load(flat_index)
    docs = reference_vectors(models["enc"], DOCS)
    queries = reference_vectors(models["enc"], QUERIES)
    stored = index.index.reconstruct_n(0, len(DOCS))
    np.testing.assert_allclose(stored, docs, atol=1e-5)
    scores = queries @ docs.T                                             # (Q, N) cosines
    results = index.search(QUERIES, top_k=5)
    for row, hits in zip(scores, results):
        best = np.argsort(-row, kind="stable")[:5]
        assert [h["id"] for h in hits] == [str(i) for i in best]
        assert [h["text"] for h in hits] == [DOCS[i] for i in best]
        assert [h["score"] for h in hits] == pytest.approx(row[best].tolist(), abs=1e-5)
        assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    # one string is one query; top_k over the count gives every document once
    (everything,) = index.search(QUERIES[0], top_k=100)
    assert sorted(int(h["id"]) for h in everything) == list(range(len(DOCS)))
    info = json.loads((open(os.path.join(flat_index, "index.json"))).read())
    assert (info["kind"], info["dimension"], info["count"], info["normalize"]) == ("flat", 32, 40,
                                                                                   True)
    assert info["model"]["path"] == os.path.realpath(models["enc"])


def test_hnsw_finds_the_exact_top1_for_most_queries(models, tmp_path):
    docs = sentences(300, seed=7)
    corpus = write_lines(tmp_path / "docs.txt", docs)
    build_index(models["enc"], corpus, str(tmp_path / "hnsw"), hnsw=True, progress=False)
    hnsw = SearchIndex.load(str(tmp_path / "hnsw"))
    assert hnsw.info.kind == "hnsw" and type(hnsw.index).__name__ == "IndexHNSWFlat"
    queries = sentences(40, seed=8)
    exact = (reference_vectors(models["enc"], queries)
             @ reference_vectors(models["enc"], docs).T).argmax(1)
    found = [hits[0]["id"] for hits in hnsw.search(queries, top_k=1)]
    agree = np.mean([f == str(e) for f, e in zip(found, exact)])
    assert agree >= 0.9, agree
    assert hnsw.index.hnsw.efSearch == 128  # the default the index was built with
    assert SearchIndex.load(str(tmp_path / "hnsw"), ef_search=400).index.hnsw.efSearch == 400


def test_a_killed_build_resumes_from_its_last_finished_chunk(models, tmp_path, monkeypatch):
    corpus = write_lines(tmp_path / "docs.txt", DOCS)
    build_index(models["enc"], corpus, str(tmp_path / "whole"), chunk_size=16, progress=False)
    encode, calls, kill = Encoder.encode, [], [True]

    def killed_in_chunk_2(self, texts, batch_size=32):
        calls.append(len(texts))
        if len(calls) == 2 and kill.pop():
            encode(self, texts[:5], batch_size)  # half-way through the chunk's work
            raise KeyboardInterrupt("killed")
        return encode(self, texts, batch_size)

    monkeypatch.setattr(Encoder, "encode", killed_in_chunk_2)
    out = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        build_index(models["enc"], corpus, str(out), chunk_size=16, progress=False)
    staging = partial_path(out)
    assert not out.exists()
    assert os.listdir(staging / "checkpoints") == ["chunk-000000.npy"]
    with pytest.raises(ValueError, match="holds an unfinished run with checkpoints: continue "
                                         "it with --resume"):
        build_index(models["enc"], corpus, str(out), chunk_size=16, progress=False)
    with pytest.raises(ValueError, match="its chunk size differ"):
        build_index(models["enc"], corpus, str(out), chunk_size=8, resume=True, progress=False)
    calls.clear()
    kill.append(False)
    summary = build_index(models["enc"], corpus, str(out), chunk_size=16, resume=str(staging),
                          progress=False)
    assert calls == [16, 8] and summary.resumed_chunks == 1  # only chunks 2 and 3 embedded
    assert not staging.exists()
    assert folder_bytes(out) == folder_bytes(tmp_path / "whole")


def test_add_documents_equals_building_at_once(models, tmp_path, monkeypatch):
    more = [{"id": "extra-1", "text": "the naive café"}, {"text": "Hello World"}]
    first = write_lines(tmp_path / "first.txt", DOCS[:25])
    second = write_lines(tmp_path / "more.jsonl", [json.dumps(r) for r in more])
    both = write_lines(tmp_path / "both.jsonl", [json.dumps({"text": t}) for t in DOCS[:25]]
                       + [json.dumps(r) for r in more])
    build_index(models["enc"], both, str(tmp_path / "once"), progress=False)
    grown = tmp_path / "grown"
    build_index(models["enc"], first, str(grown), progress=False)
    before = folder_bytes(grown)

    def broken(self, texts, batch_size=32):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:  # a failed add leaves the index as it was
        patch.setattr(Encoder, "encode", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            add_documents(str(grown), second, progress=False)
    assert folder_bytes(grown) == before and not partial_path(grown).exists()
    summary = add_documents(str(grown), second, progress=False)
    assert (summary.count, summary.added) == (27, 2)
    once, added = SearchIndex.load(str(tmp_path / "once")), SearchIndex.load(str(grown))
    assert added.documents == once.documents
    assert [d["id"] for d in added.documents[-2:]] == ["extra-1", "26"]
    np.testing.assert_allclose(added.index.reconstruct_n(0, 27), once.index.reconstruct_n(0, 27),
                               atol=1e-6)
    assert added.search(QUERIES, 5) == once.search(QUERIES, 5)
    with pytest.raises(ValueError, match=r"more\.jsonl:1: id 'extra-1' is already in the index"):
        add_documents(str(grown), second, progress=False)


def test_another_model_or_dimension_is_refused(models, flat_index, tmp_path):
    with pytest.raises(ValueError, match=r"was built with another model than .*other "
                                         r"\(fingerprint [0-9a-f]{12}, this folder"):
        SearchIndex.load(flat_index, model_dir=models["other"])
    with pytest.raises(ValueError, match="holds 32-dimensional vectors and model .*wide makes "
                                         "48-dimensional ones"):
        SearchIndex.load(flat_index, model_dir=models["wide"])
    copy = shutil.copytree(models["enc"], tmp_path / "copy")  # the same model elsewhere: fine
    assert SearchIndex.load(flat_index, model_dir=str(copy)).search(QUERIES[0], 3) \
        == SearchIndex.load(flat_index).search(QUERIES[0], 3)
    index_copy = shutil.copytree(flat_index, tmp_path / "index")
    before = folder_bytes(index_copy)
    corpus = write_lines(tmp_path / "more.txt", ["hello world"])
    with pytest.raises(ValueError, match="was built with another model"):
        add_documents(str(index_copy), corpus, model_dir=models["other"], progress=False)
    assert folder_bytes(index_copy) == before


@pytest.mark.parametrize("name, content, message", [
    ("gap.txt", b"hello world\nthe cafe\n   \nmore\n", r"gap\.txt:3: empty line"),
    ("latin1.txt", b"hello\ncaf\xe9 au lait\n", r"latin1\.txt:2: not UTF-8 text \(byte 0xe9\)"),
    ("notext.jsonl", b'{"text": "a"}\n{"id": 2, "body": "b"}\n',
     r"notext\.jsonl:2: field 'text' must be a non-empty string \(fields found: id, body\)"),
    ("twice.jsonl", b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n',
     r"twice\.jsonl:2: id 'a' was already used on line 1"),
    ("broken.jsonl", b'{"text": "x"}\n{"text": \n', r"broken\.jsonl:2: malformed JSON line"),
    ("empty.txt", b"", r"empty\.txt holds no documents"),
    ("docs.csv", b"text\nhello\n", r"docs\.csv: unknown corpus format '\.csv'"),
])
def test_bad_corpus_lines_name_the_file_and_line(models, tmp_path, name, content, message):
    corpus = tmp_path / name
    corpus.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        build_index(models["enc"], str(corpus), str(tmp_path / "index"), progress=False)
    assert corpus.read_bytes() == content
    assert not (tmp_path / "index").exists() and not partial_path(tmp_path / "index").exists()


def test_bad_index_folders_and_top_k(flat_index, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SearchIndex.load(str(tmp_path / "nowhere"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match=r"plain is not a bertkit index: it has no index\.json"):
        SearchIndex.load(str(tmp_path / "plain"))
    broken = shutil.copytree(flat_index, tmp_path / "broken")
    (broken / "index.json").write_text('{"format": "bertkit-index", ', encoding="utf-8")
    with pytest.raises(ValueError, match=r"index\.json is not valid JSON"):
        SearchIndex.load(str(broken))
    good = json.loads(open(os.path.join(flat_index, "index.json")).read())
    (broken / "index.json").write_text(json.dumps({**good, "dimension": "32"}))
    with pytest.raises(ValueError, match=r"index\.json: field 'dimension' must be a positive "
                                         r"integer, got '32'"):
        SearchIndex.load(str(broken))
    (broken / "index.json").write_text(json.dumps({**good, "count": 41}))
    with pytest.raises(ValueError, match="is inconsistent: index.json says 41 vectors"):
        SearchIndex.load(str(broken))
    index = SearchIndex.load(flat_index)
    for top_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
            index.search("hello", top_k=top_k)
    with pytest.raises(ValueError, match="query 1 is empty"):
        index.search(["hello", "  "])


def test_rerank_orders_hits_by_the_cross_encoder_score(models, flat_index):
    index = SearchIndex.load(flat_index, rerank_model=models["rerank"])
    plain = SearchIndex.load(flat_index).search(QUERIES[:3], top_k=6)
    reranked = index.search(QUERIES[:3], top_k=4, candidates=6)
    for query, before, after in zip(QUERIES, plain, reranked):
        scores = [p["score"] for p in predict_folder(models["rerank"], texts=[query] * 6,
                                                     text_pairs=[h["text"] for h in before])]
        order = sorted(range(6), key=lambda i: -scores[i])[:4]
        assert [h["id"] for h in after] == [before[i]["id"] for i in order]
        assert [h["score"] for h in after] == pytest.approx([scores[i] for i in order], abs=1e-5)
        assert [h["retrieval_score"] for h in after] == [before[i]["score"] for i in order]
        assert [h["rank"] for h in after] == [1, 2, 3, 4]
    assert index.search(QUERIES[:3], top_k=6, rerank=False) == plain
    assert index.search(QUERIES[0], top_k=6)[0] != plain[0]  # the cross-encoder reordered
    with pytest.raises(ValueError, match="is a classification folder; reranking needs a "
                                         "cross-encoder"):
        SearchIndex.load(flat_index, rerank_model=models["clf"])


def test_minilm_finds_the_document_that_answers(minilm_folder, tmp_path):
    docs = ["To read a text file, open it with open(path) and call read().",
            "The weather in the mountains changes quickly in spring.",
            "Sort a list in place with list.sort(), or get a new one with sorted().",
            "A dictionary maps keys to values; look a key up with d[key].",
            "Photosynthesis turns sunlight, water and carbon dioxide into sugar."]
    corpus = write_lines(tmp_path / "docs.txt", docs)
    out = str(tmp_path / "index")
    line = run_index_command(minilm_folder, corpus, out, progress=False)
    assert line.startswith("indexed 5 document(s): ") and "384-dimensional" in line
    shown = run_search_command(out, ["how do I sort a list?", "what do plants do with light?"],
                               top_k=2)
    lines = shown.splitlines()
    assert lines[0] == "query: how do I sort a list?" and "[2]  Sort a list" in lines[1]
    assert lines[4] == "query: what do plants do with light?" and "[4]  Photosynthesis" in lines[5]
    as_json = [json.loads(x) for x in run_search_command(out, ["open a file"], top_k=1,
                                                         as_json=True).splitlines()]
    assert as_json[0]["query"] == "open a file" and as_json[0]["results"][0]["id"] == "0"


def test_corpus_ids(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", ['{"id": 7, "text": "a"}', '{"text": "b"}'])
    assert [(d.id, d.text, d.line) for d in read_corpus(path, start_id=10)] == [
        ("7", "a", 1), ("11", "b", 2)]


# ---------------------------------------------------------------------------- serving


def test_search_route_answers_like_the_library(models, flat_index, tmp_path):
    from fastapi.testclient import TestClient

    from bertkit.serve import ServeConfig, create_app
    expected = SearchIndex.load(flat_index).search(QUERIES[:2], top_k=3)
    config = ServeConfig(model=models["clf"], index=flat_index, max_texts=4, max_chars=200)
    with TestClient(create_app(config), base_url="http://localhost") as client:
        info = client.get("/v1/info").json()
        assert "search" in info["routes"] and info["index"] == {
            "name": "index", "documents": 40, "kind": "flat", "dimension": 32, "model": "enc"}
        r = client.post("/v1/search", json={"query": QUERIES[0], "top_k": 3})
        assert r.status_code == 200 and r.json() == {"results": expected[0]}
        r = client.post("/v1/search", json={"queries": QUERIES[:2], "top_k": 3})
        assert r.json() == {"results": expected}
        assert len(client.post("/v1/search", json={"query": "hello"}).json()["results"]) == 10
        for body, status, code in [({"query": "x", "top_k": 0}, 422, "invalid_input"),
                                   ({"query": "x", "top_k": 51}, 422, "invalid_input"),
                                   ({"query": "x", "queries": ["y"]}, 422, "invalid_input"),
                                   ({"top_k": 3}, 422, "missing_field"),
                                   ({"query": " "}, 422, "empty_text"),
                                   ({"queries": ["a"] * 5}, 413, "too_many_texts"),
                                   ({"query": "a" * 201}, 413, "text_too_long"),
                                   ({"query": "x", "k": 1}, 422, "unknown_field")]:
            r = client.post("/v1/search", json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), body
        assert client.post("/v1/predict", json={"texts": ["hello"]}).status_code == 200
        page = client.get("/").text
        assert 'id="search-box"' in page and '"search"' in page
        assert 'bertkit_inputs_total{route="search"} 4.0' in client.get("/metrics").text


def test_search_route_without_an_index_and_with_keys(models, flat_index, monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    from bertkit.serve import ServeConfig, create_app
    with TestClient(create_app(ServeConfig(model=models["clf"])),
                    base_url="http://localhost") as client:
        r = client.post("/v1/search", json={"query": "hello"})
        assert r.status_code == 404 and r.json()["error"] == {
            "code": "no_index", "message": "no search index is loaded: start the server with "
            "--index INDEX (a folder from `bertkit index`)"}
        assert "search" not in client.get("/v1/info").json()["routes"]
    monkeypatch.setenv("BERTKIT_API_KEYS", "search-key-123456")
    with TestClient(create_app(ServeConfig(model=models["enc"], index=flat_index)),
                    base_url="http://localhost") as client:
        assert client.post("/v1/search", json={"query": "hello"}).status_code == 401
        r = client.post("/v1/search", json={"query": "hello", "top_k": 2},
                        headers={"Authorization": "Bearer search-key-123456"})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        page_data = client.get("/").text.split('type="application/json">')[1].split("</script>")[0]
        assert json.loads(page_data) == {"auth": True}  # with keys the page tells nothing
    with pytest.raises(ValueError, match="is not a bertkit index"):
        create_app(ServeConfig(model=models["clf"], index=models["enc"]))


def test_index_and_search_commands_end_to_end(models, tmp_path, capsys):
    """`bertkit index` then `bertkit search --json`: the hits SearchIndex gives, and a second
    index into the same --out is refused with one line."""
    corpus = write_lines(tmp_path / "docs.txt", DOCS)
    out = str(tmp_path / "idx")
    assert main(["index", "--model", models["enc"], "--corpus", corpus, "--out", out,
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", out, "--top-k", "3", "--json", *QUERIES[:2]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = SearchIndex.load(out).search(QUERIES[:2], top_k=3)
    assert [line["query"] for line in lines] == QUERIES[:2]
    for line, hits in zip(lines, expected):
        assert [h["id"] for h in line["results"]] == [h["id"] for h in hits]
    assert main(["index", "--model", models["enc"], "--corpus", corpus, "--out", out]) == 2
    assert "already holds files" in capsys.readouterr().err


def test_an_index_moved_together_with_its_model_still_finds_it(models, tmp_path):
    """index.json keeps the model's path relative to the index too (a demo folder holds both)."""
    shutil.copytree(models["enc"], tmp_path / "run" / "encoder")
    corpus = write_lines(tmp_path / "docs.txt", DOCS[:10])
    build_index(str(tmp_path / "run" / "encoder"), corpus, str(tmp_path / "run" / "index"),
                progress=False)
    expected = SearchIndex.load(str(tmp_path / "run" / "index")).search(QUERIES[:1], top_k=3)
    os.rename(tmp_path / "run", tmp_path / "moved")
    moved = SearchIndex.load(str(tmp_path / "moved" / "index"))
    assert moved.search(QUERIES[:1], top_k=3) == expected
