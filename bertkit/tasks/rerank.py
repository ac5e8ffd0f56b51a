"""Re-ranking: a cross-encoder that reads a query and a document together and scores how well
they match -- slower than a bi-encoder (one forward pass per pair) but more exact, so it
re-orders a bi-encoder's top results.

Data: ``.jsonl`` / ``.tsv`` files of ``query``, ``document`` and ``label`` (1 relevant / 0 not,
or a relevance in [0, 1]; :func:`bertkit.data.retrieval.load_rerank`). The head is
:class:`BertForCrossEncoder`: BertForSequenceClassification with one output, trained with
binary cross-entropy on the logit. The folder is an ordinary one-output
``BertForSequenceClassification`` folder, so sentence-transformers' ``CrossEncoder(folder)``
loads it and gives the same scores (sigmoid of the logit). The task is the regression task's
code with another loss, labels and metrics.

Predictions: ``{"score": float}`` (the relevance probability) per (text, text_pair). Metrics:
MRR@10 and nDCG@10 of each query's documents ranked by score, and accuracy (score >= 0.5
against label >= 0.5).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bertkit.data.retrieval import load_rerank, rerank_records, write_rerank
from bertkit.data.tasks import LabelMap
from bertkit.modeling.bert import BertForSequenceClassification, ClassifierOutput
from bertkit.tasks.base import PredictInputs, Split, TaskSettings, check_texts
from bertkit.tasks.classification import RegressionTask
from bertkit.tasks.metrics import grouped_ranking_metrics


class BertForCrossEncoder(BertForSequenceClassification):
    """One relevance logit per (query, document) pair; ``labels`` (B,) floats in [0, 1] give
    the binary cross-entropy with logits. Saved as a BertForSequenceClassification folder."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False,
                output_hidden_states: bool = False) -> ClassifierOutput:
        out = super().forward(input_ids, attention_mask, token_type_ids, None,
                              output_attentions, output_hidden_states)
        if labels is not None:
            out.loss = F.binary_cross_entropy_with_logits(
                out.logits.squeeze(-1), labels.to(out.logits.dtype).view(-1))    # (B,) -> ()
        return out

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        super().save_pretrained(folder)
        # The architecture transformers and sentence-transformers know; the task itself is in
        # config.json's bertkit_task.
        self.config.architectures = [BertForSequenceClassification.__name__]
        self.config.save_pretrained(folder)


class RerankTask(RegressionTask):
    """A cross-encoder's relevance score for a (query, document) pair."""

    name = "rerank"
    head = BertForCrossEncoder
    default_metric = "mrr@10"
    metrics_names = ("mrr@10", "ndcg@10", "accuracy", "eval_loss")
    lower_is_better = ("eval_loss",)

    def load_examples(self, path: str, require_label: bool = True) -> list:
        return load_rerank(path, require_label=require_label)

    def examples_from_records(self, records: Sequence, source: str = "records",
                              require_label: bool = True) -> list:
        return rerank_records(records, source, require_label=require_label)

    def write_examples(self, examples: Sequence, path: str) -> None:
        write_rerank(examples, path)

    def head_config(self, labels: LabelMap | None) -> dict[str, Any]:
        return {"num_labels": 1}

    def metrics(self, split: Split, outputs: list[np.ndarray], settings: TaskSettings,
                id2label: dict[int, str] | None) -> dict:
        scores = [_probability(row) for row in outputs]
        labels = [float(ex.label) for ex in split.examples]
        try:
            metrics = grouped_ranking_metrics([ex.text for ex in split.examples], scores, labels)
        except ValueError as e:
            raise ValueError(f"{split.path}: {e} (every label is 0)") from None
        metrics["accuracy"] = float(np.mean([(s >= 0.5) == (y >= 0.5)
                                             for s, y in zip(scores, labels)]))
        return metrics

    def baseline_metrics(self, train_examples: Sequence, split: Split,
                         id2label: dict[int, str] | None) -> dict | None:
        return None  # the regression baseline's numbers are not ranking metrics

    def check_inputs(self, inputs: PredictInputs) -> None:
        check_texts(self, inputs)
        if inputs.text_pairs is None:
            raise ValueError("a rerank model scores pairs: give texts (queries) and text_pairs "
                             "(documents)")

    def results(self, outputs: list[np.ndarray], id2label: dict[int, str] | None) -> list[dict]:
        return [{"score": _probability(row)} for row in outputs]


def _probability(row: np.ndarray) -> float:
    """The relevance probability of one logit (sigmoid, as CrossEncoder.predict gives)."""
    return float(1.0 / (1.0 + np.exp(-float(row[0]))))


RERANK = RerankTask()
