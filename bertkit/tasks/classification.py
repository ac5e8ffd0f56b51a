"""Sequence classification and regression: one text or a text pair -> a class, or a number.

Data: ``.csv`` / ``.tsv`` / ``.jsonl`` files read by :func:`bertkit.data.tasks.load_classification`
(``text`` + optional ``text_pair``, or the GLUE column names; label ``label``). The head is
:class:`~bertkit.modeling.bert.BertForSequenceClassification` over the pooled ``[CLS]``
vector: C = number of classes, or 1 output with an MSE loss for regression.

Predictions: ``{"label": str, "probabilities": {label: p}}`` (classification), ``{"score":
float}`` (regression). Metrics: accuracy, macro F1 and a per-class report; Pearson, Spearman
and MSE.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from bertkit.config import BertConfig
from bertkit.data.tasks import (ClassificationExample, LabelMap, TaskDataset, build_label_map,
                                classification_records, encode_classification,
                                load_classification, write_classification)
from bertkit.modeling.bert import BertForSequenceClassification
from bertkit.tasks.base import PredictInputs, RunFn, Split, Task, TaskSettings, check_texts
from bertkit.tasks.baseline import (BASELINE_NAME, REGRESSION_BASELINE_NAME,
                                    tfidf_classifier_predictions, tfidf_regressor_predictions)
from bertkit.tasks.metrics import classification_metrics, regression_metrics


class ClassificationTask(Task):
    """Single-label classification of a text or a text pair."""

    name = "classification"
    head = BertForSequenceClassification
    default_metric = "accuracy"
    metrics_names = ("accuracy", "macro_f1", "eval_loss")
    has_label_map = True
    data_suffix = ".jsonl"
    regression = False  # labels are class names (str), not numbers

    def load_examples(self, path: str, require_label: bool = True) -> list:
        return load_classification(path, regression=self.regression, require_label=require_label)

    def examples_from_records(self, records: Sequence, source: str = "records",
                              require_label: bool = True) -> list:
        return classification_records(records, source, regression=self.regression,
                                      require_label=require_label)

    def write_examples(self, examples: Sequence, path: str) -> None:
        write_classification(examples, path)

    def encode(self, examples: Sequence, tokenizer, settings: TaskSettings,
               label2id: dict[str, int] | None, labelled: bool = True) -> TaskDataset:
        if not labelled:
            examples = [dataclasses.replace(ex, label=None) for ex in examples]
        return encode_classification(examples, tokenizer, label2id, settings.max_length)

    def label_map(self, examples: Sequence, path: str) -> LabelMap:
        labels = build_label_map(examples)
        if len(labels) < 2:
            raise ValueError(f"{path}: every example has the label {labels.names[0]!r}; "
                             "classification needs at least two labels (numeric targets: "
                             "use the regression task)")
        return labels

    def head_config(self, labels: LabelMap | None) -> dict[str, Any]:
        return {"id2label": labels.id2label, "label2id": labels.label2id}

    def is_head_of(self, config: BertConfig) -> bool:
        return super().is_head_of(config) and not _one_output(config)

    def outputs(self, model_output, lengths: Sequence[int]) -> list[np.ndarray]:
        return list(model_output.logits.float().cpu().numpy())             # B of (C,)

    def metrics(self, split: Split, outputs: list[np.ndarray], settings: TaskSettings,
                id2label: dict[int, str] | None) -> dict:
        return logits_metrics(split, outputs, id2label)[0]

    def baseline_metrics(self, train_examples: Sequence, split: Split,
                         id2label: dict[int, str] | None) -> dict | None:
        names = [id2label[i] for i in range(len(id2label))]
        label2id = {name: i for i, name in enumerate(names)}
        predicted = tfidf_classifier_predictions(*_texts_and_labels(train_examples),
                                                 *_texts_and_labels(split.examples)[:2])
        metrics = classification_metrics([label2id[ex.label] for ex in split.examples],
                                         [label2id[p] for p in predicted], names)
        return {"method": BASELINE_NAME, "accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"]}

    def check_inputs(self, inputs: PredictInputs) -> None:
        check_texts(self, inputs)

    def predictions(self, inputs: PredictInputs, run: RunFn, settings: TaskSettings,
                    id2label: dict[int, str] | None) -> list[dict]:
        texts = list(inputs.texts)
        if not texts:
            return []
        pairs = list(inputs.text_pairs) if inputs.text_pairs is not None else [None] * len(texts)
        examples = [ClassificationExample(t, p, None, i + 1)
                    for i, (t, p) in enumerate(zip(texts, pairs))]
        _, outputs = run(examples)
        return self.results(outputs, id2label)

    def results(self, outputs: list[np.ndarray], id2label: dict[int, str] | None) -> list[dict]:
        """The prediction dicts of per-item logits."""
        names = [id2label[i] for i in range(len(id2label))]
        results = []
        for row in outputs:
            probs = torch.softmax(torch.from_numpy(row).double(), -1).tolist()
            results.append({"label": names[int(np.argmax(row))],
                            "probabilities": dict(zip(names, probs))})
        return results


class RegressionTask(ClassificationTask):
    """A number for a text or a text pair (STS-B style), one output trained with MSE."""

    name = "regression"
    default_metric = "pearson"
    metrics_names = ("pearson", "spearman", "mse", "eval_loss")
    lower_is_better = ("eval_loss", "mse")
    has_label_map = False
    regression = True

    def label_map(self, examples: Sequence, path: str) -> None:
        return None

    def head_config(self, labels: LabelMap | None) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def is_head_of(self, config: BertConfig) -> bool:
        return Task.is_head_of(self, config) and _one_output(config)

    def metrics(self, split: Split, outputs: list[np.ndarray], settings: TaskSettings,
                id2label: dict[int, str] | None) -> dict:
        return regression_metrics([ex.label for ex in split.examples],
                                  [float(row[0]) for row in outputs])

    def results(self, outputs: list[np.ndarray], id2label: dict[int, str] | None) -> list[dict]:
        return [{"score": float(row[0])} for row in outputs]

    def baseline_metrics(self, train_examples: Sequence, split: Split,
                         id2label: dict[int, str] | None) -> dict | None:
        predicted = tfidf_regressor_predictions(*_texts_and_labels(train_examples),
                                                *_texts_and_labels(split.examples)[:2])
        metrics = regression_metrics([ex.label for ex in split.examples], predicted)
        return {"method": REGRESSION_BASELINE_NAME,
                **{k: metrics[k] for k in self.metrics_names if k in metrics}}


def logits_metrics(split: Split, outputs: list[np.ndarray],
                   id2label: dict[int, str]) -> tuple[dict, list[int], list[int]]:
    """:func:`classification_metrics` of per-item logits (C,) against the split's label
    names, with the gold and predicted ids (tasks that add numbers of their own use them)."""
    names = [id2label[i] for i in range(len(id2label))]
    label2id = {name: i for i, name in enumerate(names)}
    y_true = [label2id[ex.label] for ex in split.examples]
    y_pred = [int(np.argmax(row)) for row in outputs]
    return classification_metrics(y_true, y_pred, names), y_true, y_pred


def _texts_and_labels(examples: Sequence[ClassificationExample]) -> tuple[list, list, list]:
    """(texts, text pairs, labels) of classification examples."""
    return ([ex.text for ex in examples], [ex.text_pair for ex in examples],
            [ex.label for ex in examples])


def _one_output(config: BertConfig) -> bool:
    """A sequence-classification config with one output: regression."""
    return config.problem_type == "regression" or bool(config.id2label and
                                                        len(config.id2label) == 1)


CLASSIFICATION = ClassificationTask()
REGRESSION = RegressionTask()
