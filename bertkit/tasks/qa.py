"""Extractive question answering (SQuAD v1.1 / v2.0): the answer is a span of the context.

Data: SQuAD JSON (:func:`bertkit.data.tasks.load_squad`). A long context is cut into
overlapping windows (``doc_stride``); the head
(:class:`~bertkit.modeling.bert.BertForQuestionAnswering`) scores each token as the answer's
start and end, and :func:`bertkit.data.tasks.postprocess_qa` picks the best span over all of a
question's windows (or "no answer" for SQuAD 2.0). All the QA fields of
:class:`~bertkit.tasks.base.TaskSettings` are recorded in the folder.

Predictions: ``{"answer": str, "start": int | None, "end": int | None, "score": float}`` with
``context[start:end] == answer``. Metrics: SQuAD exact match and F1 (percentages).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from bertkit.data.tasks import (QaExample, TaskDataset, encode_qa, load_squad, postprocess_qa,
                                qa_gold, qa_records, write_squad)
from bertkit.modeling.bert import BertForQuestionAnswering
from bertkit.tasks.base import (PredictInputs, RunFn, Split, Task, TaskSettings,
                                check_strings)
from bertkit.tasks.metrics import squad_metrics


class QaTask(Task):
    """Answer spans in a context for a question."""

    name = "qa"
    head = BertForQuestionAnswering
    default_metric = "f1"
    metrics_names = ("f1", "exact_match", "eval_loss")
    default_max_length = 384
    data_suffix = ".json"
    setting_names = ("max_length", "doc_stride", "max_query_length", "max_answer_length",
                     "n_best", "version_2", "null_threshold")

    def load_examples(self, path: str, require_label: bool = True) -> list:
        return load_squad(path)

    def examples_from_records(self, records: Sequence, source: str = "records",
                              require_label: bool = True) -> list:
        return qa_records(records, source)

    def write_examples(self, examples: Sequence, path: str) -> None:
        write_squad(examples, path)

    def encode(self, examples: Sequence, tokenizer, settings: TaskSettings,
               label2id: dict[str, int] | None, labelled: bool = True) -> TaskDataset:
        return encode_qa(examples, tokenizer, max_length=settings.max_length,
                         doc_stride=settings.doc_stride, training=labelled,
                         max_query_length=settings.max_query_length)

    def settings_from_data(self, examples: Sequence) -> dict[str, Any]:
        return {"version_2": any(ex.is_impossible for ex in examples)}

    def outputs(self, model_output, lengths: Sequence[int]) -> list[np.ndarray]:
        logits = torch.stack([model_output.start_logits, model_output.end_logits], 1)
        rows = logits.float().cpu().numpy()                                 # (B, 2, T)
        return [row[:, :length] for row, length in zip(rows, lengths)]      # B of (2, T_i)

    def answers(self, dataset: TaskDataset, outputs: list[np.ndarray],
                settings: TaskSettings) -> dict[str, dict]:
        """Question id -> the best answer over its windows (see ``postprocess_qa``)."""
        return postprocess_qa(dataset.features, [o[0] for o in outputs], [o[1] for o in outputs],
                              n_best=settings.n_best, max_answer_length=settings.max_answer_length,
                              version_2=settings.version_2,
                              null_threshold=settings.null_threshold)

    def metrics(self, split: Split, outputs: list[np.ndarray], settings: TaskSettings,
                id2label: dict[int, str] | None) -> dict:
        answers = self.answers(split.dataset, outputs, settings)
        return squad_metrics({qid: a["text"] for qid, a in answers.items()},
                             qa_gold(split.examples))

    def check_inputs(self, inputs: PredictInputs) -> None:
        if inputs.questions is None or inputs.contexts is None:
            raise ValueError("a question-answering model needs questions and contexts "
                             "(--question and --context)")
        if inputs.texts is not None or inputs.text_pairs is not None:
            raise ValueError("a question-answering model takes questions and contexts, not texts")
        check_strings("questions", inputs.questions)
        check_strings("contexts", inputs.contexts)
        if len(inputs.questions) != len(inputs.contexts):
            raise ValueError(f"{len(inputs.questions)} questions but {len(inputs.contexts)} "
                             "contexts")

    def predictions(self, inputs: PredictInputs, run: RunFn, settings: TaskSettings,
                    id2label: dict[int, str] | None) -> list[dict]:
        examples = [QaExample(str(i), q, c)
                    for i, (q, c) in enumerate(zip(inputs.questions, inputs.contexts))]
        if not examples:
            return []
        dataset, outputs = run(examples)
        answers = self.answers(dataset, outputs, settings)
        return [{"answer": a["text"], "start": a["start"], "end": a["end"], "score": a["score"]}
                for a in (answers[ex.id] for ex in examples)]


QA = QaTask()
