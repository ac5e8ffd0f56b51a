"""BitFit (Ben Zaken et al., 2022): train only the bias terms (and the task head).

Every bias of the encoder is trainable -- the query/key/value, attention-output and
feed-forward biases, the LayerNorm shifts, the pooler's bias -- and nothing else of the base.
No module is added, so the wrapped model is the base model exactly until training moves a
bias.
"""

from __future__ import annotations

import torch

from bertkit.peft.base import PeftMethod, PeftModel, bert_of, to_adapter_key


class BitFit(PeftMethod):
    """Biases only. No options."""

    name = "bitfit"
    peft_type = "BERTKIT_BITFIT"
    defaults: dict = {}

    def _biases(self, peft: PeftModel) -> dict[str, torch.Tensor]:
        model = peft.model
        prefix = "bert." if bert_of(model) is not model else ""
        return {prefix + name: p for name, p in bert_of(model).named_parameters()
                if name.rsplit(".", 1)[-1] == "bias"}

    def attach(self, peft: PeftModel) -> None:
        biases = self._biases(peft)
        if not biases:
            raise ValueError(f"{type(peft.model).__name__} has no bias to train")
        for p in biases.values():
            p.requires_grad_(True)

    def adapter_tensors(self, peft: PeftModel) -> dict[str, torch.Tensor]:
        return {to_adapter_key(name): p for name, p in self._biases(peft).items()}
