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
from dataclasses import dataclass, field
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


# A grid of at most this many panels a row: a long single row is unreadable at a glance.
PANELS_PER_ROW = 3
# The smallest y-range drawn, as a share of the values' size: a 0.001 change in a loss of 0.69
# must look like the flat line it is, not a cliff.
MIN_RELATIVE_SPAN = 0.05


@dataclass
class Series:
    """One curve of a panel: points (step, value) of a metric."""
    label: str
    steps: list[float]
    values: list[float]


@dataclass
class Panel:
    """One axis of the curves: its metric(s), the baselines drawn as dashed reference lines,
    and whether the values are shares in [0, 1] (then the y-axis starts at 0)."""
    title: str
    ylabel: str
    series: list[Series]
    baselines: list[Series] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [v for s in self.series + self.baselines for v in s.values]

    @property
    def is_share(self) -> bool:
        """Accuracy, F1 and the like: every value in [0, 1] and not a loss."""
        return not _is_loss(self.ylabel) and all(0.0 <= v <= 1.0 for v in self.values)


def _is_loss(name: str) -> bool:
    return name.endswith("loss") or name == "nll"


def _finite_points(events: list[Mapping[str, Any]], name: str) -> tuple[list, list]:
    points = [(e["step"], float(e[name])) for e in events
              if _is_number(e.get(name)) and _is_number(e.get("step")) and math.isfinite(e[name])]
    return [p[0] for p in points], [p[1] for p in points]


def _baseline_target(name: str, metrics: list[str]) -> str | None:
    """The metric a baseline (a name holding "baseline", e.g. ``mlm_unigram_baseline``) is a
    baseline for: ``<prefix>_accuracy`` when there is one, else the first other metric of the
    same prefix (the text before the first "_"), else None (it gets a panel of its own)."""
    prefix = name.split("_")[0]
    same = [m for m in metrics if m.split("_")[0] == prefix and "baseline" not in m
            and not _is_loss(m)]
    preferred = f"{prefix}_accuracy"
    return preferred if preferred in same else (same[0] if same else None)


def curve_panels(history: Iterable[Mapping[str, Any]]) -> list[Panel]:
    """The panels :func:`plot_curves` draws, in order: one "loss" panel (the training loss and
    every evaluated loss), then one panel per other evaluated metric, its baselines folded in
    as reference lines. Empty when there is nothing to draw."""
    history = list(history)
    train = [e for e in history if e.get("event") == "train"]
    evals = [e for e in history if e.get("event") == "eval"]
    metrics: list[str] = []
    for e in evals:
        metrics += [k for k, v in e.items()
                    if k not in _META_KEYS and _is_number(v) and k not in metrics]
    losses = [Series("train loss", *_finite_points(train, "loss"))]
    losses += [Series(f"eval {m}" if m == "loss" else m.replace("_", " "),
                      *_finite_points(evals, m)) for m in metrics if _is_loss(m)]
    panels = [Panel("loss", "loss", [s for s in losses if s.steps])]
    by_metric: dict[str, Panel] = {}
    for name in metrics:
        if _is_loss(name) or ("baseline" in name and _baseline_target(name, metrics)):
            continue
        by_metric[name] = Panel(name, name, [Series(name, *_finite_points(evals, name))])
    for name in metrics:
        target = _baseline_target(name, metrics) if "baseline" in name else None
        if target is not None and target in by_metric:
            by_metric[target].baselines.append(
                Series(name.replace("_", " "), *_finite_points(evals, name)))
    panels += by_metric.values()
    return [p for p in panels if any(s.steps for s in p.series)]


def _y_limits(panel: Panel) -> tuple[float, float]:
    """Shares from 0 (a 0.05 -> 0.07 accuracy reads as the small gain it is); anything else
    around its values, never narrower than MIN_RELATIVE_SPAN of their size."""
    values = panel.values
    low, high = min(values), max(values)
    if panel.is_share:
        top = min(1.0, math.ceil(high * 1.2 * 20) / 20) or 0.05
        return 0.0, top if top > high else high * 1.02 + 1e-9
    span = max(high - low, MIN_RELATIVE_SPAN * max(abs(low), abs(high)) or 1.0)
    middle = (low + high) / 2
    return middle - 0.55 * span, middle + 0.55 * span


def _draw_panel(ax, panel: Panel, max_step: float, best_step: int | None,
                first: bool) -> None:
    """One panel: curves (a lone evaluation as a labelled marker), dashed baselines, the best
    step as a dotted vertical line, shared x-range, y-label, legend only when it has labels."""
    # A lone curve needs no legend entry: the panel's title names it.
    named = len(panel.series) + len(panel.baselines) > 1
    for s in panel.series:
        label = s.label if named else None
        if len(s.steps) == 1:
            ax.plot(s.steps, s.values, "o", ms=6, label=label)
            ax.annotate(f"{s.values[0]:.4g}", (s.steps[0], s.values[0]),
                        textcoords="offset points", xytext=(-6, 7), ha="right", fontsize=8)
        elif s.label == "train loss":
            ax.plot(s.steps, s.values, lw=1, label=label)
        else:
            ax.plot(s.steps, s.values, "o-", lw=1.5, ms=3, label=label)
    for b in panel.baselines:
        if len(set(b.values)) == 1:  # a constant: one line across the whole run
            ax.axhline(b.values[0], ls="--", color="gray", lw=1, label=b.label)
        else:
            ax.plot(b.steps, b.values, ls="--", color="gray", lw=1, label=b.label)
    if best_step is not None:
        ax.axvline(best_step, ls=":", color="black", lw=1,
                   label=f"best (step {best_step})" if first else None)
    ax.set_xlim(0, max_step * 1.02 or 1)
    ax.set_ylim(*_y_limits(panel))
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def draw_curves(history: Iterable[Mapping[str, Any]], best_step: int | None = None):
    """The figure of :func:`plot_curves` (a matplotlib ``Figure`` on the Agg canvas), or None
    when there is nothing to draw. Panels (:func:`curve_panels`) fill a grid of at most
    PANELS_PER_ROW a row; every panel shares the run's step range."""
    history = list(history)
    panels = curve_panels(history)
    if not panels:
        return None
    # deferred: matplotlib takes a second to import and only the end of a run draws
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(len(panels), PANELS_PER_ROW)
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.3 * columns, 3.3 * rows), tight_layout=True)
    FigureCanvasAgg(fig)
    steps = [e["step"] for e in history if _is_number(e.get("step"))]
    for index, panel in enumerate(panels):
        ax = fig.add_subplot(rows, columns, index + 1)
        _draw_panel(ax, panel, max(steps, default=0), best_step, first=index == 0)
    return fig


def plot_curves(history: Iterable[Mapping[str, Any]], path: str,
                best_step: int | None = None) -> str | None:
    """Draw the run's curves into a PNG at ``path``: the losses in one panel, then one panel
    per evaluated metric with its baselines (e.g. ``mlm_unigram_baseline`` in the
    ``mlm_accuracy`` panel) as dashed lines, the best step (when given) as a dotted line.

    Uses matplotlib's Agg canvas directly, so it never changes the pyplot backend of the
    calling process. Returns ``path``, or None when there is nothing to draw.
    """
    fig = draw_curves(history, best_step)
    if fig is None:
        return None
    fig.savefig(path, dpi=100)
    return path
