"""Attention views: the per-layer, per-head attention probabilities of one input, and
attention rollout (Abnar & Zuidema, 2020) to the [CLS] token.

The maps come from the model's explicit attention path (``output_attentions=True``; the fused
SDPA kernel never materialises them). Rollout models how information flows through the
residual stream: each layer's head-averaged map A gets the identity added (the residual
connection) and its rows renormalised, ``Â = (A + I) / 2``, and the layers are multiplied,
``R = Â_L ⋯ Â_1``. Row 0 of R says how much each input token reaches [CLS] -- an account of
where information *flows*, not of what the prediction *depends on* (attributions answer that).

Shapes: L layers, N heads, T tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def attention_maps(model: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """Attention probabilities of a batch of one: (L, N, T, T), rows are queries."""
    output = model(**inputs, output_attentions=True)
    if not output.attentions:
        raise ValueError(f"{type(model).__name__} returned no attention maps")
    return torch.stack([a[0] for a in output.attentions]).float().cpu().numpy()  # (L, N, T, T)


def attention_rollout(maps: np.ndarray) -> np.ndarray:
    """Attention rollout of (L, N, T, T) maps: (T, T), row i = how much each token flows into
    token i at the top layer (rows sum to 1)."""
    mean = maps.mean(axis=1)                                                  # (L, T, T)
    length = mean.shape[-1]
    rolled = np.eye(length)
    for layer in mean:                                                        # bottom first
        residual = layer + np.eye(length)                                     # (T, T)
        residual = residual / residual.sum(-1, keepdims=True)
        rolled = residual @ rolled
    return rolled


def cls_rollout(maps: np.ndarray) -> np.ndarray:
    """(T,): how much each token reaches the [CLS] token (position 0) through the layers."""
    return attention_rollout(maps)[0]
