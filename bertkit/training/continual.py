"""Continual fine-tuning: go on training a fine-tuned folder on new data without losing what it
knew (``bertkit finetune --model FINETUNED_DIR --train NEW``).

- **Labels**: the folder's label map is kept and the new training data's labels never seen
  before are appended (sorted), so every old label keeps its id; a new label that differs from
  an old one only in case or surrounding spaces is a ValueError naming file, line and both.
- **Head**: the folder's own head is loaded and its classifier grows one row per new label
  (old rows copied, new rows drawn as BERT initialises them).
- **Replay** (``replay``, ``replay_ratio``): a random sample of old examples joins the new
  ones, ``replay_ratio`` being the old share of the mixed training set.
- **Forgetting** (``old_test``): the old test set is scored with the folder as it was and
  with the fine-tuned model; ``metrics.json`` holds ``old_test`` (the model after) with
  ``before`` and ``forgetting`` (before - after) beside it.

A folder fine-tuned on another task is refused in one line. The functions here are called by
:func:`bertkit.training.finetune.run_finetuning`; they work for every task with a label map
and a linear ``classifier`` (classification, NER, relation).
"""

from __future__ import annotations

import os
import random
from typing import Iterator, Sequence

import torch
from torch import nn

from bertkit.config import BertConfig
from bertkit.data.tasks import LabelMap
from bertkit.tasks import TASKS, Split, Task, TaskSettings
from bertkit.tasks.base import TASK_KEY
from bertkit.tasks.evaluate import split_metrics

CONFIG_FILE = "config.json"


def folder_labels(model_folder: str, task: Task) -> LabelMap | None:
    """The label map of ``model_folder`` when it was fine-tuned on ``task`` (None for a base
    folder or a task without labels: the head starts fresh). A folder fine-tuned on another
    task (``bertkit_task``, or a transformers head class) is a ValueError."""
    config = BertConfig.from_pretrained(model_folder)
    recorded = config.extra.get(TASK_KEY)
    guessed = [t.name for t in TASKS.values() if t.has_label_map and t.is_head_of(config)]
    name = recorded if isinstance(recorded, str) and recorded in TASKS else \
        (guessed[0] if guessed else None)
    if name is not None and name != task.name:
        raise ValueError(f"{model_folder} is a fine-tuned {name} model ({CONFIG_FILE}); it "
                         f"continues with --task {name}, or fine-tune {task.name} from a base "
                         f"model folder")
    if name is None or not task.has_label_map or not config.id2label:
        return None
    return LabelMap(tuple(config.id2label[i] for i in range(len(config.id2label))))


def _label_lines(examples: Sequence) -> Iterator[tuple[str, int]]:
    """(label, line) of every label in ``examples``: an example's label, or an NER
    sentence's tags."""
    for ex in examples:
        if hasattr(ex, "tags"):
            yield from zip(ex.tags, ex.lines)
        elif ex.label is not None:
            yield ex.label, ex.line


def extend_label_map(old: LabelMap, fresh: LabelMap, examples: Sequence, path: str,
                     model_folder: str) -> LabelMap:
    """``old`` with the labels of ``fresh`` (the new training data's map) it lacks appended in
    ``fresh``'s order: old ids never move. A new label equal to an old one but for case or
    spaces is a ValueError naming ``path``, the line and both spellings."""
    known = {name.strip().lower(): name for name in old.names}
    added = [name for name in fresh.names if name not in old.names]
    for label, line in _label_lines(examples):
        if label in added and label.strip().lower() in known:
            raise ValueError(f"{path}:{line}: label {label!r} conflicts with the model's label "
                             f"{known[label.strip().lower()]!r} ({model_folder}/{CONFIG_FILE} "
                             "id2label); labels are compared exactly: use the model's spelling")
    return LabelMap(tuple(old.names) + tuple(added))


def check_old_labels(examples: Sequence, labels: LabelMap, path: str, model_folder: str) -> None:
    """A ValueError naming ``path``, the line and the label for a label of the old data
    (replay, old test set) that the model folder does not know."""
    for label, line in _label_lines(examples):
        if label not in labels.names:
            raise ValueError(f"{path}:{line}: label {label!r} is not one of the model's labels "
                             f"({model_folder}/{CONFIG_FILE}: {', '.join(labels.names)})")


def replay_sample(examples: list, ratio: float, num_new: int, seed: int) -> list:
    """A random sample of the old ``examples`` sized so that they are ``ratio`` of the mixed
    training set (``num_new`` new examples), at most all of them."""
    count = min(len(examples), round(num_new * ratio / (1 - ratio)))
    return random.Random(seed).sample(examples, count)


def build_head(task: Task, model_folder: str, labels: LabelMap | None,
               old_labels: LabelMap | None, verbose: bool) -> nn.Module:
    """The task's head on ``model_folder``: a fresh head for ``labels`` on a base folder, or
    (``old_labels`` given) the folder's own head with its classifier grown to ``labels``."""
    if old_labels is None:
        return task.head.from_pretrained(model_folder, verbose=verbose,
                                         **task.head_config(labels))
    model = task.head.from_pretrained(model_folder, verbose=verbose,
                                      **task.head_config(old_labels))
    grow_classifier(model, labels)
    return model


def grow_classifier(model: nn.Module, labels: LabelMap) -> None:
    """Give ``model.classifier`` (a Linear, H_in -> C) one output per label of ``labels``
    (C' >= C): the C old rows are copied, the new rows drawn as BERT initialises them
    (N(0, initializer_range), zero bias); the config's id2label / label2id follow."""
    old = model.classifier
    if not isinstance(old, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear classifier to grow")
    if len(labels) > old.out_features:
        grown = nn.Linear(old.in_features, len(labels)).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            nn.init.normal_(grown.weight, std=model.config.initializer_range)    # (C', H_in)
            nn.init.zeros_(grown.bias)                                            # (C',)
            grown.weight[:old.out_features] = old.weight                          # (C, H_in)
            grown.bias[:old.out_features] = old.bias                              # (C,)
        model.classifier = grown
    model.config.id2label, model.config.label2id = labels.id2label, labels.label2id
    model.num_labels = len(labels)


def metrics_before(task: Task, model_folder: str, split: Split, settings: TaskSettings,
                   batch_size: int, device: torch.device | str) -> dict:
    """The metrics of ``model_folder`` as it is (before the run trains it) on ``split``."""
    model = task.head.from_pretrained(model_folder, verbose=False).to(device).eval()
    return split_metrics(model, task, split, settings, task.id2label(model.config), batch_size,
                         full=False)


def forgetting_report(task: Task, before: dict, after: dict) -> dict:
    """The old test set's metrics after the run, with ``before`` (the folder's numbers) and
    ``forgetting`` (before - after) of each task metric (``eval_loss``: after - before)."""
    names = [k for k in task.metrics_names if k in before and k in after]
    return {**after, "before": {k: before[k] for k in names},
            "forgetting": {k: (after[k] - before[k]) if k in task.lower_is_better
                           else (before[k] - after[k]) for k in names}}


def forgetting_line(report: dict, path: str) -> str:
    """``"old test set F: accuracy 0.9500 before, 0.9000 after (forgetting +0.0500); ..."``."""
    return f"old test set {os.path.basename(path)}: " + "; ".join(
        f"{k} {report['before'][k]:.4f} before, {report[k]:.4f} after "
        f"(forgetting {report['forgetting'][k]:+.4f})" for k in report["before"]
        if k != "eval_loss")
