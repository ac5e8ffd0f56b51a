"""``bertkit monitor``: classify a stream of JSON lines and watch the share of each label over
time, alerting when one surges.

::

    JSONL records (stdin, a file, a growing file with --follow)
        ──batches──▶ Predictor (bertkit.tasks.predict) ──▶ label of each record
        ──▶ tumbling windows of --window (by --time-field, else arrival time)
        ──▶ per window: counts, shares ──▶ shares.jsonl, trend.png
        ──▶ rules (--alert 'label=negative,share>0.4' or --alert-zscore 3)
        ──▶ alerts: stdout (JSON lines), alerts.jsonl, --webhook (POST JSON)

A window closes when a record of a later window arrives, or at the end of the stream. A rule
is judged on every closed window holding at least ``min_count`` records. An *episode* is a
run of windows in which a label breaks its rule: the alert fires once, at the episode's first
window, with the evidence (the window, the label's share, its baseline, example texts), and
again only after a window where the rule holds.

- ``share`` rule: the label's share in the window compared with a fixed bound.
- ``zscore`` rule: for every label, ``(share - baseline mean) / baseline std`` above Z, where
  the baseline is the last ``baseline_windows`` judged windows outside an episode of that
  label (at least :data:`MIN_BASELINE` of them), and the std is at least the binomial noise
  of the window's count, ``sqrt(p (1 - p) / n)``, so a perfectly steady baseline does not
  make every small wobble an alert.

Files (``--out DIR``, written in ``DIR.partial`` while the monitor runs and moved to ``DIR``
when it stops -- at the end of the input or on Ctrl-C -- as every bertkit command does):
``shares.jsonl`` (one line per window), ``alerts.jsonl`` (one line per alert), ``trend.png``.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import queue
import re
import sys
import threading
import time
import urllib.request
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator, TextIO

from bertkit.data.tasks import TruncationWarning
from bertkit.outputs import output_folder
from bertkit.serve.monitoring import class_labels
from bertkit.tasks.predict import load_predictor

MIN_BASELINE = 3          # windows a z-score needs before it judges
MIN_STD = 0.01            # the smallest share std a z-score divides by
BATCH_WAIT_S = 0.2        # how long a batch waits for more lines of a slow stream
POLL_S = 0.2              # how often a followed file is checked for new lines
WEBHOOK_TIMEOUT_S = 5.0
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
ALERT_SPEC = re.compile(r"^\s*label\s*=\s*(?P<label>[^,]+?)\s*,\s*share\s*(?P<op>>=|<=|>|<)\s*"
                        r"(?P<value>[0-9]*\.?[0-9]+)\s*$")
ALERT_HELP = "expected 'label=NAME,share>X' (operators > >= < <=, X between 0 and 1)"


# ============================================================================ options


def parse_duration(text: str | float | int, option: str = "--window") -> float:
    """Seconds of ``"90"``, ``"30s"``, ``"15m"``, ``"1h"``, ``"2d"`` (a ValueError otherwise)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(text))
        if not match:
            raise ValueError(f"{option} {text!r}: expected a duration such as 30s, 15m, 1h, 2d")
        seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    if not 0 < seconds < math.inf:
        raise ValueError(f"{option} {text!r}: the duration must be above 0")
    return seconds


@dataclass(frozen=True)
class ShareRule:
    """``label=NAME,share>X``: the label's share in a window compared with X."""
    label: str
    op: str
    threshold: float

    def breached(self, share: float) -> bool:
        return {">": share > self.threshold, ">=": share >= self.threshold,
                "<": share < self.threshold, "<=": share <= self.threshold}[self.op]

    def __str__(self) -> str:
        return f"share{self.op}{self.threshold:g}"


def parse_alert(spec: str) -> ShareRule:
    """The :class:`ShareRule` of an ``--alert`` spec (a one-line ValueError otherwise)."""
    match = ALERT_SPEC.match(spec or "")
    if not match:
        raise ValueError(f"--alert {spec!r}: {ALERT_HELP}")
    threshold = float(match.group("value"))
    if not 0 <= threshold <= 1:
        raise ValueError(f"--alert {spec!r}: the share {threshold:g} is not between 0 and 1")
    return ShareRule(match.group("label"), match.group("op"), threshold)


@dataclass
class MonitorConfig:
    """What ``bertkit monitor`` takes (the CLI options, one to one)."""
    model: str
    input: str = "-"                      # a JSONL file, or "-" for stdin
    out: str | None = None                # shares.jsonl, alerts.jsonl, trend.png
    text_field: str = "text"
    time_field: str | None = None         # epoch seconds or ISO 8601; None: arrival time
    window: str | float = "1h"
    alert: str | None = None              # 'label=negative,share>0.4'
    alert_zscore: float | None = None     # or: any label's share Z baseline stds above
    baseline_windows: int = 24
    min_count: int = 10                   # records a window needs to be judged
    examples: int = 3                     # example texts in an alert
    webhook: str | None = None            # POST each alert as JSON here
    batch_size: int = 32
    follow: bool = False                  # keep reading a growing file (until Ctrl-C / idle)
    idle_timeout: float | None = None     # --follow: stop after this long without a new line
    device: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.window_seconds = parse_duration(self.window)
        if self.alert is not None and self.alert_zscore is not None:
            raise ValueError("give --alert or --alert-zscore, not both")
        self.rule = parse_alert(self.alert) if self.alert is not None else None
        if self.alert_zscore is not None and not (isinstance(self.alert_zscore, (int, float))
                                                  and 0 < self.alert_zscore < math.inf):
            raise ValueError(f"--alert-zscore must be a number above 0, got {self.alert_zscore!r}")
        for name in ("baseline_windows", "min_count", "examples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number of at "
                                 f"least 1, got {value!r}")
        if self.webhook is not None and not re.match(r"^https?://[^\s/]+", self.webhook):
            raise ValueError(f"--webhook {self.webhook!r}: expected an http:// or https:// URL")
        if self.follow and self.input == "-":
            raise ValueError("--follow reads a growing file; stdin is followed anyway")
        if self.idle_timeout is not None:
            self.idle_timeout = parse_duration(self.idle_timeout, "--idle-timeout")


# ============================================================================ windows and rules


@dataclass
class Window:
    """One tumbling window: [start, end) in epoch seconds, its label counts and the most
    confident example texts of each label."""
    start: float
    end: float
    counts: Counter = field(default_factory=Counter)
    confidence_sum: float = 0.0
    top: dict = field(default_factory=dict)   # label -> min-heap of (probability, order, text)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def add(self, label: str, probability: float, text: str, keep: int, order: int) -> None:
        self.counts[label] += 1
        self.confidence_sum += probability
        heap = self.top.setdefault(label, [])
        entry = (probability, -order, text)
        if len(heap) < keep:
            heapq.heappush(heap, entry)
        else:
            heapq.heappushpop(heap, entry)

    def share(self, label: str) -> float:
        return self.counts[label] / self.count if self.count else 0.0

    def examples(self, label: str) -> list[str]:
        return [text for _, _, text in sorted(self.top.get(label, []), reverse=True)]

    def record(self, labels: list[str]) -> dict:
        """The window's line in shares.jsonl."""
        return {"start": iso(self.start), "end": iso(self.end), "count": self.count,
                "counts": {name: self.counts[name] for name in labels},
                "shares": {name: round(self.share(name), 6) for name in labels},
                "mean_confidence": round(self.confidence_sum / self.count, 6) if self.count
                else None}


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


class AlertJudge:
    """Judges closed windows against the rule and keeps the episodes: returns each alert
    once, at the first window of its episode (see the module docstring)."""

    def __init__(self, labels: list[str], rule: ShareRule | None, zscore: float | None,
                 baseline_windows: int, min_count: int, examples: int):
        if rule is not None and rule.label not in labels:
            raise ValueError(f"--alert label {rule.label!r} is not one of the model's labels: "
                             + ", ".join(labels))
        self.labels, self.rule, self.zscore = labels, rule, zscore
        self.baseline_windows, self.min_count, self.examples = baseline_windows, min_count, examples
        self.in_episode = {name: False for name in labels}
        self.history = {name: [] for name in labels}   # shares of windows outside episodes

    def judge(self, window: Window) -> list[dict]:
        if window.count < self.min_count or (self.rule is None and self.zscore is None):
            return []
        watched = [self.rule.label] if self.rule is not None else self.labels
        alerts = []
        for label in watched:
            share, baseline = window.share(label), self._baseline(label)
            breached, z = self._breached(label, share, window.count, baseline)
            if breached and not self.in_episode[label]:
                alerts.append(self._alert(window, label, share, baseline, z))
            self.in_episode[label] = breached
            if not breached:
                history = self.history[label]
                history.append(share)
                del history[:-self.baseline_windows]
        return alerts

    def _baseline(self, label: str) -> dict | None:
        shares = self.history[label]
        if not shares:
            return None
        mean = sum(shares) / len(shares)
        std = math.sqrt(sum((s - mean) ** 2 for s in shares) / max(len(shares) - 1, 1))
        return {"mean": round(mean, 6), "std": round(std, 6), "windows": len(shares)}

    def _breached(self, label: str, share: float, count: int,
                  baseline: dict | None) -> tuple[bool, float | None]:
        if self.rule is not None:
            return self.rule.breached(share), None
        if baseline is None or baseline["windows"] < MIN_BASELINE:
            return False, None
        p = baseline["mean"]
        std = max(baseline["std"], math.sqrt(p * (1 - p) / count), MIN_STD)
        z = (share - p) / std
        return z > self.zscore, round(z, 3)

    def _alert(self, window: Window, label: str, share: float, baseline: dict | None,
               z: float | None) -> dict:
        alert = {"alert": "label_share", "label": label,
                 "rule": str(self.rule) if self.rule is not None else f"zscore>{self.zscore:g}",
                 "window": {"start": iso(window.start), "end": iso(window.end),
                            "count": window.count},
                 "share": round(share, 6), "count": window.counts[label], "baseline": baseline,
                 "examples": window.examples(label)[:self.examples]}
        if z is not None:
            alert["zscore"] = z
        return alert


class StreamMonitor:
    """Windows, shares and alerts over classified records; what it finds goes to ``on_window``
    (each closed window's record, with the labels alerted in it) and ``on_alert``."""

    def __init__(self, labels: list[str], window_seconds: float, judge: AlertJudge,
                 on_window: Callable[[dict], None], on_alert: Callable[[dict], None],
                 examples: int = 3):
        self.labels, self.width, self.judge = labels, window_seconds, judge
        self.on_window, self.on_alert, self.keep = on_window, on_alert, examples
        self.current: Window | None = None
        self.seen = 0
        self.windows = 0
        self.alerts = 0

    def add(self, timestamp: float, text: str, label: str, probability: float) -> None:
        start = math.floor(timestamp / self.width) * self.width
        if self.current is not None and start > self.current.start:
            self.close()
        if self.current is None:  # a late record (start < current) counts where it arrives
            self.current = Window(start, start + self.width)
        self.current.add(label, probability, text, self.keep, self.seen)
        self.seen += 1

    def close(self) -> None:
        """Close the current window (at a later record, or at the end of the stream)."""
        window, self.current = self.current, None
        if window is None or not window.count:
            return
        alerts = self.judge.judge(window)
        record = window.record(self.labels)
        record["alerts"] = [a["label"] for a in alerts]
        self.windows += 1
        self.on_window(record)
        for alert in alerts:
            self.alerts += 1
            self.on_alert(alert)


# ============================================================================ input


def _source_lines(path: str, follow: bool, idle_timeout: float | None,
                  stop: threading.Event) -> Iterator[str]:
    """The lines of ``path`` ("-": stdin); with ``follow``, lines appended later too, until
    ``stop`` is set or ``idle_timeout`` seconds pass without one."""
    if path == "-":
        yield from sys.stdin
        return
    with open(path, encoding="utf-8") as f:
        pending, last = "", time.monotonic()
        while not stop.is_set():
            chunk = f.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):  # a writer may be half-way through a line
                    yield pending
                    pending, last = "", time.monotonic()
                continue
            if not follow or (idle_timeout is not None
                              and time.monotonic() - last > idle_timeout):
                break
            time.sleep(POLL_S)
        if pending and not follow:
            yield pending


def _batches(lines: Iterator[str], batch_size: int,
             stop: threading.Event) -> Iterator[list[tuple[int, str]]]:
    """(line number, line) in batches of up to ``batch_size``: a batch is handed on when full
    or when the stream has been quiet for :data:`BATCH_WAIT_S` (a slow live stream is not
    held back waiting for a full batch). A reader thread keeps the stream flowing meanwhile."""
    found: queue.Queue = queue.Queue(maxsize=batch_size * 4)
    done = object()

    def read() -> None:
        try:
            for number, line in enumerate(lines, 1):
                found.put((number, line))
                if stop.is_set():
                    break
        except BaseException as error:  # noqa: BLE001 -- handed to the main thread
            found.put(error)
        found.put(done)

    threading.Thread(target=read, daemon=True, name="bertkit-monitor-reader").start()
    batch: list[tuple[int, str]] = []
    while True:
        try:
            item = found.get(timeout=BATCH_WAIT_S) if batch else found.get()
        except queue.Empty:
            yield batch
            batch = []
            continue
        if item is done:
            break
        if isinstance(item, BaseException):
            raise item
        batch.append(item)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def parse_record(line: str, where: str, text_field: str,
                 time_field: str | None) -> tuple[str, float | None] | None:
    """(text, timestamp) of one JSONL line (None for a blank line); a one-line ValueError
    naming ``where`` (file and line) and the field otherwise."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with a {text_field!r} field")
    text = record.get(text_field)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: field {text_field!r} must be a non-empty string"
                         + ("" if text_field in record else " (missing; see --text-field)"))
    if time_field is None:
        return text, None
    return text, _timestamp(record.get(time_field), where, time_field)


def _timestamp(value, where: str, name: str) -> float:
    """Epoch seconds of a number (epoch seconds) or an ISO 8601 string (UTC when naive)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return moment.timestamp()
    raise ValueError(f"{where}: field {name!r} must be epoch seconds or an ISO 8601 time, got "
                     f"{str(value)[:40]!r}" + ("" if value is not None else " (missing; see "
                                                                          "--time-field)"))


# ============================================================================ output


class AlertSinks:
    """Where windows and alerts go: stdout (alerts, one JSON line each), stderr (one line per
    window), ``alerts.jsonl`` / ``shares.jsonl`` in ``folder``, and ``webhook``."""

    def __init__(self, folder: str | None, webhook: str | None, model: str,
                 stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.folder, self.webhook, self.model = folder, webhook, model
        self.stdout, self.stderr = stdout or sys.stdout, stderr or sys.stderr
        self.windows: list[dict] = []
        self.webhook_failures = 0

    def window(self, record: dict) -> None:
        self.windows.append(record)
        shares = "  ".join(f"{k} {v:.2f}" for k, v in record["shares"].items())
        flag = ("  ALERT: " + ", ".join(record["alerts"])) if record["alerts"] else ""
        print(f"{record['start']}  n={record['count']}  {shares}{flag}", file=self.stderr,
              flush=True)
        self._append("shares.jsonl", record)

    def alert(self, alert: dict) -> None:
        alert = {"model": self.model, **alert}
        print(json.dumps(alert, ensure_ascii=False), file=self.stdout, flush=True)
        self._append("alerts.jsonl", alert)
        if self.webhook is not None:
            self._post(alert)

    def _append(self, name: str, record: dict) -> None:
        if self.folder is not None:
            with open(os.path.join(self.folder, name), "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _post(self, alert: dict) -> None:
        """POST the alert; a receiver that fails is reported on stderr, and monitoring goes on."""
        request = urllib.request.Request(self.webhook, data=json.dumps(alert).encode("utf-8"),
                                         headers={"Content-Type": "application/json"},
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
                response.read()
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
            self.webhook_failures += 1
            print(f"webhook {self.webhook} failed: {e}", file=self.stderr, flush=True)


def plot_trend(windows: list[dict], labels: list[str], path: str,
               rule: ShareRule | None = None) -> None:
    """A PNG of each label's share per window, alert windows marked, the rule's bound drawn."""
    # matplotlib is imported only to draw (it is slow to import, and monitoring may run
    # without --out).
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt  # (after choosing the backend)
    times = [datetime.fromisoformat(w["start"].replace("Z", "+00:00")) for w in windows]
    fig, ax = plt.subplots(figsize=(9, 4))
    for label in labels:
        ax.plot(times, [w["shares"][label] for w in windows], marker=".", label=label)
    for when, window in zip(times, windows):
        for label in window["alerts"]:
            ax.plot([when], [window["shares"][label]], "rx", markersize=10)
    if rule is not None:
        ax.axhline(rule.threshold, color="red", linestyle="--", linewidth=1,
                   label=f"{rule.label} {rule}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the window")
    ax.set_title("label shares per window (x: alert)")
    ax.legend(loc="upper left", fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ============================================================================ the command


@dataclass
class MonitorResult:
    """What :func:`run_monitor` saw: records, windows, alerts, and where the files are."""
    records: int
    windows: list[dict]
    alerts: int
    out: str | None


def run_monitor(config: MonitorConfig, stdout: TextIO | None = None,
                stderr: TextIO | None = None) -> MonitorResult:
    """Run ``bertkit monitor`` (see the module docstring) until the input ends, ``--follow``
    goes idle, or Ctrl-C; returns what it saw. Options are checked, the output folder too,
    and the model loaded before the first record is read."""
    if config.input != "-" and not os.path.isfile(config.input):
        raise FileNotFoundError(f"--input {config.input} does not exist")
    if config.out is None:
        return _monitor_into(config, None, stdout, stderr)
    inputs = {"--model": config.model, "--input": None if config.input == "-" else config.input}
    with output_folder(config.out, inputs=inputs, overwrite=config.overwrite) as staging:
        result = _monitor_into(config, str(staging), stdout, stderr)
    result.out = config.out
    return result


def _monitor_into(config: MonitorConfig, folder: str | None, stdout: TextIO | None,
                  stderr: TextIO | None) -> MonitorResult:
    predictor = load_predictor(config.model, device=config.device)
    labels = class_labels(predictor.task.name, predictor.labels)
    if labels is None:
        raise ValueError(f"{config.model} is a {predictor.task.name} model; bertkit monitor "
                         "watches the labels of a classification model")
    judge = AlertJudge(labels, config.rule, config.alert_zscore, config.baseline_windows,
                       config.min_count, config.examples)
    sinks = AlertSinks(folder, config.webhook, os.path.basename(os.path.normpath(config.model)),
                       stdout, stderr)
    monitor = StreamMonitor(labels, config.window_seconds, judge, sinks.window, sinks.alert,
                            config.examples)
    source = "<stdin>" if config.input == "-" else config.input
    stop = threading.Event()
    lines = _source_lines(config.input, config.follow, config.idle_timeout, stop)
    try:
        with warnings.catch_warnings():
            # over-long texts are truncated as `bertkit predict` does; no warning per batch
            warnings.simplefilter("ignore", TruncationWarning)
            for batch in _batches(lines, config.batch_size, stop):
                _classify(batch, predictor, monitor, config, source)
    except KeyboardInterrupt:  # Ctrl-C ends a live monitor: what it saw is kept
        print("stopped", file=sinks.stderr)
    finally:
        stop.set()
    monitor.close()
    if folder is not None and sinks.windows:
        plot_trend(sinks.windows, labels, os.path.join(folder, "trend.png"), config.rule)
    return MonitorResult(monitor.seen, sinks.windows, monitor.alerts, folder)


def _classify(batch: list[tuple[int, str]], predictor, monitor: StreamMonitor,
              config: MonitorConfig, source: str) -> None:
    """Parse, classify and add one batch of lines to ``monitor``."""
    arrival = time.time()
    records = []
    for number, line in batch:
        parsed = parse_record(line, f"{source} line {number}", config.text_field,
                              config.time_field)
        if parsed is not None:
            records.append(parsed)
    if not records:
        return
    predictions = predictor.predict(texts=[text for text, _ in records],
                                    batch_size=config.batch_size)
    for (text, timestamp), prediction in zip(records, predictions):
        label = prediction["label"]
        monitor.add(arrival if timestamp is None else timestamp, text, label,
                    prediction["probabilities"][label])
