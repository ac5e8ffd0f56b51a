"""AdaLoRA (Zhang et al., 2023): LoRA in SVD form with a rank budget moved between layers.

Each targeted Linear gets an update in singular-value form

    ΔW = P Λ Q · α / r₀        P = lora_B (out, r), Λ = diag(lora_E) (r,), Q = lora_A (r, in)

with Λ = 0 at the start (so the wrapped model equals the base exactly) and the orthogonality
regulariser  γ · mean over matrices of (‖QQᵀ − I‖²_F, ‖PᵀP − I‖²_F)  added to the training loss.

**Importance.** After every optimizer update, each entry w of P, Λ, Q gets the sensitivity
I = |w · ∂L/∂w|, smoothed Ī ← β₁ Ī + (1 − β₁) I, with uncertainty Ū ← β₂ Ū + (1 − β₂)|I − Ī|;
its score is s = Ī · Ū. Triplet i (singular value i with its vectors) scores
S_i = s(λ_i) + mean_j s(Q_ij) + mean_j s(P_ji).

**Budget.** The total rank b(t) (summed over all modules) follows the paper's cubic schedule:
b₀ = r₀ · n for t ≤ t_i, then b(t) = b_T + (b₀ − b_T)(1 − (t − t_i)/(T − t_f − t_i))³, and
b_T = r_T · n for the last t_f steps. Every Δ_T steps the b(t) triplets with the highest S_i
are kept and the others masked (λ_i = 0, and kept at 0); at T − t_f the allocation is final.
Rank therefore moves to the modules whose triplets matter most.

The Trainer drives it: ``Trainer(..., on_step=bertkit.peft.on_step)`` (after each update,
gradients present). The final allocation is saved (adapter_config.json ``rank_pattern`` and
``bertkit.rank_allocation``) and the adapter keeps only the surviving triplets. The scale is
fixed at α / r₀ so a pruned adapter reloads with the same outputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bertkit.peft.base import (PeftMethod, PeftModel, from_adapter_key, hf_module_name,
                               match_targets, peft_target_modules, to_adapter_key)
from bertkit.peft.lora import MergeableLinear, _check_dropout, _check_positive_int, replace_linear


def budget_at(step: int, init_budget: int, target_budget: int, t_init: int, t_final: int,
              total_steps: int, delta_t: int = 1) -> tuple[int, bool]:
    """The total rank budget after ``step`` updates, and whether to re-allocate now.

    Cubic decrease from ``init_budget`` (steps <= t_init) to ``target_budget`` (the last
    ``t_final`` steps), re-allocating every ``delta_t`` steps in between and every step of
    the final phase (the final mask is re-applied there).
    """
    if step <= t_init:
        return init_budget, False
    if step > total_steps - t_final:
        return target_budget, True
    progress = (step - t_init) / (total_steps - t_final - t_init)
    budget = int((init_budget - target_budget) * (1 - progress) ** 3 + target_budget)
    return budget, step % delta_t == 0


class SVDLinear(MergeableLinear):
    """An ``nn.Linear`` (shared weight and bias) with an AdaLoRA update of rank ``r``.

    ``rank_mask`` (r,) marks the surviving triplets; ``ipt_*``/``unc_*`` are the smoothed
    importance and uncertainty of lora_A, lora_E, lora_B (buffers: saved in Trainer
    checkpoints, so a resumed run allocates the same way, but not in the adapter).
    """

    peft_mergeable = True

    def __init__(self, base: nn.Linear, r: int, alpha: float, init_r: int, dropout: float = 0.0,
                 module_name: str = "") -> None:
        factory = self._wrap(base, r, module_name)
        self.scaling = alpha / init_r
        self.lora_A = nn.Parameter(torch.randn(r, self.in_features, **factory) * 0.02)   # Q
        self.lora_E = nn.Parameter(torch.zeros(r, 1, **factory))                         # Λ
        self.lora_B = nn.Parameter(torch.randn(self.out_features, r, **factory) * 0.02)  # P
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer("rank_mask", torch.ones(r, dtype=torch.bool, device=factory["device"]))
        for part in ("A", "E", "B"):
            shape = getattr(self, f"lora_{part}").shape
            self.register_buffer(f"ipt_{part}", torch.zeros(shape, **factory))
            self.register_buffer(f"unc_{part}", torch.zeros(shape, **factory))

    def delta_weight(self) -> torch.Tensor:
        """(out, in): P Λ Q α / r₀."""
        return (self.lora_B @ (self.lora_A * self.lora_E)) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)                             # (..., out)
        if self.merged or self.r == 0:
            return out
        low = self.lora_dropout(x) @ (self.lora_A * self.lora_E).T            # (..., r)
        return out + (low @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def update_importance(self, beta1: float, beta2: float) -> None:
        for part in ("A", "E", "B"):
            p = getattr(self, f"lora_{part}")
            if p.grad is None:
                continue
            sensitivity = (p * p.grad).abs()
            ipt, unc = getattr(self, f"ipt_{part}"), getattr(self, f"unc_{part}")
            ipt.mul_(beta1).add_(sensitivity, alpha=1 - beta1)
            unc.mul_(beta2).add_((sensitivity - ipt).abs(), alpha=1 - beta2)

    def triplet_scores(self) -> torch.Tensor:
        """(r,): S_i = s(λ_i) + mean_j s(Q_ij) + mean_j s(P_ji)."""
        score = {p: getattr(self, f"ipt_{p}") * getattr(self, f"unc_{p}") for p in "AEB"}
        return score["E"].view(-1) + score["A"].mean(dim=1) + score["B"].mean(dim=0)

    @torch.no_grad()
    def apply_mask(self) -> None:
        self.lora_E.masked_fill_(~self.rank_mask[:, None], 0.0)

    def orthogonality(self) -> torch.Tensor:
        eye = torch.eye(self.r, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return (((self.lora_A @ self.lora_A.T - eye) ** 2).sum()
                + ((self.lora_B.T @ self.lora_B - eye) ** 2).sum()) / 2

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, "
                f"active={int(self.rank_mask.sum())}")


class AdaLora(PeftMethod):
    """AdaLoRA on the encoder Linear layers matched by ``targets``.

    Options: ``init_r`` (r₀, 12), ``target_r`` (r_T, 8: the mean final rank), ``alpha`` (16),
    ``dropout`` (0.1), ``targets`` (["query", "value"]), ``total_steps`` (T, required: the
    planned optimizer updates: the caller's plan, e.g.
    :func:`bertkit.training.trainer.planned_steps`), ``t_init`` / ``t_final`` (warm-up
    and final steps; default 10% / 30% of T), ``delta_t`` (steps between re-allocations, 1),
    ``beta1`` / ``beta2`` (0.85: importance and uncertainty smoothing), ``orth_reg_weight``
    (γ, 0.1). ``rank_allocation`` ({module: rank}) is set when loading a saved adapter.
    """

    name = "adalora"
    peft_type = "BERTKIT_ADALORA"
    mergeable = True
    defaults = {"init_r": 12, "target_r": 8, "alpha": 16, "dropout": 0.1,
                "targets": ["query", "value"], "total_steps": None, "t_init": None,
                "t_final": None, "delta_t": 1, "beta1": 0.85, "beta2": 0.85,
                "orth_reg_weight": 0.1, "rank_allocation": None}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        for key in ("init_r", "target_r", "delta_t"):
            _check_positive_int("adalora", key, o[key])
        _check_dropout("adalora", o["dropout"])
        if o["target_r"] > o["init_r"]:
            raise ValueError(f"adalora option target_r ({o['target_r']}) must not exceed "
                             f"init_r ({o['init_r']})")
        if isinstance(o["targets"], str):
            o["targets"] = [t.strip() for t in o["targets"].split(",") if t.strip()]
        if o["rank_allocation"] is None:
            total = o["total_steps"]
            if total is None:
                raise ValueError("adalora needs option total_steps (the planned optimizer "
                                 "updates; bertkit.training.trainer.planned_steps computes it "
                                 "from a TrainingConfig)")
            _check_positive_int("adalora", "total_steps", total)
            if o["t_init"] is None:
                o["t_init"] = total // 10
            if o["t_final"] is None:
                o["t_final"] = (3 * total) // 10
            for key in ("t_init", "t_final"):
                if not isinstance(o[key], int) or o[key] < 0:
                    raise ValueError(f"adalora option {key} must be an integer >= 0, "
                                     f"got {o[key]!r}")
            if o["t_init"] + o["t_final"] >= total:
                raise ValueError(f"adalora options t_init ({o['t_init']}) + t_final "
                                 f"({o['t_final']}) must be below total_steps ({total})")
        for key in ("beta1", "beta2"):
            if not 0 <= o[key] < 1:
                raise ValueError(f"adalora option {key} must be in [0, 1), got {o[key]!r}")
        self.targets: list[str] = []
        self.history: list[dict[str, Any]] = []  # (step, budget, allocation) at each re-allocation

    def attach(self, peft: PeftModel) -> None:
        o = self.options
        model = peft.model
        self.targets = match_targets(model, o["targets"])
        saved = o["rank_allocation"] or {}
        for name in self.targets:
            r = saved.get(hf_module_name(name), o["init_r"])
            replace_linear(model, name, lambda lin: SVDLinear(
                lin, r, o["alpha"], o["init_r"], o["dropout"], module_name=name))

    def layers(self, peft: PeftModel) -> dict[str, SVDLinear]:
        return {name: peft.model.get_submodule(name) for name in self.targets}

    def rank_allocation(self, peft: PeftModel) -> dict[str, int]:
        """{HF module name: surviving rank}."""
        return {hf_module_name(n): int(layer.rank_mask.sum())
                for n, layer in self.layers(peft).items()}

    # -- training
    def extra_loss(self, peft: PeftModel) -> torch.Tensor | None:
        gamma = self.options["orth_reg_weight"]
        layers = [layer for layer in self.layers(peft).values() if layer.r > 0]
        if not gamma or not layers:
            return None
        return gamma * torch.stack([layer.orthogonality() for layer in layers]).mean()

    def on_step(self, peft: PeftModel, step: int) -> None:
        o = self.options
        if o["total_steps"] is None:  # a loaded adapter: its allocation is final
            return
        layers = list(self.layers(peft).values())
        total, t_final = o["total_steps"], o["t_final"]
        final_step = total - t_final
        if step < final_step:
            for layer in layers:
                layer.update_importance(o["beta1"], o["beta2"])
        budget, allocate = budget_at(step, o["init_r"] * len(layers), o["target_r"] * len(layers),
                                     o["t_init"], t_final, total, o["delta_t"])
        if step < final_step and allocate or step == final_step:
            self.allocate(peft, budget)
            self.history.append({"step": step, "budget": budget,
                                 "allocation": self.rank_allocation(peft)})
        elif step > final_step:
            for layer in layers:
                layer.apply_mask()

    @torch.no_grad()
    def allocate(self, peft: PeftModel, budget: int) -> None:
        """Keep the ``budget`` triplets with the highest scores over all modules."""
        layers = list(self.layers(peft).values())
        scores = torch.cat([layer.triplet_scores().float() for layer in layers])   # (Σ r,)
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.argsort(scores, descending=True, stable=True)[:budget]] = True
        start = 0
        for layer in layers:
            layer.rank_mask.copy_(keep[start:start + layer.r])
            layer.apply_mask()
            start += layer.r

    # -- saving
    def adapter_tensors(self, peft: PeftModel) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in self.layers(peft).items():
            keep = layer.rank_mask
            whole = bool(keep.all())
            out[to_adapter_key(f"{name}.lora_A")] = layer.lora_A if whole else layer.lora_A[keep]
            out[to_adapter_key(f"{name}.lora_E")] = layer.lora_E if whole else layer.lora_E[keep]
            out[to_adapter_key(f"{name}.lora_B")] = layer.lora_B if whole else layer.lora_B[:, keep]
        return out

    def report(self, peft: PeftModel) -> dict[str, Any]:
        allocation = self.rank_allocation(peft)
        return {"rank_allocation": allocation, "total_rank": sum(allocation.values())}

    def peft_config(self, peft: PeftModel) -> dict[str, Any]:
        o = self.options
        return {"init_r": o["init_r"], "target_r": o["target_r"], "lora_alpha": o["alpha"],
                "lora_dropout": o["dropout"],
                "target_modules": peft_target_modules(peft.model, self.targets),
                "tinit": o["t_init"], "tfinal": o["t_final"], "deltaT": o["delta_t"],
                "beta1": o["beta1"], "beta2": o["beta2"], "orth_reg_weight": o["orth_reg_weight"],
                "total_step": o["total_steps"], "rank_pattern": self.rank_allocation(peft)}

    @classmethod
    def for_loading(cls, adapter_config: dict, state: dict[str, torch.Tensor],
                    model: nn.Module) -> "AdaLora":
        options = dict(adapter_config.get("bertkit", {}).get("options", {}))
        has_prefix = any(n.startswith("bert.") for n, _ in model.named_parameters())
        allocation = {}
        for key, tensor in state.items():
            if key.endswith(".lora_E"):
                module = from_adapter_key(key, has_prefix)[: -len(".lora_E")]
                allocation[hf_module_name(module)] = tensor.shape[0]
        options.update(rank_allocation=allocation, total_steps=None)
        return cls(**options)
