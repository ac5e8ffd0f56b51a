"""BertConfig: one dataclass for the BERT family, read from and written to HF ``config.json``.

The field names are exactly the keys of Hugging Face's ``config.json`` so that a folder moves
between bertkit and ``transformers`` unchanged. Keys bertkit does not use (``gradient_checkpointing``,
``transformers_version``, ``_name_or_path`` ...) are kept in ``extra`` and written back, so a
round trip through bertkit never loses information.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from bertkit.jsonfile import read_json_object

CONFIG_NAME = "config.json"

# Activations the feed-forward block implements (see modeling/layers.py). "gelu" is the exact
# erf form used by the original BERT; the others are the names transformers accepts.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")

# The losses BertForSequenceClassification computes (the names transformers uses).
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# The BERT family sizes (Turc et al., "Well-Read Students Learn Better"), layers x hidden.
MODEL_SIZES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8),
    "medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12),
}


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT encoder and its heads, with the HF ``config.json`` keys."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    problem_type: str | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    architectures: list[str] | None = None
    # Attention heads removed by head pruning, {layer: [head, ...]} in the layer's original
    # numbering (transformers' key). The folder keeps full-size tensors with those heads zeroed;
    # bertkit's loader builds the layers without them (see bertkit.checkpoint).
    pruned_heads: dict[int, list[int]] | None = None
    model_type: str = "bert"
    # Every config.json key that is not a field above, kept verbatim and written back.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id2label is not None:
            # JSON object keys are strings; HF stores id2label as {"0": "neg", ...}.
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            if self.label2id is None:
                self.label2id = {v: k for k, v in self.id2label.items()}
        if self.label2id is not None:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
        if self.pruned_heads is not None:
            # JSON keys are strings ({"0": [1, 3]}); empty lists carry nothing and are dropped.
            self.pruned_heads = {int(k): sorted({int(h) for h in v})
                                 for k, v in self.pruned_heads.items() if v}
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field if the config cannot build a model."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act {self.hidden_act!r} is not supported; "
                             f"choose one of {', '.join(SUPPORTED_ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"BertConfig.classifier_dropout must be in [0, 1), got "
                             f"{self.classifier_dropout!r}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"BertConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id ({self.pad_token_id}) must be a token id "
                             f"below vocab_size ({self.vocab_size})")
        if self.problem_type not in (None, *PROBLEM_TYPES):
            raise ValueError(f"BertConfig.problem_type {self.problem_type!r} is not supported; "
                             f"choose one of {', '.join(PROBLEM_TYPES)}")
        for layer, heads in (self.pruned_heads or {}).items():
            if not 0 <= layer < self.num_hidden_layers:
                raise ValueError(f"BertConfig.pruned_heads names layer {layer}, but the model has "
                                 f"{self.num_hidden_layers} layers")
            if not all(0 <= h < self.num_attention_heads for h in heads):
                raise ValueError(f"BertConfig.pruned_heads[{layer}] = {heads}: heads must be in "
                                 f"[0, {self.num_attention_heads})")
            if len(heads) == self.num_attention_heads:
                raise ValueError(f"BertConfig.pruned_heads[{layer}] removes every head of layer "
                                 f"{layer}; bertkit needs at least one head per layer")
        position_type = self.extra.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"BertConfig.position_embedding_type {position_type!r} is not "
                             "supported; bertkit implements 'absolute' position embeddings")

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def kept_heads(self, layer: int) -> list[int]:
        """The original indices of the heads layer ``layer`` still has (all unless pruned)."""
        pruned = set((self.pruned_heads or {}).get(layer, ()))
        return [h for h in range(self.num_attention_heads) if h not in pruned]

    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if n <= 0:
            raise ValueError(f"BertConfig.num_labels must be positive, got {n}")
        self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> "BertConfig":
        """A config of the BERT family size ``tiny|mini|small|medium|base`` (FFN = 4 x hidden)."""
        if size not in MODEL_SIZES:
            raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
        dims = dict(MODEL_SIZES[size])
        dims["intermediate_size"] = 4 * dims["hidden_size"]
        dims.update(overrides)
        return cls(**dims)

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        if "num_labels" in extra and "id2label" not in kwargs:
            n = int(extra.pop("num_labels"))
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(n)}
        else:
            extra.pop("num_labels", None)  # derived from id2label
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in ("id2label", "label2id", "architectures",
                                            "classifier_dropout", "problem_type",
                                            "pruned_heads"):
                continue
            if f.name in ("id2label", "pruned_heads"):
                value = {str(k): v for k, v in value.items()}
            out[f.name] = value
        return dict(sorted(out.items()))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "BertConfig":
        """Read ``folder/config.json`` (or a path to a json file)."""
        path = os.fspath(folder)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        data = read_json_object(path, missing=f"no {CONFIG_NAME} found at {path}")
        model_type = data.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{path}: model_type {model_type!r} is not a BERT model")
        return cls.from_dict(data)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
