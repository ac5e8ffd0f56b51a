"""Evaluation: a model's task metrics on a labelled data file, and how they are shown.

:func:`evaluate_folder` is what ``bertkit evaluate`` runs; :func:`split_metrics` is the same
measurement on an already loaded model and split (fine-tuning evaluates dev with it every
epoch, distillation compares teacher and student with it). :func:`print_report` and
:func:`headline` format the results; :func:`write_json` writes them.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from bertkit.tasks import get_task
from bertkit.tasks.base import Split, Task, TaskSettings, forward_items
from bertkit.tasks.folder import open_task_folder

REPORT_KEYS = ("report", "report_text")  # the per-class / per-type report and its table


def load_split(task: Task, path: str, tokenizer, settings: TaskSettings,
               label2id: dict[str, int] | None) -> Split:
    """Load, check and encode a labelled data file of ``task``: a label the model does not
    know (not in ``label2id``) is a ValueError naming the file and line."""
    return examples_split(task, task.load_examples(path), path, tokenizer, settings, label2id)


def examples_split(task: Task, examples: list, source: str, tokenizer, settings: TaskSettings,
                   label2id: dict[str, int] | None) -> Split:
    """Check and encode labelled ``examples`` of ``task`` (from a file or from records, see
    :meth:`~bertkit.tasks.Task.examples_from_records`) read from ``source``; a label the model
    does not know is a ValueError naming ``source`` and the line (record)."""
    task.check_labels(examples, label2id, source)
    return Split(source, examples, task.encode(examples, tokenizer, settings, label2id))


def split_metrics(model: nn.Module, task: Task, split: Split, settings: TaskSettings,
                  id2label: dict[int, str] | None, batch_size: int, full: bool) -> dict:
    """The task metrics of ``model`` on one split, with ``eval_loss`` (the mean loss);
    ``full`` adds the per-class/type report (``report``) and its printable table
    (``report_text``)."""
    collator = task.collator(_pad_id(model))
    outputs, loss = forward_items(model, task, split.dataset, collator, batch_size)
    metrics = task.metrics(split, outputs, settings, id2label)
    if loss is not None:
        metrics["eval_loss"] = loss
    if not full:
        metrics = {k: v for k, v in metrics.items() if k not in REPORT_KEYS}
    return metrics


def _pad_id(model: nn.Module) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def evaluate_folder(model_dir: str, data_path: str, batch_size: int = 64,
                    device: str | None = None, output: str | None = None,
                    runtime: str = "torch", model: nn.Module | None = None,
                    task: str | None = None) -> dict:
    """Evaluate a fine-tuned folder on a labelled data file of its task.

    Returns the same metrics as ``metrics.json`` holds for a split (classification:
    accuracy, macro_f1, report; regression: pearson, spearman, mse; NER: precision, recall,
    f1, report; QA: exact_match, f1) plus ``eval_loss`` and, for classification and NER,
    ``report_text`` (the printable table; see :func:`print_report`). A label the model does
    not know is a ValueError naming the file and line. With ``output`` the metrics (without
    ``report_text``) are also written there as JSON. ``runtime="onnx"`` runs the folder's
    exported ``model.onnx`` in onnxruntime (``bertkit export`` writes it). ``model`` (e.g. an
    int8 copy of the folder's model) replaces the folder's weights; tokenizer and settings
    still come from the folder. ``task`` names the task of a folder that records none (e.g.
    ``"retrieval"`` for a sentence-transformers folder: zero-shot retrieval metrics).
    """
    opened = open_task_folder(model_dir, device, runtime, task=task)
    model = opened.model if model is None else model
    task = opened.task
    id2label = task.id2label(model.config)
    label2id = {name: i for i, name in id2label.items()} if id2label is not None else None
    split = load_split(task, data_path, opened.tokenizer, opened.settings, label2id)
    metrics = split_metrics(model, task, split, opened.settings, id2label, batch_size, full=True)
    if output:
        write_json(output, metrics_for_json(metrics))
    return metrics


def print_report(task: str, metrics: dict, split: str = "test") -> None:
    """Print one split's metrics of the task named ``task``: the classification / entity
    report table when there is one, then the headline numbers."""
    if metrics.get("report_text"):
        print(f"\n{split} report ({task}):\n{metrics['report_text'].rstrip()}")
    names = get_task(task).metrics_names
    numbers = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                        if isinstance(v, float) and k in names)
    print(f"{split}: {numbers}")
    if metrics.get("baseline"):
        print(f"{split} {baseline_line(metrics['baseline'])}")


def baseline_line(baseline: dict) -> str:
    """``"baseline (tf-idf + logistic regression, same training file): accuracy 0.8000"``."""
    numbers = ", ".join(f"{k} {v:.4f}" for k, v in baseline.items() if isinstance(v, float))
    return f"baseline ({baseline['method']}, same training file): {numbers}"


def headline(task: str, metrics: dict) -> str:
    """The task's numbers in ``metrics``, in the task's order: ``"accuracy 0.9000, ..."``."""
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in get_task(task).metrics_names
                     if k in metrics)


def metrics_for_json(metrics: dict) -> dict:
    """``metrics`` without the printable table (``report_text``), for a JSON file."""
    return {k: v for k, v in metrics.items() if k != "report_text"}


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as indented JSON (metrics and reports a person opens)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
