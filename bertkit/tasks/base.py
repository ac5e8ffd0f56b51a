"""The task interface: what every fine-tuning task says about itself, and the code they share.

A task (classification, NER, extractive QA ...) is one :class:`Task` object in its own module,
registered in :data:`bertkit.tasks.TASKS`. The object knows its example files, how examples
become model inputs, its head class, how the head's outputs become per-item arrays, predictions
and metrics. Everything around it -- fine-tuning, evaluation, prediction, serving, compression --
asks the task and never branches on its name.

Written once here, for every task:

- :class:`TaskSettings`: what a fine-tuned folder records besides its weights (max length, QA's
  doc stride ...), read from and written to ``config.json``'s ``bertkit_*`` keys in one place;
- :class:`Split`: a data file loaded and encoded (the examples keep what metrics compare with);
- :func:`forward_items`: the length-sorted forward pass over an encoded dataset;
- :func:`check_texts`: the input checks of the text tasks' predictions.

Shapes: B batch, T tokens (T_i one item's own length), C classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from bertkit.config import SETTINGS_PREFIX, BertConfig, replace_bertkit_settings
from bertkit.data.tasks import LabelMap, PaddingCollator, TaskDataset, check_labels
from bertkit.modeling.pooling import POOLING_MODES

TASK_KEY = SETTINGS_PREFIX + "task"    # the task's name


# ============================================================================ settings


@dataclass(frozen=True)
class TaskSettings:
    """What encoding and decoding need besides the weights, recorded in a fine-tuned folder's
    ``config.json`` as ``bertkit_<field>`` keys (which fields: the task's ``setting_names``).

    ``max_length`` counts special tokens; the QA fields shape the context windows and the
    answer search (see :func:`bertkit.data.tasks.encode_qa` and ``postprocess_qa``).
    """

    max_length: int = 128
    doc_stride: int = 128               # QA: tokens shared by consecutive context windows
    max_query_length: int = 64          # QA: longer questions are truncated
    max_answer_length: int = 30         # QA: longest answer, in tokens
    n_best: int = 20                    # QA: start/end candidates per window
    version_2: bool = False             # QA: allow "no answer" (SQuAD 2.0)
    null_threshold: float = 0.0         # QA v2: no answer when null score > best + this
    pooling: str = "mean"               # retrieval: mean | cls | max (bertkit.modeling.pooling)
    normalize: bool = False             # retrieval: unit-length sentence vectors
    scale: float = 20.0                 # retrieval: the ranking loss's scale on the cosines

    @classmethod
    def from_config(cls, config: BertConfig, task: "Task",
                    source: str = "config.json") -> "TaskSettings":
        """The settings ``config`` records, defaults for the others (``max_length``: the
        task's default capped by ``max_position_embeddings``). A value of the wrong type is a
        ValueError naming ``source`` and the key."""
        values: dict[str, Any] = {
            "max_length": min(task.default_max_length, config.max_tokens)}
        for f in dataclasses.fields(cls):
            key = SETTINGS_PREFIX + f.name
            if key in config.extra:
                values[f.name] = _checked_setting(f.name, config.extra[key], source)
        return cls(**values)

    def write_to(self, config: BertConfig, task: "Task") -> None:
        """Record ``task`` and its settings in ``config.extra`` (saved as config.json keys),
        replacing every ``bertkit_*`` key: a folder fine-tuned before may carry another
        task's settings."""
        replace_bertkit_settings(config.extra, {
            TASK_KEY: task.name,
            **{SETTINGS_PREFIX + name: getattr(self, name) for name in task.setting_names}})


def _checked_setting(name: str, value: Any, source: str) -> Any:
    """``value`` of setting ``name`` if it has the field's type, else a ValueError."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in ("version_2", "normalize"):
        ok, kind = isinstance(value, bool), "true or false"
    elif name == "null_threshold":
        ok, kind = number, "a number"
    elif name == "scale":
        ok, kind = number and value > 0, "a positive number"
    elif name == "pooling":
        ok, kind = value in POOLING_MODES, f"one of {', '.join(POOLING_MODES)}"
    else:
        least = 0 if name == "doc_stride" else 1
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
        kind = f"an integer >= {least}"
    if not ok:
        raise ValueError(f"{source}: {SETTINGS_PREFIX}{name} must be {kind}, got {value!r}")
    return value


# ============================================================================ data


@dataclass
class Split:
    """One data file, loaded and encoded: the examples keep what metrics compare against."""

    path: str
    examples: list
    dataset: TaskDataset


@dataclass
class PredictInputs:
    """What a prediction call was given: ``texts`` (+ ``text_pairs``) for the text tasks,
    ``questions`` and ``contexts`` for QA; the task checks which it takes."""

    texts: Sequence[str] | None = None
    text_pairs: Sequence[str] | None = None
    questions: Sequence[str] | None = None
    contexts: Sequence[str] | None = None


# Encode unlabelled examples and run the model over them: (dataset, per-item outputs).
RunFn = Callable[[list], tuple[TaskDataset, list[np.ndarray]]]


# ============================================================================ the interface


class Task:
    """One fine-tuning task. Subclasses set the class attributes and implement the methods
    that raise NotImplementedError; the others have defaults that fit most tasks."""

    name: str = ""
    head: type[nn.Module]                         # the model class fine-tuning builds
    default_metric: str = ""                      # selects the best checkpoint by default
    metrics_names: tuple[str, ...] = ()           # the numbers evaluation reports (any selects)
    lower_is_better: tuple[str, ...] = ("eval_loss",)
    default_max_length: int = 128
    setting_names: tuple[str, ...] = ("max_length",)  # the TaskSettings config.json records
    has_label_map: bool = False                   # class / tag names in config.json's id2label
    data_suffix: str = ""                         # the file type write_examples writes
    added_tokens: tuple[str, ...] = ()            # never-split tokens fine-tuning adds (markers)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------------ data
    def load_examples(self, path: str, require_label: bool = True) -> list:
        """Read a data file of the task (a ValueError naming file and line when it is bad)."""
        raise NotImplementedError

    def examples_from_records(self, records: Sequence, source: str = "records",
                              require_label: bool = True) -> list:
        """The examples of in-memory ``records`` (dicts with the fields of the task's file
        format, or the task's example objects), checked as :meth:`load_examples` checks a
        file; a ValueError names ``source:N`` for the N-th record (from 1)."""
        raise NotImplementedError(f"the {self.name} task reads files only, not records")

    def write_examples(self, examples: Sequence, path: str) -> None:
        """Write ``examples`` to ``path`` (ending in :attr:`data_suffix`) as a file that
        :meth:`load_examples` reads back to the same examples."""
        raise NotImplementedError(f"the {self.name} task cannot write its examples")

    def encode(self, examples: Sequence, tokenizer, settings: TaskSettings,
               label2id: dict[str, int] | None, labelled: bool = True) -> TaskDataset:
        """Model inputs for ``examples`` (with their labels when ``labelled``)."""
        raise NotImplementedError

    def label_map(self, examples: Sequence, path: str) -> LabelMap | None:
        """The label names of the training data ``examples`` (read from ``path``), or None
        for a task without named labels."""
        return None

    def check_labels(self, examples: Sequence, label2id: dict[str, int] | None,
                     path: str) -> None:
        """A ValueError naming file, line and label for a label the model does not know."""
        if label2id is not None:
            check_labels(examples, label2id, path)

    def settings_from_data(self, examples: Sequence) -> dict[str, Any]:
        """TaskSettings fields the data decides when the user did not (QA: version_2)."""
        return {}

    def settings_from_folder(self, folder: str) -> dict[str, Any]:
        """TaskSettings fields the model folder decides when the user did not (retrieval:
        the pooling of a sentence-transformers folder)."""
        return {}

    def collator(self, pad_token_id: int) -> Any:
        """What pads a list of encoded items into a batch (retrieval pads queries and
        documents apart)."""
        return PaddingCollator(pad_token_id)

    # ------------------------------------------------------------------ model
    def head_config(self, labels: LabelMap | None) -> dict[str, Any]:
        """Config overrides for a fresh head (labels, number of outputs)."""
        return {}

    def prepare_model(self, model: nn.Module, tokenizer) -> None:
        """Fit a head built for fine-tuning to the run's ``tokenizer`` (which holds
        :attr:`added_tokens`): grow the embedding table to the tokenizer's size."""
        if len(tokenizer) > model.config.vocab_size:
            model.resize_token_embeddings(len(tokenizer))

    def is_head_of(self, config: BertConfig) -> bool:
        """Whether a folder without ``bertkit_task`` (e.g. fine-tuned by transformers) is
        of this task, from its ``architectures``."""
        return (config.architectures or [None])[0] == self.head.__name__

    def id2label(self, config: BertConfig) -> dict[int, str] | None:
        """The model's label names by id (None for a task without named labels)."""
        return dict(config.id2label) if self.has_label_map else None

    def outputs(self, model_output: Any, lengths: Sequence[int]) -> list[np.ndarray]:
        """Per batch row, the array evaluation and prediction read (rows of token outputs
        cut to the item's own length ``lengths[i]``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ results
    def metrics(self, split: Split, outputs: list[np.ndarray], settings: TaskSettings,
                id2label: dict[int, str] | None) -> dict:
        """The task's metrics of ``outputs`` (from :func:`forward_items`) against ``split``."""
        raise NotImplementedError

    def baseline_metrics(self, train_examples: Sequence, split: Split,
                         id2label: dict[int, str] | None) -> dict | None:
        """The task's headline metrics of a bag-of-words baseline trained on
        ``train_examples`` and scored on ``split`` (bertkit.tasks.baseline), with its name
        under ``"method"``; None for a task without one."""
        return None

    def check_inputs(self, inputs: PredictInputs) -> None:
        """A ValueError / TypeError when ``inputs`` are not what the task predicts on."""
        raise NotImplementedError

    def predictions(self, inputs: PredictInputs, run: RunFn, settings: TaskSettings,
                    id2label: dict[int, str] | None) -> list[dict]:
        """One result dict per input, in order; ``run`` encodes and runs examples."""
        raise NotImplementedError


# ============================================================================ shared code


@torch.inference_mode()
def forward_items(model: nn.Module, task: Task, dataset: TaskDataset, collator: PaddingCollator,
                  batch_size: int) -> tuple[list[np.ndarray], float | None]:
    """Run ``model`` over every item of ``dataset`` in length-sorted batches.

    Sorting by length puts items of similar length in one batch, so little compute goes to
    padding; outputs are put back in item order. Returns the task's per-item arrays
    (:meth:`Task.outputs`: classification logits (C,), NER tag ids (T_i,), QA start and end
    logits (2, T_i)) and the mean loss when the items carry labels (else None).
    """
    device = _input_device(model)
    n = len(dataset)
    order = sorted(range(n), key=lambda i: -len(dataset[i]["input_ids"]))
    outputs: list[np.ndarray | None] = [None] * n
    loss_sum, loss_count = 0.0, 0
    for start in range(0, n, batch_size):
        indices = order[start:start + batch_size]
        batch = collator([dataset[i] for i in indices])
        lengths = batch["attention_mask"].sum(1).tolist()                   # (B,)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        out = model(**batch)
        if out.loss is not None:
            loss_sum += float(out.loss) * len(indices)
            loss_count += len(indices)
        for index, row in zip(indices, task.outputs(out, lengths)):
            outputs[index] = row
    return outputs, (loss_sum / loss_count if loss_count else None)


def _input_device(model) -> torch.device:
    """Where a batch goes: the model's parameters' device; CPU for an ONNX session."""
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


def check_texts(task: Task, inputs: PredictInputs, no_pairs: str | None = None) -> None:
    """The checks of a text task's prediction inputs: ``texts`` (a list of strings) and
    optional ``text_pairs`` of the same length; ``no_pairs``: the error message of a task
    that takes single texts only."""
    if inputs.questions is not None or inputs.contexts is not None:
        raise ValueError(f"a {task.name} model takes texts, not questions/contexts")
    if inputs.texts is None:
        raise ValueError(f"a {task.name} model needs texts to predict on")
    check_strings("texts", inputs.texts)
    if inputs.text_pairs is not None:
        if no_pairs:
            raise ValueError(no_pairs)
        check_strings("text_pairs", inputs.text_pairs)
        if len(inputs.text_pairs) != len(inputs.texts):
            raise ValueError(f"{len(inputs.texts)} texts but {len(inputs.text_pairs)} text_pairs")


def check_strings(name: str, values: Any) -> None:
    """A TypeError unless ``values`` is a list (sequence, not a str) of strings."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(v).__name__}")
