"""The one interface every PEFT method follows, and the functions built on it.

A method (:class:`PeftMethod`) wraps a BERT model: it freezes the base, adds its own
parameters (or unfreezes a chosen few: BitFit), and knows which tensors make up its saved
adapter. :class:`PeftModel` is the wrapped model the Trainer trains; :func:`apply_peft`,
:func:`save_adapter`, :func:`load_adapter` and :func:`merge_lora` are the public entry points.

The task head (``classifier``, ``qa_outputs``, the MLM/NSP heads -- every parameter outside
``bert.``) always stays trainable and is always saved with the adapter. So are weights the base
folder did not hold (a missing pooler, say, initialised fresh when the base was loaded): the
base folder cannot reproduce them, so an adapter without them would not reload.

Adapter folder (the layout of the ``peft`` library, so a LoRA adapter loads there too)::

    adapter_config.json        peft's keys (peft_type, r, lora_alpha, target_modules,
                               modules_to_save, task_type, base_model_name_or_path ...) and a
                               "bertkit" section: method, options, head class, base shape
                               (hidden size, layers, vocab ...), the task config (id2label,
                               bertkit_* settings), AdaLoRA's rank allocation
    adapter_model.safetensors  the method's tensors + the head, keys
                               ``base_model.model.<HF parameter name>`` (HF names from
                               :func:`bertkit.checkpoint.to_hf_name`)

Shapes: B batch, T sequence length, H hidden size, N heads, D head size, L layers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bertkit.checkpoint import (from_hf_name, load_state_dict_into, read_state_dict, to_hf_name,
                                unwrap_model)
from bertkit.config import BertConfig
from bertkit.jsonfile import read_json_object
from bertkit.modeling.bert import HEAD_CLASSES
from bertkit.outputs import as_user_file, check_output_folder, output_folder

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."  # peft's prefix for tensors inside the wrapped model
FORMAT_VERSION = 1

# The head class -> peft's task_type (which tells peft which PeftModel subclass to build and
# which head modules it saves by default).
TASK_TYPES = {"BertForSequenceClassification": "SEQ_CLS",
              "BertForTokenClassification": "TOKEN_CLS",
              "BertForQuestionAnswering": "QUESTION_ANS",
              "BertModel": "FEATURE_EXTRACTION"}
# Config fields an adapter depends on: a base that differs in any of them is not its base.
BASE_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads",
                     "intermediate_size")
# Files of a tokenizer, copied beside a merged model.
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.json")


# ============================================================================ names


def hf_module_name(name: str) -> str:
    """bertkit module name -> HF module name (``encoder.layers.0.ffn.up`` ->
    ``encoder.layer.0.intermediate.dense``)."""
    return to_hf_name(name + ".weight")[: -len(".weight")]


def to_adapter_key(name: str) -> str:
    """bertkit parameter name (relative to the task model) -> key in adapter_model.safetensors."""
    return KEY_PREFIX + to_hf_name(name)


def from_adapter_key(key: str, model_has_bert_prefix: bool) -> str:
    """Key in adapter_model.safetensors -> bertkit parameter name, adding or removing ``bert.``
    (a peft adapter of a bare BertModel has no prefix, one of a head model has it)."""
    if key.startswith(KEY_PREFIX):
        key = key[len(KEY_PREFIX):]
    if model_has_bert_prefix and not re.match(r"^(bert\.|cls\.|classifier\.|qa_outputs\.)", key):
        key = "bert." + key
    elif not model_has_bert_prefix and key.startswith("bert."):
        key = key[len("bert."):]
    return from_hf_name(key)


def bert_of(model: nn.Module) -> nn.Module:
    """The BertModel inside a head model (``model.bert``), or the model itself."""
    inner = getattr(model, "bert", None)
    return inner if isinstance(inner, nn.Module) else model


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's layers (``EncoderLayer`` modules) of a BERT model."""
    encoder = getattr(bert_of(model), "encoder", None)
    layers = getattr(encoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no BERT encoder (expected "
                         "bert.encoder.layers); PEFT methods wrap bertkit BERT models")
    return layers


def _prefix_of(model: nn.Module) -> str:
    return "bert." if bert_of(model) is not model else ""


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters saved with every adapter: the task head (everything outside ``bert.``) and
    base weights the base folder lacked (``model.load_report.initialized``, e.g. a pooler)."""
    prefix = _prefix_of(model)
    names = [n for n, _ in model.named_parameters() if prefix and not n.startswith(prefix)]
    report = getattr(model, "load_report", None)
    params = dict(model.named_parameters())
    for name in getattr(report, "initialized", []) or []:
        if name in params and name not in names:
            names.append(name)
    return names


def _matches(pattern: str, name: str) -> bool:
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def linear_candidates(model: nn.Module) -> dict[str, str]:
    """The Linear modules of the encoder layers a method may target: bertkit name -> HF name."""
    layers = encoder_layers(model)
    prefix = _prefix_of(model)
    out = {}
    for i, layer in enumerate(layers):
        for name, module in layer.named_modules():
            # Not the Linears PEFT modules hold themselves (adapters, LoRA's A and B).
            own = re.search(r"(^|\.)(adapters|lora_\w+)(\.|$)", name)
            if isinstance(module, nn.Linear) and not own:
                full = f"{prefix}encoder.layers.{i}.{name}"
                out[full] = hf_module_name(full)
    return out


def match_targets(model: nn.Module, patterns: list[str] | str) -> list[str]:
    """bertkit names of the encoder Linear modules matched by ``patterns``.

    A pattern matches a module when it is the module's full name, a dotted suffix of it
    (``query``, ``ffn.up``), or a regular expression matching the whole name -- tried on the
    bertkit name (``bert.encoder.layers.0.attention.query``) and the HF name
    (``bert.encoder.layer.0.attention.self.query``), so ``query``, ``attention.self.query``,
    ``intermediate.dense`` and ``.*layers\\.1\\..*value`` all work. A pattern that matches no
    module is a ValueError listing the module names that exist.
    """
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise ValueError("no target modules given")
    candidates = linear_candidates(model)
    found: list[str] = []
    for pattern in patterns:
        hits = [n for n, hf in candidates.items() if _matches(pattern, n) or _matches(pattern, hf)]
        if not hits:
            layer0 = [n for n in candidates if ".layers.0." in n]
            ours = [n.split(".layers.0.", 1)[1] for n in layer0]
            theirs = [candidates[n].split(".layer.0.", 1)[1] for n in layer0]
            raise ValueError(
                f"target module {pattern!r} matches no module of {type(model).__name__}; the "
                f"modules in every layer are: {', '.join(ours)} (HF names: {', '.join(theirs)}); "
                f"full names look like {layer0[0]}")
        found += [n for n in hits if n not in found]
    return sorted(found, key=list(candidates).index)


def peft_target_modules(model: nn.Module, targets: list[str]) -> list[str]:
    """The peft ``target_modules`` list selecting exactly ``targets``: for each module the
    shortest HF name suffix (as peft matches them) that selects no other module."""
    candidates = linear_candidates(model)
    chosen = {candidates[t] for t in targets}
    out: list[str] = []
    for hf in (candidates[t] for t in targets):
        parts = hf.split(".")
        for depth in range(1, len(parts) + 1):
            suffix = ".".join(parts[-depth:])
            if all(c in chosen for c in candidates.values()
                   if c == suffix or c.endswith("." + suffix)):
                break
        if suffix not in out:
            out.append(suffix)
    return out


# ============================================================================ the interface


class PeftMethod:
    """What every method implements. Subclasses set ``name`` (the ``--peft`` value),
    ``peft_type`` (adapter_config.json) and ``defaults`` (option -> default value)."""

    name: ClassVar[str] = ""
    peft_type: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    mergeable: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for PEFT method {self.name!r}; "
                             f"its options are {sorted(self.defaults)}")
        self.options = {**self.defaults, **options}

    # -- building
    def attach(self, peft: "PeftModel") -> None:
        """Add the method's modules to ``peft.model`` (or ``peft.extra``) and make its own
        parameters trainable. Called with the base already frozen."""
        raise NotImplementedError

    def adapter_tensors(self, peft: "PeftModel") -> dict[str, torch.Tensor]:
        """The method's tensors to save: adapter-file key -> tensor."""
        raise NotImplementedError

    def load_targets(self, peft: "PeftModel") -> dict[str, torch.Tensor]:
        """Adapter-file key -> the live tensor a loaded value is copied into (after
        :meth:`for_loading` built the method in its saved form)."""
        return self.adapter_tensors(peft)

    def peft_config(self, peft: "PeftModel") -> dict[str, Any]:
        """The peft-format keys of adapter_config.json for this method."""
        return {}

    def report(self, peft: "PeftModel") -> dict[str, Any]:
        """Extra facts to save and print (AdaLoRA: the rank allocation)."""
        return {}

    @classmethod
    def for_loading(cls, adapter_config: dict, state: dict[str, torch.Tensor],
                    model: nn.Module) -> "PeftMethod":
        """The method as saved in an adapter folder (``state``: the adapter file's tensors)."""
        return cls(**adapter_config.get("bertkit", {}).get("options", {}))

    # -- training
    def extra_loss(self, peft: "PeftModel") -> torch.Tensor | None:
        """A term added to the training loss (AdaLoRA's orthogonality regulariser)."""
        return None

    def on_step(self, peft: "PeftModel", step: int) -> None:
        """Called by the Trainer after every optimizer update, gradients still present."""


# The method classes by ``--peft`` name. The methods' modules import this one, so they are
# registered from the outside: bertkit.peft (the package, always imported first) registers all
# five in the order errors list them.
_METHODS: dict[str, type[PeftMethod]] = {}


def register_method(cls: type[PeftMethod]) -> type[PeftMethod]:
    """Make ``cls`` available to :func:`method_class`, :func:`apply_peft` and
    :func:`load_adapter` under ``cls.name`` (and its adapters under ``cls.peft_type``)."""
    _METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[PeftMethod]:
    """The method class of a ``--peft`` name (lora, adapter, prefix, adalora, bitfit)."""
    if name not in _METHODS:
        raise ValueError(f"unknown PEFT method {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def _method_for_peft_type(peft_type: str, path: str) -> type[PeftMethod]:
    for cls in _METHODS.values():
        if cls.peft_type == peft_type:
            return cls
    raise ValueError(f"{path}: peft_type {peft_type!r} is not supported by bertkit (it loads "
                     "LORA adapters of the peft library and its own BERTKIT_* adapters)")


# ============================================================================ the wrapped model


class PeftModel(nn.Module):
    """A BERT model with a PEFT method attached; train it with the Trainer like any model.

    ``forward(**batch)`` is the wrapped model's (same outputs); in training mode the method's
    extra loss term (AdaLoRA) is added to ``output.loss``. Attributes the wrapper lacks
    (``config``, ``num_labels`` ...) are the wrapped model's. ``save_pretrained(folder)``
    writes an adapter folder, so the Trainer's checkpoints and best model are adapter folders.

    Attributes:
        model: the task model, modified in place (base frozen, method modules inside).
        method: the :class:`PeftMethod`.
        extra: modules the method keeps outside the task model (prefix tuning's encoder).
        base_model_folder: the folder the base was loaded from, named in adapter_config.json.
    """

    def __init__(self, model: nn.Module, method: PeftMethod, base_model_folder: str | None = None):
        super().__init__()
        self.model = model
        self.method = method
        self.extra = nn.ModuleDict()
        self.base_model_folder = (os.path.abspath(os.fspath(base_model_folder))
                                  if base_model_folder is not None else None)
        self.hook_calls = 0
        self.training_forwards = 0

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        output = self.model(*args, **kwargs)
        if self.training:
            self.training_forwards += 1
            extra = self.method.extra_loss(self)
            if extra is not None and getattr(output, "loss", None) is not None:
                output.loss = output.loss + extra
        return output

    # -- parameters
    def count_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts; a tied tensor counts once."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def num_parameters(self, trainable_only: bool = False) -> int:
        trainable, total = self.count_parameters()
        return trainable if trainable_only else total

    def summary(self) -> str:
        """``"lora: trainable params 1,090 || all params 35,470 || trainable 3.07%"``."""
        trainable, total = self.count_parameters()
        return (f"{self.method.name}: trainable params {trainable:,} || all params {total:,} || "
                f"trainable {100 * trainable / max(total, 1):.2f}%")

    def report(self) -> dict[str, Any]:
        """The method's facts to report (AdaLoRA: ``rank_allocation``), JSON-able."""
        return self.method.report(self)

    # -- training hook
    def on_train_step(self, step: int) -> None:
        """The method's per-update work (AdaLoRA's rank allocation); see :func:`on_step`."""
        self.hook_calls += 1
        self.method.on_step(self, step)

    # -- saving
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        save_adapter(self, folder)

    # -- merging (LoRA, AdaLoRA)
    def _mergeable_layers(self) -> list[nn.Module]:
        if not self.method.mergeable:
            raise ValueError(f"PEFT method {self.method.name!r} cannot be merged into the base "
                             "weights (only lora and adalora can)")
        return [m for m in self.model.modules() if getattr(m, "peft_mergeable", False)]

    def merge(self) -> None:
        """Fold every update into its base weight (zero-overhead inference)."""
        for layer in self._mergeable_layers():
            layer.merge()

    def unmerge(self) -> None:
        """Undo :meth:`merge`, restoring the base weights exactly."""
        for layer in self._mergeable_layers():
            layer.unmerge()

    def merge_and_unload(self) -> nn.Module:
        """Merge, then return the task model with plain ``nn.Linear`` layers (no PEFT modules;
        every parameter trainable again): a normal model to ``save_pretrained``."""
        self.merge()
        for layer in self._mergeable_layers():
            parent_name, _, child = layer.module_name.rpartition(".")
            self.model.get_submodule(parent_name).__setattr__(child, layer.unload())
        for p in self.model.parameters():
            p.requires_grad_(True)
        return self.model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of any model; a tied tensor counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def on_step(model: nn.Module, step: int) -> None:
    """The Trainer's ``on_step`` hook for PEFT: ``Trainer(..., on_step=bertkit.peft.on_step)``.

    Runs the method's per-update work (AdaLoRA: importance scores and the rank budget); does
    nothing for other methods or a model that is not a :class:`PeftModel`. Returns None, so
    it never stops the run.
    """
    model = unwrap_model(model)
    if isinstance(model, PeftModel):
        model.on_train_step(step)


# ============================================================================ apply


def apply_peft(model: nn.Module, method: str | PeftMethod, base_model_folder: str | None = None,
               verbose: bool = False, **options: Any) -> PeftModel:
    """Wrap a bertkit BERT model with a PEFT method.

    Args:
        model: a bertkit ``BertModel`` or head model (``BertForSequenceClassification`` ...),
            modified in place: every base parameter is frozen, the method's modules are added.
        method: ``"lora" | "adapter" | "prefix" | "adalora" | "bitfit"`` or a
            :class:`PeftMethod` instance.
        base_model_folder: the folder ``model`` was loaded from; adapter_config.json names it so
            that :func:`load_adapter` can find the base.
        verbose: print :meth:`PeftModel.summary` (trainable vs total parameters).
        **options: the method's options (e.g. lora: ``r``, ``alpha``, ``dropout``, ``targets``);
            an unknown option is a ValueError listing the known ones.

    Returns:
        a :class:`PeftModel` whose trainable parameters are the method's own and the task head
        (always). Its outputs equal the base model's before training for every method except
        prefix tuning (see :mod:`bertkit.peft.prefix`).
    """
    if isinstance(model, PeftModel):
        raise ValueError("the model already has a PEFT method attached; apply_peft takes the base")
    model = unwrap_model(model)
    if not isinstance(getattr(model, "config", None), BertConfig):
        raise ValueError(f"apply_peft wraps bertkit BERT models, got {type(model).__name__}")
    if isinstance(method, str):
        method = method_class(method)(**options)
    elif options:
        raise ValueError("options go to the method's constructor when a method instance is given")
    for p in model.parameters():
        p.requires_grad_(False)
    head = head_parameter_names(model)
    params = dict(model.named_parameters())
    for name in head:
        params[name].requires_grad_(True)
    peft = PeftModel(model, method, base_model_folder)
    method.attach(peft)
    if verbose:
        print(f"[bertkit] {peft.summary()}")
    return peft


# ============================================================================ save


def _task_type(model: nn.Module) -> str | None:
    return TASK_TYPES.get(type(model).__name__)


def _head_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {to_adapter_key(n): params[n] for n in head_parameter_names(model)}


def _modules_to_save(model: nn.Module) -> list[str]:
    names = []
    for name in head_parameter_names(model):
        hf = to_hf_name(name).rsplit(".", 1)[0]
        if hf not in names:
            names.append(hf)
    return names


def save_adapter(model: PeftModel, folder: str | os.PathLike,
                 base_model_folder: str | None = None) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` into ``folder``.

    Only the method's tensors and the task head (+ base weights the base folder lacked) are
    written. ``base_model_folder`` (default: the one given to :func:`apply_peft`) is named in
    the config; ValueError when neither names it.
    """
    model = unwrap_model(model)
    if not isinstance(model, PeftModel):
        raise ValueError(f"save_adapter takes a PeftModel (from apply_peft), got "
                         f"{type(model).__name__}")
    base = base_model_folder or model.base_model_folder
    if base is None:
        raise ValueError("the adapter must name its base model folder: pass base_model_folder "
                         "to apply_peft or save_adapter")
    base = os.path.abspath(os.fspath(base))
    inner = model.model
    if (model.method.name == "adalora" and model.training_forwards and not model.hook_calls):
        warnings.warn("AdaLoRA was trained without its on_step hook, so no rank was "
                      "reallocated; pass on_step=bertkit.peft.on_step to the Trainer",
                      stacklevel=2)
    tensors = {**model.method.adapter_tensors(model), **_head_tensors(inner)}
    trainable, total = model.count_parameters()
    config = inner.config
    info = {
        "format": FORMAT_VERSION,
        "method": model.method.name,
        "options": model.method.options,
        "head_class": type(inner).__name__,
        "base": {f: getattr(config, f) for f in BASE_SHAPE_FIELDS},
        "num_labels": config.num_labels if bert_of(inner) is not inner else None,
        "id2label": ({str(k): v for k, v in config.id2label.items()}
                     if config.id2label else None),
        "config": config.to_dict(),
        "parameters": {"trainable": trainable, "total": total},
        **model.method.report(model),
    }
    adapter_config = {
        "base_model_name_or_path": base,
        "peft_type": model.method.peft_type,
        "task_type": _task_type(inner),
        "inference_mode": True,
        "modules_to_save": _modules_to_save(inner) or None,
        **model.method.peft_config(model),
        "bertkit": info,
    }
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ADAPTER_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(adapter_config, f, indent=2)
        f.write("\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
              os.path.join(folder, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    as_user_file(os.path.join(folder, ADAPTER_WEIGHTS_NAME))


# ============================================================================ load


def is_adapter_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds an adapter (adapter_config.json)."""
    return os.path.isfile(os.path.join(os.fspath(folder), ADAPTER_CONFIG_NAME))


def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed adapter_config.json of ``folder`` (FileNotFoundError / ValueError naming it)."""
    path = os.path.join(os.fspath(folder), ADAPTER_CONFIG_NAME)
    data = read_json_object(path, missing=f"{path} does not exist: {folder} is not an adapter folder")
    if "peft_type" not in data:
        raise ValueError(f"{path}: no 'peft_type' field: not an adapter config")
    return data


def adapter_task_config(folder: str | os.PathLike) -> BertConfig | None:
    """The task model's config saved in a bertkit adapter folder (id2label, ``bertkit_*``
    settings), or None for an adapter saved by the peft library."""
    saved = read_adapter_config(folder).get("bertkit", {}).get("config")
    return BertConfig.from_dict(saved) if saved else None


def _check_base(folder: str, base_name: str, saved: dict, config: BertConfig) -> None:
    wrong = [f"{f} {saved[f]} vs {getattr(config, f)}" for f in BASE_SHAPE_FIELDS
             if f in saved and saved[f] != getattr(config, f)]
    if wrong:
        raise ValueError(
            f"{os.path.join(folder, ADAPTER_CONFIG_NAME)}: the adapter was trained on a "
            f"different base model than {base_name} ({'; '.join(wrong)}: adapter's base vs "
            "given base); pass the base it was trained on (load_adapter(..., base=FOLDER))")


def _head_class_of(adapter_config: dict, base_config: BertConfig, path: str) -> type[nn.Module]:
    name = adapter_config.get("bertkit", {}).get("head_class")
    if name is None:
        by_task = {v: k for k, v in TASK_TYPES.items()}
        name = by_task.get(adapter_config.get("task_type"))
    if name is None:
        name = (base_config.architectures or ["BertModel"])[0]
    if name not in HEAD_CLASSES:
        raise ValueError(f"{path}: head class {name!r} is not a bertkit BERT class "
                         f"({', '.join(HEAD_CLASSES)})")
    return HEAD_CLASSES[name]


def _task_config(adapter_config: dict, base_config: BertConfig, state: dict) -> BertConfig:
    """The task model's config: the one saved by bertkit, else the base's with the number of
    labels the saved classifier has (a peft adapter)."""
    saved = adapter_config.get("bertkit", {}).get("config")
    if saved:
        return BertConfig.from_dict(saved)
    config = BertConfig.from_dict(base_config.to_dict())
    weight = state.get(KEY_PREFIX + "classifier.weight")
    if weight is not None and len(config.id2label or {}) != weight.shape[0]:
        config.num_labels = weight.shape[0]
    return config


def load_adapter(folder: str | os.PathLike, base: str | os.PathLike | nn.Module | None = None,
                 device: str | torch.device | None = None) -> PeftModel:
    """Load an adapter folder (bertkit's or the peft library's LoRA) onto its base model.

    Args:
        folder: holds adapter_config.json and adapter_model.safetensors.
        base: the base model folder (default: ``base_model_name_or_path`` of the config), or a
            bertkit model already built (modified in place).
        device: where to put the model (default: CPU).

    Returns:
        a :class:`PeftModel` in eval mode whose outputs equal the saved model's.

    Raises:
        FileNotFoundError: no adapter files, or the base folder does not exist.
        ValueError: the base differs from the adapter's (hidden size, layer count, vocab size,
            heads, FFN size), or a saved tensor has no place / another shape in the model.
    """
    folder = os.fspath(folder)
    config_path = os.path.join(folder, ADAPTER_CONFIG_NAME)
    adapter_config = read_adapter_config(folder)
    weights_path = os.path.join(folder, ADAPTER_WEIGHTS_NAME)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"{weights_path} does not exist: the adapter folder has no weights")
    state = load_file(weights_path)
    method_cls = _method_for_peft_type(str(adapter_config["peft_type"]), config_path)
    saved_base = adapter_config.get("bertkit", {}).get("base", {})

    if isinstance(base, nn.Module):
        model = unwrap_model(base)
        base_name = f"the given {type(model).__name__}"
        _check_base(folder, base_name, saved_base, model.config)
        base_folder = adapter_config.get("base_model_name_or_path")
    else:
        base_folder = os.fspath(base) if base is not None else adapter_config.get(
            "base_model_name_or_path")
        model = _model_from_base_folder(folder, base_folder, adapter_config, state)
        base_name = base_folder

    method = method_cls.for_loading(adapter_config, state, model)
    peft = apply_peft(model, method, base_model_folder=base_folder)
    _copy_adapter_tensors(model, method.load_targets(peft), state, weights_path, base_name)
    if device is not None:
        peft.to(device)
    return peft.eval()


def _model_from_base_folder(folder: str, base_folder: str | None, adapter_config: dict,
                            state: dict[str, torch.Tensor]) -> nn.Module:
    """The adapter's task model (its head class and sizes) holding the base folder's weights."""
    config_path = os.path.join(folder, ADAPTER_CONFIG_NAME)
    if not base_folder:
        raise ValueError(f"{config_path} names no base model (base_model_name_or_path); "
                         "pass base=FOLDER")
    if not os.path.isdir(base_folder):
        raise FileNotFoundError(
            f"{config_path} names the base model folder {base_folder}, which does not "
            "exist; pass the base folder: load_adapter(..., base=FOLDER)")
    base_config = BertConfig.from_pretrained(base_folder)
    _check_base(folder, base_folder, adapter_config.get("bertkit", {}).get("base", {}), base_config)
    task_config = _task_config(adapter_config, base_config, state)
    model = _head_class_of(adapter_config, base_config, config_path)(task_config)
    # A base that is itself a fine-tuned model may hold a classifier of another size; the
    # adapter brings the head, so the base's is not loaded.
    base_state = {k: v for k, v in read_state_dict(base_folder).items()
                  if not k.startswith(("classifier.", "qa_outputs."))}
    try:
        model.load_report = load_state_dict_into(model, base_state)
    except ValueError as e:
        raise ValueError(f"base model {base_folder} does not fit the adapter {folder}: "
                         f"{e}") from None
    return model


def _copy_adapter_tensors(model: nn.Module, method_targets: dict[str, torch.Tensor],
                          state: dict[str, torch.Tensor], weights_path: str, base_name: str) -> None:
    """Copy the saved tensors into the model, after checking that each has its place.

    ``method_targets`` maps adapter keys to the method's tensors; the task head's tensors are
    required too (a head is never initialised silently), and any other saved key must name a
    base tensor the adapter overrides (peft's bias="all", modules_to_save).
    """
    head = _head_tensors(model)
    targets = {**method_targets, **head}
    missing = sorted(set(targets) - set(state))
    if missing:
        raise ValueError(f"{weights_path} lacks {len(missing)} tensor(s) the model needs: "
                         f"{', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else "")
                         + (" (the task head is never initialised silently)"
                            if any(k in head for k in missing) else ""))
    params = dict(model.named_parameters())
    has_prefix = bert_of(model) is not model
    problems = []
    with torch.no_grad():
        for key, value in state.items():
            target = targets.get(key)
            if target is None:
                target = params.get(from_adapter_key(key, has_prefix))
            if target is None:
                problems.append(f"{key}: no such tensor in {type(model).__name__}")
            elif target.shape != value.shape:
                problems.append(f"{key}: adapter {tuple(value.shape)} vs model "
                                f"{tuple(target.shape)}")
            else:
                target.copy_(value.to(target.dtype))
    if problems:
        raise ValueError(f"{weights_path} does not fit the base model {base_name}: "
                         + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""))


# ============================================================================ merge


def _probe_batch(config: BertConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """A fixed batch of 2 random sequences, the second one padded: what merge_lora compares."""
    g = torch.Generator().manual_seed(0)
    length = min(16, config.max_position_embeddings)
    ids = torch.randint(0, config.vocab_size, (2, length), generator=g)        # (B, T)
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "token_type_ids": torch.zeros_like(ids).to(device)}


def _output_tensors(output: Any) -> dict[str, torch.Tensor]:
    fields = output.__dict__ if hasattr(output, "__dict__") else dict(output)
    return {k: v for k, v in fields.items() if isinstance(v, torch.Tensor)}


@torch.no_grad()
def merge_lora(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike,
               base: str | os.PathLike | None = None, atol: float = 1e-5,
               overwrite: bool = False) -> dict[str, Any]:
    """Write a plain full model folder (HF format: config.json + model.safetensors + the
    tokenizer files) with a LoRA / AdaLoRA adapter folded into the base weights.

    Before writing, the merged and unmerged models run on a probe batch (2 random sequences,
    one padded); if any output differs by more than ``atol`` nothing is written and a
    ValueError gives the difference. ``out_dir`` is written as a whole at the end
    (:func:`bertkit.outputs.output_folder`): an existing folder is refused unless
    ``overwrite``, and neither the adapter nor the base folder may be (or hold) ``out_dir``.
    Returns ``{"out_dir", "max_abs_diff"}``.
    """
    adapter_dir, out_dir = os.fspath(adapter_dir), os.fspath(out_dir)
    inputs = {"--adapter": adapter_dir, "--base": base}
    check_output_folder(out_dir, inputs=inputs, overwrite=overwrite)
    peft = load_adapter(adapter_dir, base=base)
    inputs["base model folder"] = peft.base_model_folder
    if not peft.method.mergeable:
        raise ValueError(f"{adapter_dir} holds a {peft.method.name} adapter; only lora and "
                         "adalora adapters can be merged into the base weights")
    batch = _probe_batch(peft.config, next(peft.parameters()).device)
    before = _output_tensors(peft(**batch))
    peft.merge()
    after = _output_tensors(peft(**batch))
    diff = max(float((before[k].float() - after[k].float()).abs().max()) for k in before)
    if not diff <= atol:
        raise ValueError(f"merging {adapter_dir} changes the outputs on a probe batch by "
                         f"{diff:.3g} (> {atol:g}); refusing to write {out_dir}")
    tokenizer_source = next((source for source in (adapter_dir, peft.base_model_folder)
                             if source and any(os.path.isfile(os.path.join(source, name))
                                               for name in TOKENIZER_FILES)), None)
    model = peft.merge_and_unload()
    with output_folder(out_dir, inputs=inputs, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if tokenizer_source and os.path.isfile(os.path.join(tokenizer_source, name)):
                shutil.copyfile(os.path.join(tokenizer_source, name), staging / name)
    return {"out_dir": out_dir, "max_abs_diff": diff}
