"""Relation extraction: which relation holds between two marked entities of a sentence.

Data: ``.jsonl`` (inline ``<e1>…</e1>`` / ``<e2>…</e2>`` markers or ``e1``/``e2`` character
spans) or ``.csv`` / ``.tsv`` with inline markers (:mod:`bertkit.data.relation`). Fine-tuning
adds the entity-marker tokens ``[E1] [/E1] [E2] [/E2]`` to the vocab (never split) and grows
the embedding table to match; the text is encoded with the markers around the entities.

The head, :class:`BertForRelationClassification`, is the "entity start" variant of Baldini
Soares et al. (2019, "Matching the Blanks"): the final hidden vectors of the ``[E1]`` and
``[E2]`` tokens, concatenated, then dropout and one linear layer. It is bertkit's own head:
transformers loads the folder's encoder (``BertModel.from_pretrained``) but has no class for
the head.

Predictions take texts with inline markers: ``{"label", "probabilities", "e1", "e2"}`` (the
entities' text). Metrics: accuracy, macro F1 and a per-relation report, and micro F1 over the
relations other than the "no relation" label (``Other``, ``no_relation`` ..., see
:data:`NO_RELATION_LABELS`) as SemEval-2010 Task 8 and TACRED score, equal to accuracy when
no such label is present.

Shapes: B batch, T tokens, H hidden size, C relations.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from bertkit.data.relation import (E1_START, E2_START, MARKER_TOKENS, RelationExample,
                                   encode_relation, load_relation, marked_text, parse_marked,
                                   relation_records, write_relation)
from bertkit.data.tasks import LabelMap, TaskDataset, build_label_map
from bertkit.modeling.bert import (BertModel, BertPreTrainedModel, ClassifierOutput,
                                   sequence_classification_loss)
from bertkit.tasks.base import PredictInputs, RunFn, Split, Task, TaskSettings, check_texts
from bertkit.tasks.baseline import BASELINE_NAME, tfidf_classifier_predictions
from bertkit.tasks.classification import CLASSIFICATION, logits_metrics
from bertkit.tasks.metrics import classification_metrics

ENTITY_START_IDS_KEY = "entity_start_token_ids"  # config.json: the ids of [E1] and [E2]
# Labels that mean "no relation" (compared lowercased): left out of the micro F1.
NO_RELATION_LABELS = ("other", "no_relation", "no relation", "no-relation", "none")
# How the bag-of-words baseline sees the markers: words of their own.
_BASELINE_MARKERS = (" e1start ", " e1end ", " e2start ", " e2end ")


class BertForRelationClassification(BertPreTrainedModel):
    """A relation classifier on the vectors of the two entity-start markers.

    ``config.extra["entity_start_token_ids"]`` holds the ids of ``[E1]`` and ``[E2]``; the
    first of each in a row is read (a row without one reads position 0, ``[CLS]``).
    ``labels`` (B,) are relation ids (cross-entropy).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        # No pooler: the marker vectors are read, and an unused layer would stall DDP.
        self.bert = BertModel(config, add_pooling_layer=False)
        p = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(2 * config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False,
                output_hidden_states: bool = False) -> ClassifierOutput:
        marker_ids = self.config.extra.get(ENTITY_START_IDS_KEY)
        if not isinstance(marker_ids, list) or len(marker_ids) != 2:
            raise ValueError(f"config has no {ENTITY_START_IDS_KEY} (the ids of {E1_START} and "
                             f"{E2_START}); fine-tune with the relation task to set it")
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions,
                        output_hidden_states)
        markers = torch.tensor(marker_ids, device=input_ids.device)          # (2,)
        starts = (input_ids[:, :, None] == markers).int().argmax(1)          # (B, 2)
        rows = torch.arange(input_ids.size(0), device=input_ids.device)[:, None]  # (B, 1)
        pair = out.last_hidden_state[rows, starts].flatten(1)                # (B, 2H)
        logits = self.classifier(self.dropout(pair))                          # (B, C)
        loss = None if labels is None else sequence_classification_loss(
            logits, labels, "single_label_classification")
        return ClassifierOutput(loss, logits, out.hidden_states, out.attentions)


class RelationTask(Task):
    """The relation between two marked entities of a sentence."""

    name = "relation"
    head = BertForRelationClassification
    default_metric = "macro_f1"
    metrics_names = ("accuracy", "macro_f1", "micro_f1", "eval_loss")
    has_label_map = True
    data_suffix = ".jsonl"
    added_tokens = MARKER_TOKENS

    def load_examples(self, path: str, require_label: bool = True) -> list:
        return load_relation(path, require_label=require_label)

    def examples_from_records(self, records: Sequence, source: str = "records",
                              require_label: bool = True) -> list:
        return relation_records(records, source, require_label=require_label)

    def write_examples(self, examples: Sequence, path: str) -> None:
        write_relation(examples, path)

    def encode(self, examples: Sequence, tokenizer, settings: TaskSettings,
               label2id: dict[str, int] | None, labelled: bool = True) -> TaskDataset:
        return encode_relation(examples, tokenizer, label2id if labelled else None,
                               settings.max_length)

    def label_map(self, examples: Sequence, path: str) -> LabelMap:
        labels = build_label_map(examples)
        if len(labels) < 2:
            raise ValueError(f"{path}: every example has the relation {labels.names[0]!r}; "
                             "relation extraction needs at least two labels")
        return labels

    def head_config(self, labels: LabelMap | None) -> dict[str, Any]:
        return {"id2label": labels.id2label, "label2id": labels.label2id}

    def prepare_model(self, model: nn.Module, tokenizer) -> None:
        super().prepare_model(model, tokenizer)  # the marker rows of the embedding table
        model.config.extra[ENTITY_START_IDS_KEY] = [tokenizer.vocab[E1_START],
                                                    tokenizer.vocab[E2_START]]

    def outputs(self, model_output, lengths: Sequence[int]) -> list[np.ndarray]:
        return list(model_output.logits.float().cpu().numpy())             # B of (C,)

    def metrics(self, split: Split, outputs: list[np.ndarray], settings: TaskSettings,
                id2label: dict[int, str] | None) -> dict:
        metrics, y_true, y_pred = logits_metrics(split, outputs, id2label)
        names = [id2label[i] for i in range(len(id2label))]
        metrics["micro_f1"] = micro_f1_without(y_true, y_pred, no_relation_ids(names))
        return metrics

    def baseline_metrics(self, train_examples: Sequence, split: Split,
                         id2label: dict[int, str] | None) -> dict | None:
        names = [id2label[i] for i in range(len(id2label))]
        label2id = {name: i for i, name in enumerate(names)}
        texts = [[marked_text(ex, _BASELINE_MARKERS) for ex in examples]
                 for examples in (train_examples, split.examples)]
        predicted = tfidf_classifier_predictions(
            texts[0], [None] * len(texts[0]), [ex.label for ex in train_examples],
            texts[1], [None] * len(texts[1]))
        y_true = [label2id[ex.label] for ex in split.examples]
        y_pred = [label2id[p] for p in predicted]
        metrics = classification_metrics(y_true, y_pred, names)
        return {"method": BASELINE_NAME, "accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"],
                "micro_f1": micro_f1_without(y_true, y_pred, no_relation_ids(names))}

    def check_inputs(self, inputs: PredictInputs) -> None:
        check_texts(self, inputs, no_pairs="a relation model takes single texts with "
                                           "<e1>…</e1> and <e2>…</e2> markers, not text pairs")
        for i, text in enumerate(inputs.texts):
            parse_marked(text, f"texts[{i}]")

    def predictions(self, inputs: PredictInputs, run: RunFn, settings: TaskSettings,
                    id2label: dict[int, str] | None) -> list[dict]:
        examples = [RelationExample(*parse_marked(text, f"texts[{i}]"), None, i + 1)
                    for i, text in enumerate(inputs.texts)]
        if not examples:
            return []
        _, outputs = run(examples)
        results = CLASSIFICATION.results(outputs, id2label)
        return [{**result, "e1": ex.entity(1), "e2": ex.entity(2)}
                for result, ex in zip(results, examples)]


def no_relation_ids(names: Sequence[str]) -> list[int]:
    """The ids of the labels in ``names`` that mean "no relation" (:data:`NO_RELATION_LABELS`)."""
    return [i for i, name in enumerate(names) if name.strip().lower() in NO_RELATION_LABELS]


def micro_f1_without(y_true: Sequence[int], y_pred: Sequence[int],
                     ignored: Sequence[int]) -> float:
    """Micro F1 over the labels not in ``ignored`` (the TACRED / SemEval rule for "no
    relation"): precision = correct / predicted, recall = correct / gold, both counting only
    examples whose predicted (resp. gold) label is not ignored. Without ignored labels this is
    the accuracy."""
    ignored = set(ignored)
    correct = sum(t == p and t not in ignored for t, p in zip(y_true, y_pred))
    predicted = sum(p not in ignored for p in y_pred)
    gold = sum(t not in ignored for t in y_true)
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


RELATION = RelationTask()
