"""Retrieval: a bi-encoder that embeds queries and documents apart, so a corpus is embedded
once and searched by cosine.

Data: ``.jsonl`` / ``.tsv`` files of ``query``, ``positive`` and an optional hard
``negative`` (:func:`bertkit.data.retrieval.load_retrieval`). The head,
:class:`BertForSentenceEmbedding`, is BERT plus a pooling (mean / cls / max, optionally
normalised); its loss is the multiple-negatives ranking loss (InfoNCE): for each query, a
cross-entropy over ``scale`` x cosine with every document of the batch (the positives of the
other queries and all hard negatives are its negatives), the positive being the class.

The fine-tuned folder is a plain BertModel folder in the sentence-transformers layout
(``modules.json``, ``1_Pooling/`` ...), so ``SentenceTransformer(folder)`` loads it with the same
vectors; ``config.json`` also records ``bertkit_pooling``, ``bertkit_normalize`` and
``bertkit_scale``. A sentence-transformers folder that records no task is evaluated zero-shot
with ``evaluate_folder(folder, data, task="retrieval")``.

Evaluation embeds the split's queries and its corpus (every positive and negative of the
split, deduplicated), ranks the corpus by cosine for each query and reports recall@1/5/10,
MRR@10 and nDCG@10 (:func:`bertkit.tasks.metrics.ranking_metrics`). Predictions: one
``{"embedding": [floats], "normalized": bool}`` per text.

Shapes: B queries, D documents in a batch, T tokens, H hidden size.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bertkit.checkpoint import save_model
from bertkit.config import SETTINGS_PREFIX, BertConfig
from bertkit.data.retrieval import (RetrievalCollator, RetrievalExample, encode_retrieval,
                                    load_retrieval, retrieval_records, write_retrieval)
from bertkit.data.tasks import TaskDataset
from bertkit.modeling.bert import BertModel, BertPreTrainedModel
from bertkit.modeling.pooling import (MODULES_FILE, Pooling, pool, read_max_seq_length,
                                      read_pooling, write_pooling)
from bertkit.tasks.base import PredictInputs, RunFn, Split, Task, TaskSettings, check_texts
from bertkit.tasks.metrics import RANKING_CUTOFF, ranking_metrics

POOLING_KEY, NORMALIZE_KEY = SETTINGS_PREFIX + "pooling", SETTINGS_PREFIX + "normalize"
SCALE_KEY, MAX_LENGTH_KEY = SETTINGS_PREFIX + "scale", SETTINGS_PREFIX + "max_length"


@dataclass
class SentenceEmbeddingOutput:
    loss: torch.Tensor | None
    query_embeddings: torch.Tensor                       # (B, H)
    document_embeddings: torch.Tensor | None = None      # (D, H)
    document_owner: torch.Tensor | None = None           # (D,): the query row of each document


class BertForSentenceEmbedding(BertPreTrainedModel):
    """A bi-encoder: BERT, then the pooling of ``config``'s ``bertkit_pooling`` /
    ``bertkit_normalize`` (mean, unnormalised by default).

    ``forward(input_ids, attention_mask, token_type_ids)`` embeds the queries; with
    ``document_input_ids`` ... (the batch of :class:`~bertkit.data.retrieval.RetrievalCollator`)
    it also embeds the documents and returns the multiple-negatives ranking loss, with
    ``positive_index`` (B,) the document row of each query's positive.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        # No pooler: sentence vectors come from the token vectors, and an unused layer would
        # stall DDP's gradient reduction.
        self.bert = BertModel(config, add_pooling_layer=False)

    @property
    def pooling(self) -> Pooling:
        extra = self.config.extra
        return Pooling(extra.get(POOLING_KEY, "mean"), extra.get(NORMALIZE_KEY, False))

    @property
    def scale(self) -> float:
        return float(self.config.extra.get(SCALE_KEY, TaskSettings.scale))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, strict: bool = True,
                        verbose: bool = True, **config_overrides: Any):
        """Load a folder; a sentence-transformers folder's own pooling, normalisation and
        ``max_seq_length`` become the config's ``bertkit_*`` settings (so a folder that
        records no task embeds as sentence-transformers embeds it)."""
        model = super().from_pretrained(folder, strict=strict, verbose=verbose,
                                        **config_overrides)
        extra = model.config.extra
        if os.path.isfile(os.path.join(folder, MODULES_FILE)):
            pooling = read_pooling(folder)
            extra[POOLING_KEY], extra[NORMALIZE_KEY] = pooling.mode, pooling.normalize
        max_seq_length = read_max_seq_length(folder)
        if max_seq_length is not None and MAX_LENGTH_KEY not in extra:
            extra[MAX_LENGTH_KEY] = min(max_seq_length, model.config.max_position_embeddings)
        return model

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write a plain BertModel folder (what sentence-transformers loads as its Transformer
        module) and the sentence-transformers files of the pooling."""
        save_model(self.bert, folder)
        max_length = self.config.extra.get(MAX_LENGTH_KEY, TaskSettings.max_length)
        write_pooling(folder, self.pooling, self.config.hidden_size, max_length)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """Sentence vectors of a padded batch: (N, T) -> (N, H)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)                  # (N, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                document_input_ids: torch.Tensor | None = None,
                document_attention_mask: torch.Tensor | None = None,
                document_token_type_ids: torch.Tensor | None = None,
                document_owner: torch.Tensor | None = None,
                positive_index: torch.Tensor | None = None) -> SentenceEmbeddingOutput:
        queries = self.encode(input_ids, attention_mask, token_type_ids)    # (B, H)
        if document_input_ids is None:
            return SentenceEmbeddingOutput(None, queries)
        documents = self.encode(document_input_ids, document_attention_mask,
                                document_token_type_ids)                     # (D, H)
        loss = None
        if positive_index is not None:
            cosines = F.normalize(queries, dim=-1) @ F.normalize(documents, dim=-1).T  # (B, D)
            loss = F.cross_entropy(self.scale * cosines, positive_index)
        return SentenceEmbeddingOutput(loss, queries, documents, document_owner)


class RetrievalTask(Task):
    """Bi-encoder retrieval on (query, positive[, negative]) pairs."""

    name = "retrieval"
    head = BertForSentenceEmbedding
    default_metric = "mrr@10"
    metrics_names = ("mrr@10", "ndcg@10", "recall@1", "recall@5", "recall@10", "eval_loss")
    setting_names = ("max_length", "pooling", "normalize", "scale")
    data_suffix = ".jsonl"

    def load_examples(self, path: str, require_label: bool = True) -> list:
        return load_retrieval(path, require_positive=require_label)

    def examples_from_records(self, records: Sequence, source: str = "records",
                              require_label: bool = True) -> list:
        return retrieval_records(records, source, require_positive=require_label)

    def write_examples(self, examples: Sequence, path: str) -> None:
        write_retrieval(examples, path)

    def encode(self, examples: Sequence, tokenizer, settings: TaskSettings,
               label2id: dict[str, int] | None, labelled: bool = True) -> TaskDataset:
        if not labelled:
            examples = [dataclasses.replace(ex, positive=None, negatives=()) for ex in examples]
        return encode_retrieval(examples, tokenizer, settings.max_length)

    def collator(self, pad_token_id: int) -> RetrievalCollator:
        return RetrievalCollator(pad_token_id)

    def settings_from_folder(self, folder: str) -> dict[str, Any]:
        pooling = read_pooling(folder)
        return {"pooling": pooling.mode, "normalize": pooling.normalize}

    def outputs(self, model_output: SentenceEmbeddingOutput,
                lengths: Sequence[int]) -> list[np.ndarray]:
        """Per query row: its vector, then those of its documents: (1 + documents, H)."""
        queries = model_output.query_embeddings.float().cpu().numpy()       # (B, H)
        rows = [[q] for q in queries]
        if model_output.document_embeddings is not None:
            documents = model_output.document_embeddings.float().cpu().numpy()  # (D, H)
            for owner, vector in zip(model_output.document_owner.tolist(), documents):
                rows[owner].append(vector)
        return [np.stack(row) for row in rows]

    def metrics(self, split: Split, outputs: list[np.ndarray], settings: TaskSettings,
                id2label: dict[int, str] | None) -> dict:
        return corpus_ranking_metrics(split.examples, outputs)

    def check_inputs(self, inputs: PredictInputs) -> None:
        check_texts(self, inputs, no_pairs="a retrieval model embeds single texts; it takes "
                                           "no text_pairs")

    def predictions(self, inputs: PredictInputs, run: RunFn, settings: TaskSettings,
                    id2label: dict[int, str] | None) -> list[dict]:
        examples = [RetrievalExample(text, None, (), i + 1)
                    for i, text in enumerate(inputs.texts)]
        if not examples:
            return []
        _, outputs = run(examples)
        return [{"embedding": row[0].tolist(), "normalized": settings.normalize}
                for row in outputs]


def corpus_ranking_metrics(examples: Sequence[RetrievalExample],
                           outputs: Sequence[np.ndarray]) -> dict:
    """Rank the corpus of ``examples`` (every positive and negative, deduplicated by text) by
    cosine for each distinct query; a query's relevant documents are its positives.
    ``outputs[i]``: example i's query vector, then its positive's and negatives' (rows)."""
    query_vectors: dict[str, np.ndarray] = {}
    corpus: dict[str, np.ndarray] = {}
    relevant: dict[str, set[str]] = defaultdict(set)
    for ex, rows in zip(examples, outputs):
        query_vectors.setdefault(ex.query, rows[0])
        for text, vector in zip((ex.positive, *ex.negatives), rows[1:]):
            corpus.setdefault(text, vector)
        relevant[ex.query].add(ex.positive)
    documents = list(corpus)
    doc_matrix = _unit_rows(np.stack([corpus[d] for d in documents]))       # (N, H)
    queries = list(query_vectors)
    scores = _unit_rows(np.stack([query_vectors[q] for q in queries])) @ doc_matrix.T  # (Q, N)
    top = min(RANKING_CUTOFF, len(documents))
    # argsort of the negated scores, stable: equal scores keep corpus order.
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    rankings = [[documents[j] for j in row] for row in ranked]
    metrics = ranking_metrics(rankings, [{d: 1 for d in relevant[q]} for q in queries])
    metrics["corpus_size"] = len(documents)
    return metrics


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


RETRIEVAL = RetrievalTask()
