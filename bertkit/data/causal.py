"""Data for decoder-only language models: documents packed into fixed-length blocks, the
collator of variable-length examples (dialogue), and the unigram baseline's perplexity.

Packing (as GPT-2 and most causal-LM pretraining): every document's tokens followed by the
end-of-text id, concatenated into one stream and cut into blocks of ``block_size`` tokens; the
tail shorter than a block is dropped. No position is padding, so no compute is wasted on it;
a block may hold the end of one document and the start of the next, separated by eos.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bertkit.modeling.bert import IGNORE_INDEX


def pack_documents(documents: Iterable[Sequence[int]], block_size: int,
                   eos_token_id: int) -> np.ndarray:
    """Token-id documents -> (N, block_size) int64 blocks of the stream ``doc eos doc eos ...``
    (the last partial block dropped)."""
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    pieces = []
    for ids in documents:
        if len(ids):
            pieces.append(np.asarray(ids, dtype=np.int64))
            pieces.append(np.asarray([eos_token_id], dtype=np.int64))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    blocks = len(stream) // block_size
    return stream[:blocks * block_size].reshape(blocks, block_size)


class PackedBlocks(Dataset):
    """(N, T) packed blocks as dataset items ``{"input_ids", "labels"}`` (labels = the ids:
    the model shifts them)."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = torch.from_numpy(np.ascontiguousarray(blocks))

    def __len__(self) -> int:
        return self.blocks.size(0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids}


class CausalCollator:
    """Items ``{"input_ids", "labels"}`` of any lengths -> a right-padded batch: ``input_ids``
    padded with ``pad_token_id``, ``labels`` with -100 (no loss), ``attention_mask`` 1/0."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            ids[row, :n] = torch.as_tensor(item["input_ids"])
            labels[row, :n] = torch.as_tensor(item.get("labels", item["input_ids"]))
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def unigram_perplexity(train_blocks: np.ndarray, heldout_blocks: np.ndarray,
                       vocab_size: int) -> float:
    """Perplexity on the held-out targets (every block position but the first, the ones a
    causal LM predicts) of the unigram model of the training tokens, add-one smoothed:
    ``p(w) = (count(w) + 1) / (N + V)``."""
    counts = np.bincount(train_blocks.reshape(-1), minlength=vocab_size).astype(np.float64)
    logp = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)
    targets = heldout_blocks[:, 1:].reshape(-1)
    return float(math.exp(-logp[targets].mean()))
