"""`bertkit serve` end to end: real uvicorn processes on 127.0.0.1 serving tiny folders
(classification with API keys and tight limits, NER without keys, a pretraining folder).

Checked: auth (no key, wrong key -> 401, right key -> 200); answers equal the library's
(predict_folder, embed, fill_mask) in input order; every bad-input case -> the documented 4xx
JSON error and the next good request still succeeds; concurrent requests are micro-batched;
/metrics counts what happened; JSON access logs never hold keys; a public address without keys
is refused; SIGTERM lets an in-flight request finish. The batcher, limits and key checks are
also tested in process.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import signal
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from _serve_helpers import REPO, ServerProcess, make_folder
from bertkit.inference import embed, fill_mask, load_for_inference
from bertkit.modeling.bert import (BertForMaskedLM, BertForPreTraining,
                                   BertForSequenceClassification, BertForTokenClassification,
                                   BertModel)
from bertkit.serve.auth import KeyChecker, check_bind, is_loopback, load_api_keys
from bertkit.serve.batching import MicroBatcher, QueueFull, length_buckets
from bertkit.tasks.predict import predict_folder

KEYS = ["test-key-one-1234", "test-key-two-5678"]
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
CLF_LIMITS = ["--max-texts", "8", "--max-chars", "200", "--max-body-bytes", "4000"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return {"clf": make_folder(root / "clf", BertForSequenceClassification, "classification",
                               ["neg", "neutral", "pos"]),
            "ner": make_folder(root / "ner", BertForTokenClassification, "ner",
                               ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], seed=1),
            "pre": make_folder(root / "pre", BertForPreTraining, seed=2),
            "root": root}


@pytest.fixture(scope="module")
def servers(folders):
    """The three servers, started together (startup is mostly importing torch)."""
    root = folders["root"]
    keys_file = root / "keys.txt"
    keys_file.write_text(f"# test keys\n{KEYS[0]}\n\n{KEYS[1]}\n", encoding="utf-8")
    started = {
        # a long max wait so that concurrent requests surely meet in one batch
        "clf": ServerProcess(folders["clf"], root / "clf.log", "--api-keys-file", str(keys_file),
                             "--max-wait-ms", "40", *CLF_LIMITS).start(),
        "ner": ServerProcess(folders["ner"], root / "ner.log").start(),
        # the max wait holds a lone request in the batcher: the graceful-shutdown test's window
        "pre": ServerProcess(folders["pre"], root / "pre.log", "--max-wait-ms", "700").start(),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def clf(servers):
    with httpx.Client(base_url=servers["clf"].url, timeout=30) as client:
        yield client


def good_request(client: httpx.Client) -> None:
    r = client.post("/v1/predict", json={"texts": ["hello world"]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] in ("neg", "neutral", "pos")


# =========================================================================== open routes


def test_health_ready_docs_and_page(clf, servers):
    assert clf.get("/healthz").json() == {"status": "ok"}
    assert clf.get("/readyz").status_code == 200
    assert clf.get("/docs").status_code == 200
    paths = clf.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/embed", "/v1/fill-mask", "/healthz", "/readyz"} <= set(paths)
    page = clf.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="text"' in page.text and 'id="key"' in page.text
    with httpx.Client(base_url=servers["ner"].url, timeout=30) as open_server:  # no keys
        assert open_server.get("/readyz").json() == {"status": "ready", "model": "ner",
                                                     "task": "ner"}
        assert '"task": "ner"' in open_server.get("/").text


def page_info(page: str) -> dict:
    return json.loads(page.split('<script id="model-info" type="application/json">')[1]
                      .split("</script>")[0])


def test_with_keys_the_open_routes_tell_nothing_of_the_model(clf):
    # what /v1/info guards: the name (folder "clf"), task, architecture, labels
    info = clf.get("/v1/info", headers=AUTH).json()
    assert info["task"] == "classification" and info["labels"] == ["neg", "neutral", "pos"]
    page = clf.get("/").text
    assert page_info(page) == {"auth": True}  # the page's script names tasks, not this model's
    assert "<title>bertkit serve: model</title>" in page
    assert clf.get("/readyz").json() == {"status": "ready"}
    open_text = clf.get("/openapi.json").text + clf.get("/metrics").text
    for secret in ("(classification)", "task: classification", 'task="classification"',
                   "BertForSequenceClassification", "neutral", '"clf"', 'name="clf"', "**clf**"):
        assert secret not in open_text, secret


# =========================================================================== auth


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key-123456"},
                                     {"Authorization": KEYS[0]},
                                     {"Authorization": f"Basic {KEYS[0]}"},
                                     {"Authorization": f"Bearer {KEYS[0]}x"}],
                         ids=["none", "wrong", "no-scheme", "basic", "longer"])
def test_v1_routes_need_a_key(clf, headers):
    for method, path in (("POST", "/v1/predict"), ("POST", "/v1/embed"), ("GET", "/v1/info"),
                         ("POST", "/v1/explain")):
        r = clf.request(method, path, json={"texts": ["hello"]}, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    good_request(clf)


def test_every_key_of_the_file_works(clf):
    for key in KEYS:
        r = clf.post("/v1/predict", json={"texts": ["hi"]},
                     headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
    assert clf.get("/v1/info", headers=AUTH).json()["labels"] == ["neg", "neutral", "pos"]


# =========================================================================== answers


def test_predict_equals_bertkit_predict_in_input_order(clf, folders):
    texts = ["The café was hello world", "hello", "naïve Straße, the end!" * 3, "日本"]
    r = clf.post("/v1/predict", json={"texts": texts}, headers=AUTH)
    assert r.status_code == 200, r.text
    served = r.json()["predictions"]
    expected = predict_folder(folders["clf"], texts=texts, device="cpu")
    assert [p["label"] for p in served] == [p["label"] for p in expected]
    for got, want in zip(served, expected):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    pairs = ["world", "the", "cafe", "x"]
    r = clf.post("/v1/predict", json={"texts": texts, "text_pairs": pairs}, headers=AUTH)
    expected = predict_folder(folders["clf"], texts=texts, text_pairs=pairs, device="cpu")
    for got, want in zip(r.json()["predictions"], expected):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)


def test_embed_equals_bertkit_embed(clf, folders):
    texts = ["hello world", "The café", "a"]
    model, tokenizer = load_for_inference(folders["clf"], BertModel, device="cpu")
    expected = embed(model, tokenizer, texts)
    r = clf.post("/v1/embed", json={"texts": texts}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert torch.allclose(torch.tensor(r.json()["embeddings"]), expected, atol=1e-5)
    r = clf.post("/v1/embed", json={"texts": texts, "normalize": True}, headers=AUTH)
    norms = torch.tensor(r.json()["embeddings"]).norm(dim=-1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5)


def test_concurrent_requests_share_forward_passes(clf, folders):
    texts = [f"hello {'world ' * i}the end" for i in range(16)]
    expected = predict_folder(folders["clf"], texts=texts, device="cpu")
    before = metric_values(clf.get("/metrics").text)

    def one(text):
        r = clf.post("/v1/predict", json={"texts": [text]}, headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]

    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(one, texts))
    for got, want in zip(served, expected):  # each request got its own text's answer
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    after = metric_values(clf.get("/metrics").text)
    calls = delta(before, after, "bertkit_batch_requests_count", route="predict")
    requests = delta(before, after, "bertkit_batch_requests_sum", route="predict")
    assert requests == 16 and calls < 16, (calls, requests)  # some calls held several requests


# =========================================================================== bad input

BAD = [  # (route, body: bytes | JSON value, status, code)
    ("/v1/predict", b"", 400, "empty_body"),
    ("/v1/predict", b'\xff\xfe{"texts": ["a"]}', 400, "invalid_utf8"),
    ("/v1/predict", b'{"texts": ["a"', 400, "invalid_json"),
    ("/v1/predict", [1, 2], 422, "invalid_type"),
    ("/v1/predict", {}, 422, "missing_field"),
    ("/v1/predict", {"texts": "just a string"}, 422, "invalid_type"),
    ("/v1/predict", {"texts": []}, 422, "empty_input"),
    ("/v1/predict", {"texts": ["  "]}, 422, "empty_text"),
    ("/v1/predict", {"texts": ["ok", 7]}, 422, "invalid_type"),
    ("/v1/predict", {"texts": [None]}, 422, "invalid_type"),
    ("/v1/predict", {"texts": ["a"], "txet_pairs": ["b"]}, 422, "unknown_field"),
    ("/v1/predict", {"texts": ["a", "b"], "text_pairs": ["c"]}, 422, "length_mismatch"),
    ("/v1/predict", b'{"texts": ["\\ud800 lone"]}', 422, "invalid_text"),
    ("/v1/predict", {"texts": ["a"] * 9}, 413, "too_many_texts"),
    ("/v1/predict", {"texts": ["a" * 201]}, 413, "text_too_long"),
    ("/v1/predict", {"texts": ["a " * 2500]}, 413, "body_too_large"),
    ("/v1/embed", {"texts": ["a"], "normalize": "yes"}, 422, "invalid_type"),
    ("/v1/fill-mask", {"texts": ["a [MASK]"]}, 404, "no_mlm_head"),
    ("/v1/explain", {}, 422, "missing_field"),
    ("/v1/explain", {"texts": ["a"]}, 422, "unknown_field"),
    ("/v1/explain", {"text": ["a"]}, 422, "invalid_type"),
    ("/v1/explain", {"text": " "}, 422, "empty_text"),
    ("/v1/explain", {"text": "a" * 201}, 413, "text_too_long"),       # --max-chars 200 wins
    ("/v1/explain", {"text": "a", "text_pair": "b" * 201}, 413, "text_too_long"),
    ("/v1/explain", {"text": "a", "method": "lime"}, 422, "invalid_input"),
    ("/v1/explain", {"text": "a", "steps": 0}, 422, "invalid_input"),
    ("/v1/explain", {"text": "a", "steps": 1025}, 422, "invalid_input"),
    ("/v1/explain", {"text": "a", "steps": "8"}, 422, "invalid_type"),
    ("/v1/explain", {"text": "a", "target": "maybe"}, 422, "invalid_input"),
    ("/v1/explain", b'{"text": "\\ud800 lone"}', 422, "invalid_text"),
    ("/v1/nothing-here", {"texts": ["a"]}, 404, "not_found"),
]


@pytest.mark.parametrize("route, body, status, code", BAD, ids=[f"{c}-{i}" for i, (_, _, _, c)
                                                               in enumerate(BAD)])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(clf, route, body, status, code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = clf.post(route, content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and len(error["message"]) > 10
    good_request(clf)


def test_chunked_body_over_the_limit_and_wrong_method(clf):
    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 1000

    r = clf.post("/v1/predict", content=chunks(),
                 headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = clf.get("/v1/predict", headers=AUTH)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    good_request(clf)


# =========================================================================== metrics, logs


def metric_values(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def delta(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_what_happened(clf):
    before = metric_values(clf.get("/metrics").text)
    long_text = "ab " * 66  # 132 word pieces: over the folder's 128 tokens, truncated
    clf.post("/v1/predict", json={"texts": ["hello world", "the end", long_text]}, headers=AUTH)
    clf.post("/v1/predict", json={"texts": ["x"]})                               # 401
    clf.post("/v1/predict", json={"texts": []}, headers=AUTH)                    # 422
    clf.post("/v1/embed", json={"texts": ["hello"]}, headers=AUTH)
    after = metric_values(clf.get("/metrics").text)
    predict = dict(route="/v1/predict", method="POST")
    assert delta(before, after, "bertkit_requests_total", **predict, status="200") == 1
    assert delta(before, after, "bertkit_requests_total", **predict, status="401") == 1
    assert delta(before, after, "bertkit_requests_total", **predict, status="422") == 1
    assert delta(before, after, "bertkit_requests_total", route="/v1/embed", method="POST",
                 status="200") == 1
    assert delta(before, after, "bertkit_request_duration_seconds_count",
                 route="/v1/predict") == 3
    assert delta(before, after, "bertkit_inputs_total", route="predict") == 3
    assert delta(before, after, "bertkit_inputs_total", route="embed") == 1
    assert delta(before, after, "bertkit_truncated_inputs_total", route="predict") == 1
    # [CLS] hello world [SEP] + [CLS] the end [SEP] (word pieces) + 128 of the long text
    assert 128 + 8 <= delta(before, after, "bertkit_tokens_total", route="predict") <= 128 + 30
    assert delta(before, after, "bertkit_batch_size_sum", route="predict") == 3
    info = [labels for (name, labels) in after if name == "bertkit_model_info"]
    assert info == [(("runtime", "torch"),)]  # with keys: no more than the key-less routes tell


def test_access_log_is_json_and_never_holds_a_key(clf, servers):
    clf.post("/v1/predict", json={"texts": ["x"]}, headers={"Authorization": "Bearer s3cret-wrong"})
    time.sleep(0.2)
    log = servers["clf"].log()
    for secret in (*KEYS, "s3cret-wrong"):
        assert secret not in log
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests = [e for e in entries if e.get("event") == "request"]
    assert any(e["status"] == 401 for e in requests)
    ok = [e for e in requests if e["route"] == "/v1/predict" and e["status"] == 200]
    assert ok and {"time", "request_id", "method", "path", "duration_ms", "inputs"} <= set(ok[0])
    assert any(e.get("event") == "startup" and e["auth"] is True for e in entries)


# =========================================================================== other folders


def test_ner_server_answers_like_bertkit_predict(servers, folders):
    texts = ["Hello world, the café in Straße", "the end", "x"]
    with httpx.Client(base_url=servers["ner"].url, timeout=30) as client:  # no keys: open
        r = client.post("/v1/predict", json={"texts": texts})
        assert r.status_code == 200, r.text
        served = r.json()["predictions"]
        assert served == predict_folder(folders["ner"], texts=texts, device="cpu")
        for text, prediction in zip(texts, served):
            for entity in prediction["entities"]:
                assert text[entity["start"]:entity["end"]] == entity["entity"]
        r = client.post("/v1/predict", json={"texts": ["a"], "text_pairs": ["b"]})
        assert r.status_code == 422 and "NER" in r.json()["error"]["message"]
        assert client.post("/v1/predict", json={"texts": ["still fine"]}).status_code == 200


def test_pretraining_folder_serves_fill_mask_and_embed_but_not_predict(servers, folders):
    model, tokenizer = load_for_inference(folders["pre"], BertForMaskedLM, device="cpu")
    with httpx.Client(base_url=servers["pre"].url, timeout=30) as client:
        texts = ["hello [MASK] world", "the [MASK] and [MASK]"]
        r = client.post("/v1/fill-mask", json={"texts": texts, "top_k": 3})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 2 and [len(masks) for masks in results] == [1, 2]
        for text, got in zip(texts, results):
            want = fill_mask(model, tokenizer, text, 3)
            assert [[c["token"] for c in m] for m in got] == [[c["token"] for c in m] for m in want]
        r = client.post("/v1/embed", json={"texts": ["hello"]})
        assert torch.allclose(torch.tensor(r.json()["embeddings"]),
                              embed(model, tokenizer, ["hello"]), atol=1e-5)
        r = client.post("/v1/predict", json={"texts": ["hello"]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_task_head"
        assert "/v1/fill-mask" in r.json()["error"]["message"]
        r = client.post("/v1/fill-mask", json={"texts": ["no mask here"]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "no_mask_token"
        r = client.post("/v1/fill-mask", json={"texts": ["a [MASK]"], "top_k": 0})
        assert r.status_code == 422


def test_sigterm_lets_the_request_in_flight_finish(servers):
    server = servers["pre"]  # its 700 ms max wait keeps a lone request in the batcher
    answer = {}

    def request():
        answer["response"] = httpx.post(server.url + "/v1/embed", json={"texts": ["hello"]},
                                        timeout=30)

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.3)  # the request is in the batcher now
    # uvicorn exits by re-raising the signal once the shutdown is complete
    assert server.stop() in (0, -signal.SIGTERM)
    thread.join()
    assert answer["response"].status_code == 200
    assert '"event": "shutdown"' in server.log()


def test_refuses_a_public_address_without_keys(folders):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "bertkit", "serve", "--model", folders["clf"],
                             "--host", "0.0.0.0", "--port", "1"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                 "PYTHONPATH": REPO})
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr


# =========================================================================== bounds (issue 11)


def test_abandoned_requests_are_dropped_not_computed(tmp_path):
    # A slower random model (hidden 128): 64 texts of 512 tokens cost ~0.6 s on one thread,
    # in forward passes of 8 texts (~0.08 s each).
    folder = make_folder(tmp_path / "enc", BertModel, hidden_size=128, intermediate_size=512)
    server = ServerProcess.from_config(tmp_path / "enc.log", model=folder, max_batch=8,
                                       max_queued_tokens=10**7).start()
    big = {"texts": ["hello world " * 300] * 64}  # each cut to the tokenizer's 512 tokens
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.post("/v1/embed", json={"texts": ["warm up"]}).status_code == 200
            start = time.perf_counter()
            assert client.post("/v1/embed", json=big).status_code == 200
            one = time.perf_counter() - start  # one such request, computed
            n = max(4, min(24, math.ceil(5.0 / one)))  # abandon >= 5 s of work
            before = metric_values(client.get("/metrics").text)

            def abandon(_):
                try:  # the socket is closed after 0.5 s without an answer
                    httpx.post(server.url + "/v1/embed", json=big,
                               timeout=httpx.Timeout(60, read=0.5))
                except httpx.ReadTimeout:
                    pass

            with ThreadPoolExecutor(n) as pool:
                list(pool.map(abandon, range(n)))
            start = time.perf_counter()
            r = client.post("/v1/embed", json={"texts": ["hello"]})
            waited = time.perf_counter() - start
            assert r.status_code == 200 and waited < 1.0, (waited, n, one)
            after = metric_values(client.get("/metrics").text)
        computed = delta(before, after, "bertkit_inputs_total", route="embed")
        assert computed <= n * 64 / 2, (computed, n)  # most of the abandoned texts never ran
        gone = delta(before, after, "bertkit_requests_total", route="/v1/embed", method="POST",
                     status="499")  # logged as nginx does: the client closed the request
        assert n / 2 <= gone <= n, (gone, n)
    finally:
        server.stop()


def test_a_full_queue_answers_429_and_a_late_answer_503(folders, tmp_path):
    # The 3 s max wait holds a lone request in the batcher: the queue stays full while the
    # next one comes, and the 1 s timeout passes before the model is ever called.
    server = ServerProcess.from_config(tmp_path / "queue.log", model=folders["clf"],
                                       max_wait_ms=3000, request_timeout=1.0,
                                       max_queued_tokens=400,
                                       allowed_hosts=["model.internal"]).start()
    texts = ["hello " * 98] * 3  # 3 x (98 + 2) = 300 tokens: one such request fits, two do not
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(client.post, "/v1/predict", json={"texts": texts})
                time.sleep(0.3)
                second = client.post("/v1/predict", json={"texts": texts})
                assert second.status_code == 429, second.text
                assert second.json()["error"]["code"] == "queue_full"
                assert 1 <= int(second.headers["retry-after"]) <= 60
                late = first.result()
            assert late.status_code == 503 and late.json()["error"]["code"] == "timeout"
            assert int(late.headers["retry-after"]) >= 1
            # the timed-out request gave its tokens back: the same request is taken again
            r = client.post("/v1/predict", json={"texts": texts})
            assert r.status_code == 503 and r.json()["error"]["code"] == "timeout"
            metrics = metric_values(client.get("/metrics").text)
            assert metrics.get(("bertkit_inputs_total", (("route", "predict"),)), 0) == 0
            # allowed_hosts adds names to the defaults
            assert client.get("/healthz", headers={"Host": "model.internal:80"}).status_code \
                == 200
            assert client.get("/healthz", headers={"Host": "other.internal"}).status_code == 400
    finally:
        server.stop()


def test_metrics_stay_bounded_under_made_up_methods_and_paths(servers):
    rng = random.Random(0)
    letters = string.ascii_uppercase

    def word(low, high):
        return "".join(rng.choice(letters) for _ in range(rng.randint(low, high)))

    made_up = []

    def send_made_up(client, n):
        for i in range(n):
            method = word(3, 12)
            path = rng.choice(["/v1/predict", "/healthz"]) if i % 2 else "/" + word(1, 30)
            made_up.append(method)
            r = client.request(method, path)
            assert r.status_code in (404, 405), (method, path, r.status_code)

    with httpx.Client(base_url=servers["ner"].url, timeout=30) as client:  # keep-alive
        send_made_up(client, 20)  # the "other" (and /metrics) series exist from here on
        client.get("/metrics")
        size_before = len(client.get("/metrics").content)
        send_made_up(client, 5000)
        text = client.get("/metrics").text
    # only the counts' digits grow (before the fix: one series per method, ~500 KB)
    assert len(text) < size_before + 300, (size_before, len(text))
    labels = {value for (_, pairs) in metric_values(text) for (_, value) in pairs}
    assert not labels & set(made_up) - {"GET", "POST", "PUT", "HEAD", "PATCH", "DELETE",
                                        "OPTIONS", "TRACE", "CONNECT"}
    assert delta({}, metric_values(text), "bertkit_requests_total", route="other",
                 method="other", status="404") >= 2000


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_post_needs_a_json_content_type(clf, content_type):
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    r = clf.post("/v1/predict", content=json.dumps({"texts": ["hello"]}).encode(),
                 headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"
    r = clf.post("/v1/predict", content=json.dumps({"texts": ["hello"]}).encode(),
                 headers={**AUTH, "Content-Type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_host_header_must_name_this_server(servers):
    server = servers["ner"]  # no keys, on 127.0.0.1: what DNS rebinding would reach
    port = server.port
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", ""):
            for method, path in (("GET", "/"), ("GET", "/metrics"), ("POST", "/v1/predict")):
                r = client.request(method, path, json={"texts": ["x"]}, headers={"Host": host})
                assert r.status_code == 400, (host, path, r.text)
                assert r.json()["error"]["code"] == "invalid_host"
        for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}",
                     "LOCALHOST"):
            r = client.post("/v1/predict", json={"texts": ["x"]}, headers={"Host": host})
            assert r.status_code == 200, (host, r.text)


def test_deeply_nested_json_is_a_400(servers):
    with httpx.Client(base_url=servers["ner"].url, timeout=30) as client:
        for body in (b"[" * 200_000, b'{"texts": ' + b"[" * 200_000, b'{"texts": [' * 80_000):
            r = client.post("/v1/predict", content=body,
                            headers={"Content-Type": "application/json"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "invalid_json"
        assert client.post("/v1/predict", json={"texts": ["still fine"]}).status_code == 200
    time.sleep(0.2)
    log = servers["ner"].log()
    assert "RecursionError" not in log and '"status": 500' not in log


def test_a_keys_file_without_keys_is_refused(folders, tmp_path):
    import subprocess
    import sys
    empty = tmp_path / "keys.txt"
    empty.write_text("# no keys yet\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"^API keys file {empty} holds no keys$"):
        load_api_keys(str(empty), environ={})
    result = subprocess.run([sys.executable, "-m", "bertkit", "serve", "--model", folders["clf"],
                             "--api-keys-file", str(empty), "--port", "1"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                 "PYTHONPATH": REPO})
    assert result.returncode == 2
    assert result.stderr.strip() == f"bertkit serve: error: API keys file {empty} holds no keys"


# =========================================================================== in process


def test_adapter_folder_is_served(folders, tmp_path):
    from fastapi.testclient import TestClient

    from bertkit import Tokenizer
    from bertkit.peft import apply_peft, save_adapter
    from bertkit.serve import ServeConfig, create_app
    base = make_folder(tmp_path / "base", BertModel)
    model = BertForSequenceClassification.from_pretrained(base, verbose=False,
                                                          id2label={0: "neg", 1: "pos"})
    model.config.extra["bertkit_task"] = "classification"
    torch.manual_seed(3)
    peft = apply_peft(model, "lora", base_model_folder=base, r=4)
    adapter = tmp_path / "adapter"
    save_adapter(peft, adapter)
    Tokenizer.from_pretrained(base).save_pretrained(adapter)
    texts = ["hello world", "the end"]
    expected = predict_folder(str(adapter), texts=texts, device="cpu")
    app = create_app(ServeConfig(model=str(adapter), device="cpu"))
    with TestClient(app, base_url="http://localhost") as client:
        r = client.post("/v1/predict", json={"texts": texts})
        assert r.status_code == 200, r.text
        for got, want in zip(r.json()["predictions"], expected):
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert client.post("/v1/embed", json={"texts": texts}).status_code == 200


def test_onnx_runtime_is_served(folders, tmp_path):
    pytest.importorskip("onnxruntime")
    import shutil

    from fastapi.testclient import TestClient

    from bertkit.compress.onnx import export_folder
    from bertkit.serve import ServeConfig, create_app
    folder = shutil.copytree(folders["clf"], tmp_path / "clf")
    export_folder(folder)
    texts = ["hello world", "the café"]
    expected = predict_folder(str(folder), texts=texts, device="cpu")
    with TestClient(create_app(ServeConfig(model=str(folder), runtime="onnx")),
                    base_url="http://localhost") as client:
        r = client.post("/v1/predict", json={"texts": texts})
        assert r.status_code == 200, r.text
        for got, want in zip(r.json()["predictions"], expected):
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-4)
        assert client.get("/v1/info").json()["runtime"] == "onnx"
        r = client.post("/v1/embed", json={"texts": texts})
        assert r.status_code == 404 and "--runtime torch" in r.json()["error"]["message"]


def test_workers_factory_reads_the_settings_from_the_environment(folders, monkeypatch):
    from fastapi.testclient import TestClient

    from bertkit.serve.app import CONFIG_ENV, ServeConfig, app_from_env
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(RuntimeError, match=CONFIG_ENV):
        app_from_env()
    monkeypatch.setenv(CONFIG_ENV, ServeConfig(model=folders["ner"], max_texts=2).to_json())
    monkeypatch.setenv("BERTKIT_API_KEYS", KEYS[1])
    with TestClient(app_from_env(), base_url="http://127.0.0.1:8000") as client:
        r = client.post("/v1/predict", json={"texts": ["a", "b", "c"]},
                        headers={"Authorization": f"Bearer {KEYS[1]}"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_texts"
        assert client.post("/v1/predict", json={"texts": ["a"]}).status_code == 401


def test_micro_batcher_groups_splits_and_isolates_failures():
    calls = []

    def run(key, items, wanted):
        calls.append((key, list(items)))
        if "bad" in items:
            raise ValueError("bad item")
        return [f"{key}:{item}" for item in items]

    async def main():
        batcher = MicroBatcher(run, max_batch=100, max_wait_ms=50)
        await batcher.start()
        jobs = [batcher.submit("a", ["1", "2"]), batcher.submit("a", ["3"]),
                batcher.submit("b", ["4"]), batcher.submit("a", ["bad"])]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert results[:3] == [["a:1", "a:2"], ["a:3"], ["b:4"]]
    assert isinstance(results[3], ValueError)
    assert calls[0] == ("a", ["1", "2", "3", "bad"])       # one call for key a ...
    assert ("b", ["4"]) in calls                             # ... one for b
    assert ("a", ["1", "2"]) in calls and ("a", ["3"]) in calls  # the failed group, one by one

    calls.clear()

    async def unbatched():
        batcher = MicroBatcher(run, max_wait_ms=50, enabled=False)
        await batcher.start()
        out = await asyncio.gather(batcher.submit("a", ["1"]), batcher.submit("a", ["2"]))
        await batcher.stop()
        return out

    assert asyncio.run(unbatched()) == [["a:1"], ["a:2"]]
    assert calls == [("a", ["1"]), ("a", ["2"])]


def test_length_buckets_group_similar_lengths():
    lengths = [10, 100, 12, 95, 11, 40]
    # 100, 95, 40: 22% of 300 padded tokens are padding (<= 25%); adding 12 would make it 38%
    assert length_buckets(lengths, max_batch=32, max_padding=0.25) == [[1, 3, 5], [2, 4, 0]]
    assert length_buckets(lengths, max_batch=32, max_padding=0.1) == [[1, 3], [5], [2, 4, 0]]
    assert length_buckets(lengths, max_batch=2, max_padding=1.0) == [[1, 3], [5, 2], [4, 0]]
    assert length_buckets([7] * 5, max_batch=32, max_padding=0.0) == [[0, 1, 2, 3, 4]]
    assert length_buckets([], max_batch=4) == []


def test_keys_and_bind_rules(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\nfirst-key-abc\n\nfirst-key-abc\n", encoding="utf-8")
    assert load_api_keys(str(path), environ={"BERTKIT_API_KEYS": "env-key-12345, x-key-67890"}) \
        == ["first-key-abc", "env-key-12345", "x-key-67890"]
    path.write_text("tiny\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1") as error:
        load_api_keys(str(path), environ={})
    assert "tiny" not in str(error.value)  # a key is never echoed
    checker = KeyChecker(["first-key-abc"])
    assert checker.check("Bearer first-key-abc") and checker.check("bearer first-key-abc")
    assert not checker.check(None) and not checker.check("Bearer first-key-ab")
    assert KeyChecker([]).check(None)  # no keys: open
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    check_bind("127.0.0.1", [], insecure=False)
    check_bind("0.0.0.0", ["k"], insecure=False)
    check_bind("0.0.0.0", [], insecure=True)
    with pytest.raises(ValueError, match="--insecure"):
        check_bind("0.0.0.0", [], insecure=False)


def test_micro_batcher_drops_jobs_whose_request_went_away_and_bounds_its_tokens():
    go = threading.Event()
    calls, asked = [], []

    def run(key, items, wanted):
        calls.append(list(items))
        go.wait(10)  # the model is busy until the test says so
        asked.append([wanted(i) for i in range(len(items))])
        return [f"{key}:{item}" for item in items]

    async def main():
        batcher = MicroBatcher(run, max_batch=100, max_wait_ms=100, max_queued=10)
        await batcher.start()
        # x and y share one call; x's client goes away while it runs
        x = asyncio.ensure_future(batcher.submit("a", ["x"], cost=3))
        y = asyncio.ensure_future(batcher.submit("a", ["y"], cost=3))
        await asyncio.sleep(0.3)                                    # the call has begun
        z = asyncio.ensure_future(batcher.submit("a", ["z"], cost=3))  # queued behind it
        await asyncio.sleep(0.01)
        assert batcher.queued_tokens == 9
        with pytest.raises(QueueFull, match="9 tokens are queued, the limit is 10"):
            await batcher.submit("a", ["w"], cost=2)
        x.cancel()
        z.cancel()  # dropped while queued: never run, its tokens given back at once
        await asyncio.sleep(0.01)
        assert batcher.queued_tokens == 6  # x's call is still running: its tokens stay
        go.set()
        assert await y == ["a:y"]
        assert batcher.queued_tokens == 0
        assert await batcher.submit("a", ["v"], cost=50) == ["a:v"]  # alone: always taken
        await batcher.stop()
        return x.cancelled() and z.cancelled()

    assert asyncio.run(main())
    assert calls == [["x", "y"], ["v"]]            # z never ran
    assert asked == [[False, True], [True]]      # x's item is skipped from the next pass on


def test_serve_config_checks_the_new_limits():
    from bertkit.serve import ServeConfig
    for options, message in [
            ({"max_queued_tokens": 0}, "max_queued_tokens must be a whole number of at least 1"),
            ({"max_queued_tokens": 1.5}, "max_queued_tokens must be a whole number"),
            ({"request_timeout": 0}, "request_timeout must be a number of seconds above 0"),
            ({"request_timeout": float("nan")}, "request_timeout must be a number"),
            ({"explain_max_chars": 0}, "explain_max_chars must be a whole number of at least 1"),
            ({"explain_max_steps": 2.5}, "explain_max_steps must be a whole number"),
            ({"explain_max_queued": True}, "explain_max_queued must be a whole number"),
            ({"allowed_hosts": ["example.org:8000"]}, "allowed_hosts: 'example.org:8000' is "
                                                      "not a host name"),
            ({"allowed_hosts": ["https://example.org"]}, "allowed_hosts: 'https://example.org' is"),
            ({"allowed_hosts": "example.org"}, "allowed_hosts must be a list of host names")]:
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            ServeConfig(model="m", **options)
    config = ServeConfig(model="m", allowed_hosts=["Model.Internal", "::1", "*"])
    assert config.allowed_hosts == ["model.internal", "[::1]", "*"]
    assert ServeConfig.from_json(config.to_json()) == config


# =========================================================================== /v1/explain (issue 15)


def explanation_matches(got: dict, want, sources: tuple[str, str]) -> None:
    """The served explanation equals the library's, and every word slices its own text."""
    assert got["method"] == want.method and got["tokens"] == want.tokens
    assert got["words"] == [{"text": w.text, "start": w.start, "end": w.end,
                             "segment": w.segment} for w in want.words]
    for word in got["words"]:
        assert sources[word["segment"]][word["start"]:word["end"]] == word["text"]
    assert [a["target"] for a in got["attributions"]] == [a.target for a in want.attributions]
    for served, library in zip(got["attributions"], want.attributions):
        assert served["words"] == pytest.approx(library.words, abs=1e-5)
        assert len(served["words"]) == len(got["words"])
    assert set(got["attention"]) == {"rollout_to_cls"}  # no (L, T, T) maps over the wire
    assert len(got["attention"]["rollout_to_cls"]) == len(got["tokens"])


@pytest.mark.parametrize("method, options", [("occlusion", {}), ("gradxinput", {}),
                                             ("attention", {}), ("ig", {"steps": 16}),
                                             ("ig", {"target": "neg"})])
def test_explain_answers_the_library_s_attributions(clf, folders, method, options):
    from bertkit.explain import explain
    text, pair = "Hello world, the café in Straße", "and naïve, a second text"
    body = {"text": text, "text_pair": pair, "method": method, **options}
    r = clf.post("/v1/explain", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    got = r.json()
    want = explain(folders["clf"], text, pair, method=method, device="cpu", **options)
    explanation_matches(got, want, (text, pair))
    assert {w["segment"] for w in got["words"]} == {0, 1}
    assert got["prediction"]["label"] == want.prediction["label"]
    assert got["prediction"]["probabilities"] == pytest.approx(want.prediction["probabilities"],
                                                               abs=1e-5)
    if method == "ig":
        assert got["steps"] == want.steps and (options.get("steps") in (None, got["steps"]))
    if "target" in options:
        assert got["attributions"][0]["target"] == "neg"


def test_explain_errors_say_what_is_wrong_and_metrics_count_it(clf):
    before = metric_values(clf.get("/metrics").text)
    r = clf.post("/v1/explain", json={"text": "hello", "target": "maybe"}, headers=AUTH)
    assert r.json()["error"]["message"] == ("unknown target label 'maybe'; the model's labels "
                                            "are neg, neutral, pos")
    r = clf.post("/v1/explain", json={"text": "a" * 201}, headers=AUTH)
    assert r.json()["error"]["message"] == "'text' has 201 characters; the limit is 200"
    r = clf.post("/v1/explain", json={"text": "hello world", "method": "attention"}, headers=AUTH)
    assert r.status_code == 200
    after = metric_values(clf.get("/metrics").text)
    explain_route = dict(route="/v1/explain", method="POST")
    assert delta(before, after, "bertkit_requests_total", **explain_route, status="422") == 1
    assert delta(before, after, "bertkit_requests_total", **explain_route, status="413") == 1
    assert delta(before, after, "bertkit_requests_total", **explain_route, status="200") == 1
    assert delta(before, after, "bertkit_inputs_total", route="explain") == 1
    assert delta(before, after, "bertkit_tokens_total", route="explain") == 4  # [CLS] .. [SEP]
    assert "explain" in clf.get("/v1/info", headers=AUTH).json()["routes"]


def test_explain_on_ner_and_on_a_pretraining_folder(servers, folders):
    from fastapi.testclient import TestClient

    from bertkit.explain import Explainable, explain
    from bertkit.serve import ServeConfig, create_app
    text = "Hello world, the café in Straße"
    with httpx.Client(base_url=servers["ner"].url, timeout=30) as client:
        r = client.post("/v1/explain", json={"text": text, "method": "occlusion"})
        assert r.status_code == 200, r.text
        explanation_matches(r.json(), explain(folders["ner"], text, method="occlusion",
                                              device="cpu"), (text, ""))
        r = client.post("/v1/explain", json={"text": text, "text_pair": "b"})
        assert r.status_code == 422 and "single text" in r.json()["error"]["message"]
    # (the pretraining server of the fixture is stopped by the SIGTERM test: an app here)
    with TestClient(create_app(ServeConfig(model=folders["pre"])),
                    base_url="http://localhost") as client:
        masked = "hello [MASK] world"
        r = client.post("/v1/explain", json={"text": masked, "method": "gradxinput"})
        assert r.status_code == 200, r.text
        # the reference as the server opens the folder: its MLM head (BertForMaskedLM)
        mlm = Explainable(folders["pre"], *load_for_inference(folders["pre"], BertForMaskedLM,
                                                              device="cpu"), "fill-mask")
        explanation_matches(r.json(), explain(mlm, masked, method="gradxinput"), (masked, ""))
        r = client.post("/v1/explain", json={"text": "no mask here", "method": "occlusion"})
        assert r.status_code == 422 and "[MASK]" in r.json()["error"]["message"]


def test_explain_without_a_task_head_qa_and_onnx(folders, tmp_path):
    pytest.importorskip("onnxruntime")
    import shutil

    from fastapi.testclient import TestClient

    from bertkit.compress.onnx import export_folder
    from bertkit.explain import explain
    from bertkit.modeling.bert import BertForQuestionAnswering
    from bertkit.serve import ServeConfig, create_app
    encoder = make_folder(tmp_path / "enc", BertModel)
    with TestClient(create_app(ServeConfig(model=encoder)), base_url="http://localhost") as c:
        r = c.post("/v1/explain", json={"text": "hello world"})
        assert r.status_code == 422 and r.json()["error"] == {
            "code": "needs_task_head", "message": "method 'ig' explains a prediction, and model "
            "enc (BertModel) has no task head: use method 'attention', or fine-tune it first"}
        r = c.post("/v1/explain", json={"text": "hello world", "method": "attention"})
        assert r.status_code == 200 and r.json()["kind"] == "encoder"
    qa = make_folder(tmp_path / "qa", BertForQuestionAnswering, "qa")
    config = ServeConfig(model=qa, explain_max_chars=40)
    with TestClient(create_app(config), base_url="http://localhost") as c:
        question, context = "who wrote it?", "It was written by Ada in the café."
        r = c.post("/v1/explain", json={"question": question, "context": context,
                                        "method": "occlusion"})
        assert r.status_code == 200, r.text
        explanation_matches(r.json(), explain(qa, question, context, method="occlusion",
                                              device="cpu"), (question, context))
        assert [a["target"] for a in r.json()["attributions"]] == ["answer start", "answer end"]
        r = c.post("/v1/explain", json={"question": question})
        assert r.status_code == 422 and r.json()["error"]["code"] == "missing_field"
        r = c.post("/v1/explain", json={"question": question, "context": "a" * 41})
        assert r.status_code == 413 and "'context' has 41 characters; the limit is 40" \
            == r.json()["error"]["message"]
    folder = shutil.copytree(folders["clf"], tmp_path / "clf")
    export_folder(folder)
    with TestClient(create_app(ServeConfig(model=str(folder), runtime="onnx")),
                    base_url="http://localhost") as c:
        assert "explain" not in c.get("/v1/info").json()["routes"]
        r = c.post("/v1/explain", json={"text": "hello"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_gradients"
        assert "--runtime torch" in r.json()["error"]["message"]


def test_a_long_explanation_leaves_the_server_serving_and_stops_when_abandoned(tmp_path):
    # hidden 128: IG with 1024 steps on ~300 tokens takes > 10 s on one thread, in passes
    # of 32 path points (~0.2 s each)
    folder = make_folder(tmp_path / "slow", BertForSequenceClassification, "classification",
                         ["a", "b"], hidden_size=128, intermediate_size=512)
    server = ServerProcess.from_config(tmp_path / "slow.log", model=folder,
                                       explain_max_queued=1).start()
    slow = {"text": "hello world " * 150, "steps": 1024}
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post("/v1/explain", json={"text": "warm up", "steps": 4}).status_code \
                == 200
            with ThreadPoolExecutor(1) as pool:
                abandoned = pool.submit(httpx.post, server.url + "/v1/explain", json=slow,
                                        timeout=httpx.Timeout(30, read=2.0))
                time.sleep(0.5)
                start = time.perf_counter()
                r = client.post("/v1/predict", json={"texts": ["hello"]})
                assert r.status_code == 200 and time.perf_counter() - start < 1.0
                r = client.post("/v1/explain", json={"text": "hello", "method": "attention"})
                assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
                assert "1 explanations are waiting or running" in r.json()["error"]["message"]
                assert int(r.headers["retry-after"]) >= 1
                with pytest.raises(httpx.ReadTimeout):  # still running after 2 s: closed
                    abandoned.result()
            gave_up = time.perf_counter()
            while True:  # the abandoned explanation stops at its next forward pass
                r = client.post("/v1/explain", json={"text": "hello", "method": "attention"})
                if r.status_code != 429 or time.perf_counter() - gave_up > 10:
                    break
                time.sleep(0.05)
            assert r.status_code == 200 and time.perf_counter() - gave_up < 2.0
            time.sleep(0.2)
            after = metric_values(client.get("/metrics").text)
        assert after[("bertkit_requests_total", (("method", "POST"), ("route", "/v1/explain"),
                                                 ("status", "499")))] == 1
    finally:
        server.stop()


def test_explainer_bounds_its_queue_and_stops_abandoned_work(folders):
    from bertkit.serve.engine import load_served_model
    from bertkit.serve.explaining import (Abandoned, ExplainQueueFull, ExplainRequest,
                                          Explainer)
    explainer = Explainer(load_served_model(folders["clf"], device="cpu"), max_queued=2)

    async def main():
        explainer.start()
        try:
            first = explainer.submit(ExplainRequest("hello world", None, None, "ig", 64))
            dropped = ExplainRequest("hello", None, None, "occlusion", 1, dropped=True)
            second = explainer.submit(dropped)
            with pytest.raises(ExplainQueueFull, match="2 explanations are waiting or running, "
                                                       "the limit is 2"):
                explainer.submit(ExplainRequest("x", None, None, "attention", 1))
            assert (await first).attributions[0].steps == 64
            with pytest.raises(Abandoned):
                await second
            third = await explainer.submit(ExplainRequest("x", None, None, "attention", 1))
            return third.method
        finally:
            explainer.stop()

    assert asyncio.run(main()) == "attention"
    with pytest.raises(RuntimeError, match="shutting down"):
        explainer.submit(ExplainRequest("x", None, None, "attention", 1))
