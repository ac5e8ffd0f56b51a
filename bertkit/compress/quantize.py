"""Dynamic int8 quantization of a BERT model, layer by layer chosen by measurement.

Dynamic quantization stores each Linear weight as int8 with one scale per output channel and
quantizes the layer's input on the fly, per call, from its observed range: no calibration set
and no retraining, and the GEMMs run on int8 (torch's fbgemm/x86 kernel, the one
``torch.ao.nn.quantized.dynamic.Linear`` runs). Embedding tables (word, position) are stored as
int8 rows too -- for size: in a small BERT they are half the weights -- and dequantized on
lookup. Everything else stays fp32: LayerNorm, attention scores and softmax, GELU, the
token-type table, and the MLM vocabulary projection (it is the tied word-embedding matrix).

Some layers lose much more than others: an activation outlier makes a layer's single
per-tensor input scale coarse, and in BERT the FFN layers next to the embeddings have the
worst ones. So :func:`quantize_model` quantizes every candidate layer *alone* on a probe batch,
measures how far the model's output moves (relative L2 error), and keeps fp32 the layers whose
error exceeds ``max_layer_error``; the choice and every layer's error are in the returned report.

**Folder format.** A quantized folder is an HF-style folder (``config.json``,
``model.safetensors``, tokenizer files, plus ``quantize.json``: the measurements). ``config.json``
holds::

    "quantization_config": {
        "quant_method": "bertkit_dynamic_int8",   # the loader refuses any other method
        "bits": 8,
        "per_channel": true,                      # one scale per output channel / table row
        "symmetric": true,                        # zero point 0: W ~= weight * weight_scale[:, None]
        "activations": "dynamic_per_tensor_uint8_reduce_range",
        "max_layer_error": 0.05,                  # the selection threshold used
        "quantized_modules": 40,                  # how many modules are int8
        "fp32_modules": []                        # HF names of those kept fp32
    }

and for every int8 module ``NAME`` (HF names) ``model.safetensors`` holds ``NAME.weight`` as
int8 (out, in) or (rows, H), ``NAME.weight_scale`` float32 (out,) or (rows,), and for a Linear
``NAME.bias`` float32 (out,). Other tensors are as in any folder. ``BertXxx.from_pretrained``
sees ``quantization_config`` and rebuilds :class:`QuantizedLinear` / :class:`QuantizedEmbedding`
modules, so the loaded model *is* int8 (putting the int8 numbers into fp32 modules instead would
silently give a different, wrong model). The int8 kernels run on the CPU only.

``transformers`` cannot use such a folder: it warns "Unknown quantization type, got
bertkit_dynamic_int8 ... we will skip the quantization" and would read the int8 numbers as
floats, which is a wrong model. Keep the fp32 folder for transformers, ONNX export and training.

Public API: :class:`QuantizedLinear`, :class:`QuantizedEmbedding`, :func:`quantize_model`,
:func:`quantize_folder`, :func:`layer_errors`, :func:`probe_batch`, :func:`is_quantized`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from bertkit.outputs import check_output_folder, output_folder

QUANT_METHOD = "bertkit_dynamic_int8"
ACTIVATIONS = "dynamic_per_tensor_uint8_reduce_range"
# Relative output error (see _relative_error) above which a layer stays fp32. On the fine-tuned
# MiniLM classifier the attention layers move the logits by 0.2-0.9% alone and the FFN layers
# by 1-4% (the worst: layers 0-2, next to the embeddings); keeping those five fp32 (a 0.02 bar)
# cost a quarter of the speed-up and bought no accuracy on its dev or test set, so the bar is
# set for layers that are clearly broken by int8 (docs/notes-quantize.md has the numbers).
DEFAULT_MAX_LAYER_ERROR = 0.05
PROBE_SIZE = 16
SCORE_METRIC = {"classification": "accuracy", "regression": "pearson", "ner": "f1", "qa": "f1"}
REPORT_FILE = "quantize.json"


# ---------------------------------------------------------------------------- int8 modules
def _int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (R, C) float -> int8 (R, C) and scales (R,) with
    ``weight ~= int8 * scale[:, None]``; scale = max |row| / 127, values in [-127, 127] (not
    -128: the range stays symmetric, so the zero point is 0)."""
    w = weight.detach().float().cpu()                                         # (R, C)
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)                      # (R,)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


@contextlib.contextmanager
def _quiet():
    """torch 2.13 deprecates its quantized tensor dtypes (torch.qint8) in favour of the torchao
    package, which bertkit does not depend on; the fbgemm kernels they feed still ship and are
    the fast ones here, so the warning is silenced where the packed weight is built."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantiz.*deprecated", category=UserWarning)
        yield


class QuantizedLinear(nn.Module):
    """``y = x Wᵀ + b`` with W stored as int8 per output channel and x quantized per call.

    Buffers (what ``state_dict`` and the folder hold): ``weight`` int8 (out, in), symmetric,
    ``weight_scale`` float32 (out,) with ``W ~= weight * weight_scale[:, None]``, ``bias``
    float32 (out,). The forward runs ``torch.ops.quantized.linear_dynamic`` on a packed copy of
    the weight, built on first use (and again after the buffers are loaded). CPU only.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed = None

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "QuantizedLinear":
        """Quantize an fp32 Linear, one scale per output channel (see :func:`_int8_rows`)."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        with torch.no_grad():
            weight, scale = _int8_rows(linear.weight)                        # (out, in), (out,)
            module.weight.copy_(weight)
            module.weight_scale.copy_(scale)
            if linear.bias is not None:
                module.bias.copy_(linear.bias.detach().float().cpu())
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 weight the int8 numbers stand for: (out, in)."""
        return self.weight.float() * self.weight_scale[:, None]

    def pack(self) -> None:
        """Build the kernel's packed weight from the buffers (call after changing them)."""
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        with _quiet():
            qweight = torch._make_per_channel_quantized_tensor(
                self.weight.cpu(), self.weight_scale.cpu().double(), zero_points, 0)
        bias = self.bias.float().cpu() if self.bias is not None else None
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None  # new numbers: repack on next use

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None  # a kernel object, rebuilt from the buffers
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) float32 -> (..., out) float32."""
        if x.device.type != "cpu":
            raise ValueError(f"int8 (dynamic quantized) layers run on CPU only, got input on "
                             f"{x.device}; load the quantized model with device='cpu'")
        if self._packed is None:
            self.pack()
        # reduce_range: activations use 7 of their 8 bits, as torch does on x86, because the
        # AVX2 kernel adds pairs of u8*s8 products in int16 and 8-bit inputs could overflow it.
        return torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed, True)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int8 per-channel weights")


class QuantizedEmbedding(nn.Module):
    """An embedding table stored as int8 rows, one scale per row (weight-only quantization).

    A lookup has no arithmetic to speed up, but the word embeddings are half of a small BERT's
    weights, so storing them as int8 is most of the size saving. Looked-up rows are dequantized
    to float32. Buffers: ``weight`` int8 (V, H), ``weight_scale`` float32 (V,).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> "QuantizedEmbedding":
        """Quantize an fp32 table, one scale per row (see :func:`_int8_rows`)."""
        module = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
        with torch.no_grad():
            weight, scale = _int8_rows(embedding.weight)                     # (V, H), (V,)
            module.weight.copy_(weight)
            module.weight_scale.copy_(scale)
        return module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) int ids -> (..., H) float32."""
        return self.weight[ids].float() * self.weight_scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


# ---------------------------------------------------------------------------- names
def _hf_module_name(name: str) -> str:
    """bertkit module name -> HF module name (``encoder.layers.0.ffn.up`` ->
    ``encoder.layer.0.intermediate.dense``)."""
    from bertkit.checkpoint import to_hf_name
    return to_hf_name(name + ".weight")[:-len(".weight")]


def _quantizable(model: nn.Module) -> dict[str, nn.Module]:
    """The model's nn.Linear and nn.Embedding modules by bertkit name, in forward order, less
    the embeddings that are read other than by lookup: a word embedding tied to an MLM head
    (its matrix is the vocabulary projection) and the token-type table (BertEmbeddings adds its
    row 0 directly when no token_type_ids are given; it is 2 rows anyway)."""
    tied = {id(m.word_embeddings[0]) for m in model.modules()
            if isinstance(getattr(m, "word_embeddings", None), list)}
    return {name: m for name, m in model.named_modules()
            if type(m) is nn.Linear
            or (type(m) is nn.Embedding and id(m) not in tied
                and not name.endswith("token_type_embeddings"))}


def _to_int8(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Linear):
        return QuantizedLinear.from_float(module)
    return QuantizedEmbedding.from_float(module)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def is_quantized(model_or_config: Any) -> bool:
    """True for a model (or BertConfig) quantized by this module."""
    config = getattr(model_or_config, "config", model_or_config)
    return "quantization_config" in getattr(config, "extra", {})


def check_quantization_config(quantization: Any, where: str) -> None:
    """Fail clearly on a ``quantization_config`` bertkit cannot load."""
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    if method != QUANT_METHOD:
        raise ValueError(f"{where}: quantization_config has quant_method {method!r}; bertkit loads "
                         f"only its own {QUANT_METHOD!r} folders (written by `bertkit quantize`)")
    if quantization.get("bits", 8) != 8:
        raise ValueError(f"{where}: {QUANT_METHOD} supports bits=8 only, got {quantization['bits']}")


def prepare_int8_model(model: nn.Module, quantization: dict, hf_state: dict[str, torch.Tensor],
                       where: str = "checkpoint") -> None:
    """Loading hook (:func:`bertkit.checkpoint.load_model`): swap every Linear / Embedding that
    the checkpoint holds as int8 (``NAME.weight`` int8 + ``NAME.weight_scale``) for an empty
    :class:`QuantizedLinear` / :class:`QuantizedEmbedding`, so that the ordinary key- and
    shape-checked load fills int8 modules (and never casts int8 numbers into fp32 ones)."""
    from bertkit.checkpoint import _model_key
    check_quantization_config(quantization, where)
    has_prefix = any(k.startswith("bert.") for k in model.state_dict())
    modules = _quantizable(model)
    int8_keys = [k for k in hf_state if k.endswith(".weight_scale")]
    expected = quantization.get("quantized_modules", len(int8_keys))
    if len(int8_keys) != expected or not int8_keys:
        raise ValueError(f"{where}: config.json says {expected} int8 layer(s) but the weights hold "
                         f"{len(int8_keys)} (NAME.weight_scale tensors): the folder is damaged")
    for hf_key in int8_keys:
        hf_name = hf_key[:-len(".weight_scale")]
        weight = hf_state.get(hf_name + ".weight")
        if weight is None or weight.dtype != torch.int8:
            raise ValueError(f"{where}: {hf_key} has no int8 {hf_name}.weight beside it "
                             f"(found {None if weight is None else weight.dtype})")
        name = _model_key(hf_name + ".weight", has_prefix)[:-len(".weight")]
        if name not in modules:
            if name in dict(model.named_modules()):  # e.g. word embeddings an MLM head ties
                saved = ", ".join(model.config.architectures or []) or "see config.json"
                raise ValueError(f"{where} stores {hf_name} as int8, which {type(model).__name__} "
                                 f"cannot use as int8; load it as the class it was saved as "
                                 f"({saved})")
            continue  # another head's layer (e.g. loading a classifier folder as BertModel)
        m = modules[name]
        if isinstance(m, nn.Linear):
            shell = QuantizedLinear(m.in_features, m.out_features, m.bias is not None)
        else:
            shell = QuantizedEmbedding(m.num_embeddings, m.embedding_dim, m.padding_idx)
        _set_module(model, name, shell)


# ---------------------------------------------------------------------------- measuring
def probe_texts(n: int = PROBE_SIZE) -> list[str]:
    """``n`` English sentences of varied length from the standard library's docstrings (present
    on any Python install): the probe when no data file is given."""
    import argparse as m1, collections as m2, json as m3, logging as m4, pathlib as m5, random
    words: list[str] = []
    for module in (m1, m2, m3, m4, m5):
        words += (module.__doc__ or "").split()
    rng = random.Random(0)
    texts = []
    for _ in range(n):
        length = rng.randint(8, 96)
        start = rng.randrange(0, max(1, len(words) - length))
        texts.append(" ".join(words[start:start + length]))
    return texts


def probe_batch(tokenizer, texts: Sequence[str] | None = None, max_length: int = 128,
                n: int = PROBE_SIZE) -> dict[str, torch.Tensor]:
    """A padded batch (input_ids, token_type_ids, attention_mask: (B, T)) of ``texts``
    (default: :func:`probe_texts`)."""
    texts = list(texts) if texts is not None else probe_texts(n)
    if not texts:
        raise ValueError("the probe batch needs at least one text")
    return dict(tokenizer(texts, max_length=max_length, truncation=True, padding=True))


def _main_output(out: Any, attention_mask: torch.Tensor) -> torch.Tensor:
    """The output a user reads, at real positions only: (rows, features)."""
    if hasattr(out, "start_logits"):
        tensor = torch.stack([out.start_logits, out.end_logits], -1)         # (B, T, 2)
    elif hasattr(out, "prediction_logits"):
        tensor = out.prediction_logits                                       # (B, T, V)
    elif hasattr(out, "logits"):
        tensor = out.logits                                                  # (B, C) or (B, T, C)
    else:
        tensor = out.last_hidden_state                                       # (B, T, H)
    if tensor.dim() == 3:
        tensor = tensor[attention_mask.bool()]                               # (real tokens, F)
    return tensor.float()


def _relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """‖output − reference‖ / ‖reference‖ over every element (0 = identical)."""
    return float((output - reference).norm() / reference.norm().clamp(min=1e-12))


class _Replay(nn.Module):
    """Stands in for a module whose output is known: returns it without computing."""

    def __init__(self, output: Any):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs) -> Any:
        return self.output


def _encoder_parts(model: nn.Module) -> tuple[str, list[str]]:
    """The names of the embeddings module and the encoder layers of a bertkit BERT model."""
    names = [name for name, m in model.named_modules() if hasattr(m, "embeddings")
             and hasattr(getattr(m, "encoder", None), "layers")]
    if not names:
        return "", []
    prefix = names[0] + "." if names[0] else ""
    layers = len(model.get_submodule(prefix + "encoder.layers"))
    return prefix + "embeddings", [f"{prefix}encoder.layers.{i}" for i in range(layers)]


@torch.inference_mode()
def layer_errors(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Quantize each Linear and Embedding of ``model`` alone and measure the relative error of
    the model's output on ``batch``: {bertkit module name: error}. The model is left as it was.

    Quantizing a layer of encoder layer i changes nothing before it, so the fp32 outputs of the
    embeddings and of layers 0..i-1 are recorded once and replayed: each measurement computes
    only from layer i on (half a forward on average; the head's layers almost nothing).
    """
    model.eval()
    mask = batch["attention_mask"]
    embeddings, layers = _encoder_parts(model)
    stages = [embeddings, *layers] if embeddings else []
    recorded: dict[str, Any] = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda m, args, output, name=name: recorded.__setitem__(name, output)) for name in stages]
    try:
        reference = _main_output(model(**batch), mask)
    finally:
        for hook in hooks:
            hook.remove()

    def first_stage_changed(name: str) -> int:
        """Index into ``stages`` of the first stage whose output quantizing ``name`` changes."""
        for index, stage in enumerate(stages):
            if name == stage or name.startswith(stage + "."):
                return index
        return len(stages)  # after the encoder: pooler and head

    errors = {}
    for name, module in _quantizable(model).items():
        replayed = stages[:first_stage_changed(name)]
        originals = {stage: model.get_submodule(stage) for stage in replayed}
        for stage in replayed:
            _set_module(model, stage, _Replay(recorded[stage]))
        _set_module(model, name, _to_int8(module))
        try:
            errors[name] = _relative_error(_main_output(model(**batch), mask), reference)
        finally:
            _set_module(model, name, module)
            for stage, original in originals.items():
                _set_module(model, stage, original)
    return errors


@dataclass
class QuantizationReport:
    """What :func:`quantize_model` measured and chose (module names are HF names)."""

    layer_errors: dict[str, float]       # each Linear quantized alone: relative output error
    fp32_modules: list[str]              # kept fp32 (error above the threshold, or asked for)
    quantized_modules: list[str]
    max_layer_error: float
    output_error: float = 0.0            # the whole int8 model vs fp32 on the probe batch
    scores: dict[str, Any] = field(default_factory=dict)  # filled by quantize_folder


def quantize_model(model: nn.Module, batch: dict[str, torch.Tensor] | None = None,
                   max_layer_error: float = DEFAULT_MAX_LAYER_ERROR,
                   keep_fp32: Sequence[str] = ()) -> tuple[nn.Module, QuantizationReport]:
    """An int8 copy of ``model`` (any bertkit BERT class; ``model`` itself is not changed).

    Every ``nn.Linear`` is quantized alone on ``batch`` (a tokenizer output, e.g. from
    :func:`probe_batch`) and stays fp32 when the model's output moves by more than
    ``max_layer_error`` (relative L2 error, see :func:`layer_errors`); ``keep_fp32`` (bertkit or
    HF module names) stay fp32 regardless. Without ``batch`` every Linear not in ``keep_fp32`` is
    quantized. Returns (int8 model on CPU in eval mode, :class:`QuantizationReport`); the copy's
    config records ``quantization_config``, so ``save_pretrained`` writes an int8 folder.
    """
    if is_quantized(model):
        raise ValueError("the model is already quantized (its config has quantization_config); "
                         "quantize the fp32 model instead")
    if max_layer_error < 0:
        raise ValueError(f"max_layer_error must be >= 0, got {max_layer_error}")
    fp32 = copy.deepcopy(model).cpu().eval()
    candidates = _quantizable(fp32)
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no Linear or Embedding layer to quantize")
    hf_names = {name: _hf_module_name(name) for name in candidates}
    unknown = set(keep_fp32) - set(hf_names) - set(hf_names.values())
    if unknown:
        raise ValueError(f"keep_fp32 names no Linear of the model: {', '.join(sorted(unknown))}")
    errors = layer_errors(fp32, batch) if batch is not None else {}
    keep = {name for name in candidates
            if name in keep_fp32 or hf_names[name] in keep_fp32
            or errors.get(name, 0.0) > max_layer_error}

    quantized = fp32 if batch is None else copy.deepcopy(fp32)
    for name, module in candidates.items():
        if name not in keep:
            _set_module(quantized, name, _to_int8(module))
    report = QuantizationReport(
        layer_errors={hf_names[n]: e for n, e in errors.items()},
        fp32_modules=[hf_names[n] for n in candidates if n in keep],
        quantized_modules=[hf_names[n] for n in candidates if n not in keep],
        max_layer_error=max_layer_error)
    if not report.quantized_modules:
        raise ValueError(f"no layer is left to quantize: all {len(candidates)} layers are above "
                         f"max_layer_error={max_layer_error} or kept fp32")
    quantized.config.extra["quantization_config"] = {
        "quant_method": QUANT_METHOD, "bits": 8, "per_channel": True, "symmetric": True,
        "activations": ACTIVATIONS, "max_layer_error": max_layer_error,
        "quantized_modules": len(report.quantized_modules), "fp32_modules": report.fp32_modules}
    if batch is not None:
        with torch.inference_mode():
            mask = batch["attention_mask"]
            report.output_error = _relative_error(_main_output(quantized(**batch), mask),
                                                  _main_output(fp32(**batch), mask))
    return quantized.eval(), report


# ---------------------------------------------------------------------------- folders
def _weights_size(folder: str) -> int:
    """Bytes of the model weights of a folder (model*.safetensors, else pytorch_model*.bin)."""
    files = os.listdir(folder)
    weights = ([f for f in files if f.startswith("model") and f.endswith(".safetensors")]
               or [f for f in files if f.startswith("pytorch_model") and f.endswith(".bin")])
    return sum(os.path.getsize(os.path.join(folder, f)) for f in weights)


def _data_probe(model_dir: str, data: str, n: int) -> tuple[dict[str, torch.Tensor], str]:
    """A probe batch of ``n`` items spread over a task data file, encoded as evaluation
    encodes it (so NER/QA items look as the model will see them). Returns (batch, task)."""
    from bertkit.data.tasks import PaddingCollator
    from bertkit.training.finetune import _encode, _load_examples, _load_folder
    model, tokenizer, task, settings = _load_folder(model_dir, "cpu")
    dataset = _encode(task, _load_examples(task, data), tokenizer, settings, None, labelled=False)
    if len(dataset) == 0:
        raise ValueError(f"{data} holds no examples")
    step = max(1, len(dataset) // n)
    items = [dataset[i] for i in range(0, len(dataset), step)][:n]
    batch = PaddingCollator(tokenizer.pad_token_id)(items)
    keep = ("input_ids", "token_type_ids", "attention_mask")
    return {k: v for k, v in batch.items() if k in keep}, task


def quantize_folder(model_dir: str, out_dir: str, data: str | None = None,
                    max_drop: float | None = None, batch_size: int = 64,
                    max_layer_error: float = DEFAULT_MAX_LAYER_ERROR,
                    keep_fp32: Sequence[str] = (), probe_size: int = PROBE_SIZE,
                    overwrite: bool = False) -> QuantizationReport:
    """Quantize the model folder ``model_dir`` into ``out_dir`` (what `bertkit quantize` runs).

    The probe batch comes from ``data`` when given (else :func:`probe_texts`). With ``data``
    (a labelled file of the folder's task) the fp32 and int8 models are both evaluated on it
    and ``report.scores`` holds their headline metric (accuracy, pearson or F1, in points) and
    ``drop`` = fp32 − int8; with ``max_drop`` a larger drop is a ValueError and nothing is
    written. ``out_dir`` gets the int8 model, the tokenizer files and ``quantize.json``
    (the report), written as a whole at the end (:func:`bertkit.outputs.output_folder`: an
    existing folder is refused unless ``overwrite``; a failure leaves it as it was).
    """
    from bertkit.inference import load_for_inference
    from bertkit.config import BertConfig
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(f"{model_dir} has no config.json: quantize a full model folder (for a "
                         "PEFT adapter folder, merge it first: bertkit merge-lora)")
    # Checked now, before minutes of measuring; the folder itself is written at the end.
    check_output_folder(out_dir, inputs={"--model": model_dir, "--data": data},
                        overwrite=overwrite)
    if max_drop is not None and data is None:
        raise ValueError("--max-drop needs --data: the drop is measured on that file")
    if max_drop is not None and max_drop < 0:
        raise ValueError(f"--max-drop must be >= 0 points, got {max_drop:g}")
    if probe_size < 1:
        raise ValueError(f"the probe needs at least one example, got probe_size={probe_size}")
    config = BertConfig.from_pretrained(model_dir)
    if is_quantized(config):
        raise ValueError(f"{model_dir} is already quantized; quantize the fp32 folder instead")
    model, tokenizer = load_for_inference(model_dir, device="cpu")
    if data is not None:
        batch, task = _data_probe(model_dir, data, probe_size)
    else:
        batch = probe_batch(tokenizer, n=probe_size,
                            max_length=min(128, config.max_position_embeddings))
    quantized, report = quantize_model(model, batch, max_layer_error, keep_fp32)

    if data is not None:
        from bertkit.training.finetune import evaluate_folder
        metric = SCORE_METRIC[task]
        fp32_metrics = evaluate_folder(model_dir, data, batch_size=batch_size, device="cpu",
                                       model=model)
        int8_metrics = evaluate_folder(model_dir, data, batch_size=batch_size, device="cpu",
                                       model=quantized)
        fp32_score, int8_score = 100 * fp32_metrics[metric], 100 * int8_metrics[metric]
        report.scores = {"data": data, "metric": metric, "fp32": fp32_score, "int8": int8_score,
                         "drop": fp32_score - int8_score}
        if max_drop is not None and fp32_score - int8_score > max_drop:
            raise ValueError(f"int8 {metric} {int8_score:.2f} is {fp32_score - int8_score:.2f} points "
                             f"below fp32 {fp32_score:.2f} on {data}, more than --max-drop "
                             f"{max_drop:g}; nothing written (keep more layers fp32 with a lower "
                             f"--max-layer-error)")

    from bertkit.training.finetune import _write_json
    with output_folder(out_dir, inputs={"--model": model_dir, "--data": data},
                       overwrite=overwrite) as staging:
        quantized.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name in ("special_tokens_map.json", "tokenizer.json"):  # carried if the source has them
            if os.path.isfile(os.path.join(model_dir, name)):
                shutil.copy2(os.path.join(model_dir, name), staging)
        sizes = {"fp32_bytes": _weights_size(model_dir), "int8_bytes": _weights_size(staging)}
        _write_json(os.path.join(staging, REPORT_FILE), {**dataclasses.asdict(report), **sizes,
                                                         "source": os.path.abspath(model_dir)})
    report.scores.update(sizes)
    return report
