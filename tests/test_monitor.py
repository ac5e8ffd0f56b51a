"""Monitoring (issue 14) on a tiny sentiment classifier fine-tuned here (~10 s):

- fine-tuning saves training_stats.json, equal to a recomputation with numpy, transformers'
  tokenizer and transformers' model (an independent reference);
- /metrics of the served folder: per-label counters equal the labels the responses gave, the
  confidence histogram holds their probabilities; drift scores stay low on texts of the
  training distribution and pass the alert threshold on texts of another one; no stats file:
  no drift metrics; with API keys label ids, not names;
- the stream monitor: a surge raises exactly one alert per episode within one window of the
  jump, a stationary stream of the same length none; the webhook reaches a receiver on
  127.0.0.1; bad options and bad lines are one clear line and write nothing.
"""

from __future__ import annotations

import calendar
import io
import json
import math
import os
import shutil
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from _monitor_helpers import (T0, finetune_sentiment, foreign_sentence, labelled, metric_values,
                              sentence, stream, write_jsonl)
from bertkit.cli import main
from bertkit.serve.app import ServeConfig, create_app
from bertkit.serve.monitor import MonitorConfig, parse_alert, run_monitor
from bertkit.training.data_stats import TRAINING_STATS_FILE

DRIFT_THRESHOLD = 1.0  # deploy/alerts.yml: BertkitInputDrift

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    return finetune_sentiment(tmp_path_factory.mktemp("sentiment"))


def client_for(folder, **options):
    from fastapi.testclient import TestClient
    return TestClient(create_app(ServeConfig(model=folder, **options)), base_url="http://localhost")


# =========================================================================== training stats


def test_finetuning_saves_the_training_statistics(sentiment):
    transformers = pytest.importorskip("transformers")
    import torch
    stats = json.load(open(os.path.join(sentiment["out"], TRAINING_STATS_FILE)))
    train = [json.loads(line) for line in open(sentiment["train"])]
    hf_tok = transformers.BertTokenizerFast(os.path.join(sentiment["out"], "vocab.txt"))
    tokens = [hf_tok.tokenize(r["text"]) for r in train]
    lengths = np.array([len(t) for t in tokens], dtype=float)
    assert stats["text_length"]["count"] == len(train)
    assert stats["text_length"]["mean"] == pytest.approx(lengths.mean())
    assert stats["text_length"]["std"] == pytest.approx(lengths.std())
    assert stats["text_length"]["p95"] == pytest.approx(np.percentile(lengths, 95))
    assert stats["unk_rate"]["mean"] == 0.0  # every training word is in the vocab
    shares = Counter(r["label"] for r in train)
    assert stats["label_shares"] == pytest.approx({k: v / len(train) for k, v in shares.items()})
    dev = [json.loads(line)["text"] for line in open(sentiment["dev"])]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(sentiment["out"]).eval()
    with torch.no_grad():
        probs = hf(**hf_tok(dev, padding=True, return_tensors="pt")).logits.softmax(-1)
    assert stats["max_probability"]["mean"] == pytest.approx(float(probs.max(-1).values.mean()),
                                                             abs=1e-5)


# =========================================================================== /metrics


def test_label_counters_and_confidence_histogram(sentiment):
    texts = [r["text"] for r in labelled(24, 7)]
    with client_for(sentiment["out"]) as client:
        before = metric_values(client.get("/metrics").text)
        predictions = []
        for start in range(0, len(texts), 8):
            answer = client.post("/v1/predict", json={"texts": texts[start:start + 8]})
            predictions += answer.json()["predictions"]
        after = metric_values(client.get("/metrics").text)
    labels = Counter(p["label"] for p in predictions)
    assert set(labels) == {"negative", "positive"}
    for label in ("negative", "positive"):
        key = ("bertkit_predictions_total", (("label", label),))
        assert after[key] - before.get(key, 0) == labels[label]
    top = [max(p["probabilities"].values()) for p in predictions]
    assert after[("bertkit_prediction_confidence_count", ())] == len(texts)
    assert after[("bertkit_prediction_confidence_sum", ())] == pytest.approx(sum(top))
    assert after[("bertkit_prediction_confidence_bucket", (("le", "0.6"),))] \
        == sum(p <= 0.6 for p in top)
    assert after[("bertkit_training_label_share", (("label", "negative"),))] == pytest.approx(
        Counter(r["label"] for r in labelled(200, 0))["negative"] / 200)


def drift_scores(client) -> dict:
    values = metric_values(client.get("/metrics").text)
    return {dict(labels)["signal"]: value for (name, labels), value in values.items()
            if name == "bertkit_drift_score"}


def test_drift_score_passes_the_threshold_only_for_another_distribution(sentiment):
    import random
    rng = random.Random(3)
    same = [sentence(rng, rng.random() < 0.5) for _ in range(60)]
    other = [foreign_sentence(rng) for _ in range(60)]
    with client_for(sentiment["out"], drift_window=60) as client:
        assert all(math.isnan(v) for v in drift_scores(client).values())  # nothing seen yet
        for start in range(0, 60, 20):
            client.post("/v1/predict", json={"texts": same[start:start + 20]})
        calm = drift_scores(client)
        for start in range(0, 60, 20):
            client.post("/v1/predict", json={"texts": other[start:start + 20]})
        drifted = drift_scores(client)
        inputs = metric_values(client.get("/metrics").text)[("bertkit_drift_window_inputs", ())]
    assert set(calm) == {"text_length", "unk_rate", "max_probability"}
    assert max(calm.values()) < DRIFT_THRESHOLD / 2, calm
    assert drifted["text_length"] > DRIFT_THRESHOLD and drifted["unk_rate"] > DRIFT_THRESHOLD, \
        drifted
    assert inputs == 60


def test_no_training_stats_no_drift_metrics_and_keys_hide_label_names(sentiment, tmp_path):
    folder = tmp_path / "no-stats"
    shutil.copytree(sentiment["out"], folder)
    os.remove(folder / TRAINING_STATS_FILE)
    keys = tmp_path / "keys.txt"
    keys.write_text("a-test-key-123456\n")
    with client_for(str(folder), api_keys_file=str(keys)) as client:
        client.post("/v1/predict", json={"texts": ["a great film"]},
                    headers={"Authorization": "Bearer a-test-key-123456"})
        text = client.get("/metrics").text
    assert "bertkit_drift" not in text and "bertkit_training_label_share" not in text
    assert 'bertkit_predictions_total{label="1"} 1.0' in text  # positive, by id
    assert "positive" not in text and "negative" not in text


def test_a_bad_training_stats_file_is_one_line(sentiment, tmp_path):
    folder = tmp_path / "bad-stats"
    shutil.copytree(sentiment["out"], folder)
    (folder / TRAINING_STATS_FILE).write_text('{"text_length": {"mean": "long"}}')
    with pytest.raises(ValueError, match=r"training_stats.json: field 'text_length' must be"):
        create_app(ServeConfig(model=str(folder)))


# =========================================================================== stream monitor


def monitor(folder, records, tmp_path, name="run", **options):
    path = write_jsonl(tmp_path / f"{name}.jsonl", records)
    out, err = io.StringIO(), io.StringIO()
    config = MonitorConfig(folder, path, out=str(tmp_path / name), time_field="ts",
                           window="5m", **options)
    result = run_monitor(config, stdout=out, stderr=err)
    alerts = [json.loads(line) for line in out.getvalue().splitlines()]
    return result, alerts


def test_a_surge_raises_one_alert_within_one_window_and_a_steady_stream_none(sentiment,
                                                                              tmp_path):
    jump = 7 * 40 + 13  # record index where the negative share jumps from 0.2 to 0.7
    surge = stream(12, 40, lambda i: 0.2 if i < jump else 0.7, seed=0)
    steady = stream(12, 40, lambda i: 0.2, seed=0)
    result, alerts = monitor(sentiment["out"], surge, tmp_path, "surge", alert_zscore=3)
    assert len(result.windows) == 12 and result.records == 480
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    jump_time = surge[jump]["ts"]
    start = calendar.timegm(time.strptime(alert["window"]["start"], "%Y-%m-%dT%H:%M:%SZ"))
    assert jump_time - 300 <= start <= jump_time + 300          # within one window of the jump
    assert alert["label"] == "negative" and alert["share"] > 0.5
    assert 0.1 < alert["baseline"]["mean"] < 0.3 and alert["baseline"]["windows"] >= 3
    assert len(alert["examples"]) == 3
    assert all(any(w in t.split() for w in ("awful", "boring", "bad")) for t in alert["examples"])
    files = os.listdir(tmp_path / "surge")
    assert {"shares.jsonl", "alerts.jsonl", "trend.png"} <= set(files)
    assert json.loads(open(tmp_path / "surge" / "alerts.jsonl").read()) == alert
    shares = [json.loads(line) for line in open(tmp_path / "surge" / "shares.jsonl")]
    assert [w["count"] for w in shares] == [40] * 12
    assert open(tmp_path / "surge" / "trend.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    _, none = monitor(sentiment["out"], steady, tmp_path, "steady", alert_zscore=3)
    assert none == []


def test_each_episode_alerts_once_with_a_share_rule(sentiment, tmp_path):
    # two episodes of a high negative share (windows 3-5 and 8-9), calm between
    episodes = lambda i: 0.8 if 3 * 30 <= i < 6 * 30 or 8 * 30 <= i < 10 * 30 else 0.1  # noqa: E731
    result, alerts = monitor(sentiment["out"], stream(11, 30, episodes, seed=1), tmp_path,
                             alert="label=negative,share>0.4")
    flagged = [i for i, w in enumerate(result.windows) if w["alerts"]]
    assert flagged == [3, 8], [w["shares"] for w in result.windows]
    assert [a["rule"] for a in alerts] == ["share>0.4", "share>0.4"]
    assert alerts[0]["baseline"]["windows"] == 3  # the calm windows before the episode


class Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_webhook_reaches_a_local_receiver(sentiment, tmp_path, capsys):
    """Through `bertkit monitor`: the alert it prints is the one the receiver gets."""
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.received = []
    path = write_jsonl(tmp_path / "posts.jsonl",
                       stream(6, 20, lambda i: 0.1 if i < 60 else 0.9, seed=2))
    try:
        code = main(["monitor", "--model", sentiment["out"], "--input", path, "--time-field",
                     "ts", "--window", "5m", "--min-count", "5", "--out", str(tmp_path / "run"),
                     "--alert", "label=negative,share>0.5",
                     "--webhook", f"http://127.0.0.1:{server.server_port}/hook"])
    finally:
        server.shutdown()
    assert code == 0
    alerts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(alerts) == 1
    assert Receiver.received == [("application/json", alerts[0])]
    assert (tmp_path / "run" / "alerts.jsonl").is_file()


def test_stdin_without_a_time_field_uses_arrival_time(sentiment, monkeypatch):
    records = labelled(30, 5)
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in records)))
    result = run_monitor(MonitorConfig(sentiment["out"], "-", window="1h"), stderr=io.StringIO())
    assert result.records == 30 and len(result.windows) == 1
    assert result.windows[0]["counts"]["negative"] + result.windows[0]["counts"]["positive"] == 30


def test_follow_reads_a_growing_file(sentiment, tmp_path):
    path = tmp_path / "growing.jsonl"
    path.write_text("")
    records = stream(2, 10, lambda i: 0.5, seed=4)

    def write_slowly():
        with open(path, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
                f.flush()
                time.sleep(0.01)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    result = run_monitor(MonitorConfig(sentiment["out"], str(path), time_field="ts",
                                       window="5m", follow=True, idle_timeout=1.5),
                         stderr=io.StringIO())
    writer.join()
    assert result.records == 20 and [w["count"] for w in result.windows] == [10, 10]


@pytest.mark.parametrize("options, message", [
    ({"alert": "negative>0.4"}, r"--alert 'negative>0.4': expected 'label=NAME,share>X'"),
    ({"alert": "label=negative,share>1.5"}, r"the share 1.5 is not between 0 and 1"),
    ({"alert": "label=neg,share>0.4"}, r"--alert label 'neg' is not one of the model's "
                                       r"labels: negative, positive"),
    ({"alert": "label=negative,share>0.4", "alert_zscore": 3}, r"not both"),
    ({"window": "an hour"}, r"--window 'an hour': expected a duration"),
    ({"webhook": "ftp://x"}, r"--webhook 'ftp://x': expected an http"),
])
def test_bad_options_are_one_line_and_write_nothing(sentiment, tmp_path, options, message):
    path = write_jsonl(tmp_path / "in.jsonl", labelled(5, 0))
    with pytest.raises(ValueError, match=message) as error:
        run_monitor(MonitorConfig(sentiment["out"], path, out=str(tmp_path / "out"), **options))
    assert "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "out")


def test_a_bad_line_names_the_file_and_line_and_leaves_no_output(sentiment, tmp_path):
    good = json.dumps({"text": "a good film", "ts": T0})
    path = tmp_path / "in.jsonl"
    path.write_text(f"{good}\n{good}\n{{\"text\": \"x\"}}\n")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"in.jsonl line 3: field 'ts' must be epoch seconds "
                                         r"or an ISO 8601 time, got 'None' \(missing"):
        run_monitor(MonitorConfig(sentiment["out"], str(path), out=str(tmp_path / "out"),
                                  time_field="ts"), stderr=io.StringIO())
    assert path.read_bytes() == before and not os.path.exists(tmp_path / "out")
    assert not os.path.exists(tmp_path / "out.partial")


def test_alert_spec_parses():
    rule = parse_alert(" label = negative , share >= 0.25 ")
    assert (rule.label, rule.op, rule.threshold) == ("negative", ">=", 0.25)
    assert rule.breached(0.25) and not rule.breached(0.2)
