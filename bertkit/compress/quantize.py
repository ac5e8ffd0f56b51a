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

**Folder format.** A quantized folder is an HF-style folder (``config.json`` with a
``quantization_config``, ``model.safetensors`` with int8 tensors and their scales, tokenizer
files, plus ``quantize.json``: the measurements); :mod:`bertkit.modeling.int8` describes it and
holds the int8 modules (:class:`QuantizedLinear`, :class:`QuantizedEmbedding`), which
``BertXxx.from_pretrained`` rebuilds, so the loaded model *is* int8. The int8 kernels run on
the CPU only.

``transformers`` cannot use such a folder: it warns "Unknown quantization type, got
bertkit_dynamic_int8 ... we will skip the quantization" and would read the int8 numbers as
floats, which is a wrong model. Keep the fp32 folder for transformers, ONNX export and training.

Public API: :func:`quantize_model`, :func:`quantize_folder`, :func:`layer_errors`,
:func:`probe_batch`; the int8 modules themselves (:class:`QuantizedLinear`,
:class:`QuantizedEmbedding`, :func:`is_quantized`) are in :mod:`bertkit.modeling.int8`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from bertkit.checkpoint import to_hf_name
from bertkit.config import BertConfig
from bertkit.data.tasks import PaddingCollator
from bertkit.inference import load_for_inference
# The int8 modules live with the model code (bertkit.modeling.int8: the loader builds them);
# this module is the tool that chooses what to quantize and measures it.
from bertkit.modeling.bert import padded_path
from bertkit.modeling.int8 import (QUANT_METHOD, is_quantized, quantizable_modules, set_module,
                                   to_int8)
from bertkit.outputs import check_output_folder, output_folder
from bertkit.tasks import Task
from bertkit.tasks.evaluate import evaluate_folder, write_json
from bertkit.tasks.folder import open_task_folder

ACTIVATIONS = "dynamic_per_tensor_uint8_reduce_range"
# Relative output error (see _relative_error) above which a layer stays fp32. On the fine-tuned
# MiniLM classifier the attention layers move the logits by 0.2-0.9% alone and the FFN layers
# by 1-4% (the worst: layers 0-2, next to the embeddings); keeping those five fp32 (a 0.02 bar)
# cost a quarter of the speed-up and bought no accuracy on its dev or test set, so the bar is
# set for layers that are clearly broken by int8 (docs/notes-quantize.md has the numbers).
DEFAULT_MAX_LAYER_ERROR = 0.05
PROBE_SIZE = 16
REPORT_FILE = "quantize.json"


# ---------------------------------------------------------------------------- names
def _hf_module_name(name: str) -> str:
    """bertkit module name -> HF module name (``encoder.layers.0.ffn.up`` ->
    ``encoder.layer.0.intermediate.dense``)."""
    return to_hf_name(name + ".weight")[:-len(".weight")]


# ---------------------------------------------------------------------------- measuring
def probe_texts(n: int = PROBE_SIZE) -> list[str]:
    """``n`` English sentences of varied length from the standard library's docstrings (present
    on any Python install): the probe when no data file is given."""
    # Imported here as text sources (their docstrings), not as code this module uses.
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


def layer_errors(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Quantize each Linear and Embedding of ``model`` alone and measure the relative error of
    the model's output on ``batch``: {bertkit module name: error}. The model is left as it was.

    Quantizing a layer of encoder layer i changes nothing before it, so the fp32 outputs of the
    embeddings and of layers 0..i-1 are recorded once and replayed: each measurement computes
    only from layer i on (half a forward on average; the head's layers almost nothing). The
    replay needs each stage to be one module call, so this runs the padded path.
    """
    with padded_path(model):
        return _replayed_layer_errors(model, batch)


@torch.inference_mode()
def _replayed_layer_errors(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
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
    for name, module in quantizable_modules(model).items():
        replayed = stages[:first_stage_changed(name)]
        originals = {stage: model.get_submodule(stage) for stage in replayed}
        for stage in replayed:
            set_module(model, stage, _Replay(recorded[stage]))
        set_module(model, name, to_int8(module))
        try:
            errors[name] = _relative_error(_main_output(model(**batch), mask), reference)
        finally:
            set_module(model, name, module)
            for stage, original in originals.items():
                set_module(model, stage, original)
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
    candidates = quantizable_modules(fp32)
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
            set_module(quantized, name, to_int8(module))
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


def data_probe(model_dir: str, data: str, n: int) -> tuple[dict[str, torch.Tensor], Task]:
    """A probe batch of ``n`` items spread over a task data file, encoded as evaluation
    encodes it (so NER/QA items look as the model will see them). Returns (batch, task)."""
    opened = open_task_folder(model_dir, "cpu")
    task, tokenizer = opened.task, opened.tokenizer
    dataset = task.encode(task.load_examples(data), tokenizer, opened.settings, None,
                          labelled=False)
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
        batch, task = data_probe(model_dir, data, probe_size)
    else:
        batch = probe_batch(tokenizer, n=probe_size,
                            max_length=min(128, config.max_position_embeddings))
    quantized, report = quantize_model(model, batch, max_layer_error, keep_fp32)

    if data is not None:
        metric = task.default_metric  # the score that selects the best checkpoint
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

    with output_folder(out_dir, inputs={"--model": model_dir, "--data": data},
                       overwrite=overwrite) as staging:
        quantized.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name in ("special_tokens_map.json", "tokenizer.json"):  # carried if the source has them
            if os.path.isfile(os.path.join(model_dir, name)):
                shutil.copy2(os.path.join(model_dir, name), staging)
        sizes = {"fp32_bytes": _weights_size(model_dir), "int8_bytes": _weights_size(staging)}
        write_json(os.path.join(staging, REPORT_FILE), {**dataclasses.asdict(report), **sizes,
                                                        "source": os.path.abspath(model_dir)})
    report.scores.update(sizes)
    return report
