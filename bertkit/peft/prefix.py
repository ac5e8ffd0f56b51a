"""Prefix tuning (Li & Liang, 2021) for encoders, P-tuning v2 style (Liu et al., 2022).

Every layer's self-attention gets P trainable key/value vectors prepended to its own:

    attention(Q, [K_prefix; K], [V_prefix; V], bias = [0 ... 0; padding bias])

so each token may attend to the prefix as well as to the real tokens; padding stays masked
and the prefix is never masked (the additive bias gets P zero columns in front). It plugs into
the ``prefix`` hook of :class:`bertkit.modeling.layers.SelfAttention`, so attention itself is
unchanged.

During training the prefixes come from a reparametrisation (Li & Liang: optimising them
directly is unstable): an embedding of the P positions through an MLP
``Linear(H, m) -> tanh -> Linear(m, L * 2 * H)``. After training the MLP is dropped: the saved
adapter holds only the computed prefixes, ``prompt_embeddings`` of shape (P, L * 2 * H) in the
layout of the peft library's prefix tuning -- per position, layer by layer, keys then values,
head by head.

**Initialisation is not an identity**, unlike the other methods: P extra keys always take
some attention mass (a key can only be ignored by a -inf score, which no finite vector gives).
What the tests check instead is exact where it can be: the attention with a prefix equals a
hand-computed softmax over [prefix; tokens]; padding is still masked and the prefix is not; and
a prefix masked out with the finfo.min bias gives the base model's outputs back.

Attention maps asked for with ``output_attentions`` are (B, N, T, P + T): the first P columns
are the prefix.

Shapes: B batch, T tokens, P prefix length, N heads, D head size, H = N * D, L layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bertkit.peft.base import PeftMethod, PeftModel, encoder_layers

SAVED_KEY = "prompt_embeddings"


class PrefixEncoder(nn.Module):
    """The prefixes of every layer: through the reparametrisation MLP, or stored directly.

    ``layer_prefix(i)`` -> keys, values of layer i, each (N, P, D).
    """

    def __init__(self, length: int, num_layers: int, num_heads: int, hidden_size: int,
                 mlp_hidden_size: int | None) -> None:
        super().__init__()
        self.length, self.num_layers, self.num_heads = length, num_layers, num_heads
        self.hidden_size = hidden_size
        width = num_layers * 2 * hidden_size
        if mlp_hidden_size:
            self.embedding = nn.Embedding(length, hidden_size)
            self.mlp_in = nn.Linear(hidden_size, mlp_hidden_size)
            self.mlp_out = nn.Linear(mlp_hidden_size, width)
            self.prefix = None
        else:
            self.prefix = nn.Parameter(torch.randn(length, width) * 0.02)       # (P, L*2*H)

    @property
    def reparametrized(self) -> bool:
        return self.prefix is None

    def _hidden(self) -> torch.Tensor:
        return torch.tanh(self.mlp_in(self.embedding.weight))                  # (P, m)

    def all_prefixes(self) -> torch.Tensor:
        """(P, L * 2 * H): what the adapter saves."""
        if self.prefix is not None:
            return self.prefix
        return self.mlp_out(self._hidden())

    def layer_prefix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = 2 * self.hidden_size
        if self.prefix is not None:
            rows = self.prefix[:, layer * width:(layer + 1) * width]           # (P, 2H)
        else:
            # Only this layer's slice of the output projection: the MLP's cost stays per layer.
            rows = F.linear(self._hidden(), self.mlp_out.weight[layer * width:(layer + 1) * width],
                            self.mlp_out.bias[layer * width:(layer + 1) * width])  # (P, 2H)
        kv = rows.view(self.length, 2, self.num_heads, -1).permute(1, 2, 0, 3)   # (2, N, P, D)
        return kv[0], kv[1]

    @torch.no_grad()
    def drop_reparametrization(self) -> None:
        """Store the computed prefixes as the parameter and delete the MLP (after training)."""
        if self.prefix is not None:
            return
        self.prefix = nn.Parameter(self.all_prefixes().detach().clone())
        del self.embedding, self.mlp_in, self.mlp_out


class PrefixHook(nn.Module):
    """``SelfAttention.prefix``: (k, v (B, N, T, D), bias (B, 1, 1, T) or None) ->
    (k, v (B, N, P+T, D), bias (B, 1, 1, P+T) or None)."""

    def __init__(self, encoder: PrefixEncoder, layer: int) -> None:
        super().__init__()
        self.encoder = [encoder]  # a list: shared by every layer, registered once (PeftModel.extra)
        self.layer = layer

    def forward(self, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None):
        pk, pv = self.encoder[0].layer_prefix(self.layer)                    # (N, P, D) each
        batch = k.size(0)
        k = torch.cat([pk.to(k.dtype).expand(batch, -1, -1, -1), k], dim=2)  # (B, N, P+T, D)
        v = torch.cat([pv.to(v.dtype).expand(batch, -1, -1, -1), v], dim=2)  # (B, N, P+T, D)
        if bias is not None:
            zeros = bias.new_zeros(*bias.shape[:-1], pk.size(1))               # (B, 1, 1, P)
            bias = torch.cat([zeros, bias], dim=-1)                           # (B, 1, 1, P+T)
        return k, v, bias


class PrefixTuning(PeftMethod):
    """P trainable key/value prefixes in every layer.

    Options: ``length`` (P, 20), ``mlp_hidden_size`` (m, 512: the reparametrisation MLP's
    width; 0 = optimise the prefixes directly), ``reparametrize`` (True).
    """

    name = "prefix"
    peft_type = "BERTKIT_PREFIX"
    defaults = {"length": 20, "mlp_hidden_size": 512, "reparametrize": True}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        for key in ("length", "mlp_hidden_size"):
            value = o[key]
            least = 1 if key == "length" else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"prefix option {key} must be a positive integer, got {value!r}")

    def attach(self, peft: PeftModel) -> None:
        o = self.options
        config = peft.model.config
        layers = encoder_layers(peft.model)
        if getattr(config, "pruned_heads", None):  # the prefixes have one slice per head
            raise ValueError("prefix tuning needs every attention head, but the model has "
                             f"pruned heads {config.pruned_heads}; use LoRA or adapters")
        for layer in layers:
            if layer.attention.prefix is not None:
                raise ValueError("the model's attention already has a prefix hook")
        encoder = PrefixEncoder(o["length"], len(layers), config.num_attention_heads,
                                config.hidden_size,
                                o["mlp_hidden_size"] if o["reparametrize"] else None)
        encoder.to(next(peft.model.parameters()).device)
        peft.extra["prefix_encoder"] = encoder
        for i, layer in enumerate(layers):
            layer.attention.prefix = PrefixHook(encoder, i)

    def adapter_tensors(self, peft: PeftModel) -> dict[str, torch.Tensor]:
        return {SAVED_KEY: peft.extra["prefix_encoder"].all_prefixes()}

    def load_targets(self, peft: PeftModel) -> dict[str, torch.Tensor]:
        encoder = peft.extra["prefix_encoder"]
        encoder.drop_reparametrization()
        return {SAVED_KEY: encoder.prefix}

    @classmethod
    def for_loading(cls, adapter_config: dict, state: dict[str, torch.Tensor],
                    model: nn.Module) -> "PrefixTuning":
        options = dict(adapter_config.get("bertkit", {}).get("options", {}))
        # The saved adapter holds the computed prefixes: no MLP to rebuild.
        options.update(reparametrize=False)
        return cls(**options)

    def peft_config(self, peft: PeftModel) -> dict[str, Any]:
        return {"num_virtual_tokens": self.options["length"],
                "prefix_projection": bool(self.options["reparametrize"]),
                "encoder_hidden_size": self.options["mlp_hidden_size"]}


def drop_reparametrization(peft: PeftModel) -> None:
    """After training a prefix-tuned model: keep the computed prefixes, drop the MLP."""
    peft.extra["prefix_encoder"].drop_reparametrization()
