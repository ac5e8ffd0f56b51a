"""Named-entity recognition: a BIO tag for every word, entities with character spans.

Data: CoNLL-2003 style files (:func:`bertkit.data.tasks.load_conll`). The head is
:class:`~bertkit.modeling.bert.BertForTokenClassification`; a word's tag is predicted on its
first sub-token (the one that carries its label in training).

Predictions: ``{"entities": [{"entity", "label", "start", "end"}]}`` with
``text[start:end] == entity``. Metrics: entity-level precision, recall, F1 (seqeval, conlleval
chunking) and a per-type report.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bertkit.data.tasks import (LabelMap, NerSentence, TaskDataset, build_label_map, encode_ner,
                                entities_from_text, load_conll, ner_predictions_to_words,
                                ner_records, split_words, write_conll)
from bertkit.modeling.bert import BertForTokenClassification
from bertkit.tasks.base import PredictInputs, RunFn, Split, Task, TaskSettings, check_texts
from bertkit.tasks.metrics import entity_metrics


class NerTask(Task):
    """Token classification with BIO tags over words."""

    name = "ner"
    head = BertForTokenClassification
    default_metric = "f1"
    metrics_names = ("f1", "precision", "recall", "eval_loss")
    has_label_map = True
    data_suffix = ".conll"

    def load_examples(self, path: str, require_label: bool = True) -> list:
        return load_conll(path)  # CoNLL lines always carry a tag

    def examples_from_records(self, records: Sequence, source: str = "records",
                              require_label: bool = True) -> list:
        return ner_records(records, source)

    def write_examples(self, examples: Sequence, path: str) -> None:
        write_conll(examples, path)

    def encode(self, examples: Sequence, tokenizer, settings: TaskSettings,
               label2id: dict[str, int] | None, labelled: bool = True) -> TaskDataset:
        return encode_ner(examples, tokenizer, label2id if labelled else None,
                          settings.max_length)

    def label_map(self, examples: Sequence, path: str) -> LabelMap:
        return build_label_map(examples)

    def head_config(self, labels: LabelMap | None) -> dict[str, Any]:
        return {"id2label": labels.id2label, "label2id": labels.label2id}

    def outputs(self, model_output, lengths: Sequence[int]) -> list[np.ndarray]:
        tags = model_output.logits.argmax(-1).cpu().numpy()                  # (B, T)
        return [row[:length] for row, length in zip(tags, lengths)]         # B of (T_i,)

    def metrics(self, split: Split, outputs: list[np.ndarray], settings: TaskSettings,
                id2label: dict[int, str] | None) -> dict:
        tags = ner_predictions_to_words(outputs, split.dataset.features, id2label)
        return entity_metrics([s.tags for s in split.examples], tags)

    def check_inputs(self, inputs: PredictInputs) -> None:
        check_texts(self, inputs, no_pairs="an NER model takes single texts, not text pairs")

    def predictions(self, inputs: PredictInputs, run: RunFn, settings: TaskSettings,
                    id2label: dict[int, str] | None) -> list[dict]:
        texts = list(inputs.texts)
        words = [split_words(t) for t in texts]
        has_words = [i for i, w in enumerate(words) if w]  # a text of spaces has no entities
        sentences = [NerSentence([w for w, _, _ in words[i]], ["O"] * len(words[i]),
                                 [i + 1] * len(words[i])) for i in has_words]
        results = [{"entities": []} for _ in texts]
        if sentences:
            dataset, outputs = run(sentences)
            tags = ner_predictions_to_words(outputs, dataset.features, id2label)
            for i, word_tags in zip(has_words, tags):
                results[i] = {"entities": entities_from_text(texts[i], word_tags, words[i])}
        return results


NER = NerTask()
