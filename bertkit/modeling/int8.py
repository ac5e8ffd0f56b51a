"""int8 modules and how to rebuild them from a quantized model folder.

:class:`QuantizedLinear` stores a Linear's weight as int8 with one scale per output channel and
quantizes its input per call (dynamic quantization: torch's fbgemm/x86 kernel, the one
``torch.ao.nn.quantized.dynamic.Linear`` runs); :class:`QuantizedEmbedding` stores a table as
int8 rows. The *tool* that chooses which layers to quantize, by measurement, is
:mod:`bertkit.compress.quantize`; this module is what the loader needs
(:func:`bertkit.checkpoint.load_model` calls :func:`prepare_int8_model`), so loading a model
never imports the tool.

**Folder format.** A quantized folder is an HF-style folder whose ``config.json`` holds::

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
``NAME.bias`` float32 (out,). Other tensors are as in any folder. The loader sees
``quantization_config`` and rebuilds :class:`QuantizedLinear` / :class:`QuantizedEmbedding`
modules, so the loaded model *is* int8 (putting the int8 numbers into fp32 modules instead would
silently give a different, wrong model). The int8 kernels run on the CPU only.

Public API: :class:`QuantizedLinear`, :class:`QuantizedEmbedding`, :func:`quantizable_modules`,
:func:`to_int8`, :func:`set_module`, :func:`is_quantized`, :func:`check_quantization_config`,
:func:`prepare_int8_model`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

QUANT_METHOD = "bertkit_dynamic_int8"


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


# ---------------------------------------------------------------------------- loading
def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
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


def to_int8(module: nn.Module) -> nn.Module:
    """An int8 copy of an ``nn.Linear`` (:class:`QuantizedLinear`) or ``nn.Embedding``
    (:class:`QuantizedEmbedding`)."""
    if isinstance(module, nn.Linear):
        return QuantizedLinear.from_float(module)
    return QuantizedEmbedding.from_float(module)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in ``model`` at the dotted path ``name`` (``encoder.layers.0.ffn.up``)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def is_quantized(model_or_config: Any) -> bool:
    """True for a model (or BertConfig) quantized by ``bertkit quantize`` (int8 modules)."""
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
                       model_key: Callable[[str], str], where: str = "checkpoint") -> None:
    """Loading hook (:func:`bertkit.checkpoint.load_model`): swap every Linear / Embedding that
    the checkpoint holds as int8 (``NAME.weight`` int8 + ``NAME.weight_scale``) for an empty
    :class:`QuantizedLinear` / :class:`QuantizedEmbedding`, so that the ordinary key- and
    shape-checked load fills int8 modules (and never casts int8 numbers into fp32 ones).

    ``model_key`` maps a checkpoint (HF) tensor name to the model's own (the loader's rename
    rule, :func:`bertkit.checkpoint.model_key`); ``where`` names the folder in errors.
    """
    check_quantization_config(quantization, where)
    modules = quantizable_modules(model)
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
        name = model_key(hf_name + ".weight")[:-len(".weight")]
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
        set_module(model, name, shell)
