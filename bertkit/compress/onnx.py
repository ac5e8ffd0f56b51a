"""ONNX export of bertkit models, checked against PyTorch in onnxruntime.

``export_folder(DIR)`` writes ``DIR/model.onnx`` (or ``out``): one graph with int64 inputs
``input_ids``, ``attention_mask``, ``token_type_ids`` of shape (batch, sequence), both axes
dynamic (sequence up to ``max_position_embeddings``), and the head's outputs:

    BertModel                       last_hidden_state (B, T, H), pooler_output (B, H)
    BertForSequenceClassification   logits (B, C)
    BertForTokenClassification      logits (B, T, C)
    BertForQuestionAnswering        start_logits (B, T), end_logits (B, T)
    BertForMaskedLM                 logits (B, T, V)
    BertForPreTraining              prediction_logits (B, T, V), seq_relationship_logits (B, 2)

Before the file gets its final name it is run in onnxruntime on probe batches of other batch
sizes and lengths than the traced one, with padding; if any output differs from PyTorch by
more than ``atol`` (at real tokens) the file is deleted and a ValueError gives the numbers.

Running such a file is :mod:`bertkit.runtime.onnx` (:class:`OnnxModel`,
:func:`load_for_onnx_inference`: ``bertkit predict/evaluate/serve --runtime onnx``); the file's
contract (name, inputs, outputs, metadata) is defined there too, and this module writes to it.

Exporter: the torch.export-based one (``dynamo=True``, onnxscript); the TorchScript one is
deprecated since torch 2.9. Opset 18 is the exporter's own (no version conversion step) and
runs on onnxruntime >= 1.14.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bertkit.config import BertConfig
from bertkit.modeling.bert import HEAD_CLASSES, padded_path
from bertkit.outputs import check_output_file
from bertkit.peft import is_adapter_folder
# The file contract and the onnxruntime model live in bertkit.runtime (running a model must not
# import the exporter).
from bertkit.runtime.onnx import (INPUT_NAMES, META_ARCHITECTURE, META_WEIGHTS, ONNX_FILE,
                                  OUTPUTS, OnnxModel, weights_fingerprint)

DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-4


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how closely onnxruntime matched PyTorch."""
    path: str
    architecture: str
    outputs: tuple[str, ...]
    opset: int
    max_abs_diff: float   # over every output of every probe batch
    atol: float
    size_bytes: int


# ---------------------------------------------------------------------------- export
class _Exportable(nn.Module):
    """The model with positional tensor inputs and a tuple of tensor outputs (what ONNX needs)."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids)
        return tuple(getattr(out, name) for name in self.outputs)


def architecture_of(model: nn.Module) -> str:
    """The bertkit class name of ``model`` (one of :data:`OUTPUTS`), or a ValueError."""
    name = type(model).__name__
    if name not in OUTPUTS:
        raise ValueError(f"cannot export a {name} to ONNX; supported: {', '.join(OUTPUTS)}")
    return name


def _output_names(model: nn.Module, architecture: str) -> tuple[str, ...]:
    names = OUTPUTS[architecture]
    if architecture == "BertModel" and model.pooler is None:
        names = ("last_hidden_state",)
    return names


def _batch(config: BertConfig, lengths: list[int], seed: int, device) -> dict[str, torch.Tensor]:
    """Random ids padded to the longest of ``lengths``; the second half of each row is
    segment 1 (when the model has two segments) so token types are exercised too."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(0, config.vocab_size, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    types = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        if config.type_vocab_size > 1:
            types[row, length // 2:length] = 1
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids = ids.masked_fill(mask == 0, pad)                                     # (B, T)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "token_type_ids": types.to(device)}


def _probe_batches(config: BertConfig, device) -> list[dict[str, torch.Tensor]]:
    """Shapes the trace did not see: 3 rows of different lengths (padding), and 1 short
    unpadded row (the serving case). The traced dummy is (2, 8)."""
    longest = min(config.max_position_embeddings, 19)
    return [_batch(config, [longest, max(1, longest // 2), 2], seed=1, device=device),
            _batch(config, [min(config.max_position_embeddings, 5)], seed=2, device=device)]


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter warns about things that do not concern a BERT graph (missing torchvision
    ops, deprecated pytree classes, axis renames); keep the user's terminal for our report."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_model(model: nn.Module, path: str | os.PathLike, opset: int = DEFAULT_OPSET,
                 atol: float = DEFAULT_ATOL,
                 metadata: dict[str, str] | None = None) -> ExportResult:
    """Export a bertkit model to ``path``, verify it in onnxruntime, return what was written.

    The graph takes int64 ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) with B
    and T dynamic, and returns the outputs listed in :data:`OUTPUTS`. The file is written
    under a temporary name and renamed only after onnxruntime agreed with PyTorch within
    ``atol`` (max abs diff over all outputs of the probe batches, at real tokens); otherwise
    it is deleted and a ValueError gives the numbers (or onnxruntime's refusal to run it).
    ``metadata`` is stored in the model's metadata_props.
    """
    # heavy to import: loaded only when a model is exported
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    path = os.fspath(path)
    # LayerNormalization is an ONNX operator from opset 17 on; below that the exporter cannot
    # convert the graph (and silently keeps opset 18).
    if not 17 <= opset <= 23:
        raise ValueError(f"opset must be in 17..23, got {opset}")
    if not atol > 0:
        raise ValueError(f"atol must be positive, got {atol}")
    architecture = architecture_of(model)
    names = _output_names(model, architecture)
    config = model.config
    if config.max_position_embeddings < 8:
        raise ValueError(f"max_position_embeddings is {config.max_position_embeddings}; the "
                         "export traces 8 tokens")
    device = next(model.parameters()).device
    was_training = model.training
    wrapper = _Exportable(model, names).eval()  # dropout off (eval() also sets the model's)
    # A dummy of batch 2 and length 8 with padding: torch.export specialises axes of size 0
    # or 1, so both dynamic axes need a larger example.
    dummy = _batch(config, [8, 5], seed=0, device=device)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=config.max_position_embeddings)
    dynamic = {name: {0: batch, 1: sequence} for name in INPUT_NAMES}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Same folder, so the final rename is atomic; the pid keeps two exports apart.
    partial = f"{path}.partial-{os.getpid()}"
    try:
        # The padded path: the unpadded one's shapes depend on the data and cannot be traced.
        with _quiet_exporter(), padded_path(model):
            program = torch.onnx.export(wrapper, tuple(dummy[n] for n in INPUT_NAMES), dynamo=True,
                                        input_names=list(INPUT_NAMES), output_names=list(names),
                                        dynamic_shapes=dynamic, opset_version=opset,
                                        verbose=False)
            program.model.metadata_props.update({META_ARCHITECTURE: architecture, **(metadata or {})})
            # One self-contained file (protobuf caps it at 2 GB: BERT-large is 1.3 GB).
            program.save(partial, external_data=False)
        try:
            diff = _max_abs_diff(wrapper, partial, config, device)
        except (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidArgument,
                ort_errors.NotImplemented, ort_errors.RuntimeException) as e:
            # e.g. opset 23's Attention operator, whose CPU kernel in onnxruntime 1.32
            # rejects BERT's broadcast (B, 1, 1, T) padding mask.
            message = str(e).strip().splitlines()[0]
            if len(message) > 320:  # keep the node and the reason, drop the C++ signature
                message = f"{message[:200]} ... {message[-120:]}"
            raise ValueError(f"onnxruntime cannot run the exported graph ({architecture}, "
                             f"opset {opset}): {message}; {path} was not written") from None
        if not diff <= atol:  # also catches NaN
            raise ValueError(f"onnxruntime disagrees with PyTorch on the probe batches: max abs "
                             f"diff {diff:.3g} > atol {atol:g} ({architecture}, opset {opset}); "
                             f"{path} was not written")
        os.replace(partial, path)
    finally:
        model.train(was_training)
        if os.path.exists(partial):
            os.remove(partial)
    return ExportResult(path, architecture, names, opset, diff, atol, os.path.getsize(path))


@torch.inference_mode()
def _max_abs_diff(wrapper: _Exportable, path: str, config: BertConfig, device) -> float:
    """Max abs difference between PyTorch and onnxruntime over every output of the probe
    batches, at real tokens only: what a padding position holds is used by nothing (pooling
    masks it, NER and QA cut it off), and there the two runtimes' rounding differs most
    (1e-4 on MiniLM, against 3e-6 at real tokens)."""
    session = OnnxModel(path, config)
    worst = 0.0
    for probe in _probe_batches(config, device):
        with padded_path(wrapper):  # the path the graph was traced on
            expected = wrapper(**probe)
        got = session.run_arrays({k: v.cpu().numpy() for k, v in probe.items()})
        real = probe["attention_mask"].cpu().numpy().astype(bool)            # (B, T)
        for want, have in zip(expected, got):
            want = want.float().cpu().numpy()
            if want.shape != have.shape:
                raise ValueError(f"onnxruntime returned shape {have.shape}, PyTorch "
                                 f"{want.shape}: the exported graph is wrong")
            diff = np.abs(want - have)
            if diff.ndim >= 2 and diff.shape[:2] == real.shape:  # per token: (B, T, ...)
                diff = diff[real]
            worst = max(worst, float(diff.max()))
    return worst


def export_folder(folder: str | os.PathLike, out: str | os.PathLike | None = None,
                  opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL,
                  overwrite: bool = False) -> ExportResult:
    """Export a bertkit/HF model folder to ONNX (default ``FOLDER/model.onnx``, where
    ``--runtime onnx`` looks) with the class its ``architectures`` names; see
    :func:`export_model` for the graph and the check. ``out`` must be a ``.onnx`` file; an
    existing one is replaced only with ``overwrite``."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if is_adapter_folder(folder):
        raise ValueError(f"{folder} is a PEFT adapter folder; export a full model folder "
                         "(for LoRA: `bertkit merge-lora --adapter DIR --out FULL` first)")
    out = os.fspath(out) if out is not None else os.path.join(folder, ONNX_FILE)
    check_output_file(out, inputs={"--model": folder}, overwrite=overwrite, suffix=".onnx")
    config = BertConfig.from_pretrained(folder)
    names = [a for a in (config.architectures or []) if a in HEAD_CLASSES]
    model = HEAD_CLASSES[names[0] if names else "BertModel"].from_pretrained(folder, verbose=False)
    return export_model(model, out, opset=opset, atol=atol,
                        metadata={META_WEIGHTS: weights_fingerprint(folder)})
