"""Parallel text for sequence-to-sequence tasks (translation, summarisation).

Three layouts, read by :func:`load_parallel`:

- two aligned plain-text files, ``load_parallel(source="train.en", target="train.de")``: line i
  of one is the translation of line i of the other;
- one ``.tsv`` file with two tab-separated columns, source then target (a first line that is
  exactly ``source<TAB>target`` is a header and skipped);
- one ``.jsonl`` file, one object per line with string fields ``source`` and ``target``.

Every line must hold an example: an empty line, a row with another number of columns or a bad
JSON line is a ``ValueError`` naming ``file:line``; two files with different line counts are
a ``ValueError`` naming both files and both counts.

Then :func:`encode_parallel` turns examples into a :class:`ParallelDataset` of token ids
(source ``[CLS] x [SEP]`` as the bertkit tokenizer writes it, target ``y eos``) and
:class:`Seq2SeqCollator` pads them into ``{input_ids, attention_mask, labels}`` batches for
:class:`bertkit.modeling.seq2seq.TransformerSeq2Seq` (labels padded with -100). When no
tokenizer is given, :func:`train_tokenizers` learns a shared or separate WordPiece vocabulary on
the data, and :func:`save_tokenizers` / :func:`load_tokenizers` keep them in a model folder.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from bertkit.data.tasks import TruncationWarning
from bertkit.jsonfile import json_object_line, utf8_errors_named
from bertkit.modeling.bert import IGNORE_INDEX  # label value the loss skips
from bertkit.tokenizer import Tokenizer

TARGET_TOKENIZER_DIR = "target_tokenizer"


@dataclass
class ParallelExample:
    """A source text, its target text, and the 1-based line they came from."""

    source: str
    target: str
    line: int


# ============================================================================ reading
def load_parallel(path: str | os.PathLike | None = None, *, source: str | os.PathLike | None = None,
                  target: str | os.PathLike | None = None) -> list[ParallelExample]:
    """Read parallel text: ``path`` (a ``.tsv`` or ``.jsonl`` file) or two aligned files
    ``source`` and ``target``. Returns the examples in file order."""
    if path is not None:
        if source is not None or target is not None:
            raise ValueError("pass either path (a .tsv/.jsonl file) or source= and target= "
                             "(two aligned files), not both")
        path = _existing(path)
        ext = os.path.splitext(path)[1].lower()
        if ext == ".tsv":
            return _read_tsv(path)
        if ext == ".jsonl":
            return _read_jsonl(path)
        raise ValueError(f"{path}: unknown parallel data format {ext or '(no extension)'!r}; use "
                         ".tsv (source<TAB>target) or .jsonl ({\"source\", \"target\"}), or pass "
                         "two aligned text files as source= and target=")
    if source is None or target is None:
        raise ValueError("parallel data needs path (a .tsv/.jsonl file) or both source= and "
                         "target= (two aligned files)")
    source_lines = _read_lines(_existing(source))
    target_lines = _read_lines(_existing(target))
    if len(source_lines) != len(target_lines):
        raise ValueError(f"misaligned parallel files: {os.fspath(source)} has "
                         f"{len(source_lines)} lines but {os.fspath(target)} has "
                         f"{len(target_lines)}; line i of one must translate line i of the other")
    examples = []
    for index, (src, tgt) in enumerate(zip(source_lines, target_lines), start=1):
        _check_text(src, os.fspath(source), index)
        _check_text(tgt, os.fspath(target), index)
        examples.append(ParallelExample(src, tgt, index))
    return _non_empty(examples, os.fspath(source))


def _existing(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    return path


def _read_lines(path: str) -> list[str]:
    # -sig: a byte-order mark must not stick to the first text. Only "\n" ends a line: a text
    # may contain other Unicode line separators, which str.splitlines would split on.
    with utf8_errors_named(path), open(path, encoding="utf-8-sig", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _check_text(text: str, path: str, line: int) -> None:
    if not text.strip():
        raise ValueError(f"{path}:{line}: empty line; every line of parallel data must hold "
                         "an example")


def _non_empty(examples: list[ParallelExample], path: str) -> list[ParallelExample]:
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def _read_tsv(path: str) -> list[ParallelExample]:
    examples = []
    for index, line in enumerate(_read_lines(path), start=1):
        columns = line.split("\t")
        if index == 1 and [c.strip().lower() for c in columns] == ["source", "target"]:
            continue  # header
        _check_text(line, path, index)
        if len(columns) != 2:
            raise ValueError(f"{path}:{index}: expected 2 tab-separated columns (source, "
                             f"target), found {len(columns)}")
        for name, text in zip(("source", "target"), columns):
            if not text.strip():
                raise ValueError(f"{path}:{index}: empty {name} column")
        examples.append(ParallelExample(columns[0], columns[1], index))
    return _non_empty(examples, path)


def _read_jsonl(path: str) -> list[ParallelExample]:
    examples = []
    for index, line in enumerate(_read_lines(path), start=1):
        _check_text(line, path, index)
        record = json_object_line(line, path, index)
        texts = []
        for name in ("source", "target"):
            value = record.get(name)
            if not isinstance(value, str) or not value.strip():
                found = ", ".join(str(k) for k in record) or "(none)"
                raise ValueError(f"{path}:{index}: field {name!r} must be a non-empty string "
                                 f"(fields found: {found})")
            texts.append(value)
        examples.append(ParallelExample(texts[0], texts[1], index))
    return _non_empty(examples, path)


# ============================================================================ tokenizers
def train_tokenizers(examples: Sequence[ParallelExample], vocab_size: int = 8000,
                     shared: bool = True, lowercase: bool = True, min_frequency: int = 1,
                     model_max_length: int = 512) -> tuple[Tokenizer, Tokenizer]:
    """WordPiece tokenizer(s) trained on the examples: one on sources and targets together
    (``shared``: the same object is returned twice, so the model can share its embeddings), or
    one per side of ``vocab_size`` each. Returns ``(source_tokenizer, target_tokenizer)``."""
    if not examples:
        raise ValueError("cannot train a tokenizer on no examples")
    kwargs = dict(vocab_size=vocab_size, lowercase=lowercase, min_frequency=min_frequency,
                  model_max_length=model_max_length, show_progress=False)
    if shared:
        texts = [ex.source for ex in examples] + [ex.target for ex in examples]
        tokenizer = Tokenizer.train(texts, **kwargs)
        return tokenizer, tokenizer
    return (Tokenizer.train([ex.source for ex in examples], **kwargs),
            Tokenizer.train([ex.target for ex in examples], **kwargs))


def save_tokenizers(folder: str | os.PathLike, source_tokenizer: Tokenizer,
                    target_tokenizer: Tokenizer | None = None) -> None:
    """Save the source tokenizer in ``folder`` (``vocab.txt`` ...) and, when the target one is a
    different tokenizer, that one in ``folder/target_tokenizer/``."""
    source_tokenizer.save_pretrained(folder)
    if target_tokenizer is not None and target_tokenizer is not source_tokenizer:
        target_tokenizer.save_pretrained(os.path.join(os.fspath(folder), TARGET_TOKENIZER_DIR))


def load_tokenizers(folder: str | os.PathLike) -> tuple[Tokenizer, Tokenizer]:
    """``(source_tokenizer, target_tokenizer)`` saved by :func:`save_tokenizers` (the same
    object twice for a shared vocabulary)."""
    source_tokenizer = Tokenizer.from_pretrained(folder)
    target_dir = os.path.join(os.fspath(folder), TARGET_TOKENIZER_DIR)
    if os.path.isdir(target_dir):
        return source_tokenizer, Tokenizer.from_pretrained(target_dir)
    return source_tokenizer, source_tokenizer


def special_token_ids(target_tokenizer: Tokenizer) -> dict[str, int]:
    """The :class:`~bertkit.modeling.seq2seq.Seq2SeqConfig` special ids matching what
    :func:`encode_parallel` writes: pad = [PAD], bos = [CLS], eos = [SEP]."""
    return dict(pad_token_id=target_tokenizer.pad_token_id,
                bos_token_id=target_tokenizer.cls_token_id,
                eos_token_id=target_tokenizer.sep_token_id)


# ============================================================================ dataset, collator
class ParallelDataset(torch.utils.data.Dataset):
    """Encoded examples: item i is ``{"input_ids": [...], "labels": [...]}`` (unpadded int
    lists). ``examples`` keeps the texts (for BLEU against the references)."""

    def __init__(self, items: list[dict[str, list[int]]], examples: Sequence[ParallelExample],
                 num_truncated: int = 0):
        if len(items) != len(examples):
            raise ValueError(f"{len(items)} items but {len(examples)} examples")
        self.items = items
        self.examples = list(examples)
        self.num_truncated = num_truncated

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


def encode_parallel(examples: Sequence[ParallelExample], source_tokenizer: Tokenizer,
                    target_tokenizer: Tokenizer | None = None, max_source_length: int = 128,
                    max_target_length: int = 128) -> ParallelDataset:
    """Token ids for each example: ``input_ids`` = ``[CLS] source [SEP]`` (what the tokenizer
    writes for one text, as a BERT encoder expects) and ``labels`` = ``target [SEP]`` ([SEP]
    is the eos; the model's decoder input is ``[CLS] target``, [CLS] being the bos).

    Longer texts are cut to ``max_source_length`` / ``max_target_length`` tokens (specials
    included, the final [SEP] kept) with one :class:`TruncationWarning` giving the count.
    """
    target_tokenizer = target_tokenizer or source_tokenizer
    if max_source_length < 3 or max_target_length < 2:
        raise ValueError(f"max_source_length must be >= 3 and max_target_length >= 2, got "
                         f"{max_source_length} and {max_target_length}")
    sources = source_tokenizer.encode_plain([ex.source for ex in examples])
    targets = target_tokenizer.encode_plain([ex.target for ex in examples])
    cls, sep = source_tokenizer.cls_token_id, source_tokenizer.sep_token_id
    eos = target_tokenizer.sep_token_id
    items, truncated = [], 0
    for src, tgt in zip(sources, targets):
        if len(src) + 2 > max_source_length or len(tgt) + 1 > max_target_length:
            truncated += 1
        items.append({"input_ids": [cls] + src[:max_source_length - 2] + [sep],
                      "labels": tgt[:max_target_length - 1] + [eos]})
    if truncated:
        warnings.warn(f"{truncated} of {len(items)} examples were longer than max_source_length="
                      f"{max_source_length} / max_target_length={max_target_length} tokens and "
                      "were truncated", TruncationWarning, stacklevel=2)
    return ParallelDataset(items, examples, truncated)


class Seq2SeqCollator:
    """Pad :class:`ParallelDataset` items into a batch: ``input_ids`` (B, S) padded with
    ``pad_token_id``, ``attention_mask`` (B, S) 1 = real token, ``labels`` (B, T) padded with
    -100 (skipped by the loss)."""

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        batch = {"input_ids": _pad([item["input_ids"] for item in items], self.pad_token_id)}
        batch["attention_mask"] = _pad([[1] * len(item["input_ids"]) for item in items], 0)
        if "labels" in items[0]:
            batch["labels"] = _pad([item["labels"] for item in items], IGNORE_INDEX)
        return batch


def _pad(rows: Iterable[Sequence[int]], value: int) -> torch.Tensor:
    rows = list(rows)
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out
