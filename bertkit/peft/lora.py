"""LoRA (Hu et al., 2021): a trainable low-rank update beside frozen Linear layers.

    y = x Wᵀ + b + (α / r) · B(A(dropout(x)))        A: (r, in), B: (out, r)

A starts random (Kaiming-uniform, as in the paper's code and peft), B starts at zero, so the
update is exactly zero and the wrapped model's outputs equal the base's bit for bit before
training. ``merge()`` adds (α / r) B A into W for inference without the extra matmuls;
``unmerge()`` restores the saved original W exactly.

Saved in the peft library's layout (keys ``base_model.model.bert.encoder.layer.0.attention.
self.query.lora_A.weight``, config ``peft_type: LORA``, ``r``, ``lora_alpha``,
``target_modules``), so an adapter moves between bertkit and peft both ways.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bertkit.peft.base import (PeftMethod, PeftModel, from_adapter_key, hf_module_name,
                               match_targets, peft_target_modules, to_adapter_key)


class MergeableLinear(nn.Linear):
    """A frozen ``nn.Linear`` plus a low-rank update ``delta_weight()`` (LoRA, AdaLoRA) that can
    be folded into the weight for inference and taken out again exactly."""

    merged: bool

    def _wrap(self, base: nn.Linear, r: int, module_name: str) -> dict:
        """Share ``base``'s weight and bias (parameter names stay ``<module>.weight``/``.bias``)
        and set the fields every low-rank layer has; returns the factory keywords (device,
        dtype) for the update's tensors."""
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.module_name = module_name
        self.r = r
        self.merged = False
        self._original_weight: torch.Tensor | None = None
        return dict(device=base.weight.device, dtype=base.weight.dtype)

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        # Keep the original: subtracting the update again would not give W back bit for bit.
        self._original_weight = self.weight.detach().clone()
        self.weight.add_(self.delta_weight().to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.weight.copy_(self._original_weight)
        self._original_weight, self.merged = None, False

    def unload(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding this layer's (merged) weight and bias."""
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device="meta")
        plain.weight = self.weight
        plain.register_parameter("bias", self.bias)
        return plain


class LoraLinear(MergeableLinear):
    """An ``nn.Linear`` with a LoRA update; it shares (does not copy) the base's weight and bias,
    so parameter names stay ``<module>.weight`` / ``<module>.bias``.

    forward: x (..., in) -> (..., out).
    """

    peft_mergeable = True

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, module_name: str = "") -> None:
        factory = self._wrap(base, r, module_name)
        # rsLoRA (Kalajdzievski, 2023) scales by α/√r so larger ranks keep learning.
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """(out, in): the update (α / r) B A."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)                             # (..., out)
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, "
                f"scaling={self.scaling:g}")


def replace_linear(model: nn.Module, name: str, make) -> nn.Module:
    """Replace the Linear ``name`` in ``model`` by ``make(linear)``; returns the new module."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    new = make(getattr(parent, child))
    setattr(parent, child, new)
    return new


def _check_positive_int(method: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{method} option {name} must be a positive integer, got {value!r}")


def _check_dropout(method: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{method} option dropout must be in [0, 1), got {value!r}")


class Lora(PeftMethod):
    """LoRA on the encoder Linear layers matched by ``targets``.

    Options: ``r`` (rank, 8), ``alpha`` (16; the update is scaled by alpha / r),
    ``dropout`` (0.1, on the LoRA branch's input), ``targets`` (["query", "value"]: name
    patterns, see :func:`bertkit.peft.base.match_targets`), ``use_rslora`` (False: scale by
    alpha / sqrt(r)), ``rank_pattern`` / ``alpha_pattern`` ({target pattern: value} overriding
    r / alpha per module, as in peft; used when loading peft adapters).
    """

    name = "lora"
    peft_type = "LORA"
    mergeable = True
    defaults = {"r": 8, "alpha": 16, "dropout": 0.1, "targets": ["query", "value"],
                "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        _check_positive_int("lora", "r", self.options["r"])
        _check_dropout("lora", self.options["dropout"])
        if not isinstance(self.options["alpha"], (int, float)) or self.options["alpha"] <= 0:
            raise ValueError(f"lora option alpha must be positive, got {self.options['alpha']!r}")
        targets = self.options["targets"]
        if isinstance(targets, str):
            self.options["targets"] = [t.strip() for t in targets.split(",") if t.strip()]
        self.targets: list[str] = []

    def _pattern_value(self, patterns: dict, module: str, default: Any) -> Any:
        hf = hf_module_name(module)
        for pattern, value in patterns.items():
            # peft's rule: the key is a suffix of the module name (or a regex matching it).
            for name in (module, hf):
                if name == pattern or name.endswith("." + pattern):
                    return value
                try:
                    if re.fullmatch(rf"(.*\.)?(?:{pattern})", name):
                        return value
                except re.error:
                    pass
        return default

    def attach(self, peft: PeftModel) -> None:
        o = self.options
        model = peft.model
        self.targets = match_targets(model, o["targets"])
        for name in self.targets:
            r = self._pattern_value(o["rank_pattern"], name, o["r"])
            alpha = self._pattern_value(o["alpha_pattern"], name, o["alpha"])
            replace_linear(model, name, lambda lin: LoraLinear(
                lin, r, alpha, o["dropout"], o["use_rslora"], module_name=name))

    def _layers(self, peft: PeftModel) -> dict[str, LoraLinear]:
        return {name: peft.model.get_submodule(name) for name in self.targets}

    def adapter_tensors(self, peft: PeftModel) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in self._layers(peft).items():
            out[to_adapter_key(f"{name}.lora_A.weight")] = layer.lora_A.weight
            out[to_adapter_key(f"{name}.lora_B.weight")] = layer.lora_B.weight
        return out

    def peft_config(self, peft: PeftModel) -> dict[str, Any]:
        o = self.options
        return {"r": o["r"], "lora_alpha": o["alpha"], "lora_dropout": o["dropout"],
                "target_modules": peft_target_modules(peft.model, self.targets),
                "bias": "none", "fan_in_fan_out": False, "use_rslora": o["use_rslora"],
                "use_dora": False, "init_lora_weights": True,
                "rank_pattern": self._hf_patterns(peft, "rank_pattern", o["r"]),
                "alpha_pattern": self._hf_patterns(peft, "alpha_pattern", o["alpha"]),
                "layers_to_transform": None, "layers_pattern": None}

    def _hf_patterns(self, peft: PeftModel, key: str, default: Any) -> dict[str, Any]:
        """Per-module overrides as peft writes them (HF module name -> value)."""
        out = {}
        for name in self.targets:
            value = self._pattern_value(self.options[key], name, default)
            if value != default:
                out[hf_module_name(name)] = value
        return out

    @classmethod
    def for_loading(cls, adapter_config: dict, state: dict[str, torch.Tensor],
                    model: nn.Module) -> "Lora":
        """From bertkit's options, or from a peft LoRA config: the targets are the modules the
        file holds lora_A weights for, each with the rank of its tensor."""
        options = adapter_config.get("bertkit", {}).get("options")
        if options is not None:
            return cls(**options)
        path = "adapter_config.json"
        for key in ("use_dora", "fan_in_fan_out", "lora_bias", "layer_replication"):
            if adapter_config.get(key):
                raise ValueError(f"{path}: {key}={adapter_config[key]!r} is not supported by "
                                 "bertkit's LoRA")
        has_prefix = any(n.startswith("bert.") for n, _ in model.named_parameters())
        ranks = {}
        for key, tensor in state.items():
            if key.endswith(".lora_A.weight"):
                module = from_adapter_key(key, has_prefix)[: -len(".lora_A.weight")]
                ranks[module] = tensor.shape[0]
        if not ranks:
            raise ValueError(f"{path}: a LORA adapter without lora_A weights")
        r = int(adapter_config.get("r", 8))
        alpha = adapter_config.get("lora_alpha", r)
        alpha_pattern = dict(adapter_config.get("alpha_pattern") or {})
        targets = list(ranks)  # full module names: exactly the modules the file holds
        return cls(r=r, alpha=alpha, dropout=float(adapter_config.get("lora_dropout") or 0.0),
                   targets=targets, use_rslora=bool(adapter_config.get("use_rslora", False)),
                   rank_pattern={m: k for m, k in ranks.items() if k != r},
                   alpha_pattern=alpha_pattern)


__all__ = ["Lora", "LoraLinear", "replace_linear"]
