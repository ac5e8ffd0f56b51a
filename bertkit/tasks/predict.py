"""Prediction with a fine-tuned folder: load it once (:func:`load_predictor`), predict many
times (:meth:`Predictor.predict`); :func:`predict_folder` does both in one call. ``bertkit
predict`` and ``bertkit serve`` use these.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import nn

from bertkit.data.tasks import TaskDataset
from bertkit.tasks.base import PredictInputs, Task, TaskSettings, forward_items
from bertkit.tasks.folder import open_task_folder
from bertkit.tokenizer import Tokenizer


class Predictor:
    """A fine-tuned folder loaded once, ready to predict many times.

    Holds ``model`` (eval mode), ``tokenizer``, ``task`` (a :class:`~bertkit.tasks.Task`;
    ``task.name`` is one of :data:`bertkit.tasks.TASKS`) and ``settings`` (the folder's
    :class:`~bertkit.tasks.TaskSettings`: max length, QA doc stride ...). Build one with
    :func:`load_predictor`. :meth:`predict` keeps no state between calls, so one Predictor
    may serve calls from several threads (the model is only read).
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, task: Task,
                 settings: TaskSettings):
        self.model, self.tokenizer, self.task, self.settings = model, tokenizer, task, settings
        self._collator = task.collator(tokenizer.pad_token_id)

    @property
    def labels(self) -> list[str] | None:
        """The label names of a classification/NER model, in id order (else None)."""
        id2label = self.task.id2label(self.model.config)
        return [id2label[i] for i in range(len(id2label))] if id2label else None

    def predict(self, texts: Sequence[str] | None = None, text_pairs: Sequence[str] | None = None,
                questions: Sequence[str] | None = None, contexts: Sequence[str] | None = None,
                batch_size: int = 32) -> list[dict]:
        """Predict on a list of inputs; one dict per input, in order (see :func:`predict_folder`
        for the inputs each task takes and the dicts it returns)."""
        inputs = PredictInputs(texts, text_pairs, questions, contexts)
        self.task.check_inputs(inputs)

        def run(examples: list) -> tuple[TaskDataset, list[np.ndarray]]:
            dataset = self.task.encode(examples, self.tokenizer, self.settings, None,
                                       labelled=False)
            outputs, _ = forward_items(self.model, self.task, dataset, self._collator, batch_size)
            return dataset, outputs

        return self.task.predictions(inputs, run, self.settings,
                                     self.task.id2label(self.model.config))


def load_predictor(folder: str, device: str | None = None, runtime: str = "torch") -> Predictor:
    """Load a fine-tuned folder (full model or PEFT adapter folder) once for many predictions.

    ``runtime`` picks the engine: ``"torch"`` (default) or ``"onnx"`` (an exported folder).
    """
    opened = open_task_folder(folder, device, runtime=runtime)
    return Predictor(opened.model, opened.tokenizer, opened.task, opened.settings)


def predict_folder(model_dir: str, texts: Sequence[str] | None = None,
                   text_pairs: Sequence[str] | None = None,
                   questions: Sequence[str] | None = None, contexts: Sequence[str] | None = None,
                   batch_size: int = 32, device: str | None = None,
                   runtime: str = "torch") -> list[dict]:
    """Predict with a fine-tuned folder; the task comes from its config.json.

    Loads the folder on every call: to predict many times, :func:`load_predictor` once and
    call :meth:`Predictor.predict`. ``runtime="onnx"`` runs the folder's exported
    ``model.onnx`` in onnxruntime (``bertkit export`` writes it).

    Inputs: ``texts`` (+ optional ``text_pairs``) for classification, regression and NER;
    ``questions`` and ``contexts`` (same length) for QA. Over-long inputs are truncated with
    a warning giving the count (QA contexts are windowed instead).

    Returns one dict per input, in order:

    - classification: ``{"label": str, "probabilities": {label: p}}``
    - regression: ``{"score": float}``
    - NER: ``{"entities": [{"entity", "label", "start", "end"}]}`` with
      ``text[start:end] == entity``
    - QA: ``{"answer": str, "start": int | None, "end": int | None, "score": float}`` with
      ``context[start:end] == answer`` (``""`` and None spans for a v2.0 "no answer").
    """
    predictor = load_predictor(model_dir, device, runtime)
    return predictor.predict(texts=texts, text_pairs=text_pairs, questions=questions,
                             contexts=contexts, batch_size=batch_size)
