"""`bertkit serve --ray` (issue 14): the app as an autoscaled Ray Serve deployment, on a local
Ray instance on 127.0.0.1 (about 45 s on 2 cores, most of it Ray starting and the autoscaler's
delays).

One test, in steps: the deployment starts with 1 replica; answers equal the library's
(predict_folder) and the API key is required as by `bertkit serve`; under concurrent load it
scales to 2 replicas and requests are answered by both (the x-bertkit-replica header); with
the load gone it scales back to 1. Options are checked without Ray running.

Skipped only when ray is not importable (it is the optional extra bertkit[ray]; CI installs
it: pip install -e .[test] pulls ray[serve]).
"""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from _serve_helpers import free_port, make_folder
from bertkit.modeling.bert import BertForSequenceClassification
from bertkit.serve.app import ServeConfig
from bertkit.serve.ray import APP_NAME, REPLICA_HEADER, RayOptions, app, start_ray_app
from bertkit.tasks.predict import predict_folder

KEY = "ray-test-key-123456"
AUTH = {"Authorization": f"Bearer {KEY}"}


def running_replicas(serve) -> int:
    status = serve.status().applications[APP_NAME].deployments["bertkit"]
    return status.replica_states.get("RUNNING", 0)


def wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not {what} after {timeout:.0f} s")
        time.sleep(0.25)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def ray_serve():
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    # replicas report their load every 0.5 s (default 10 s), so the scaler reacts in seconds
    for name in ("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
                 "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"):
        os.environ[name] = "0.5"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        yield serve
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning")
def test_replicas_answer_like_bertkit_serve_and_scale_up_and_down(ray_serve, tmp_path):
    serve = ray_serve
    started = time.monotonic()
    folder = make_folder(tmp_path / "clf", BertForSequenceClassification, "classification",
                         ["neg", "pos"])
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n")
    options = RayOptions(min_replicas=1, max_replicas=2, target_ongoing_requests=1,
                         upscale_delay_s=0, downscale_delay_s=1, look_back_period_s=1.5,
                         replica_cpus=0.5, max_ongoing_requests=8)
    url = start_ray_app(ServeConfig(model=folder, port=free_port(), api_keys_file=str(keys)),
                        options)
    assert running_replicas(serve) == 1
    texts = ["hello world", "the end", "café"]
    assert httpx.post(url + "/v1/predict", json={"texts": texts}).status_code == 401
    answer = httpx.post(url + "/v1/predict", json={"texts": texts}, headers=AUTH)
    for got, expected in zip(answer.json()["predictions"], predict_folder(folder, texts=texts),
                             strict=True):
        assert got["label"] == expected["label"]
        assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    first = answer.headers[REPLICA_HEADER]
    assert "bertkit_requests_total" in httpx.get(url + "/metrics").text

    answered_by: dict[str, int] = {}
    stop = threading.Event()

    def load():
        with httpx.Client(headers=AUTH, timeout=60) as client:
            while not stop.is_set():
                r = client.post(url + "/v1/predict", json={"texts": ["hello world"] * 8})
                assert r.status_code == 200
                replica = r.headers[REPLICA_HEADER]
                answered_by[replica] = answered_by.get(replica, 0) + 1

    workers = [threading.Thread(target=load) for _ in range(6)]
    for worker in workers:
        worker.start()
    try:
        up = wait_for(lambda: running_replicas(serve) == 2, 90, "scaled up to 2 replicas")
        before = dict(answered_by)
        time.sleep(2)  # requests spread over both
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    after_scale_up = {r: n - before.get(r, 0) for r, n in answered_by.items()}
    assert len(answered_by) == 2 and first in answered_by
    assert all(n > 0 for n in after_scale_up.values()), after_scale_up
    down = wait_for(lambda: running_replicas(serve) == 1, 90, "scaled back down to 1")
    print(f"\nray: scaled up in {up:.1f} s, down in {down:.1f} s; requests per replica "
          f"{answered_by}; test {time.monotonic() - started:.1f} s")


def test_options_are_checked_before_ray_starts(tmp_path):
    with pytest.raises(ValueError, match=r"--max-replicas 1 is below --min-replicas 2"):
        RayOptions(min_replicas=2, max_replicas=1)
    with pytest.raises(ValueError, match=r"--target-ongoing-requests must be a number above 0"):
        RayOptions(target_ongoing_requests=0)
    with pytest.raises(ValueError, match=r"serve run: unknown argument 'replicas'"):
        app({"model": str(tmp_path), "replicas": "2"})
    with pytest.raises(ValueError, match=r"serve run argument max_replicas='two': expected a "
                                         r"whole number"):
        app({"model": str(tmp_path), "max_replicas": "two"})
    assert RayOptions(min_replicas=1, max_replicas=3).autoscaling_config()["max_replicas"] == 3
