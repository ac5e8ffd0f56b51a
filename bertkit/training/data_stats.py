"""The statistics of a fine-tuning run's data, saved in the model folder as
``training_stats.json``: what a served model's inputs and outputs are compared against to
see drift (:mod:`bertkit.serve.monitoring`).

Three signals, each computed per input by the same function here at training and at serving
time, so the two sides measure the same thing:

- ``text_length``: word-piece tokens of the text (+ pair), without special tokens or
  truncation;
- ``unk_rate``: the share of those tokens that are the unknown token (out-of-vocabulary text:
  another language, emoji, a new alphabet);
- ``max_probability``: the model's probability of its predicted class (classification only,
  measured on the dev set with the best model; unseen data of the training distribution).

Each is stored as a summary (count, mean, std, min, 5th/50th/95th percentile, max); with
``label_shares``, the share of each class in the training data. A task whose examples are
not single texts (NER word lists, QA pairs) gets no text signals, and a task without class
probabilities no ``max_probability``: the server then exports no drift metric for them.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Sequence

import numpy as np
from torch import nn

from bertkit.data.tasks import PaddingCollator
from bertkit.tasks.base import Split, Task, forward_items
from bertkit.tasks.classification import ClassificationTask
from bertkit.tasks.evaluate import write_json
from bertkit.tokenizer import Tokenizer

TRAINING_STATS_FILE = "training_stats.json"
STATS_VERSION = 1


def text_signals(tokenizer: Tokenizer, texts: Sequence[str],
                 pairs: Sequence[str | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per input: its length in word-piece tokens (text + pair, no special tokens, no
    truncation) and the share of those tokens that are the unknown token (0 for no tokens)."""
    pairs = list(pairs) if pairs is not None else [None] * len(texts)
    present = [p for p in pairs if p]
    ids = tokenizer.encode_plain(list(texts) + present)
    pair_ids = iter(ids[len(texts):])
    unk = tokenizer.unk_token_id
    lengths, unk_rates = [], []
    for text_ids, pair in zip(ids[:len(texts)], pairs):
        tokens = text_ids + (next(pair_ids) if pair else [])
        lengths.append(len(tokens))
        unk_rates.append(sum(t == unk for t in tokens) / len(tokens) if tokens else 0.0)
    return np.asarray(lengths, dtype=np.float64), np.asarray(unk_rates, dtype=np.float64)


def max_probabilities(logits: Sequence[np.ndarray]) -> np.ndarray:
    """The softmax probability of the top class of each row of logits (C,)."""
    rows = np.stack([np.asarray(row, dtype=np.float64) for row in logits])       # (N, C)
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))                     # (N, C)
    return shifted.max(axis=1) / shifted.sum(axis=1)                             # (N,)


def summary(values: Sequence[float]) -> dict:
    """count, mean, std (population), min, p05, p50, p95, max of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    p05, p50, p95 = np.percentile(values, [5, 50, 95])
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "p05": float(p05), "p50": float(p50),
            "p95": float(p95), "max": float(values.max())}


def training_stats(tokenizer: Tokenizer, train_examples: list, labels: list[str] | None,
                   dev_max_probabilities: np.ndarray | None = None) -> dict:
    """The ``training_stats.json`` object of a run (see the module docstring)."""
    stats: dict = {"version": STATS_VERSION}
    texts = [getattr(ex, "text", None) for ex in train_examples]
    if texts and all(isinstance(t, str) for t in texts):
        lengths, unk_rates = text_signals(tokenizer, texts,
                                          [getattr(ex, "text_pair", None) for ex in train_examples])
        stats["text_length"] = summary(lengths)
        stats["unk_rate"] = summary(unk_rates)
    if dev_max_probabilities is not None and len(dev_max_probabilities):
        stats["max_probability"] = summary(dev_max_probabilities)
    if labels:
        counts = Counter(getattr(ex, "label", None) for ex in train_examples)
        stats["label_shares"] = {name: counts[name] / len(train_examples) for name in labels}
    return stats


def write_training_stats(out_dir: str, model: nn.Module, task: Task, tokenizer: Tokenizer,
                         train_examples: list, dev: Split | None, labels: list[str] | None,
                         batch_size: int) -> None:
    """Write ``out_dir/training_stats.json`` for a finished fine-tuning run (``model``: the
    best model, measured on ``dev`` for the max-probability signal). Label shares and the
    max probability are kept for tasks that predict one class per input (classification and
    the tasks built on it); ``labels`` of other tasks (NER tags) are left out."""
    classes = labels if isinstance(task, ClassificationTask) and not task.regression else None
    probabilities = None
    if dev is not None and classes:
        outputs, _ = forward_items(model, task, dev.dataset,
                                   PaddingCollator(tokenizer.pad_token_id), batch_size)
        probabilities = max_probabilities(outputs)  # outputs: one row of class logits each
    write_json(os.path.join(out_dir, TRAINING_STATS_FILE),
               training_stats(tokenizer, train_examples, classes, probabilities))
