"""BertConfig: one dataclass for the BERT family, read from and written to HF ``config.json``.

The field names are exactly the keys of Hugging Face's ``config.json`` so that a folder moves
between bertkit and ``transformers`` unchanged. Keys bertkit does not use (``gradient_checkpointing``,
``transformers_version``, ``_name_or_path`` ...) are kept in ``extra`` and written back, so a
round trip through bertkit never loses information.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
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


# Upper bounds of the sizes a config may ask for: far above any released BERT (BERT-large has 24
# layers, hidden 1024, 512 positions; multilingual vocabularies reach ~250k tokens), low enough
# that a typo or a hostile config.json fails at once instead of hanging in a 10**9-layer build
# loop or dying in an allocation traceback.
SIZE_LIMITS = {
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "num_hidden_layers": 256,
    "num_attention_heads": 1 << 10,
    "intermediate_size": 1 << 18,
    "max_position_embeddings": 1 << 20,
    "type_vocab_size": 1 << 10,
}
MAX_LABELS = 1 << 16
# Sizes that pass one by one can still multiply into a model no machine holds (1M positions x
# hidden 65536 = 275 GB); 2**33 parameters (34 GB in fp32) is ~25x the largest BERT released.
MAX_PARAMETERS = 1 << 33


class ConfigError(ValueError):
    """A config value no model can be built from, naming the field.

    ``str(error)`` is ``"BertConfig.num_hidden_layers must be ..."`` (a config built in code);
    :meth:`in_file` words it for a config file: ``"PATH: num_hidden_layers must be ..."``.
    """

    def __init__(self, owner: str, field_name: str | None, problem: str):
        self.owner, self.field_name, self.problem = owner, field_name, problem
        super().__init__(f"{owner}.{field_name} {problem}" if field_name else f"{owner}: {problem}")

    def in_file(self, path: str) -> ValueError:
        """The same error as a one-line ValueError that names ``path`` and the field."""
        return ValueError(f"{path}: {self.field_name} {self.problem}" if self.field_name
                          else f"{path}: {self.problem}")


def _shown(value: Any, kind: bool = True) -> str:
    """``repr(value)`` cut to a readable length, with its JSON kind (``'0.1' (a string)``)
    when it is not a number and ``kind`` is set."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    kinds = {str: "a string", list: "a list", dict: "an object", bool: "a boolean",
             type(None): "null"}
    name = kinds.get(type(value)) if kind else None
    return f"{text} ({name})" if name else text


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # An int is finite (and math.isfinite would overflow converting a huge one to float).
    return isinstance(value, int) or math.isfinite(value)


class FieldChecker:
    """Checks of config fields that raise :class:`ConfigError` naming the field and the value
    found; shared by every config dataclass (``FieldChecker("BertConfig")``)."""

    def __init__(self, owner: str):
        self.owner = owner

    def fail(self, field_name: str | None, problem: str) -> None:
        raise ConfigError(self.owner, field_name, problem)

    def integer(self, field_name: str, value: Any, high: int, low: int = 1) -> None:
        """``value`` is an int (not a bool) in [low, high]."""
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            rule = "a positive integer" if low == 1 else f"an integer >= {low}"
            self.fail(field_name, f"must be {rule} <= {high}, got {_shown(value)}")

    def fraction(self, field_name: str, value: Any) -> None:
        """``value`` is a number in [0, 1) (a dropout probability)."""
        if not _is_number(value) or not 0.0 <= value < 1.0:
            self.fail(field_name, f"must be in [0, 1), got {_shown(value)}")

    def positive(self, field_name: str, value: Any) -> None:
        """``value`` is a finite number > 0."""
        if not _is_number(value) or not value > 0:
            self.fail(field_name, f"must be a positive number, got {_shown(value)}")

    def non_negative(self, field_name: str, value: Any) -> None:
        """``value`` is a finite number >= 0."""
        if not _is_number(value) or not value >= 0:
            self.fail(field_name, f"must be a number >= 0, got {_shown(value)}")

    def parameter_count(self, parameters: int, sizes: dict[str, int]) -> None:
        """A model of about ``parameters`` weights, from the fields ``sizes``, is at most
        :data:`MAX_PARAMETERS`."""
        if parameters > MAX_PARAMETERS:
            named = ", ".join(f"{name} {value}" for name, value in sizes.items())
            self.fail(None, f"the sizes ({named}) make a model of about "
                            f"{parameters / 1e9:,.0f} billion parameters; bertkit builds at most "
                            f"{MAX_PARAMETERS / 1e9:.1f} billion")

    def string_list(self, field_name: str, value: Any) -> None:
        """``value`` is a list of strings (JSON: an array of names)."""
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(field_name, f"must be a list of names (strings), got {_shown(value)}")


_CHECK = FieldChecker("BertConfig")


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
            self.id2label = _label_names(self.id2label)
            if self.label2id is None:
                self.label2id = {v: k for k, v in self.id2label.items()}
        if self.label2id is not None:
            self.label2id = _label_ids(self.label2id)
        if self.pruned_heads is not None:
            self.pruned_heads = _pruned_heads(self.pruned_heads)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` (a ``ValueError``) naming the offending field if the
        config cannot build a model."""
        for name, high in SIZE_LIMITS.items():
            _CHECK.integer(name, getattr(self, name), high)
        if self.hidden_size % self.num_attention_heads != 0:
            _CHECK.fail("hidden_size", f"({self.hidden_size}) must be divisible by "
                                       f"num_attention_heads ({self.num_attention_heads})")
        self._check_parameter_count()
        if not isinstance(self.hidden_act, str) or self.hidden_act not in SUPPORTED_ACTIVATIONS:
            _CHECK.fail("hidden_act", f"{_shown(self.hidden_act, kind=False)} is not supported; "
                                      f"choose one of {', '.join(SUPPORTED_ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            _CHECK.fraction(name, getattr(self, name))
        if self.classifier_dropout is not None:
            _CHECK.fraction("classifier_dropout", self.classifier_dropout)
        _CHECK.positive("layer_norm_eps", self.layer_norm_eps)
        _CHECK.non_negative("initializer_range", self.initializer_range)
        pad = self.pad_token_id
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)
                                or not 0 <= pad < self.vocab_size):
            _CHECK.fail("pad_token_id", f"must be a token id below vocab_size "
                                        f"({self.vocab_size}), got {_shown(pad)}")
        if self.problem_type not in (None, *PROBLEM_TYPES):
            _CHECK.fail("problem_type", f"{_shown(self.problem_type, kind=False)} is not "
                                        f"supported; choose one of {', '.join(PROBLEM_TYPES)}")
        if self.architectures is not None:
            _CHECK.string_list("architectures", self.architectures)
        self._check_pruned_heads()
        position_type = self.extra.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            _CHECK.fail("position_embedding_type", f"{_shown(position_type, kind=False)} is not "
                        "supported; bertkit implements 'absolute' position embeddings")

    def _check_parameter_count(self) -> None:
        h, layers = self.hidden_size, self.num_hidden_layers
        rows = self.vocab_size + self.max_position_embeddings + self.type_vocab_size
        sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                 "max_position_embeddings")
        _CHECK.parameter_count(rows * h + layers * (4 * h * h + 2 * h * self.intermediate_size),
                               {name: getattr(self, name) for name in sizes})

    def _check_pruned_heads(self) -> None:
        for layer, heads in (self.pruned_heads or {}).items():
            if not 0 <= layer < self.num_hidden_layers:
                _CHECK.fail("pruned_heads", f"names layer {layer}, but the model has "
                                            f"{self.num_hidden_layers} layers")
            if not all(0 <= h < self.num_attention_heads for h in heads):
                _CHECK.fail(f"pruned_heads[{layer}]", f"= {heads}: heads must be in "
                                                      f"[0, {self.num_attention_heads})")
            if len(heads) == self.num_attention_heads:
                _CHECK.fail(f"pruned_heads[{layer}]", f"removes every head of layer {layer}; "
                                                      "bertkit needs at least one head per layer")

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # What a BERT-family variant changes, as BERT has it (the family configs below override).
    @property
    def position_offset(self) -> int:
        """The position id of the first token (RoBERTa: pad_token_id + 1; BERT: 0)."""
        return 0

    @property
    def max_tokens(self) -> int:
        """The longest input the position embeddings cover."""
        return self.max_position_embeddings - self.position_offset

    @property
    def uses_token_types(self) -> bool:
        """Whether the model has token type embeddings at all (DistilBERT has none)."""
        return True

    @property
    def embedding_dim(self) -> int:
        """The width E of the embeddings (ALBERT: E < H, projected to H by the encoder)."""
        return self.hidden_size

    @property
    def projects_embeddings(self) -> bool:
        """Whether the encoder maps the E-wide embeddings to H first (ALBERT)."""
        return False

    def layer_order(self) -> list[int]:
        """The encoder's distinct layers in the order they run (ALBERT repeats shared ones)."""
        return list(range(self.num_hidden_layers))

    def local_window(self, layer: int) -> int | None:
        """The one-sided sliding window of ``layer``'s attention (Longformer), None for full
        attention."""
        return None

    def kept_heads(self, layer: int) -> list[int]:
        """The original indices of the heads layer ``layer`` still has (all unless pruned)."""
        pruned = set((self.pruned_heads or {}).get(layer, ()))
        return [h for h in range(self.num_attention_heads) if h not in pruned]

    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        _CHECK.integer("num_labels", n, MAX_LABELS)
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
            n = extra.pop("num_labels")
            _CHECK.integer("num_labels", n, MAX_LABELS)
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
        """Read ``folder/config.json`` (or a path to a json file).

        ``BertConfig.from_pretrained`` returns the config of the folder's family
        (:class:`RobertaConfig`, :class:`DistilBertConfig`, :class:`AlbertConfig` by its
        ``model_type``); a family's own class reads only its family's folders.

        A value no model can be built from is a one-line ``ValueError`` naming the file and the
        field (``PATH: num_hidden_layers must be a positive integer <= 256, got 1000000000``).
        """
        path, data = read_config_file(folder)
        model_type = data.get("model_type", "bert")
        expected = cls.__dataclass_fields__["model_type"].default
        if cls is BertConfig and model_type in FAMILY_CONFIGS:  # the folder chooses the family
            cls = FAMILY_CONFIGS[model_type]
        elif model_type != expected:
            known = ", ".join(FAMILY_CONFIGS) if cls is BertConfig else repr(expected)
            raise ValueError(f"{path}: model_type {_shown(model_type, kind=False)} is not a "
                             f"BERT model (the family bertkit reads: {known})")
        return config_from_file(cls, data, path)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        write_config_file(self.to_dict(), folder)


def read_config_file(folder: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(path, values) of ``folder/config.json`` (or of a path to a json file)."""
    path = os.fspath(folder)
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG_NAME)
    return path, read_json_object(path, missing=f"no {CONFIG_NAME} found at {path}")


def config_from_file(cls, data: dict[str, Any], path: str):
    """``cls.from_dict(data)`` with a validation error naming the file it came from."""
    try:
        return cls.from_dict(data)
    except ConfigError as e:
        raise e.in_file(path) from None


def write_config_file(values: dict[str, Any], folder: str | os.PathLike) -> None:
    """Write ``folder/config.json`` (indented, one key a line, as transformers writes it)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------- JSON label maps
def _int_key(key: Any) -> int | None:
    """A JSON object key as a non-negative int (``"3"`` or ``3``), else None."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key if key >= 0 else None
    if isinstance(key, str) and re.fullmatch(r"[0-9]{1,9}", key.strip()):
        return int(key)
    return None


def _label_names(id2label: Any) -> dict[int, str]:
    """``id2label`` as {id: name}, checked: an object whose keys are the ids 0..n-1."""
    if not isinstance(id2label, dict) or not id2label:
        _CHECK.fail("id2label", 'must be an object mapping label ids to names, like {"0": '
                                f'"neg", "1": "pos"}}, got {_shown(id2label)}')
    if len(id2label) > MAX_LABELS:
        _CHECK.fail("id2label", f"has {len(id2label)} labels; bertkit takes at most {MAX_LABELS}")
    names = {}
    for key, name in id2label.items():
        index = _int_key(key)
        if index is None:
            _CHECK.fail("id2label", f"keys must be label ids 0, 1, ..., got {_shown(key)}")
        if not isinstance(name, str):
            _CHECK.fail(f"id2label[{key!r}]", f"must be a label name (a string), got "
                                              f"{_shown(name)}")
        names[index] = name
    if sorted(names) != list(range(len(names))):
        _CHECK.fail("id2label", f"keys must be the ids 0..{len(names) - 1}, got "
                                f"{_shown(sorted(names), kind=False)}")
    return dict(sorted(names.items()))


def _label_ids(label2id: Any) -> dict[str, int]:
    """``label2id`` as {name: id}, checked: an object whose values are integer ids."""
    if not isinstance(label2id, dict):
        _CHECK.fail("label2id", f"must be an object mapping label names to ids, got "
                                f"{_shown(label2id)}")
    for name, index in label2id.items():
        if isinstance(index, bool) or not isinstance(index, int):
            _CHECK.fail(f"label2id[{name!r}]", f"must be a label id (an integer), got "
                                               f"{_shown(index)}")
    return {str(k): v for k, v in label2id.items()}


def _pruned_heads(pruned: Any) -> dict[int, list[int]]:
    """``pruned_heads`` as {layer: sorted heads}, checked; empty lists carry nothing and are
    dropped."""
    if not isinstance(pruned, dict):
        _CHECK.fail("pruned_heads", f"must be an object mapping layer numbers to lists of head "
                                    f"numbers, like {{\"0\": [1, 3]}}, got {_shown(pruned)}")
    out = {}
    for key, heads in pruned.items():
        layer = _int_key(key)
        if layer is None:
            _CHECK.fail("pruned_heads", f"keys must be layer numbers, got {_shown(key)}")
        if not isinstance(heads, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in heads):
            _CHECK.fail(f"pruned_heads[{key!r}]", f"must be a list of head numbers, got "
                                                  f"{_shown(heads)}")
        if heads:
            out[layer] = sorted(set(heads))
    return out


SETTINGS_PREFIX = "bertkit_"  # config.json keys bertkit adds: the task and how to encode/decode


def replace_bertkit_settings(extra: dict[str, Any], settings: dict[str, Any]) -> None:
    """Set a config's ``bertkit_*`` keys to ``settings`` (full key names), dropping every other
    ``bertkit_*`` key: a folder trained before may carry another task's settings."""
    for key in [k for k in extra if k.startswith(SETTINGS_PREFIX)]:
        del extra[key]
    extra.update(settings)


# ============================================================================ BERT family (issue 18)
# RoBERTa, DistilBERT and ALBERT are BERT with a few changes, so their configs are BertConfig
# with those changes: the model code reads the properties above (position_offset,
# uses_token_types, embedding_dim, projects_embeddings, layer_order) and never a family's name.


@dataclass
class RobertaConfig(BertConfig):
    """RoBERTa (Liu et al., 2019): BERT's encoder with a byte-level BPE vocab, positions
    counted from ``pad_token_id + 1`` (padding keeps position ``pad_token_id``), one token type.
    Defaults are roberta-base's; the keys are transformers' ``RobertaConfig``."""

    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    model_type: str = "roberta"

    def validate(self) -> None:
        super().validate()
        check = FieldChecker(type(self).__name__)
        if self.max_position_embeddings <= self.position_offset:
            check.fail("max_position_embeddings", f"({self.max_position_embeddings}) must be above "
                       f"pad_token_id + 1 ({self.position_offset}): RoBERTa positions start there")

    @property
    def position_offset(self) -> int:
        return self.pad_token_id + 1


# DistilBERT's config.json names (transformers' DistilBertConfig) of the BertConfig fields.
DISTILBERT_KEYS = {"dim": "hidden_size", "n_layers": "num_hidden_layers",
                   "n_heads": "num_attention_heads", "hidden_dim": "intermediate_size",
                   "dropout": "hidden_dropout_prob",
                   "attention_dropout": "attention_probs_dropout_prob", "activation": "hidden_act"}
_BERT_TO_DISTILBERT = {bert: distil for distil, bert in DISTILBERT_KEYS.items()}
# BertConfig fields DistilBERT does not have (fixed: one LayerNorm eps, no token types).
_NOT_IN_DISTILBERT = ("type_vocab_size", "layer_norm_eps", "classifier_dropout")


@dataclass
class DistilBertConfig(BertConfig):
    """DistilBERT (Sanh et al., 2019): BERT's layers without token types or pooler, 6 layers.
    Held under BertConfig's field names (``hidden_size``...); ``config.json`` is read and
    written with DistilBERT's own keys (``dim``, ``n_layers``, ``n_heads``, ``hidden_dim``,
    ``dropout``, ``attention_dropout``, ``activation``) so transformers reads it."""

    num_hidden_layers: int = 6
    type_vocab_size: int = 1  # unused: no token type embeddings
    seq_classif_dropout: float = 0.2
    qa_dropout: float = 0.1
    sinusoidal_pos_embds: bool = False  # the table is saved either way; only training differs
    model_type: str = "distilbert"

    @property
    def uses_token_types(self) -> bool:
        return False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistilBertConfig":
        renamed = {DISTILBERT_KEYS.get(k, k): v for k, v in data.items()
                   if k not in DISTILBERT_KEYS.values()}  # HF may echo BERT names: ours win
        try:
            return super().from_dict(renamed)
        except ConfigError as e:  # name the field as the file does
            raise ConfigError(cls.__name__, _BERT_TO_DISTILBERT.get(e.field_name, e.field_name),
                              e.problem) from None

    def to_dict(self) -> dict[str, Any]:
        out = {_BERT_TO_DISTILBERT.get(k, k): v for k, v in super().to_dict().items()
               if k not in _NOT_IN_DISTILBERT}
        return dict(sorted(out.items()))


@dataclass
class AlbertConfig(BertConfig):
    """ALBERT (Lan et al., 2020): embeddings of width ``embedding_size`` (E < H) projected to
    H, and ``num_hidden_layers`` layer applications sharing ``num_hidden_groups`` groups of
    ``inner_group_num`` layers. Defaults and keys are transformers' ``AlbertConfig``."""

    vocab_size: int = 30000
    hidden_size: int = 4096
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    embedding_size: int = 128
    num_hidden_groups: int = 1
    inner_group_num: int = 1
    classifier_dropout_prob: float = 0.1
    bos_token_id: int = 2
    eos_token_id: int = 3
    model_type: str = "albert"

    def validate(self) -> None:
        super().validate()
        check = FieldChecker(type(self).__name__)
        check.integer("embedding_size", self.embedding_size, SIZE_LIMITS["hidden_size"])
        check.integer("num_hidden_groups", self.num_hidden_groups, self.num_hidden_layers)
        check.integer("inner_group_num", self.inner_group_num, SIZE_LIMITS["num_hidden_layers"])
        check.fraction("classifier_dropout_prob", self.classifier_dropout_prob)

    @property
    def embedding_dim(self) -> int:
        return self.embedding_size

    @property
    def projects_embeddings(self) -> bool:
        return True

    def layer_order(self) -> list[int]:
        """Layer i runs group int(i / (L / groups)): each group's inner layers in turn (the
        rule of transformers' AlbertTransformer)."""
        per_group = self.num_hidden_layers / self.num_hidden_groups
        return [int(i / per_group) * self.inner_group_num + j
                for i in range(self.num_hidden_layers) for j in range(self.inner_group_num)]


@dataclass
class LongformerConfig(RobertaConfig):
    """Longformer (Beltagy et al., 2020): RoBERTa whose attention is a sliding window of
    ``attention_window`` tokens (``attention_window / 2`` on each side; one even number, or one
    per layer) plus global attention for the tokens a task marks (``[CLS]``, the question),
    with their own ``query_global`` / ``key_global`` / ``value_global`` projections. Keys are
    transformers' ``LongformerConfig``."""

    max_position_embeddings: int = 4098
    attention_window: int | list[int] = 512
    sep_token_id: int = 2
    model_type: str = "longformer"

    def validate(self) -> None:
        super().validate()
        check = FieldChecker(type(self).__name__)
        windows = self.attention_window
        if isinstance(windows, list):
            if len(windows) != self.num_hidden_layers:
                check.fail("attention_window", f"lists {len(windows)} windows for "
                                               f"{self.num_hidden_layers} layers")
        else:
            windows = [windows]
        for window in windows:
            check.integer("attention_window", window, SIZE_LIMITS["max_position_embeddings"])
            if window % 2:
                check.fail("attention_window", f"must be even (half on each side), got {window}")

    def local_window(self, layer: int) -> int:
        window = self.attention_window
        return (window[layer] if isinstance(window, list) else window) // 2

    @property
    def window_multiple(self) -> int:
        """The largest attention_window: transformers pads inputs to a multiple of it."""
        window = self.attention_window
        return max(window) if isinstance(window, list) else window


# config.json model_type -> the config class BertConfig.from_pretrained returns for it.
FAMILY_CONFIGS: dict[str, type[BertConfig]] = {
    "bert": BertConfig, "roberta": RobertaConfig, "distilbert": DistilBertConfig,
    "albert": AlbertConfig, "longformer": LongformerConfig}


# ============================================================================ GPT-2 (issue 19)
# The decoder-only family. Field names are the keys of transformers' GPT2Config.json, so a
# ``gpt2`` folder moves between bertkit and transformers unchanged.

GPT2_SIZES = {
    "tiny": dict(n_layer=2, n_embd=128, n_head=2),
    "mini": dict(n_layer=4, n_embd=256, n_head=4),
    "small": dict(n_layer=4, n_embd=512, n_head=8),
    "medium": dict(n_layer=8, n_embd=512, n_head=8),
    "base": dict(n_layer=12, n_embd=768, n_head=12),   # the released gpt2 (124M)
}
# transformers options that change the computation and that bertkit does not implement: a
# folder asking for them is refused rather than run wrongly.
GPT2_UNSUPPORTED = {"scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                    "add_cross_attention": False, "scale_attn_weights": True}
_GPT_CHECK = FieldChecker("GPT2Config")


@dataclass
class GPT2Config:
    """Hyper-parameters of :class:`bertkit.modeling.gpt.GPT2LMHeadModel`, with the keys of
    transformers' ``GPT2Config`` (``n_embd``, ``n_layer`` ...). ``n_inner`` None means 4 x
    ``n_embd``; ``pad_token_id`` None means none (GPT-2 has no pad token; batches are padded
    with eos and masked)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True
    architectures: list[str] | None = None
    model_type: str = "gpt2"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field if no model can be built from it."""
        check = _GPT_CHECK
        for name, limit in (("vocab_size", "vocab_size"), ("n_positions", "max_position_embeddings"),
                            ("n_embd", "hidden_size"), ("n_layer", "num_hidden_layers"),
                            ("n_head", "num_attention_heads")):
            check.integer(name, getattr(self, name), SIZE_LIMITS[limit])
        if self.n_inner is not None:
            check.integer("n_inner", self.n_inner, SIZE_LIMITS["intermediate_size"])
        if self.n_embd % self.n_head:
            check.fail("n_embd", f"({self.n_embd}) must be divisible by n_head ({self.n_head})")
        h, inner = self.n_embd, self.inner_size
        check.parameter_count((self.vocab_size + self.n_positions) * h
                              + self.n_layer * (4 * h * h + 2 * h * inner),
                              {"vocab_size": self.vocab_size, "n_embd": h, "n_layer": self.n_layer,
                               "n_positions": self.n_positions})
        if not isinstance(self.activation_function, str) or \
                self.activation_function not in SUPPORTED_ACTIVATIONS:
            check.fail("activation_function", f"{_shown(self.activation_function, kind=False)} is "
                       f"not supported; choose one of {', '.join(SUPPORTED_ACTIVATIONS)}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            check.fraction(name, getattr(self, name))
        check.positive("layer_norm_epsilon", self.layer_norm_epsilon)
        check.non_negative("initializer_range", self.initializer_range)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is None and name == "pad_token_id":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not 0 <= value < self.vocab_size:
                check.fail(name, f"must be a token id below vocab_size ({self.vocab_size}), got "
                                 f"{_shown(value)}")
        if self.tie_word_embeddings is not True:
            check.fail("tie_word_embeddings", "must be true: bertkit's GPT-2 ties the output "
                                              "projection to the token embeddings")
        for name, wanted in GPT2_UNSUPPORTED.items():
            if self.extra.get(name, wanted) != wanted:
                check.fail(name, f"= {_shown(self.extra[name])} is not implemented by bertkit "
                                 f"(only {json.dumps(wanted)})")
        if self.architectures is not None:
            check.string_list("architectures", self.architectures)

    @property
    def inner_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> "GPT2Config":
        """A preset size ``tiny|mini|small|base`` with ``overrides`` on top."""
        if size not in GPT2_SIZES:
            raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {', '.join(GPT2_SIZES)}")
        return cls(**{**GPT2_SIZES[size], **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPT2Config":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and not (value is None and f.name in ("architectures",)):
                out[f.name] = value
        return dict(sorted(out.items()))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "GPT2Config":
        """Read ``folder/config.json``; a bad value is a one-line ValueError naming file and
        field."""
        path, data = read_config_file(folder)
        if data.get("model_type") != "gpt2":
            raise ValueError(f"{path}: model_type {_shown(data.get('model_type'), kind=False)} is "
                             "not a GPT-2 model (expected 'gpt2')")
        return config_from_file(cls, data, path)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        write_config_file(self.to_dict(), folder)
