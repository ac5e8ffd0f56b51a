"""Parameter-efficient fine-tuning: LoRA, bottleneck adapters, prefix tuning, AdaLoRA, BitFit.

One interface for every method::

    peft = apply_peft(model, "lora", base_model_folder=base, r=8, alpha=16)   # freeze + add
    print(peft.summary())                     # trainable vs total parameters
    Trainer(peft, cfg, data, collate, on_step=on_step).train()   # on_step: AdaLoRA's budget
    save_adapter(peft, out)                   # adapter_config.json + adapter_model.safetensors
    peft = load_adapter(out)                  # base (named in the config) + adapter
    merge_lora(out, merged_dir)               # a plain full model folder (LoRA, AdaLoRA)

See :mod:`bertkit.peft.base` for the adapter folder format (the peft library's).
"""

from bertkit.peft.adalora import AdaLora, SVDLinear, budget_at
from bertkit.peft.adapters import BottleneckAdapter, BottleneckAdapters
from bertkit.peft.base import (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PeftMethod, PeftModel,
                               adapter_task_config, apply_peft, count_parameters,
                               is_adapter_folder, load_adapter, match_targets, merge_lora,
                               method_class, on_step, read_adapter_config, register_method,
                               save_adapter)
from bertkit.peft.bitfit import BitFit
from bertkit.peft.lora import Lora, LoraLinear
from bertkit.peft.prefix import PrefixEncoder, PrefixTuning, drop_reparametrization

# The one table of methods (``--peft NAME``), in the order errors and --help list them.
_METHOD_CLASSES = (Lora, BottleneckAdapters, PrefixTuning, AdaLora, BitFit)
for _method in _METHOD_CLASSES:
    register_method(_method)
METHODS = tuple(method.name for method in _METHOD_CLASSES)
# Peak learning rates when none is given: a few hundred thousand new parameters learn at 10-40x
# full fine-tuning's 5e-5 (measured on the demo task with all-MiniLM-L6-v2: LoRA at 5e-5 barely
# moves in 3 epochs; benchmarks/peft.py uses the same table).
DEFAULT_LR = {"lora": 2e-3, "adapter": 1e-3, "prefix": 1e-2, "adalora": 2e-3, "bitfit": 1e-3}
# The options fine-tuning uses where none are given: the measured best on the same task (the
# README's PEFT table): LoRA on all six Linear layers of each block reaches 80.4 dev accuracy
# against 36.0 on query and value only; AdaLoRA on all six reaches 65.8 at 2e-3 where query and
# value stayed at the majority class. The method classes keep the papers' own defaults
# (LoRA and AdaLoRA: query and value), as the peft library does.
ALL_LINEAR = ["query", "key", "value", "attention_output", "ffn.up", "ffn.down"]
RECOMMENDED_OPTIONS = {"lora": {"targets": ALL_LINEAR}, "adalora": {"targets": ALL_LINEAR}}

__all__ = ["METHODS", "DEFAULT_LR", "ALL_LINEAR", "RECOMMENDED_OPTIONS", "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "PeftMethod", "PeftModel",
           "apply_peft", "save_adapter", "load_adapter", "merge_lora", "on_step",
           "count_parameters", "is_adapter_folder", "read_adapter_config", "adapter_task_config",
           "match_targets", "method_class", "register_method", "budget_at", "drop_reparametrization",
           "Lora", "LoraLinear", "AdaLora", "SVDLinear", "BottleneckAdapters", "BottleneckAdapter",
           "PrefixTuning", "PrefixEncoder", "BitFit"]
