"""What ``/metrics`` says about a classifier's predictions and inputs, beside the request
metrics of app.py: a counter per predicted label, a histogram of the predicted class's
probability, and drift signals over a sliding window of the last inputs.

======================================  ===================================================
``bertkit_predictions_total{label}``    predictions by predicted label (classification)
``bertkit_prediction_confidence``       histogram of the predicted class's probability
``bertkit_training_label_share{label}`` each label's share of the training data
``bertkit_drift_score{signal}``         |window mean - training mean| / training std
``bertkit_drift_window_mean{signal}``   the signal's mean over the window
``bertkit_drift_training_mean{signal}`` its mean over the training data
``bertkit_drift_window_inputs``         inputs in the window (its size is ``drift_window``)
``bertkit_queued_tokens``               tokens queued or running in the micro-batcher
``bertkit_queue_limit_tokens``          the most it holds (``max_queued_tokens``); more: 429
======================================  ===================================================

Signals (``text_length``, ``unk_rate``, ``max_probability``) are those of
:mod:`bertkit.training.data_stats`, measured on each input the same way as on the training
data; ``bertkit finetune`` saves the training side as ``training_stats.json`` in the folder.
A folder without that file (fine-tuned before it existed, or elsewhere) gets no drift and no
training-share metric; a signal the file lacks gets none either. The score is a standardised
mean difference: 0 when the window looks like the training data, 1 when its mean is one
training standard deviation away. It stays NaN (no alert can fire) until the window holds
:data:`MIN_WINDOW_INPUTS` inputs.

Label values are the model's label names, or -- when the server has API keys, whose open
routes say nothing of the model -- the label ids ("0", "1" ...; ``/v1/info`` names them).
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque

from bertkit.jsonfile import read_json_object
from bertkit.tasks import get_task
from bertkit.tasks.classification import ClassificationTask
from bertkit.training.data_stats import TRAINING_STATS_FILE, text_signals

DRIFT_SIGNALS = ("text_length", "unk_rate", "max_probability")
# A window mean this few standard deviations from training is noise-free enough to judge only
# after some inputs; below this count the score is NaN.
MIN_WINDOW_INPUTS = 30
# The smallest standard deviation a score divides by: a training set without a single unknown
# token (std 0) would otherwise call one emoji infinite drift.
STD_FLOOR = {"text_length": 1.0, "unk_rate": 0.01, "max_probability": 0.01}
CONFIDENCE_BUCKETS = (.1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .99, 1.0)


def class_labels(task_name: str | None, labels: list[str] | None) -> list[str] | None:
    """``labels`` when the task predicts one class per input with probabilities (the
    classification task and those built on it), else None (no label metrics)."""
    if task_name is None:
        return None
    task = get_task(task_name)
    return labels if isinstance(task, ClassificationTask) and not task.regression else None


def load_training_stats(folder: str) -> dict | None:
    """The folder's ``training_stats.json`` (None when it has none); a ValueError naming the
    file and field when a signal in it is not a summary with a numeric mean and std."""
    path = os.path.join(folder, TRAINING_STATS_FILE)
    if not os.path.isfile(path):
        return None
    stats = read_json_object(path)
    for name in DRIFT_SIGNALS:
        if name not in stats:
            continue
        entry = stats[name]
        if not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), (int, float)) and not isinstance(entry.get(k), bool)
                and math.isfinite(entry[k]) for k in ("mean", "std")):
            raise ValueError(f"{path}: field {name!r} must be an object with numeric 'mean' "
                             f"and 'std', got {str(entry)[:80]}")
    shares = stats.get("label_shares")
    if shares is not None and not isinstance(shares, dict):
        raise ValueError(f"{path}: field 'label_shares' must be an object of label -> share")
    return stats


class PredictionMonitor:
    """Per-label counters, the confidence histogram and the drift gauges of one app.

    :meth:`observe` is called with each micro-batch of /v1/predict inputs and their
    predictions (from the model thread); the gauges are read by /metrics.

    Args:
        registry: the app's Prometheus registry.
        tokenizer: the served tokenizer (the text signals are measured with it).
        labels: the classifier's label names in id order (None: not a classifier -- no label
            metrics, no max-probability signal).
        stats: the folder's training statistics (None: no drift metrics).
        window: how many of the last inputs the drift signals average over.
        public_labels: label names as metric label values (else ids: see the module docstring).
    """

    def __init__(self, registry, tokenizer, labels: list[str] | None, stats: dict | None,
                 window: int = 500, public_labels: bool = True):
        # prometheus_client is imported when an app is built (as app.py's Metrics does).
        from prometheus_client import Counter, Histogram
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"drift_window must be a whole number of at least 1, got {window!r}")
        self.tokenizer, self.labels = tokenizer, labels
        self.names = (labels if public_labels else [str(i) for i in range(len(labels))]) \
            if labels else None
        self._lock = threading.Lock()
        self.predictions = self.confidence = None
        if self.names:
            self.predictions = Counter("bertkit_predictions", "predictions by predicted label",
                                       ["label"], registry=registry)
            for name in self.names:  # every label's series exists from the start (rates work)
                self.predictions.labels(name)
            self.confidence = Histogram("bertkit_prediction_confidence", "the predicted "
                                        "class's probability", registry=registry,
                                        buckets=CONFIDENCE_BUCKETS)
        self.baseline = {}
        if stats is not None:
            self.baseline = {name: stats[name] for name in DRIFT_SIGNALS
                             if name in stats and (name != "max_probability" or self.names)}
            self._training_shares(registry, stats)
        self.windows = {name: deque(maxlen=window) for name in self.baseline}
        if self.baseline:
            self._drift_gauges(registry)

    def _training_shares(self, registry, stats: dict) -> None:
        from prometheus_client import Gauge  # as in __init__
        shares = stats.get("label_shares") or {}
        if not self.names or not shares:
            return
        gauge = Gauge("bertkit_training_label_share", "each label's share of the training data",
                      ["label"], registry=registry)
        for label, name in zip(self.labels, self.names):
            gauge.labels(name).set(float(shares.get(label, 0.0)))

    def _drift_gauges(self, registry) -> None:
        from prometheus_client import Gauge  # as in __init__
        self.score = Gauge("bertkit_drift_score", "|window mean - training mean| / training "
                           "std of an input signal (NaN until the window fills a little)",
                           ["signal"], registry=registry)
        self.window_mean = Gauge("bertkit_drift_window_mean", "a signal's mean over the "
                                 "window of the last inputs", ["signal"], registry=registry)
        training_mean = Gauge("bertkit_drift_training_mean", "a signal's mean over the "
                              "training data", ["signal"], registry=registry)
        self.window_inputs = Gauge("bertkit_drift_window_inputs", "inputs in the drift window",
                                   registry=registry)
        for name, summary in self.baseline.items():
            training_mean.labels(name).set(summary["mean"])
            self.score.labels(name).set(math.nan)
            self.window_mean.labels(name).set(math.nan)

    def observe(self, items: list, results: list) -> None:
        """Count one micro-batch of /v1/predict: ``items`` (texts or (text, pair) tuples) and
        ``results`` (prediction dicts; None for an input whose request went away)."""
        done = [(item, result) for item, result in zip(items, results) if result is not None]
        if not done:
            return
        confidences = []
        if self.names:
            for _, result in done:
                probabilities = result["probabilities"]
                self.predictions.labels(self.names[self.labels.index(result["label"])]).inc()
                confidences.append(probabilities[result["label"]])
                self.confidence.observe(confidences[-1])
        if not self.baseline:
            return
        values: dict = {}
        if "text_length" in self.baseline or "unk_rate" in self.baseline:
            texts = [item[0] if isinstance(item, tuple) else item for item, _ in done]
            pairs = [item[1] if isinstance(item, tuple) else None for item, _ in done]
            values["text_length"], values["unk_rate"] = text_signals(self.tokenizer, texts, pairs)
        values["max_probability"] = confidences
        with self._lock:
            for name, window in self.windows.items():
                window.extend(float(v) for v in values[name])
            self._update_gauges()

    def _update_gauges(self) -> None:
        for name, window in self.windows.items():
            mean = sum(window) / len(window)
            self.window_mean.labels(name).set(mean)
            baseline = self.baseline[name]
            std = max(baseline["std"], STD_FLOOR[name])
            score = abs(mean - baseline["mean"]) / std if len(window) >= MIN_WINDOW_INPUTS \
                else math.nan
            self.score.labels(name).set(score)
        self.window_inputs.set(max(len(w) for w in self.windows.values()))


def watch_queue(registry, batcher, limit: int) -> None:
    """Gauges of the micro-batcher's held tokens and its limit, read at each scrape (the
    queue-full alert fires before requests are turned away)."""
    from prometheus_client import Gauge  # as in PredictionMonitor
    Gauge("bertkit_queued_tokens", "tokens of requests queued or running in the model",
          registry=registry).set_function(lambda: batcher.queued_tokens)
    Gauge("bertkit_queue_limit_tokens", "the most tokens held at once (more: 429)",
          registry=registry).set(limit)
