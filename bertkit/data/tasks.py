"""Fine-tuning data: loaders and featurizers for classification/regression, NER and SQuAD QA.

Each task has the same three steps:

1. ``load_*(path)`` reads a file into a list of examples (plain dataclasses that remember the
   line they came from) and rejects bad data with an error naming the file and the line;
2. ``encode_*(examples, tokenizer, ...)`` turns them into a :class:`TaskDataset` of unpadded
   dicts of token ids and labels (plus, for NER and QA, the per-item bookkeeping needed to map
   predictions back to words / character spans);
3. :class:`PaddingCollator` pads a list of those dicts into a batch of tensors.

Data already in memory takes the same checks: ``classification_records``, ``ner_records`` and
``qa_records`` build the examples from lists of dicts (errors name ``source:N``, the N-th
record), and ``write_classification`` / ``write_conll`` / ``write_squad`` write examples as the
files the loaders read back.

File formats:

- classification / regression: ``.csv`` or ``.tsv`` with a header row, or ``.jsonl`` (one JSON
  object per line). Text fields ``text`` (+ optional ``text_pair``) or the GLUE names
  (``sentence``, ``sentence1``/``sentence2``, ``question``/``sentence``,
  ``question1``/``question2``, ``premise``/``hypothesis``); label field ``label`` (GLUE's
  ``gold_label``, ``is_duplicate`` and ``score`` also work). TSV is read without quote
  processing, as the GLUE files are written.
- NER: CoNLL-2003 style, one token per line with its BIO/IOB2 tag in the last column, a blank
  line between sentences, ``-DOCSTART-`` lines skipped.
- QA: SQuAD v1.1 / v2.0 JSON.

Over-long inputs are truncated, never dropped; the encoders emit one :class:`TruncationWarning`
(a ``UserWarning``, via :func:`warnings.warn`) with the count, and record it in
``TaskDataset.num_truncated``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from bertkit.jsonfile import json_object_line, utf8_errors_named
from bertkit.modeling.bert import IGNORE_INDEX  # label value the loss skips

# Accepted text columns, tried in order: (first text, second text or None). "text_pair" is
# optional with "text"; the GLUE pairs need both columns.
TEXT_COLUMNS = (
    ("text", "text_pair"),
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("sentence", None),
)
LABEL_COLUMNS = ("label", "gold_label", "is_duplicate", "score")
CLASSIFICATION_FORMATS = (".csv", ".tsv", ".jsonl")


class TruncationWarning(UserWarning):
    """Some inputs were longer than ``max_length`` and were truncated."""


# =========================================================================== datasets


class TaskDataset(torch.utils.data.Dataset):
    """A list of encoded items (dicts of unpadded int lists / scalar labels) for a DataLoader.

    Attributes:
        items: the dicts given to the model after padding (input_ids, token_type_ids, labels /
            start_positions / end_positions).
        features: per-item bookkeeping that is not a model input (:class:`NerFeature` or
            :class:`QaFeature`), aligned with ``items``; None for classification.
        num_truncated: how many inputs were longer than ``max_length`` and cut.
    """

    def __init__(self, items: list[dict], features: list | None = None, num_truncated: int = 0):
        if features is not None and len(features) != len(items):
            raise ValueError(f"{len(items)} items but {len(features)} features")
        self.items = items
        self.features = features
        self.num_truncated = num_truncated

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class PaddingCollator:
    """Pad a list of :class:`TaskDataset` items into a batch of tensors.

    ``input_ids`` are padded with ``pad_token_id``, ``token_type_ids`` with 0, and an
    ``attention_mask`` (1 = real token) is built from the lengths. ``labels`` that are
    sequences (NER) are padded with -100 so the loss skips them; scalar labels become a (B,)
    tensor (long for ints, float for regression). Other scalar fields (``start_positions``,
    ``end_positions``) are stacked; other sequence fields are padded with 0.

    Returns a dict of tensors of shape (B, T) (sequences) or (B,) (scalars), with T the longest
    item rounded up to ``pad_to_multiple_of`` when given.
    """

    def __init__(self, pad_token_id: int = 0, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        if "input_ids" not in items[0]:
            raise ValueError(f"items need 'input_ids'; got keys {sorted(items[0])}")
        lengths = [len(item["input_ids"]) for item in items]
        width = max(lengths)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        batch: dict[str, torch.Tensor] = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if isinstance(values[0], (list, tuple, np.ndarray, torch.Tensor)):
                pad = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
                out = torch.full((len(items), width), pad, dtype=torch.long)  # (B, T)
                for row, value in enumerate(values):
                    out[row, :len(value)] = torch.as_tensor(value, dtype=torch.long)
                batch[key] = out
            else:
                dtype = torch.float if isinstance(values[0], (float, np.floating)) else torch.long
                batch[key] = torch.tensor(values, dtype=dtype)  # (B,)
        if "attention_mask" not in batch:
            positions = torch.arange(width)  # (T,)
            batch["attention_mask"] = (positions[None, :] <
                                       torch.tensor(lengths)[:, None]).long()  # (B, T)
        return batch


# =========================================================================== shared helpers


def data_format(path: str | os.PathLike) -> str:
    """The format of a data file from its extension: ``"csv"``, ``"tsv"``, ``"jsonl"`` or
    ``"json"``; anything else is a ValueError."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    formats = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json"}
    if ext not in formats:
        raise ValueError(f"{os.fspath(path)}: unknown data format {ext or '(no extension)'!r}; "
                         "use .csv, .tsv or .jsonl (classification, regression) or .json (SQuAD)")
    return formats[ext]


def _open_text(path: str | os.PathLike) -> str:
    """Path as str, checked to exist and hold something other than whitespace."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    # -sig: a BOM must not stick to the header.
    with utf8_errors_named(path), open(path, encoding="utf-8-sig") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return path
    raise ValueError(f"{path} is empty")


def _warn_truncated(count: int, total: int, max_length: int, what: str) -> None:
    if count:
        warnings.warn(f"{count} of {total} {what} were longer than max_length={max_length} "
                      "tokens and were truncated", TruncationWarning, stacklevel=3)


# =========================================================================== classification


@dataclass
class ClassificationExample:
    """One classification / regression example.

    ``label`` is the label name (str) for classification, a float for regression, or None
    when the file has no labels; ``line`` is the 1-based line of the file it came from."""

    text: str
    text_pair: str | None
    label: str | float | None
    line: int


def load_classification(path: str | os.PathLike, regression: bool = False,
                        require_label: bool = True) -> list[ClassificationExample]:
    """Read a ``.csv`` / ``.tsv`` (with header) or ``.jsonl`` classification/regression file.

    Labels are kept as strings for classification (JSON numbers become their text, e.g. "1")
    and parsed as floats for regression. With ``require_label=False`` a file without a label
    column loads with ``label=None`` (for prediction).
    """
    fmt = data_format(path)
    if fmt not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"{os.fspath(path)}: classification data must be .csv, .tsv or .jsonl, "
                         f"not .{fmt}")
    path = _open_text(path)
    records = _read_jsonl(path) if fmt == "jsonl" else _read_table(path, fmt)
    examples = []
    for line, record in records:
        text, text_pair = _record_texts(record, path, line)
        label = _record_label(record, path, line, regression, require_label)
        examples.append(ClassificationExample(text, text_pair, label, line))
    if not examples:
        raise ValueError(f"{path} holds a header but no examples")
    return examples


def _read_table(path: str, fmt: str) -> Iterable[tuple[int, dict]]:
    with utf8_errors_named(path), open(path, encoding="utf-8-sig", newline="") as f:
        if fmt == "tsv":
            # GLUE TSVs contain bare quote characters inside sentences: no quote processing.
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(f)
        header = None
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line
            if header is None:
                header = [cell.strip() for cell in row]
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{reader.line_num}: expected {len(header)} columns "
                                 f"(header: {', '.join(header)}), found {len(row)}")
            yield reader.line_num, dict(zip(header, row))


def _read_jsonl(path: str) -> Iterable[tuple[int, dict]]:
    with utf8_errors_named(path), open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield line_no, json_object_line(line, path, line_no)


def _fields_found(record: Mapping) -> str:
    return ", ".join(str(k) for k in record) or "(none)"


def _record_texts(record: Mapping, path: str, line: int) -> tuple[str, str | None]:
    for first, second in TEXT_COLUMNS:
        if first not in record:
            continue
        if first == "text" or second is None:
            pair = record.get(second) if second else None
        elif second in record:
            pair = record[second]
        else:
            continue  # e.g. "question" without "sentence": try the next naming
        text = record[first]
        for name, value in ((first, text), (second, pair)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{path}:{line}: field {name!r} must be text, found "
                                 f"{type(value).__name__} {value!r:.40}")
        if text is None:
            raise ValueError(f"{path}:{line}: field {first!r} is null")
        if first == "text" and pair == "":
            pair = None  # an empty text_pair cell: a single-text row in a mixed file
        return text, pair
    raise ValueError(
        f"{path}:{line}: no text column; expected 'text' (+ optional 'text_pair') or a GLUE "
        f"naming (sentence, sentence1/sentence2, question/sentence, question1/question2, "
        f"premise/hypothesis); columns found: {_fields_found(record)}")


def _record_label(record: Mapping, path: str, line: int, regression: bool,
                  require_label: bool) -> str | float | None:
    name = next((c for c in LABEL_COLUMNS if c in record), None)
    value = record.get(name) if name else None
    if value is None or (isinstance(value, str) and not value.strip()):
        if not require_label:
            return None
        if name is None:
            raise ValueError(f"{path}:{line}: no label column 'label'; columns found: "
                             f"{_fields_found(record)}")
        raise ValueError(f"{path}:{line}: empty label in column {name!r}")
    if regression:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{line}: regression label {value!r} is not a number") from None
    if isinstance(value, (dict, list)):
        raise ValueError(f"{path}:{line}: label must be a string or number, found {value!r:.40}")
    return str(value).strip()


@dataclass(frozen=True)
class LabelMap:
    """Label names in id order; ``label2id`` / ``id2label`` are what config.json stores."""

    names: tuple[str, ...]

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def __len__(self) -> int:
        return len(self.names)


def build_label_map(examples: Sequence[ClassificationExample | "NerSentence"]) -> LabelMap:
    """The label names seen in training data, sorted, so the same data always gives the same
    ids. Integer-looking labels sort by value ("2" before "10"); NER tags sort as strings.
    Accepts classification examples (their labels) or NER sentences (their tags)."""
    seen: set[str] = set()
    for ex in examples:
        if isinstance(ex, NerSentence):
            seen.update(ex.tags)
        elif isinstance(ex.label, str):
            seen.add(ex.label)
        elif ex.label is not None:
            raise ValueError(f"line {ex.line}: label {ex.label!r} is not a class name; "
                             "regression data has no label map")
    if not seen:
        raise ValueError("no labels in the training examples")
    try:
        names = sorted(seen, key=lambda name: (int(name), name))
    except ValueError:
        names = sorted(seen)
    return LabelMap(tuple(names))


def check_labels(examples: Sequence[ClassificationExample | "NerSentence"],
                 label2id: Mapping[str, int], path: str | os.PathLike) -> None:
    """Raise ValueError naming ``path``, the line and the label for the first label (or NER
    tag) that is not in ``label2id``, i.e. that never appeared in the training data."""
    for ex in examples:
        if isinstance(ex, NerSentence):
            pairs = zip(ex.tags, ex.lines)
        else:
            pairs = [(ex.label, ex.line)] if ex.label is not None else []
        for label, line in pairs:
            if label not in label2id:
                known = ", ".join(map(str, label2id))
                raise ValueError(f"{os.fspath(path)}:{line}: label {label!r} never appears in "
                                 f"the training data (training labels: {known})")


def encode_classification(examples: Sequence[ClassificationExample], tokenizer,
                          label2id: Mapping[str, int] | None = None,
                          max_length: int = 128) -> TaskDataset:
    """Tokenize examples into ``[CLS] text [SEP] (text_pair [SEP])`` items.

    Args:
        examples: from :func:`load_classification`.
        tokenizer: a bertkit ``Tokenizer``.
        label2id: class name -> id; None for regression (labels become floats). Examples with
            ``label=None`` get no ``labels`` field.
        max_length: the longest item kept (special tokens included); longer pairs lose tokens
            from the longer text first ("longest_first").

    Returns:
        a :class:`TaskDataset` of ``{"input_ids", "token_type_ids", "labels"}`` (lists of ints,
        label an int or float), one per example, in order.
    """
    items: list[dict | None] = [None] * len(examples)
    num_truncated = 0
    singles = [i for i, ex in enumerate(examples) if ex.text_pair is None]
    pairs = [i for i, ex in enumerate(examples) if ex.text_pair is not None]
    for indices, is_pair in ((singles, False), (pairs, True)):
        if not indices:
            continue
        texts = [examples[i].text for i in indices]
        text_pairs = [examples[i].text_pair for i in indices] if is_pair else None
        ids, type_ids, n_cut = _encode_truncating(tokenizer, texts, text_pairs, max_length)
        num_truncated += n_cut
        for k, i in enumerate(indices):
            item = {"input_ids": ids[k], "token_type_ids": type_ids[k]}
            label = examples[i].label
            if label is not None:
                if label2id is None:
                    item["labels"] = float(label)
                elif label not in label2id:
                    raise ValueError(f"line {examples[i].line}: label {label!r} is not in "
                                     f"label2id ({', '.join(map(str, label2id))})")
                else:
                    item["labels"] = int(label2id[label])
            items[i] = item
    _warn_truncated(num_truncated, len(examples), max_length, "examples")
    return TaskDataset(items, num_truncated=num_truncated)


def _encode_truncating(tokenizer, texts, text_pairs, max_length, **kwargs):
    """Encode without truncation to learn true lengths, then re-encode only the over-long
    inputs truncated (so the count in the warning is exact and short inputs cost one pass).
    Returns (input_ids lists, token_type_ids lists, number truncated, encodings by index)."""
    common = dict(padding=False, return_tensors=None, **kwargs)
    full = tokenizer(texts, text_pairs, truncation=False, **common)
    ids, type_ids = list(full["input_ids"]), list(full["token_type_ids"])
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long:
        cut = tokenizer([texts[i] for i in long],
                        [text_pairs[i] for i in long] if text_pairs is not None else None,
                        truncation=True, max_length=max_length, **common)
        for k, i in enumerate(long):
            ids[i], type_ids[i] = cut["input_ids"][k], cut["token_type_ids"][k]
    return ids, type_ids, len(long)


# =========================================================================== NER

_TAG = re.compile(r"^(O|[BI]-\S+)$")


def _check_tag(tag: Any, path: str, line: int) -> None:
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise ValueError(f"{path}:{line}: tag {tag!r} is not O, B-TYPE or I-TYPE (BIO/IOB2 tags)")


@dataclass
class NerSentence:
    """One CoNLL sentence: words, their tags, and the 1-based file line of each word."""

    tokens: list[str]
    tags: list[str]
    lines: list[int]


@dataclass
class NerFeature:
    """Bookkeeping of one encoded NER item: ``word_ids[j]`` is the word of token j (None for
    special tokens), ``num_words`` the sentence length (words cut by truncation included)."""

    word_ids: list[int | None]
    num_words: int
    sentence_index: int


def load_conll(path: str | os.PathLike) -> list[NerSentence]:
    """Read CoNLL-2003 style NER data: ``token ... tag`` per line (whitespace separated, the
    tag in the LAST column, so the 4-column CoNLL-2003 files work as they are), a blank line
    between sentences, ``-DOCSTART-`` lines skipped. Tags must be ``O``, ``B-TYPE`` or
    ``I-TYPE``; anything else, or a line with a single column, is a ValueError with file:line.
    """
    path = _open_text(path)
    sentences: list[NerSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def flush():
        if tokens:
            sentences.append(NerSentence(list(tokens), list(tags), list(lines)))
            tokens.clear(), tags.clear(), lines.clear()

    with utf8_errors_named(path), open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            columns = line.split()
            if not columns:
                flush()
                continue
            if columns[0] == "-DOCSTART-":
                flush()
                continue
            if len(columns) < 2:
                raise ValueError(f"{path}:{line_no}: expected a token and a tag separated by "
                                 f"whitespace, found one column: {line.strip()!r}")
            tag = columns[-1]
            _check_tag(tag, path, line_no)
            tokens.append(columns[0])
            tags.append(tag)
            lines.append(line_no)
    flush()
    if not sentences:
        raise ValueError(f"{path} holds no sentences (only -DOCSTART- or blank lines)")
    return sentences


def encode_ner(sentences: Sequence[NerSentence], tokenizer,
               label2id: Mapping[str, int] | None = None, max_length: int = 128) -> TaskDataset:
    """Tokenize pre-split words and align word tags to sub-tokens.

    The tag id goes on the FIRST sub-token of each word; the other sub-tokens, ``[CLS]`` and
    ``[SEP]`` get -100 so the loss ignores them. Sentences longer than ``max_length`` tokens
    are truncated (their last words get no label; a warning gives the count).

    Args:
        sentences: from :func:`load_conll` (or built from raw text with :func:`split_words`).
        tokenizer: a bertkit ``Tokenizer`` (words are encoded with ``is_split_into_words``).
        label2id: tag -> id; None encodes without labels (prediction).

    Returns:
        a :class:`TaskDataset` of ``{"input_ids", "token_type_ids", "labels"}`` lists and
        ``features`` of :class:`NerFeature` for :func:`ner_predictions_to_words`.
    """
    words = [list(s.tokens) for s in sentences]
    common = dict(padding=False, return_tensors=None, is_split_into_words=True)
    full = tokenizer(words, truncation=False, **common)
    long = [i for i, ids in enumerate(full["input_ids"]) if len(ids) > max_length]
    cut = (tokenizer([words[i] for i in long], truncation=True, max_length=max_length, **common)
           if long else None)
    where = {i: k for k, i in enumerate(long)}

    items, features = [], []
    for i, sentence in enumerate(sentences):
        enc, row = (cut, where[i]) if i in where else (full, i)
        word_ids = enc.word_ids(row)
        item = {"input_ids": list(enc["input_ids"][row]),
                "token_type_ids": list(enc["token_type_ids"][row])}
        if label2id is not None:
            labels = []
            for j, w in enumerate(word_ids):
                if w is None or (j > 0 and word_ids[j - 1] == w):
                    labels.append(IGNORE_INDEX)
                else:
                    tag = sentence.tags[w]
                    if tag not in label2id:
                        raise ValueError(f"line {sentence.lines[w]}: tag {tag!r} is not in "
                                         f"label2id ({', '.join(label2id)})")
                    labels.append(int(label2id[tag]))
            item["labels"] = labels
        items.append(item)
        features.append(NerFeature(word_ids, len(sentence.tokens), i))
    _warn_truncated(len(long), len(sentences), max_length, "sentences")
    return TaskDataset(items, features, num_truncated=len(long))


def ner_predictions_to_words(predictions, features: Sequence[NerFeature],
                             id2label: Mapping[int, str] | Sequence[str],
                             default: str = "O") -> list[list[str]]:
    """Map per-token predictions back to one tag per word: each word takes the prediction of
    its first sub-token (the one that carried its label in training).

    Args:
        predictions: label ids of shape (F, T) (tensor, array or ragged lists; rows may be
            padded beyond the item length), or logits of shape (F, T, C) (argmax is taken).
        features: ``dataset.features`` from :func:`encode_ner`, F of them.
        id2label: id -> tag name (a dict or a list).
        default: the tag of words without any token (cut by truncation).

    Returns:
        F lists of tags, each of the sentence's full word count.
    """
    if isinstance(predictions, torch.Tensor):
        predictions = predictions.detach().cpu().numpy()
    if isinstance(predictions, np.ndarray) and predictions.ndim == 3:
        predictions = predictions.argmax(-1)  # (F, T, C) -> (F, T)
    if len(predictions) != len(features):
        raise ValueError(f"{len(predictions)} prediction rows for {len(features)} features")
    out = []
    for row, feature in zip(predictions, features):
        row = np.asarray(row)
        if row.ndim == 2:
            row = row.argmax(-1)
        if len(row) < len(feature.word_ids):
            raise ValueError(f"a prediction row has {len(row)} tokens but its item has "
                             f"{len(feature.word_ids)}")
        tags = [default] * feature.num_words
        for j, w in enumerate(feature.word_ids):
            if w is not None and (j == 0 or feature.word_ids[j - 1] != w):
                tags[w] = id2label[int(row[j])]
        out.append(tags)
    return out


# Words as BERT's basic tokenizer cuts them: runs of letters/digits, and every other
# non-space character (punctuation, symbols, "_") on its own, which is also how CoNLL data
# separates punctuation from words.
_WORD = re.compile(r"[^\W_]+|[^\w\s]|_")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Split raw text into ``(word, start, end)`` with ``text[start:end] == word``: runs of
    letters/digits, and each punctuation or symbol character alone. Use the words as the
    input of :func:`encode_ner` and the spans with :func:`entities_from_text`."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(type, first, last)`` word indices (inclusive) of the entities in a BIO tag sequence.

    The conlleval rules, as seqeval's default mode applies them: ``B-X`` always opens an
    entity; ``I-X`` continues an open ``X`` entity and otherwise opens one; ``O`` (or any tag
    without a B-/I- prefix) closes. Written here rather than imported from seqeval so that
    prediction does not pay seqeval's import of scikit-learn (~2 s).
    """
    out: list[tuple[str, int, int]] = []
    start, label = None, None
    for i, tag in enumerate([*tags, "O"]):  # the sentinel closes an entity at the end
        prefix, _, kind = tag.partition("-")
        continues = prefix == "I" and start is not None and kind == label
        if start is not None and not continues:
            out.append((label, start, i - 1))
            start = None
        if prefix in ("B", "I") and not continues:
            start, label = i, kind
    return out


def entities_from_text(text: str, word_tags: Sequence[str],
                       words: Sequence[tuple[str, int, int]] | None = None) -> list[dict]:
    """Turn one BIO tag per word of ``text`` into entities with character spans.

    Args:
        text: the original text.
        word_tags: a tag per word of ``words``.
        words: ``(word, start, end)`` triples; default :func:`split_words` (text).

    Returns:
        ``[{"entity": str, "label": str, "start": int, "end": int}]`` in text order, with
        ``text[start:end] == entity``. Chunking follows conlleval (an ``I-X`` after ``O``
        starts an entity), the same rule :func:`entity_metrics` scores with.
    """
    words = split_words(text) if words is None else list(words)
    if len(words) != len(word_tags):
        raise ValueError(f"{len(word_tags)} tags for {len(words)} words")
    entities = []
    for label, first, last in bio_entities(word_tags):
        start, end = words[first][1], words[last][2]
        entities.append({"entity": text[start:end], "label": label, "start": start, "end": end})
    return entities


# =========================================================================== QA


@dataclass
class QaExample:
    """One SQuAD question. ``answers`` holds ``{"text", "answer_start"}`` dicts (all gold
    answers; training uses the first); empty when ``is_impossible`` (SQuAD v2.0)."""

    id: str
    question: str
    context: str
    answers: list[dict] = field(default_factory=list)
    is_impossible: bool = False


@dataclass
class QaFeature:
    """Bookkeeping of one QA window: the example it belongs to, the example's context, and
    for each token of the item the character ``(start, end)`` of that token in the context
    (None for question and special tokens: not part of any answer)."""

    example_id: str
    context: str
    offsets: list[tuple[int, int] | None]


def load_squad(path: str | os.PathLike) -> list[QaExample]:
    """Read SQuAD v1.1 or v2.0 JSON (``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``).

    Every answer's text must be found at its ``answer_start`` in the context; otherwise a
    ValueError names the file, the question id and the text found there. Duplicate question
    ids are rejected (predictions are keyed by id).
    """
    if data_format(path) != "json":
        raise ValueError(f"{os.fspath(path)}: SQuAD data must be a .json file")
    path = _open_text(path)
    with utf8_errors_named(path), open(path, encoding="utf-8-sig") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") \
                from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError(f"{path}: not SQuAD JSON: expected an object with a 'data' list")
    examples, seen = [], set()
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(_need(article, "paragraphs", list, f"data[{a}]", path)):
            where_p = f"data[{a}].paragraphs[{p}]"
            context = _need(para, "context", str, where_p, path)
            for q, qa in enumerate(_need(para, "qas", list, where_p, path)):
                examples.append(_squad_question(qa, context, f"{where_p}.qas[{q}]", path, seen))
    if not examples:
        raise ValueError(f"{path} holds no questions")
    return examples


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: str) -> Any:
    """``obj[key]``, checked to exist and be of ``kind``; else a ValueError naming both."""
    if not isinstance(obj, dict) or key not in obj:
        found = _fields_found(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: {where} has no {key!r} (found: {found})")
    if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{path}: {where}.{key} must be a {kinds}, found "
                         f"{type(obj[key]).__name__}")
    return obj[key]


def _squad_question(qa: Any, context: str, where: str, path: str, seen: set[str]) -> QaExample:
    """One SQuAD question of ``context`` (``qa``: id, question, answers, is_impossible),
    checked: answers found at their ``answer_start``, ids not in ``seen`` (then added)."""
    qid = str(_need(qa, "id", (str, int), where, path))
    where = f"{where} (id {qid})"
    if qid in seen:
        raise ValueError(f"{path}: question id {qid!r} appears more than once")
    seen.add(qid)
    question = _need(qa, "question", str, where, path)
    impossible = bool(qa.get("is_impossible", False))
    answers = [] if impossible else _need(qa, "answers", list, where, path)
    if not impossible and not answers:
        raise ValueError(f"{path}: question {qid} has no answers and is not marked "
                         "is_impossible")
    checked = []
    for k, ans in enumerate(answers):
        text = _need(ans, "text", str, f"{where}.answers[{k}]", path)
        start = _need(ans, "answer_start", int, f"{where}.answers[{k}]", path)
        found = context[start:start + len(text)]
        if found != text or start < 0:
            raise ValueError(f"{path}: question {qid}: answer {text!r} is not at "
                             f"answer_start {start}; the context there reads {found!r}")
        checked.append({"text": text, "answer_start": start})
    return QaExample(qid, question, context, checked, impossible)


def qa_gold(examples: Sequence[QaExample]) -> dict[str, list[str]]:
    """Question id -> gold answer texts (empty for unanswerable), the ``gold`` argument of
    :func:`bertkit.tasks.metrics.squad_metrics`."""
    return {ex.id: [a["text"] for a in ex.answers] for ex in examples}


def encode_qa(examples: Sequence[QaExample], tokenizer, max_length: int = 384,
              doc_stride: int = 128, training: bool = True,
              max_query_length: int = 64) -> TaskDataset:
    """Encode question/context pairs as ``[CLS] question [SEP] context-window [SEP]`` items.

    A context longer than the room left by the question is cut into windows of consecutive
    context tokens; consecutive windows share ``doc_stride`` tokens so that an answer cut by
    one window boundary is whole in the next. Windowing is done here on the context's token
    ids and character offsets (tokenized once per distinct context), not by the tokenizer.

    Args:
        examples: from :func:`load_squad`.
        tokenizer: a bertkit ``Tokenizer``.
        max_length: tokens per item, special tokens included.
        doc_stride: overlap in tokens between consecutive windows (must be smaller than the
            window).
        training: add ``start_positions`` / ``end_positions``: the token span of the first
            answer when it lies wholly inside the window, else 0 / 0 (the ``[CLS]`` token, the
            v2.0 "no answer" target), also for unanswerable questions. The features are kept
            either way, so a dev set encoded with ``training=True`` gives a loss as well.
        max_query_length: longer questions are truncated to this many tokens (counted in the
            truncation warning).

    Returns:
        a :class:`TaskDataset` of ``{"input_ids", "token_type_ids"[, "start_positions",
        "end_positions"]}`` with one :class:`QaFeature` per window in ``features``.
    """
    if doc_stride < 0:
        raise ValueError(f"doc_stride must be >= 0, got {doc_stride}")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    question_ids = tokenizer.encode_plain([ex.question for ex in examples])
    contexts = list(dict.fromkeys(ex.context for ex in examples))  # SQuAD reuses paragraphs
    enc = tokenizer(contexts, truncation=False, padding=False, return_tensors=None,
                    return_offsets_mapping=True)
    context_tokens = {c: (ids[1:-1], offs[1:-1])  # drop [CLS] / [SEP]
                      for c, ids, offs in zip(contexts, enc["input_ids"],
                                              enc["offset_mapping"])}
    items, features, num_truncated = [], [], 0
    for ex, q_ids in zip(examples, question_ids):
        if len(q_ids) > max_query_length:
            q_ids = q_ids[:max_query_length]
            num_truncated += 1
        ctx_ids, ctx_offsets = context_tokens[ex.context]
        room = max_length - len(q_ids) - 3  # [CLS] q [SEP] ... [SEP]
        if room <= doc_stride:
            raise ValueError(f"question {ex.id}: max_length={max_length} leaves {room} context "
                             f"tokens per window after the {len(q_ids)}-token question, not more "
                             f"than doc_stride={doc_stride}")
        answer = _answer_token_span(ex, ctx_offsets) if training else None
        head = [cls_id] + list(q_ids) + [sep_id]
        for start, end in _windows(len(ctx_ids), room, doc_stride):
            input_ids = head + list(ctx_ids[start:end]) + [sep_id]
            item = {"input_ids": input_ids,
                    "token_type_ids": [0] * len(head) + [1] * (end - start + 1)}
            if training:
                s_pos = e_pos = 0
                if answer is not None and start <= answer[0] and answer[1] < end:
                    s_pos = answer[0] - start + len(head)
                    e_pos = answer[1] - start + len(head)
                item["start_positions"], item["end_positions"] = s_pos, e_pos
            offsets = ([None] * len(head) + [tuple(o) for o in ctx_offsets[start:end]] + [None])
            items.append(item)
            features.append(QaFeature(ex.id, ex.context, offsets))
    _warn_truncated(num_truncated, len(examples), max_query_length, "questions")
    return TaskDataset(items, features, num_truncated=num_truncated)


def _windows(n: int, room: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of size <= room covering 0..n, overlapping by ``stride``."""
    windows, start = [], 0
    while True:
        end = min(start + room, n)
        windows.append((start, end))
        if end >= n:
            return windows
        start = end - stride


def _answer_token_span(ex: QaExample, offsets) -> tuple[int, int] | None:
    """Context token indices (first, last) covering the first answer's characters, or None."""
    if ex.is_impossible or not ex.answers:
        return None
    a_start = ex.answers[0]["answer_start"]
    a_end = a_start + len(ex.answers[0]["text"])
    # First token ending after the answer starts / last token starting before it ends:
    # robust to answers that begin or end inside a word piece.
    first = next((i for i, (s, e) in enumerate(offsets) if e > a_start), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < a_end), None)
    if first is None or last is None or last < first:
        return None  # the answer has no token (e.g. only characters the normaliser drops)
    return first, last


def postprocess_qa(features: Sequence[QaFeature], start_logits, end_logits, n_best: int = 20,
                   max_answer_length: int = 30, version_2: bool = False,
                   null_threshold: float = 0.0) -> dict[str, dict]:
    """Pick each question's answer from the model's start/end logits over all its windows.

    Args:
        features: ``dataset.features`` from :func:`encode_qa`, F of them.
        start_logits, end_logits: shape (F, T) (tensors, arrays or ragged lists); rows may be
            padded beyond the item length.
        n_best: start and end candidates considered per window (the top logits among context
            tokens).
        max_answer_length: longest answer in tokens.
        version_2: allow "no answer": predicted when the null score (start + end logit of
            ``[CLS]``, the lowest over the question's windows) exceeds the best span score by
            more than ``null_threshold``.

    Returns:
        question id -> ``{"text", "start", "end", "score"}``: the answer sliced from the
        original context (``context[start:end]``) and its score (start + end logit). A
        no-answer is ``{"text": "", "start": None, "end": None, "score": null score}``.
    """
    starts, ends = _rows(start_logits), _rows(end_logits)
    if not len(starts) == len(ends) == len(features):
        raise ValueError(f"{len(features)} features but {len(starts)} start and {len(ends)} "
                         "end logit rows")
    best: dict[str, dict] = {}
    null: dict[str, float] = {}
    for feature, s, e in zip(features, starts, ends):
        qid = feature.example_id
        null[qid] = min(null.get(qid, np.inf), float(s[0] + e[0]))
        best.setdefault(qid, None)
        ctx = np.array([i for i, o in enumerate(feature.offsets) if o is not None and i < len(s)],
                       dtype=np.int64)
        if ctx.size == 0:
            continue
        top_s = ctx[np.argsort(-s[ctx], kind="stable")[:n_best]]
        top_e = ctx[np.argsort(-e[ctx], kind="stable")[:n_best]]
        for i in top_s:
            for j in top_e:
                if j < i or j - i + 1 > max_answer_length:
                    continue
                score = float(s[i] + e[j])
                if best[qid] is None or score > best[qid]["score"]:
                    a, b = feature.offsets[i][0], feature.offsets[j][1]
                    best[qid] = {"text": feature.context[a:b], "start": a, "end": b,
                                 "score": score}
    out = {}
    for qid, answer in best.items():
        no_answer = {"text": "", "start": None, "end": None, "score": null[qid]}
        if answer is None or (version_2 and null[qid] > answer["score"] + null_threshold):
            out[qid] = no_answer
        else:
            out[qid] = answer
    return out


def _rows(logits) -> list[np.ndarray]:
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    return [np.asarray(row, dtype=np.float64) for row in logits]


# =========================================================================== in-memory records
# The same examples as the files give, from Python lists: each record is checked by the code
# that checks a file's line, and an error names ``source:N`` (N: the record's position, from 1).
# The writers do the reverse: examples -> a file the loader reads back to the same examples.


def _numbered_records(records: Any, source: str, example_type: type) -> list[tuple[int, dict]]:
    """(position from 1, record as a dict) of a non-empty list of dicts or ``example_type``
    objects (turned into the dicts of their fields)."""
    if isinstance(records, (str, bytes, os.PathLike, Mapping)) or not isinstance(records,
                                                                                 Iterable):
        raise ValueError(f"{source}: expected a list of records (dicts), got "
                         f"{type(records).__name__}")
    numbered = []
    for n, record in enumerate(records, start=1):
        if isinstance(record, example_type):
            record = dataclasses.asdict(record)
        if not isinstance(record, Mapping):
            raise ValueError(f"{source}:{n}: a record must be a dict, got "
                             f"{type(record).__name__} {record!r:.40}")
        numbered.append((n, dict(record)))
    if not numbered:
        raise ValueError(f"{source} holds no examples")
    return numbered


def classification_records(records: Sequence[Mapping | ClassificationExample],
                           source: str = "records", regression: bool = False,
                           require_label: bool = True) -> list[ClassificationExample]:
    """Classification / regression examples from records with a file's columns (``text`` +
    optional ``text_pair`` or a GLUE naming; ``label``) or :class:`ClassificationExample`
    objects, checked as :func:`load_classification` checks a file's rows."""
    examples = []
    for n, record in _numbered_records(records, source, ClassificationExample):
        text, text_pair = _record_texts(record, source, n)
        label = _record_label(record, source, n, regression, require_label)
        examples.append(ClassificationExample(text, text_pair, label, n))
    return examples


def ner_records(records: Sequence[Mapping | NerSentence],
                source: str = "records") -> list[NerSentence]:
    """NER sentences from records ``{"tokens": [words], "tags": [BIO tags]}`` or
    :class:`NerSentence` objects, checked as :func:`load_conll` checks a file: a word is one
    whitespace-free token (one CoNLL line), a tag ``O``, ``B-TYPE`` or ``I-TYPE``."""
    sentences = []
    for n, record in _numbered_records(records, source, NerSentence):
        tokens, tags = record.get("tokens"), record.get("tags")
        for name, values in (("tokens", tokens), ("tags", tags)):
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"{source}:{n}: {name!r} must be a non-empty list "
                                 f"(fields found: {_fields_found(record)})")
        if len(tokens) != len(tags):
            raise ValueError(f"{source}:{n}: {len(tokens)} tokens but {len(tags)} tags")
        for token, tag in zip(tokens, tags):
            if not isinstance(token, str) or token.split() != [token]:
                raise ValueError(f"{source}:{n}: token {token!r} must be one word without "
                                 "whitespace")
            _check_tag(tag, source, n)
        sentences.append(NerSentence(list(tokens), list(tags), [n] * len(tokens)))
    return sentences


def qa_records(records: Sequence[Mapping | QaExample], source: str = "records") -> list[QaExample]:
    """QA examples from records with one SQuAD question's fields (``question``, ``context``,
    ``answers`` as ``[{"text", "answer_start"}]``, optional ``id`` (default: the record's
    position) and ``is_impossible``) or :class:`QaExample` objects, checked as
    :func:`load_squad` checks a file. ``answers`` may also be the Hugging Face datasets columns
    ``{"text": [...], "answer_start": [...]}``, where no answer means "no answer" (SQuAD 2.0)."""
    examples, seen = [], set()
    for n, record in _numbered_records(records, source, QaExample):
        record.setdefault("id", str(n))
        answers = record.get("answers")
        if isinstance(answers, Mapping) and set(answers) == {"text", "answer_start"} \
                and all(isinstance(v, (list, tuple)) for v in answers.values()) \
                and len(answers["text"]) == len(answers["answer_start"]):
            record["answers"] = [{"text": t, "answer_start": s}
                                 for t, s in zip(answers["text"], answers["answer_start"])]
            record.setdefault("is_impossible", not record["answers"])
        where = f"record {n}"
        context = _need(record, "context", str, where, source)
        examples.append(_squad_question(record, context, where, source, seen))
    return examples


def write_classification(examples: Sequence[ClassificationExample], path: str) -> None:
    """Write examples as the ``.jsonl`` file :func:`load_classification` reads back."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            record = {"text": ex.text, "text_pair": ex.text_pair, "label": ex.label}
            f.write(json.dumps({k: v for k, v in record.items() if v is not None},
                               ensure_ascii=False) + "\n")


def write_conll(sentences: Sequence[NerSentence], path: str) -> None:
    """Write sentences as the CoNLL file :func:`load_conll` reads back (word TAB tag)."""
    with open(path, "w", encoding="utf-8") as f:
        for sentence in sentences:
            f.writelines(f"{token}\t{tag}\n" for token, tag in zip(sentence.tokens, sentence.tags))
            f.write("\n")


def write_squad(examples: Sequence[QaExample], path: str) -> None:
    """Write examples as the SQuAD JSON :func:`load_squad` reads back (one paragraph each)."""
    paragraphs = [{"context": ex.context,
                   "qas": [{"id": ex.id, "question": ex.question, "answers": ex.answers,
                            "is_impossible": ex.is_impossible}]} for ex in examples]
    version = "v2.0" if any(ex.is_impossible for ex in examples) else "1.1"
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"version": version, "data": [{"title": "records", "paragraphs": paragraphs}]},
                  f, ensure_ascii=False)
