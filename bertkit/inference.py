"""Batched inference over lists of texts: the path `bertkit embed`, `predict` and serving use.

A model's cost grows with the padded batch size (B x T), but only real tokens are useful
work. Sorting texts by length before cutting them into batches puts texts of similar length
together, so each batch pads little; results are put back into the input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from bertkit.tokenizer import Tokenizer


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices into ``lengths`` in batches of ``batch_size``, longest texts first."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


@torch.inference_mode()
def run_batched(model: nn.Module, tokenizer: Tokenizer, texts: Sequence[str],
                reduce: Callable[[object, dict], torch.Tensor],
                text_pairs: Sequence[str] | None = None, batch_size: int = 32,
                max_length: int | None = None) -> list[torch.Tensor]:
    """Run ``model`` over ``texts`` in length-sorted batches.

    ``reduce(output, batch)`` turns one batch's model output into a (B, ...) tensor (e.g. pooled
    embeddings or logits); its rows come back as a list in the order of ``texts``. Texts longer
    than the model takes are truncated to ``max_length`` (default: the tokenizer's limit).
    """
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"texts and text_pairs must have the same length, got {len(texts)} "
                         f"and {len(text_pairs)}")
    device = next(model.parameters()).device
    lengths = [len(t) + (len(text_pairs[i]) if text_pairs is not None else 0)
               for i, t in enumerate(texts)]
    results: list[torch.Tensor | None] = [None] * len(texts)
    for indices in length_sorted_batches(lengths, batch_size):
        batch = tokenizer([texts[i] for i in indices],
                          [text_pairs[i] for i in indices] if text_pairs is not None else None,
                          max_length=max_length, truncation=True, padding=True)
        batch = {k: v.to(device) for k, v in batch.items()}
        reduced = reduce(model(**batch), batch).float().cpu()
        for row, index in enumerate(indices):
            results[index] = reduced[row]
    return results


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' vectors: (B, T, H), (B, T) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)                     # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embed(model: nn.Module, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 32,
          normalize: bool = False, max_length: int | None = None) -> torch.Tensor:
    """Sentence embeddings (mean of the last hidden states over real tokens): (len(texts), H).

    ``model`` is a :class:`~bertkit.BertModel` or any head (its encoder is used).
    """
    encoder = getattr(model, "bert", model)

    def pool(output, batch):
        return mean_pool(output.last_hidden_state, batch["attention_mask"])

    vectors = torch.stack(run_batched(encoder, tokenizer, texts, pool, batch_size=batch_size,
                                      max_length=max_length)) if texts else torch.empty(0)
    if normalize and len(texts):
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors
