"""Load test of `bertkit serve` on loopback: N concurrent clients, a fixed number of requests,
with and without micro-batching.

For each mode the script starts its own server (``python -m bertkit serve`` on 127.0.0.1 and a
free port; no other traffic) and warms it up; then ``--clients`` concurrent clients (asyncio +
httpx, one keep-alive connection each) send ``--requests`` requests per mode, each with
``--texts-per-request`` texts of varied length (``--words``, default 4-120 words of real
English). The servers run
side by side and the load alternates between them in ``--rounds`` rounds, so background load
on a shared machine hits every mode alike; each mode is bounded by ``--time-limit`` seconds.

It reports throughput, p50/p99 latency, the error count (any non-200 answer or transport
error; it must be 0: the script exits 1 otherwise), and from each server's /metrics how many
requests it grouped into one micro-batch and how many texts went into one forward pass.

Modes: ``batching`` (the defaults: --max-batch, --max-wait-ms, --max-padding),
``no-batching`` (one request per model call), ``batching-padded`` (--max-padding 1: a whole
micro-batch in one forward pass, whatever the lengths).

The route is /v1/predict for a fine-tuned folder, /v1/embed otherwise (the default model,
all-MiniLM-L6-v2, is an encoder).

Run:  python benchmarks/serve_load.py [--model DIR] [--clients 16] [--requests 400]
          [--texts-per-request 1] [--threads 2] [--modes batching,no-batching,batching-padded]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from common import minilm_folder, print_table, varied_texts  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, extra: list[str], threads: int, log_path: str):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": REPO}
    env.pop("BERTKIT_API_KEYS", None)
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "bertkit", "serve", "--model", model,
                                "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}); see {log_path}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit(f"the server was not ready after 180 s; see {log_path}")


def stop_server(process) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def load(url: str, route: str, bodies: list[dict], clients: int, time_limit: float):
    """Send every body once from ``clients`` concurrent clients; (latencies, errors, seconds)."""
    latencies: list[float] = []
    errors: list[str] = []
    next_index = 0
    deadline = time.monotonic() + time_limit

    async def client():
        nonlocal next_index
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while next_index < len(bodies) and time.monotonic() < deadline:
                body = bodies[next_index]
                next_index += 1
                start = time.perf_counter()
                try:
                    response = await http.post(route, json=body)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors, time.perf_counter() - start


def metric(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400, help="requests per mode")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--words", default="4-120", help="text length range in words")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-padding", type=float, default=0.25)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per mode")
    parser.add_argument("--modes", default="batching,no-batching",
                        help="of batching, no-batching, batching-padded (--max-padding 1: "
                             "any lengths in one forward pass)")
    parser.add_argument("--rounds", type=int, default=4, help="alternations between the modes")
    parser.add_argument("--log-dir", default="/tmp", help="where the server logs go")
    args = parser.parse_args()

    model = args.model or minilm_folder()
    from bertkit.config import BertConfig
    from bertkit.tasks.folder import folder_task
    try:
        folder_task(model, BertConfig.from_pretrained(model))
        route, name = "/v1/predict", "predict"
    except ValueError:
        route, name = "/v1/embed", "embed"
    low, _, high = args.words.partition("-")
    texts = varied_texts(args.requests * args.texts_per_request + 64, int(low), int(high or low),
                         seed=1)
    n = args.texts_per_request
    bodies = [{"texts": texts[i * n:(i + 1) * n]} for i in range(args.requests)]
    warmup = [{"texts": [t]} for t in texts[-64:]]

    modes = args.modes.split(",")
    for mode in modes:
        if mode not in ("batching", "no-batching", "batching-padded"):
            raise SystemExit(f"unknown mode {mode!r} (batching, no-batching, batching-padded)")
    label = os.path.basename(os.path.normpath(model)) if args.model else "all-MiniLM-L6-v2"
    print(f"model {label}, route {route}, {args.clients} "
          f"clients, {args.requests} requests x {n} text(s) of {args.words} words per mode, "
          f"{args.rounds} interleaved rounds, server torch threads {args.threads}, "
          f"cpu count {os.cpu_count()}", flush=True)
    # All servers up at once, the load alternating between them round by round: a noisy,
    # shared machine then slows every mode alike (an idle server costs nothing).
    servers = {}
    try:
        for mode in modes:
            padding = 1.0 if mode == "batching-padded" else args.max_padding
            extra = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                     "--max-padding", str(padding)]
            if mode == "no-batching":
                extra.append("--no-batching")
            log_path = os.path.join(args.log_dir, f"serve_load_{mode}.log")
            servers[mode] = start_server(model, extra, args.threads, log_path)
        stats = {mode: {"latencies": [], "errors": [], "seconds": 0.0} for mode in modes}
        before = {}
        for mode, (_, url) in servers.items():
            asyncio.run(load(url, route, warmup, min(args.clients, 8), 60))
            before[mode] = httpx.get(url + "/metrics").text
        per_round = -(-len(bodies) // args.rounds)
        for start in range(0, len(bodies), per_round):
            for mode, (_, url) in servers.items():
                latencies, errors, seconds = asyncio.run(
                    load(url, route, bodies[start:start + per_round], args.clients,
                         args.time_limit / args.rounds))
                stats[mode]["latencies"] += latencies
                stats[mode]["errors"] += errors
                stats[mode]["seconds"] += seconds
        after = {mode: httpx.get(url + "/metrics").text for mode, (_, url) in servers.items()}
    finally:
        for process, _ in servers.values():
            stop_server(process)

    rows, total_errors = [], 0
    for mode in modes:
        latencies, errors, seconds = (stats[mode][k] for k in ("latencies", "errors", "seconds"))
        calls = (metric(after[mode], "bertkit_batch_requests_count", route=name)
                 - metric(before[mode], "bertkit_batch_requests_count", route=name))
        grouped = (metric(after[mode], "bertkit_batch_requests_sum", route=name)
                   - metric(before[mode], "bertkit_batch_requests_sum", route=name))
        passes = (metric(after[mode], "bertkit_batch_size_count", route=name)
                  - metric(before[mode], "bertkit_batch_size_count", route=name))
        passed = (metric(after[mode], "bertkit_batch_size_sum", route=name)
                  - metric(before[mode], "bertkit_batch_size_sum", route=name))
        total_errors += len(errors)
        for e in errors[:3]:
            print(f"  {mode} error: {e}", file=sys.stderr)
        done = len(latencies)
        partial = "" if done == len(bodies) else " (time limit)"
        rows.append([mode, args.clients, f"{done}{partial}",
                     len(errors), f"{done / seconds:.1f}", f"{done * n / seconds:.1f}",
                     f"{statistics.median(latencies) * 1000:.0f}",
                     f"{percentile(latencies, 0.99) * 1000:.0f}",
                     f"{grouped / calls:.1f}" if calls else "-",
                     f"{passed / passes:.1f}" if passes else "-"])
    print()
    print_table(["mode", "clients", "requests", "errors", "requests/s", "texts/s", "p50 ms",
                 "p99 ms", "requests per micro-batch", "texts per forward pass"], rows)
    if total_errors:
        raise SystemExit(f"{total_errors} request(s) failed")


if __name__ == "__main__":
    main()
