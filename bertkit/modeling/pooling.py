"""Sentence embeddings from token vectors, and the sentence-transformers folder layout.

A sentence-transformers folder is an HF folder plus a few small files that say how token
vectors become one sentence vector::

    modules.json                 the module chain: Transformer -> Pooling (-> Normalize)
    1_Pooling/config.json        the pooling mode (mean, cls, max ...)
    2_Normalize/config.json      present when vectors are scaled to unit length
    sentence_bert_config.json    the Transformer module's settings (max_seq_length)
    config_sentence_transformers.json   model type and similarity function

:func:`read_pooling` reads them (both the 6.x keys and the older ``pooling_mode_*_tokens``
booleans); a plain HF folder gives mean pooling without normalisation, which is what bertkit
always did. :func:`write_pooling` writes them the way sentence-transformers 6.3 writes them,
so ``SentenceTransformer(folder)`` loads a bertkit folder with the same vectors.
:func:`pool` computes the sentence vector. Shapes: B batch, T tokens, H hidden size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bertkit.jsonfile import read_json_object
from bertkit.version import __version__

POOLING_MODES = ("mean", "cls", "max")
MODULES_FILE = "modules.json"
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
SENTENCE_CONFIG_FILE = "sentence_bert_config.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"

# Module types (the last part of modules.json's "type") bertkit computes itself.
_TRANSFORMER, _POOLING, _NORMALIZE = "Transformer", "Pooling", "Normalize"
# The older pooling config: one boolean per mode (sentence-transformers < 5).
_LEGACY_MODE_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                     "pooling_mode_max_tokens": "max",
                     "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                     "pooling_mode_weightedmean_tokens": "weightedmean",
                     "pooling_mode_lasttoken": "lasttoken"}


@dataclass(frozen=True)
class Pooling:
    """How a sentence vector is made of the token vectors: ``mode`` is ``"mean"`` (of the real
    tokens), ``"cls"`` (the first token) or ``"max"`` (per dimension over the real tokens);
    ``normalize`` scales it to unit length (then a dot product is the cosine)."""

    mode: str = "mean"
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling mode must be one of {', '.join(POOLING_MODES)}, "
                             f"got {self.mode!r}")
        if not isinstance(self.normalize, bool):
            raise ValueError(f"pooling normalize must be true or false, got {self.normalize!r}")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """The sentence vectors of token vectors: (B, T, H), (B, T) 1=real -> (B, H).

    The rules are sentence-transformers': mean over real tokens (divided by at least 1e-9),
    the first token, or the maximum over real tokens (padding set to -1e9 first); then an
    L2 normalisation when ``pooling.normalize``.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)                     # (B, T, 1)
    if pooling.mode == "cls":
        vectors = hidden[:, 0]                                                # (B, H)
    elif pooling.mode == "max":
        vectors = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values       # (B, H)
    else:
        vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)       # (B, H)
    return F.normalize(vectors, p=2, dim=-1) if pooling.normalize else vectors


# ============================================================================ reading


def read_pooling(folder: str | os.PathLike) -> Pooling:
    """The pooling of a model folder: from ``modules.json`` and ``1_Pooling/config.json`` (and
    a Normalize module) of a sentence-transformers folder; mean without normalisation for a
    folder without ``modules.json``.

    A file that is not valid JSON, a module chain bertkit does not compute (e.g. a Dense
    layer) or a pooling mode other than mean / cls / max is a ValueError naming the file.
    """
    folder = os.fspath(folder)
    modules_path = os.path.join(folder, MODULES_FILE)
    if not os.path.isfile(modules_path):
        return Pooling()
    modules = _read_modules(modules_path)
    kinds = [kind for kind, _ in modules]
    unsupported = [kind for kind in kinds if kind not in (_TRANSFORMER, _POOLING, _NORMALIZE)]
    if unsupported:
        raise ValueError(f"{modules_path}: module {unsupported[0]} is not supported (bertkit "
                         "computes Transformer -> Pooling -> Normalize only)")
    pooling_paths = [path for kind, path in modules if kind == _POOLING]
    mode = "mean"  # sentence-transformers adds mean pooling to a chain without one
    if pooling_paths:
        mode = _read_pooling_mode(os.path.join(folder, pooling_paths[0], "config.json"))
    return Pooling(mode=mode, normalize=_NORMALIZE in kinds)


def _read_modules(path: str) -> list[tuple[str, str]]:
    """(module kind, its sub-folder) for each entry of a modules.json, in order."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path} must hold a JSON list of modules, found "
                         f"{type(entries).__name__}")
    modules = []
    for i, entry in enumerate(entries):
        if (not isinstance(entry, dict) or not isinstance(entry.get("type"), str)
                or not isinstance(entry.get("path", ""), str)):
            raise ValueError(f"{path}: module {i} must be an object with a \"type\" string "
                             f"(and a \"path\"), found {entry!r:.60}")
        modules.append((entry["type"].rsplit(".", 1)[-1], entry.get("path", "")))
    return modules


def _read_pooling_mode(path: str) -> str:
    """The mode of a ``1_Pooling/config.json`` (6.x ``pooling_mode`` or the older booleans)."""
    config = read_json_object(path, missing=f"{path} does not exist (named in {MODULES_FILE})")
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
    else:
        modes = [name for key, name in _LEGACY_MODE_KEYS.items() if config.get(key) is True]
        if len(modes) != 1:
            raise ValueError(f"{path}: expected \"pooling_mode\" or one true pooling_mode_* key, "
                             f"found {', '.join(modes) or 'none'}")
        mode = modes[0]
    if mode not in POOLING_MODES:
        raise ValueError(f"{path}: pooling mode {mode!r} is not supported (bertkit computes "
                         f"{', '.join(POOLING_MODES)})")
    return mode


def read_max_seq_length(folder: str | os.PathLike) -> int | None:
    """The ``max_seq_length`` of a folder's ``sentence_bert_config.json`` (None when the folder
    has no such file or it does not set one: then the tokenizer's limit applies)."""
    path = os.path.join(os.fspath(folder), SENTENCE_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    value = read_json_object(path).get("max_seq_length")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: max_seq_length must be a positive integer, got {value!r}")
    return value


# ============================================================================ writing


def write_pooling(folder: str | os.PathLike, pooling: Pooling, hidden_size: int,
                  max_seq_length: int) -> None:
    """Write the sentence-transformers files of ``folder`` (whose model and tokenizer files
    are written separately): ``modules.json``, ``1_Pooling/config.json``, ``2_Normalize/``
    when ``pooling.normalize``, ``sentence_bert_config.json`` and
    ``config_sentence_transformers.json``, with the keys sentence-transformers 6.3 writes.

    ``max_seq_length`` is also written to ``sentence_bert_config.json`` (6.3 reads it there, as
    every earlier version does; 6.3 itself keeps it as the tokenizer's ``model_max_length``).
    A stale ``2_Normalize/`` of an earlier save is removed when ``normalize`` is off.
    """
    folder = os.fspath(folder)
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.base.modules.transformer.Transformer"},
               {"idx": 1, "name": "1", "path": POOLING_DIR,
                "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_DIR,
                        "type": "sentence_transformers.base.modules.normalize.Normalize"})
    _write_json(os.path.join(folder, MODULES_FILE), modules, indent=2)
    _write_json(os.path.join(folder, POOLING_DIR, "config.json"),
                {"embedding_dimension": hidden_size, "pooling_mode": pooling.mode,
                 "include_prompt": True})
    normalize_config = os.path.join(folder, NORMALIZE_DIR, "config.json")
    if pooling.normalize:
        _write_json(normalize_config, {"module_input_name": "sentence_embedding",
                                       "module_output_name": "sentence_embedding"})
    elif os.path.isfile(normalize_config):
        os.remove(normalize_config)
        os.rmdir(os.path.dirname(normalize_config))
    _write_json(os.path.join(folder, SENTENCE_CONFIG_FILE), {
        "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward",
                                     "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings", "max_seq_length": max_seq_length})
    _write_json(os.path.join(folder, ST_CONFIG_FILE), {
        "__version__": {"bertkit": __version__}, "default_prompt_name": None,
        "model_type": "SentenceTransformer", "prompts": {"document": "", "query": ""},
        "similarity_fn_name": "cosine"}, indent=2)


def _write_json(path: str, data, indent: int = 4) -> None:
    """``data`` as JSON in ``path`` (indented as sentence-transformers indents that file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent)
