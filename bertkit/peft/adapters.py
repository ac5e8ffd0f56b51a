"""Bottleneck adapters: Houlsby et al. (2019) and the Pfeiffer et al. (2021) variant.

Each adapter is a small residual MLP applied to a sub-layer's output before the residual sum
(``EncoderLayer.adapters``, see :mod:`bertkit.modeling.layers`):

    adapter(h) = h + up(act(down(h)))           down: H -> m, up: m -> H

- Houlsby: one adapter after attention and one after the feed-forward in every layer; the
  layer norms are trained too, as in the paper.
- Pfeiffer: one adapter per layer, after the feed-forward only; layer norms stay frozen.

Initialisation: ``down`` is near zero (N(0, 0.01²), Houlsby's near-identity init) and ``up``
is exactly zero, so every adapter starts as the identity and the wrapped model's outputs equal
the base's bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bertkit.modeling.layers import ACTIVATIONS
from bertkit.peft.base import PeftMethod, PeftModel, encoder_layers, to_adapter_key

VARIANTS = ("houlsby", "pfeiffer")


class BottleneckAdapter(nn.Module):
    """h (B, T, H) -> h + up(act(down(h))) (B, T, H), with a bottleneck of ``size``."""

    def __init__(self, hidden_size: int, size: int, activation: str = "relu") -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, size)
        self.up = nn.Linear(size, hidden_size)
        self.activation = ACTIVATIONS[activation]
        nn.init.trunc_normal_(self.down.weight, std=1e-2, a=-2e-2, b=2e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.activation(self.down(hidden)))          # (B, T, H)


class BottleneckAdapters(PeftMethod):
    """Adapters in every encoder layer.

    Options: ``size`` (bottleneck width m, 64), ``variant`` ("houlsby" | "pfeiffer"),
    ``activation`` ("relu"; any of :data:`bertkit.modeling.layers.ACTIVATIONS`),
    ``train_layer_norms`` (None = the variant's rule: Houlsby yes, Pfeiffer no).
    """

    name = "adapter"
    peft_type = "BERTKIT_ADAPTER"
    defaults = {"size": 64, "variant": "houlsby", "activation": "relu", "train_layer_norms": None}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if not isinstance(o["size"], int) or isinstance(o["size"], bool) or o["size"] < 1:
            raise ValueError(f"adapter option size must be a positive integer, got {o['size']!r}")
        if o["variant"] not in VARIANTS:
            raise ValueError(f"adapter option variant must be one of {', '.join(VARIANTS)}, "
                             f"got {o['variant']!r}")
        if o["activation"] not in ACTIVATIONS:
            raise ValueError(f"adapter option activation must be one of "
                             f"{', '.join(ACTIVATIONS)}, got {o['activation']!r}")
        if o["train_layer_norms"] is None:
            o["train_layer_norms"] = o["variant"] == "houlsby"

    @property
    def places(self) -> tuple[str, ...]:
        return ("attention", "ffn") if self.options["variant"] == "houlsby" else ("ffn",)

    def _layer_names(self, peft: PeftModel) -> list[str]:
        prefix = "bert." if hasattr(peft.model, "bert") else ""
        return [f"{prefix}encoder.layers.{i}" for i in range(len(encoder_layers(peft.model)))]

    def attach(self, peft: PeftModel) -> None:
        o = self.options
        for layer in encoder_layers(peft.model):
            if len(layer.adapters):
                raise ValueError(f"the model already has adapters {list(layer.adapters)}")
            hidden = layer.attention_output.out_features
            weight = layer.attention_output.weight
            device, dtype = weight.device, weight.dtype
            for place in self.places:
                layer.adapters[place] = BottleneckAdapter(hidden, o["size"], o["activation"]).to(
                    device=device, dtype=dtype)
            if o["train_layer_norms"]:
                for norm in (layer.attention_norm, layer.ffn_norm):
                    norm.requires_grad_(True)

    def adapter_tensors(self, peft: PeftModel) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in zip(self._layer_names(peft), encoder_layers(peft.model)):
            for pname, p in layer.adapters.named_parameters():
                out[to_adapter_key(f"{name}.adapters.{pname}")] = p
            if self.options["train_layer_norms"]:
                for norm in ("attention_norm", "ffn_norm"):
                    for pname, p in getattr(layer, norm).named_parameters():
                        out[to_adapter_key(f"{name}.{norm}.{pname}")] = p
        return out

    def peft_config(self, peft: PeftModel) -> dict[str, Any]:
        return {"adapter_size": self.options["size"], "variant": self.options["variant"]}
