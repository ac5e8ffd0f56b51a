"""onnxruntime inference of a model exported by ``bertkit export``.

:class:`OnnxModel` runs ``DIR/model.onnx`` and is called like a bertkit head (same keyword
inputs, same output dataclasses, ``.config``), so evaluation and prediction code runs on it
unchanged. ``bertkit predict/evaluate/serve --runtime onnx`` load it through
:func:`load_for_onnx_inference`, which refuses a file exported from other weights than the
folder now holds.

This module also fixes what an exported file is (:data:`ONNX_FILE`, :data:`INPUT_NAMES`,
:data:`OUTPUTS`, the metadata keys): the exporter, :mod:`bertkit.compress.onnx`, writes to
that contract and imports it from here, so running a model never imports the exporter.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch

from bertkit.config import BertConfig
from bertkit.inference import load_tokenizer_for
from bertkit.modeling.bert import (BertOutput, ClassifierOutput, MaskedLMOutput,
                                   PreTrainingOutput, QuestionAnsweringOutput,
                                   question_answering_loss, sequence_classification_loss,
                                   token_classification_loss)

ONNX_FILE = "model.onnx"  # where `bertkit export` writes and `--runtime onnx` looks
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# The graph outputs of each class: fields of its output dataclass, in order.
OUTPUTS = {
    "BertModel": ("last_hidden_state", "pooler_output"),
    "BertForSequenceClassification": ("logits",),
    "BertForTokenClassification": ("logits",),
    "BertForQuestionAnswering": ("start_logits", "end_logits"),
    "BertForMaskedLM": ("logits",),
    "BertForPreTraining": ("prediction_logits", "seq_relationship_logits"),
}
_OUTPUT_CLASSES = {
    "BertModel": BertOutput,
    "BertForSequenceClassification": ClassifierOutput,
    "BertForTokenClassification": ClassifierOutput,
    "BertForQuestionAnswering": QuestionAnsweringOutput,
    "BertForMaskedLM": MaskedLMOutput,
    "BertForPreTraining": PreTrainingOutput,
}
# metadata_props keys of an exported file: the bertkit class, and the sha256 of the weights it
# was exported from (see weights_fingerprint).
META_ARCHITECTURE = "bertkit.architecture"
META_WEIGHTS = "bertkit.weights_sha256"


def weights_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the folder's weight files (``*.safetensors``, ``*.bin`` at its top level),
    so a ``model.onnx`` left beside weights that were trained again is detected."""
    folder = os.fspath(folder)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith((".safetensors", ".bin")) and os.path.isfile(os.path.join(folder, name)):
            digest.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


class OnnxModel:
    """An exported model in an onnxruntime session (CPU), called like a bertkit head.

    ``model(input_ids=..., attention_mask=..., token_type_ids=..., labels=...)`` takes torch
    tensors (or numpy arrays) of shape (B, T) and returns the PyTorch class's output dataclass
    (:class:`~bertkit.modeling.bert.ClassifierOutput`, ``QuestionAnsweringOutput``,
    ``BertOutput`` ...) holding CPU tensors; with labels the loss is computed as the PyTorch
    head does. ``config`` is the model's :class:`BertConfig` (labels, pad id ...).

    ``threads`` sets onnxruntime's intra-op threads (default: its own choice, one per
    physical core).
    """

    def __init__(self, path: str | os.PathLike, config: BertConfig | None = None,
                 threads: int | None = None):
        import onnxruntime as ort  # heavy to import: loaded only when a model runs on it
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.architecture = self.metadata.get(META_ARCHITECTURE)
        if self.architecture not in OUTPUTS:
            raise ValueError(f"{path} was not written by `bertkit export` (no "
                             f"{META_ARCHITECTURE} in its metadata)")
        self.config = config
        self.training = False

    def __repr__(self) -> str:
        return f"OnnxModel({self.path!r}, {self.architecture})"

    def eval(self) -> OnnxModel:
        """For symmetry with nn.Module: an ONNX session is always in inference mode."""
        return self

    def run_arrays(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session on int64 arrays named as :data:`INPUT_NAMES`; outputs in order."""
        return self.session.run(list(self.output_names), feeds)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                 start_positions=None, end_positions=None):
        ids = _int64(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {ids.shape}")
        # The graph always takes all three inputs; the heads' defaults fill missing ones.
        mask = np.ones_like(ids) if attention_mask is None else _int64(attention_mask)
        types = np.zeros_like(ids) if token_type_ids is None else _int64(token_type_ids)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        if self.config is not None and ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"input has {ids.shape[1]} tokens but the model takes at most "
                             f"{self.config.max_position_embeddings} (max_position_embeddings)")
        outputs = dict(zip(self.output_names,
                           (torch.from_numpy(a) for a in self.run_arrays(feeds))))
        return self._wrap(outputs, labels, start_positions, end_positions)

    def _wrap(self, outputs: dict[str, torch.Tensor], labels, start_positions, end_positions):
        arch = self.architecture
        if arch == "BertModel":
            return BertOutput(outputs["last_hidden_state"], outputs.get("pooler_output"))
        if arch == "BertForQuestionAnswering":
            start, end = outputs["start_logits"], outputs["end_logits"]
            loss = None
            if start_positions is not None and end_positions is not None:
                loss = question_answering_loss(start, end, torch.as_tensor(start_positions),
                                               torch.as_tensor(end_positions))
            return QuestionAnsweringOutput(loss, start, end)
        if arch == "BertForPreTraining":
            if labels is not None:
                raise ValueError("the ONNX runtime does not compute pretraining losses")
            return PreTrainingOutput(None, outputs["prediction_logits"],
                                     outputs["seq_relationship_logits"])
        logits = outputs["logits"]
        if labels is None:
            return _OUTPUT_CLASSES[arch](None, logits)
        labels = torch.as_tensor(labels)
        if arch == "BertForSequenceClassification":
            problem = getattr(self.config, "problem_type", None)
            return ClassifierOutput(sequence_classification_loss(logits, labels, problem), logits)
        if arch == "BertForTokenClassification":
            return ClassifierOutput(token_classification_loss(logits, labels), logits)
        raise ValueError("the ONNX runtime does not compute masked-LM losses")


def _int64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.int64)


def load_for_onnx_inference(folder: str | os.PathLike, threads: int | None = None):
    """(OnnxModel, Tokenizer) of a folder exported with ``bertkit export`` (its
    ``model.onnx``), the ONNX counterpart of :func:`bertkit.inference.load_for_inference`.

    A missing ``model.onnx`` or one exported from other weights than the folder now holds
    is a clear error telling how to (re-)export.
    """
    folder = os.fspath(folder)
    path = os.path.join(folder, ONNX_FILE)
    command = f"bertkit export --model {folder} --format onnx"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: run `{command}` first")
    config = BertConfig.from_pretrained(folder)
    model = OnnxModel(path, config, threads=threads)
    recorded = model.metadata.get(META_WEIGHTS)
    if recorded is not None and recorded != weights_fingerprint(folder):
        raise ValueError(f"{path} was exported from other weights than {folder} now holds "
                         f"(was the folder trained again?); run `{command} --overwrite`")
    return model, load_tokenizer_for(folder, config)
