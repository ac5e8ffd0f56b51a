"""Where a training run's numbers go: ``metrics.jsonl``, TensorBoard, and a PNG of the curves.

Only rank 0 of a run creates a :class:`RunLogger`. Every event is a flat dict such as
``{"event": "train", "step": 20, "epoch": 0.4, "loss": 3.1, "lr": 1e-4, ...}`` or
``{"event": "eval", "step": 20, "eval_loss": 2.9, "accuracy": 0.41}``; the Trainer keeps the
same dicts in its resumable state (``log_history``), so a resumed run rewrites ``metrics.jsonl``
from that history and the file never holds the steps a killed run logged after its last
checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Iterable, Mapping

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"

# Keys of an event that describe it rather than measure something; never plotted or sent to
# TensorBoard.
_META_KEYS = {"event", "step", "epoch", "elapsed"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class RunLogger:
    """Appends events to ``out_dir/metrics.jsonl`` and to TensorBoard (``out_dir/tensorboard``).

    Args:
        out_dir: the run folder (created if missing).
        history: events already logged by the run (non-empty when resuming); ``metrics.jsonl`` is
            rewritten to hold exactly these before new events are appended.
        start_step: the optimizer step the run (re)starts from; TensorBoard discards events a
            previous session wrote after it (``purge_step``).
        tensorboard: write TensorBoard events (warns once and carries on if the package is
            missing).
    """

    def __init__(self, out_dir: str, history: Iterable[Mapping[str, Any]] = (),
                 start_step: int = 0, tensorboard: bool = True) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.metrics_path = os.path.join(out_dir, METRICS_FILE)
        tmp = self.metrics_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for event in history:
                f.write(json.dumps(event) + "\n")
        os.replace(tmp, self.metrics_path)
        self._jsonl = open(self.metrics_path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:  # deferred: tensorboard is optional, and slow to import
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the tensorboard package is optional at run time
                warnings.warn("tensorboard is not installed: TensorBoard logging is off "
                              "(pip install tensorboard)", stacklevel=2)
            else:
                self._tb = SummaryWriter(log_dir=os.path.join(out_dir, TENSORBOARD_DIR),
                                         purge_step=start_step + 1)

    def log(self, event: Mapping[str, Any]) -> None:
        """Write one event: a JSON line, and each numeric field as TensorBoard scalar
        ``<event>/<field>`` at ``event["step"]``."""
        self._jsonl.write(json.dumps(dict(event)) + "\n")
        self._jsonl.flush()  # a killed run keeps every line written so far
        if self._tb is not None and "step" in event:
            kind = event.get("event", "log")
            for key, value in event.items():
                if key not in _META_KEYS and _is_number(value) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, event["step"])

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_curves(history: Iterable[Mapping[str, Any]], path: str) -> str | None:
    """Draw training loss (and every numeric eval metric) against the step into a PNG.

    One panel for the losses (train ``loss`` and, when present, ``eval_loss``), then one panel
    per other eval metric. Uses matplotlib's Agg canvas directly, so it never changes the
    pyplot backend of the calling process. Returns ``path``, or None when there is nothing to
    draw.
    """
    history = list(history)
    train = [(e["step"], e["loss"]) for e in history
             if e.get("event") == "train" and _is_number(e.get("loss"))]
    evals = [e for e in history if e.get("event") == "eval"]
    metric_names: list[str] = []
    for e in evals:
        for key, value in e.items():
            if key not in _META_KEYS and _is_number(value) and key not in metric_names:
                metric_names.append(key)
    others = [m for m in metric_names if m != "eval_loss"]
    if not train and not metric_names:
        return None

    # deferred: matplotlib takes a second to import and only the end of a run draws
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 1 + len(others)
    fig = Figure(figsize=(4.5 * panels, 3.5), tight_layout=True)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]

    def series(name: str) -> tuple[list, list]:
        points = [(e["step"], e[name]) for e in evals if _is_number(e.get(name))]
        return [p[0] for p in points], [p[1] for p in points]

    ax = axes[0]
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train loss", lw=1)
    if "eval_loss" in metric_names:
        ax.plot(*series("eval_loss"), "o-", label="eval loss", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    for ax, name in zip(axes[1:], others):
        ax.plot(*series(name), "o-", lw=1.5, ms=3)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    return path
