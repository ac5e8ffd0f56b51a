"""Hugging Face checkpoint interop: parameter names, loading and saving model folders.

bertkit's module names are its own where that reads better (``encoder.layers.0.ffn.up``);
this file is the one place that maps them to and from the names transformers uses
(``encoder.layer.0.intermediate.dense``). The mapping is a table of renames, applied by
:func:`to_hf_name` / :func:`from_hf_name`, and every load checks the result key by key and
shape by shape, failing loudly with the offending key.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bertkit.config import CONFIG_NAME, BertConfig
from bertkit.jsonfile import read_json_object
from bertkit.modeling.int8 import prepare_int8_model
from bertkit.modeling.layers import head_rows
from bertkit.outputs import as_user_file
from bertkit.tokenizer import TOKENIZER_JSON_NAME, VOCAB_NAME

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"

# bertkit name <-> HF name, as templates: {i} is a layer index, {proj} one of the attention
# projections. A template matches the start of a name (after any ``bert.`` prefix); the rest of
# the name (``weight``/``bias``) is carried over.
_RENAMES = [
    ("encoder.layers.{i}.attention.{proj}.", "encoder.layer.{i}.attention.self.{proj}."),
    ("encoder.layers.{i}.attention_output.", "encoder.layer.{i}.attention.output.dense."),
    ("encoder.layers.{i}.attention_norm.", "encoder.layer.{i}.attention.output.LayerNorm."),
    ("encoder.layers.{i}.ffn.up.", "encoder.layer.{i}.intermediate.dense."),
    ("encoder.layers.{i}.ffn.down.", "encoder.layer.{i}.output.dense."),
    ("encoder.layers.{i}.ffn_norm.", "encoder.layer.{i}.output.LayerNorm."),
    ("mlm.dense.", "cls.predictions.transform.dense."),
    ("mlm.norm.", "cls.predictions.transform.LayerNorm."),
    ("mlm.bias", "cls.predictions.bias"),
    ("nsp.", "cls.seq_relationship."),
]
_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "proj": r"(?P<proj>query|key|value)"}


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(r"^(?P<prefix>bert\.)?" + pattern)


_TO_HF = [(_template_regex(ours), hf) for ours, hf in _RENAMES]
_FROM_HF = [(_template_regex(hf), ours) for ours, hf in _RENAMES]


def _rename(name: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pattern, template in rules:
        match = pattern.match(name)
        if match:
            fields = {k: v for k, v in match.groupdict().items() if k != "prefix"}
            prefix = match.group("prefix") or ""
            return prefix + template.format(**fields) + name[match.end():]
    return name


def to_hf_name(name: str) -> str:
    """bertkit parameter name -> transformers parameter name."""
    return _rename(name, _TO_HF)


def from_hf_name(name: str) -> str:
    """transformers parameter name -> bertkit parameter name."""
    # Checkpoints converted from the original TensorFlow BERT name LayerNorm's parameters
    # gamma/beta; transformers renames them on load, and so do we.
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    return _rename(name, _FROM_HF)


# Keys some HF checkpoints hold that carry no weights bertkit needs: a buffer of position ids,
# and the MLM decoder, which is tied to the word embeddings (its bias is cls.predictions.bias).
_IGNORED_HF_KEYS = re.compile(r"(^|\.)embeddings\.position_ids$|^cls\.predictions\.decoder\.(weight|bias)$")
# Keys of BERT heads other than the one being loaded: legitimately unused when, e.g., a
# pretraining checkpoint is loaded to fine-tune a classifier.
_OTHER_HEAD_KEYS = re.compile(r"^(cls\.|classifier\.|pre_classifier\.|qa_outputs\.|bert\.pooler\.|"
                              r"pooler\.)")


# ---------------------------------------------------------------------------- pruned heads
# A head-pruned folder (config ``pruned_heads``) keeps full-size tensors with the pruned heads'
# query/key/value rows and attention-output input columns zeroed: transformers 5 dropped head
# pruning, and a zero value projection makes a head contribute exactly nothing, so it computes
# the same logits. bertkit's layers are built without those heads (they cost nothing), so the
# tensors are sliced on load and zero-padded back on save.
_HEAD_TENSOR = re.compile(r"^(bert\.)?encoder\.layer\.(?P<i>\d+)\.attention\."
                          r"(?P<kind>self\.(query|key|value)\.(weight|bias)|output\.dense\.weight)$")


def _head_tensors(hf_state: dict[str, torch.Tensor], config: Any):
    """(key, tensor, head axis, row index of the kept heads, full size) of every tensor of a
    layer with pruned heads."""
    pruned = getattr(config, "pruned_heads", None)
    if not pruned:
        return
    full = config.num_attention_heads * config.head_dim
    for key, tensor in hf_state.items():
        match = _HEAD_TENSOR.match(key)
        if match and int(match["i"]) in pruned:
            rows = head_rows(config.kept_heads(int(match["i"])), config.head_dim)
            axis = 0 if match["kind"].startswith("self.") else 1  # rows of Q/K/V, columns of output
            yield key, tensor, axis, rows, full


def shrink_pruned_heads(hf_state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """HF tensors -> the kept heads' slices, for the layers ``config.pruned_heads`` names.
    A tensor already of the kept size (a folder written by transformers 4) is left as is."""
    out = dict(hf_state)
    for key, tensor, axis, rows, full in _head_tensors(hf_state, config):
        if tensor.shape[axis] == full:
            out[key] = tensor.index_select(axis, rows)
    return out


def expand_pruned_heads(hf_state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """The inverse of :func:`shrink_pruned_heads`: kept slices -> full-size tensors with
    zeros where the pruned heads were."""
    out = dict(hf_state)
    for key, tensor, axis, rows, full in _head_tensors(hf_state, config):
        if tensor.shape[axis] == len(rows) < full:
            shape = list(tensor.shape)
            shape[axis] = full
            out[key] = tensor.new_zeros(shape).index_copy_(axis, rows.to(tensor.device), tensor)
    return out


# ---------------------------------------------------------------------------- reading
def read_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: ``model.safetensors`` (or its sharded index), else
    ``pytorch_model.bin`` read with ``weights_only=True`` (a checkpoint never runs code)."""
    folder = os.fspath(folder)
    single = os.path.join(folder, WEIGHTS_NAME)
    index = os.path.join(folder, WEIGHTS_INDEX_NAME)
    legacy = os.path.join(folder, TORCH_WEIGHTS_NAME)
    if os.path.isfile(single) or os.path.isfile(index):
        files = [single] if os.path.isfile(single) else shard_files(folder)
        state: dict[str, torch.Tensor] = {}
        for path in files:
            try:
                state.update(load_file(path))
            except Exception as e:
                raise ValueError(f"cannot read {path}: {_one_line(e)}") from None
        return state
    if os.path.isfile(legacy):
        return _read_torch_weights(legacy)
    raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME} or {TORCH_WEIGHTS_NAME}")


def shard_files(folder: str | os.PathLike) -> list[str]:
    """The shard paths ``folder/model.safetensors.index.json`` names, each checked to be a plain
    file name that resolves inside ``folder``: an index must not make bertkit open
    ``../other/model.safetensors`` or ``/etc/passwd``."""
    folder = os.fspath(folder)
    index = os.path.join(folder, WEIGHTS_INDEX_NAME)
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ValueError(f"{index}: weight_map must be a non-empty object mapping tensor names to "
                         "shard file names")
    inside = os.path.realpath(folder)
    paths = []
    for name in sorted(set(weight_map.values())):
        path = os.path.join(folder, name)
        plain = name not in ("", ".", "..") and not any(
            sep in name for sep in ("/", "\\", os.sep, os.altsep or "/"))
        if not plain or os.path.dirname(os.path.realpath(path)) != inside:
            raise ValueError(f"{index}: weight_map names {name[:200]!r}, which is not a file in "
                             f"{folder}; shards must be plain file names inside the model folder")
        paths.append(path)
    return paths


def _one_line(error: BaseException) -> str:
    """The first line of an error's message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_torch_weights(path: str) -> dict[str, torch.Tensor]:
    """A ``pytorch_model.bin`` read with ``weights_only=True``, checked to be a flat dict of
    tensors; anything else is a one-line ValueError naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is many lines with colour codes: keep only what it refused.
        blocked = re.search(r"GLOBAL (\S+)", str(e))
        refused = f" (it refers to {blocked.group(1)})" if blocked else ""
        raise ValueError(
            f"{path} is not a plain tensor checkpoint{refused} and bertkit never runs code from a "
            "checkpoint; if you trust the file, load it yourself with torch.load(path, "
            "weights_only=False) and save the model as safetensors (model.save_pretrained(folder) "
            "or safetensors.torch.save_file)") from None
    except Exception as e:
        raise ValueError(f"cannot read {path} as a weights-only checkpoint: "
                         f"{_one_line(e)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a plain tensor checkpoint: it holds a "
                         f"{type(state).__name__}, not tensors by name")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{path} is not a plain tensor checkpoint: {str(key)[:100]!r} holds a "
                             f"{type(value).__name__}, not a tensor")
    return state


# ---------------------------------------------------------------------------- vocab vs model
# A vocab_size a little above the vocab's length is padding, not a mismatch: vocab sizes are
# often rounded up to a multiple of 8, 64 or 128 so the embedding and output matmuls run on
# tensor cores (30522 -> 30528). Fewer than 128 spare rows and a multiple of 8 reads as that.
PADDING_MULTIPLE = 8
MAX_PADDING_ROWS = 128


def check_vocab_fits(tokenizer: Any, config: BertConfig, folder: str | os.PathLike) -> None:
    """Refuse a tokenizer whose vocab does not match the model's embedding table.

    More tokens than ``config.vocab_size``: ids past the table, a ValueError. Fewer: a ValueError
    too (the vocab belongs to another model), unless the spare rows are plausibly padding
    (``vocab_size`` a multiple of 8 and fewer than 128 spare rows): then a one-line
    ``UserWarning``. Messages name the folder, the vocab file and ``vocab_size``.
    """
    folder = os.fspath(folder)
    tokens, rows = tokenizer.vocab_size, config.vocab_size
    if tokens == rows:
        return
    vocab_file = VOCAB_NAME if os.path.isfile(os.path.join(folder, VOCAB_NAME)) else \
        TOKENIZER_JSON_NAME
    mismatch = (f"{folder}: {vocab_file} has {tokens} tokens but the model's vocab_size is {rows} "
                f"({CONFIG_NAME})")
    if tokens > rows:
        raise ValueError(f"{mismatch}: the vocab does not belong to this model (token ids past the "
                         "embedding table)")
    spare = rows - tokens
    if rows % PADDING_MULTIPLE == 0 and spare < MAX_PADDING_ROWS:
        warnings.warn(f"{mismatch}: taking the {spare} spare embedding rows for padding (a vocab "
                      f"size rounded up to a multiple of {PADDING_MULTIPLE}); if predictions look "
                      "wrong, check that the vocab belongs to this model", stacklevel=2)
        return
    raise ValueError(f"{mismatch}: the vocab does not belong to this model ({spare} embedding "
                     "rows no token uses)")


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded into a model."""

    initialized: list[str] = field(default_factory=list)  # model keys the checkpoint lacked
    unused: list[str] = field(default_factory=list)       # checkpoint keys of other heads
    unknown: list[str] = field(default_factory=list)      # checkpoint keys of nothing BERT has
    mismatched: list[str] = field(default_factory=list)   # "key: checkpoint shape vs model shape"


def model_key(hf_key: str, model_has_bert_prefix: bool) -> str:
    """Map an HF checkpoint key to the model's key, adding or removing the ``bert.`` prefix
    (a base BertModel checkpoint has no prefix, a head checkpoint has one)."""
    if model_has_bert_prefix and not re.match(r"^(bert\.|cls\.|(pre_)?classifier\.|qa_outputs\.)",
                                              hf_key):
        hf_key = "bert." + hf_key
    elif not model_has_bert_prefix and hf_key.startswith("bert."):
        hf_key = hf_key[len("bert."):]
    return from_hf_name(hf_key)


def has_bert_prefix(state: dict[str, torch.Tensor]) -> bool:
    """True when a model's state dict keys start with ``bert.`` (a head class), False for a
    base ``BertModel``: the rule :func:`model_key` takes as ``model_has_bert_prefix``."""
    return any(k.startswith("bert.") for k in state)


def load_state_dict_into(model: nn.Module, hf_state: dict[str, torch.Tensor],
                         strict: bool = True) -> LoadReport:
    """Copy an HF-named state dict into ``model``, checking every key and shape.

    Model parameters missing from the checkpoint keep their fresh initialisation (a new task
    head) and are listed in ``report.initialized``. Checkpoint keys of other BERT heads are
    listed in ``report.unused``. With ``strict`` a key that no BERT model has, or a shape that
    differs, raises ``ValueError`` naming the key; without it they are skipped with a warning.
    """
    own = model.state_dict()
    has_prefix = has_bert_prefix(own)
    hf_state = family_to_bert_state(hf_state, getattr(model, "config", None))  # RoBERTa ... names
    hf_state = shrink_pruned_heads(hf_state, getattr(model, "config", None))
    report = LoadReport()
    loaded: set[str] = set()
    with torch.no_grad():
        for hf_key, tensor in hf_state.items():
            if _IGNORED_HF_KEYS.search(hf_key):
                continue
            key = model_key(hf_key, has_prefix)
            if key not in own:
                if _OTHER_HEAD_KEYS.match(hf_key) or _OTHER_HEAD_KEYS.match(key):
                    report.unused.append(hf_key)
                else:
                    report.unknown.append(hf_key)
                continue
            if own[key].shape != tensor.shape:
                report.mismatched.append(f"{hf_key}: checkpoint {tuple(tensor.shape)} vs model "
                                         f"{tuple(own[key].shape)}")
                continue
            own[key].copy_(tensor.to(own[key].dtype))
            loaded.add(key)
    report.initialized = sorted(k for k in own if k not in loaded)
    problems = []
    if report.unknown:
        problems.append(f"unknown key(s) {', '.join(report.unknown[:10])}"
                        + (f" and {len(report.unknown) - 10} more" if len(report.unknown) > 10 else ""))
    if report.mismatched:
        problems.append(f"shape mismatch for {'; '.join(report.mismatched[:10])}")
    if problems:
        message = "checkpoint does not fit the model: " + "; ".join(problems)
        if strict:
            raise ValueError(message)
        warnings.warn(message + " (skipped because strict=False)", stacklevel=3)
    return report


def load_model(cls: type, folder: str | os.PathLike, strict: bool = True, verbose: bool = True,
               **config_overrides: Any):
    """Build ``cls`` from ``folder/config.json`` and load the folder's weights into it."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    config = BertConfig.from_pretrained(folder)
    if "num_labels" in config_overrides:
        n = config_overrides.pop("num_labels")
        if config.id2label is None or len(config.id2label) != n:
            config.num_labels = n
    for name, value in config_overrides.items():
        if not hasattr(config, name):
            raise ValueError(f"unknown config field {name!r}")
        setattr(config, name, value)
    if config.id2label is not None and "id2label" in config_overrides and "label2id" not in config_overrides:
        config.label2id = {v: k for k, v in config.id2label.items()}
    config.__post_init__()
    model = cls(config)
    state = family_to_bert_state(read_state_dict(folder), config)
    if "quantization_config" in config.extra:  # int8 folder: load int8 modules, never fp32 ones
        has_prefix = has_bert_prefix(model.state_dict())
        prepare_int8_model(model, config.extra["quantization_config"], state,
                           lambda hf_key: model_key(hf_key, has_prefix), where=folder)
    report = load_state_dict_into(model, state, strict=strict)
    # Keys a base checkpoint lacks in a head class are the head, which is expected to be new.
    if verbose and report.initialized:
        print(f"[bertkit] {cls.__name__}: initialised {len(report.initialized)} new tensor(s) not "
              f"in {folder}: {', '.join(report.initialized[:6])}"
              + (" ..." if len(report.initialized) > 6 else ""))
    model.load_report = report
    model.eval()
    return model


# ---------------------------------------------------------------------------- writing
def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under HF names, contiguous, with wrapper prefixes removed."""
    model = unwrap_model(model)
    out = {}
    for key, tensor in model.state_dict().items():
        out[to_hf_name(key)] = tensor.detach().contiguous()
    config = getattr(model, "config", None)
    return bert_to_family_state(expand_pruned_heads(out, config), config)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)
    wrappers: the one whose ``state_dict`` keys carry no ``module.`` / ``_orig_mod.`` prefix."""
    while True:
        if isinstance(model, (DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def save_model(model: nn.Module, folder: str | os.PathLike) -> None:
    """Write ``config.json`` (with ``architectures``) and ``model.safetensors``."""
    model = unwrap_model(model)
    os.makedirs(folder, exist_ok=True)
    config: BertConfig = model.config
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    save_file(hf_state_dict(model), os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})
    as_user_file(os.path.join(folder, WEIGHTS_NAME))


# ---------------------------------------------------------------------------- BERT family (issue 18)
# RoBERTa, DistilBERT and ALBERT folders name BERT's tensors their own way. Loading renames a
# family's keys to BERT's HF keys (then the table above applies); saving renames back. Each
# family is a prefix (``roberta.`` where BERT has ``bert.``) and renames of the rest of a key,
# (family, BERT) templates where {i} is a layer index; ALBERT's layers are
# ``albert_layer_groups.{g}.albert_layers.{j}``, layer g * inner_group_num + j of bertkit's
# distinct layers. Keys matching ``ignored`` are the tied output matrices (and their bias
# copy): the model uses the word embeddings. Renaming twice must change nothing (loading renames
# before the int8 check and again in load_state_dict_into).
@dataclass(frozen=True)
class FamilyNames:
    prefix: str
    renames: tuple[tuple[str, str], ...] = ()
    ignored: str = "$^"


_LAYER = "encoder.layer.{i}."
FAMILY_NAMES = {
    "roberta": FamilyNames("roberta.", (
        ("lm_head.dense.", "cls.predictions.transform.dense."),
        ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
        ("lm_head.bias", "cls.predictions.bias")), ignored=r"^lm_head\.decoder\."),
    "distilbert": FamilyNames("distilbert.", (
        ("transformer.layer.{i}.attention.q_lin.", _LAYER + "attention.self.query."),
        ("transformer.layer.{i}.attention.k_lin.", _LAYER + "attention.self.key."),
        ("transformer.layer.{i}.attention.v_lin.", _LAYER + "attention.self.value."),
        ("transformer.layer.{i}.attention.out_lin.", _LAYER + "attention.output.dense."),
        ("transformer.layer.{i}.sa_layer_norm.", _LAYER + "attention.output.LayerNorm."),
        ("transformer.layer.{i}.ffn.lin1.", _LAYER + "intermediate.dense."),
        ("transformer.layer.{i}.ffn.lin2.", _LAYER + "output.dense."),
        ("transformer.layer.{i}.output_layer_norm.", _LAYER + "output.LayerNorm."),
        ("vocab_transform.", "cls.predictions.transform.dense."),
        ("vocab_layer_norm.", "cls.predictions.transform.LayerNorm."),
        ("vocab_projector.bias", "cls.predictions.bias")), ignored=r"^vocab_projector\.weight$"),
    "albert": FamilyNames("albert.", tuple(
        (f"encoder.albert_layer_groups.{{g}}.albert_layers.{{j}}.{ours}", _LAYER + bert)
        for ours, bert in (("attention.query.", "attention.self.query."),
                           ("attention.key.", "attention.self.key."),
                           ("attention.value.", "attention.self.value."),
                           ("attention.dense.", "attention.output.dense."),
                           ("attention.LayerNorm.", "attention.output.LayerNorm."),
                           ("ffn_output.", "output.dense."), ("ffn.", "intermediate.dense."),
                           ("full_layer_layer_norm.", "output.LayerNorm."))) + (
        ("encoder.embedding_hidden_mapping_in.", "encoder.embedding_projection."),
        ("pooler.weight", "pooler.dense.weight"), ("pooler.bias", "pooler.dense.bias"),
        ("predictions.dense.", "cls.predictions.transform.dense."),
        ("predictions.LayerNorm.", "cls.predictions.transform.LayerNorm."),
        ("predictions.bias", "cls.predictions.bias"),
        ("sop_classifier.classifier.", "cls.seq_relationship.")),
        ignored=r"^predictions\.decoder\."),
    # Longformer: RoBERTa's names, plus each layer's global projections (bertkit's own names:
    # BERT has none to rename them to).
    "longformer": FamilyNames("longformer.", tuple(
        (f"encoder.layer.{{i}}.attention.self.{proj}_global.",
         f"encoder.layers.{{i}}.attention.{proj}_global.")
        for proj in ("query", "key", "value")) + (
        ("lm_head.dense.", "cls.predictions.transform.dense."),
        ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
        ("lm_head.bias", "cls.predictions.bias")), ignored=r"^lm_head\.decoder\."),
}


def _family_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name in "igj":
        pattern = pattern.replace(re.escape("{" + name + "}"), rf"(?P<{name}>\d+)")
    return re.compile("^" + pattern)


def _family_rename(rest: str, rules: tuple[tuple[str, str], ...], to_bert: bool,
                   inner: int) -> str:
    """Apply the first matching (family, BERT) template, computing ALBERT's layer index."""
    for family, bert in rules:
        source, target = (family, bert) if to_bert else (bert, family)
        match = _family_regex(source).match(rest)
        if not match:
            continue
        found = {k: int(v) for k, v in match.groupdict().items()}
        if "g" in found:  # ALBERT -> BERT: one index over the groups' layers
            found = {"i": found["g"] * inner + found["j"]}
        elif "i" in found and "{g}" in target:  # BERT -> ALBERT
            found = dict(zip("gj", divmod(found["i"], inner)))
        return target.format(**found) + rest[match.end():]
    return rest


def family_to_bert_state(hf_state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A RoBERTa / DistilBERT / ALBERT checkpoint's keys -> BERT's HF keys (other families'
    and BERT's own keys unchanged; the tied output matrices dropped)."""
    return _renamed_family_state(hf_state, config, to_bert=True)


def bert_to_family_state(hf_state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """The inverse of :func:`family_to_bert_state`, for saving a family's folder."""
    return _renamed_family_state(hf_state, config, to_bert=False)


def _renamed_family_state(hf_state: dict[str, torch.Tensor], config: Any,
                          to_bert: bool) -> dict[str, torch.Tensor]:
    """Both directions of the family key mapping: the encoder prefix swapped (the family's
    for ``bert.``) and each key renamed by the family's templates."""
    names = FAMILY_NAMES.get(getattr(config, "model_type", None))
    if names is None:
        return hf_state
    inner = getattr(config, "inner_group_num", 1)
    source, target = (names.prefix, "bert.") if to_bert else ("bert.", names.prefix)
    out = {}
    for key, tensor in hf_state.items():
        prefixed = key.startswith(source)
        rest = key[len(source):] if prefixed else key
        if to_bert and re.search(names.ignored, rest):
            continue
        out[(target if prefixed else "") + _family_rename(rest, names.renames, to_bert,
                                                          inner)] = tensor
    return out


# ---------------------------------------------------------------------------- GPT-2 (issue 19)
# transformers' GPT-2 keeps its projections as Conv1D modules, whose weight is (in, out): the
# transpose of a Linear's. The attention's query/key/value are one fused Conv1D ``c_attn``
# (H, 3H); bertkit's attention has three Linears. So GPT-2 names are not a rename table: the
# two functions below split/fuse and transpose.
_GPT2_LAYER = re.compile(r"^(?:transformer\.)?h\.(?P<i>\d+)\.(?P<rest>.+)$")
_GPT2_SIMPLE = {"ln_1.": "attention_norm.", "ln_2.": "ffn_norm."}
_GPT2_CONV1D = {"attn.c_proj.": "attention_output.", "mlp.c_fc.": "ffn.up.",
                "mlp.c_proj.": "ffn.down."}
_GPT2_TOP = {"wte.weight": "embeddings.word_embeddings.weight",
             "wpe.weight": "embeddings.position_embeddings.weight",
             "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias"}
# Keys of old transformers GPT-2 checkpoints that hold no weights (the causal mask buffers),
# and the output matrix, tied to wte (the model uses wte).
_GPT2_IGNORED = re.compile(r"(^|\.)attn\.(bias|masked_bias)$|^lm_head\.weight$")


def gpt2_from_hf_state(hf_state: dict[str, torch.Tensor], num_layers: int,
                       where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A transformers GPT-2 state dict (``GPT2LMHeadModel`` or ``GPT2Model`` keys) -> bertkit
    :class:`~bertkit.modeling.gpt.GPT2LMHeadModel` keys. A key of nothing GPT-2 has is a
    ValueError naming it and ``where``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in hf_state.items():
        if _GPT2_IGNORED.search(key):
            continue
        bare = key[len("transformer."):] if key.startswith("transformer.") else key
        if bare in _GPT2_TOP:
            out[_GPT2_TOP[bare]] = tensor
            continue
        match = _GPT2_LAYER.match(key)
        mapped = _gpt2_layer_from_hf(match["rest"], tensor) if match else None
        if mapped is None or int(match["i"]) >= num_layers:
            raise ValueError(f"{where}: {key} is not a weight of a {num_layers}-layer GPT-2")
        for name, value in mapped.items():
            out[f"layers.{match['i']}.{name}"] = value
    return out


def _gpt2_layer_from_hf(rest: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    for hf, ours in _GPT2_SIMPLE.items():
        if rest.startswith(hf):
            return {ours + rest[len(hf):]: tensor}
    for hf, ours in _GPT2_CONV1D.items():
        if rest.startswith(hf):
            kind = rest[len(hf):]
            return {ours + kind: tensor.t().contiguous() if kind == "weight" else tensor}
    if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
        kind = rest.rsplit(".", 1)[1]
        fused = tensor.t() if kind == "weight" else tensor       # (3H, H) or (3H,)
        query, key, value = fused.chunk(3, dim=0)
        return {f"attention.{name}.{kind}": part.contiguous()
                for name, part in (("query", query), ("key", key), ("value", value))}
    return None


def gpt2_to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bertkit GPT-2 keys -> transformers ``GPT2LMHeadModel`` keys (Conv1D weights
    transposed, query/key/value fused into ``c_attn``; the tied ``lm_head.weight`` is not
    written: transformers ties it to ``wte`` on load)."""
    top = {ours: hf for hf, ours in _GPT2_TOP.items()}
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        tensor = tensor.detach()
        if key in top:
            out["transformer." + top[key]] = tensor.contiguous()
            continue
        match = re.match(r"^layers\.(?P<i>\d+)\.(?P<rest>.+)$", key)
        if match is None:
            raise ValueError(f"{key} is not a GPT-2 weight")
        prefix, rest = f"transformer.h.{match['i']}.", match["rest"]
        qkv = re.match(r"^attention\.(query|key|value)\.(weight|bias)$", rest)
        if qkv:
            fused.setdefault(prefix + "attn.c_attn." + qkv[2], {})[qkv[1]] = tensor
            continue
        for hf, ours in {**_GPT2_SIMPLE, **_GPT2_CONV1D}.items():
            if rest.startswith(ours):
                kind = rest[len(ours):]
                conv = hf in _GPT2_CONV1D and kind == "weight"
                out[prefix + hf + kind] = (tensor.t() if conv else tensor).contiguous()
                break
        else:
            raise ValueError(f"{key} is not a GPT-2 weight")
    for hf_key, parts in fused.items():
        joined = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)  # (3H, H) / (3H,)
        out[hf_key] = (joined.t() if hf_key.endswith("weight") else joined).contiguous()
    return out
