"""Relation extraction data: sentences with two marked entities, read, checked, written and
encoded for a head that reads the entities' start markers (Baldini Soares et al., 2019).

File formats (the label field is ``label``):

- ``.jsonl``: ``{"text": "<e1>json</e1> provides <e2>dumps</e2>", "label": ...}`` with inline
  markers, or ``{"text": "json provides dumps", "e1": [0, 4], "e2": [14, 19], "label": ...}``
  with character spans (start, end exclusive) into ``text``;
- ``.csv`` / ``.tsv`` with a header: a ``text`` column with inline markers, a ``label`` column.

Each of ``<e1>``, ``</e1>``, ``<e2>``, ``</e2>`` appears exactly once; the two entities are
non-empty and do not overlap (either may come first in the text). A bad example is a
ValueError naming the file and the line.

Encoding writes the entity-marker tokens ``[E1] [/E1] [E2] [/E2]`` (:data:`MARKER_TOKENS`,
added to the vocab as never-split tokens) around the entities: ``[CLS] ... [E1] json [/E1]
provides [E2] dumps [/E2] [SEP]``. A sentence longer than ``max_length`` is cut to a window
that keeps both start markers.

:func:`stdlib_relation_splits` makes a small example set from the Python standard library
installed on the machine (which module defines which class and function, which class has
which method).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from bertkit.data.tasks import (TaskDataset, TruncationWarning, data_format,
                                load_classification)
from bertkit.jsonfile import json_object_line, utf8_errors_named

MARKER_TOKENS = ("[E1]", "[/E1]", "[E2]", "[/E2]")
E1_START, E1_END, E2_START, E2_END = MARKER_TOKENS
_INLINE_TAG = re.compile(r"</?e[12]>")
RELATION_FORMATS = (".jsonl", ".csv", ".tsv")

Span = tuple[int, int]


@dataclass
class RelationExample:
    """One sentence, its two entities as character spans ``[start, end)`` of ``text`` (which
    holds no markers), the relation's name (None when unlabelled) and its 1-based line."""

    text: str
    e1: Span
    e2: Span
    label: str | None
    line: int

    def entity(self, which: int) -> str:
        """The text of entity 1 or 2."""
        start, end = self.e1 if which == 1 else self.e2
        return self.text[start:end]


# =========================================================================== parsing


def parse_marked(text: str, where: str) -> tuple[str, Span, Span]:
    """``text`` with inline ``<e1>…</e1>`` / ``<e2>…</e2>`` markers -> (the text without them,
    the span of entity 1, the span of entity 2); a ValueError starting with ``where``."""
    clean, found, last = [], {}, 0
    for match in _INLINE_TAG.finditer(text):
        clean.append(text[last:match.start()])
        last = match.end()
        if match.group() in found:
            raise ValueError(f"{where}: {match.group()} appears more than once")
        found[match.group()] = sum(map(len, clean))
    clean.append(text[last:])
    spans = []
    for n in (1, 2):
        opening, closing = found.get(f"<e{n}>"), found.get(f"</e{n}>")
        if opening is None or closing is None:
            missing = [f"e{k}" for k in (1, 2) if f"<e{k}>" not in found or f"</e{k}>" not in found]
            raise ValueError(f"{where}: {_missing_entities(missing)}")
        if closing < opening:
            raise ValueError(f"{where}: </e{n}> comes before <e{n}>")
        spans.append((opening, closing))
    plain = "".join(clean)
    _check_spans(plain, spans[0], spans[1], where)
    return plain, spans[0], spans[1]


def _missing_entities(missing: list[str]) -> str:
    return (f"an example needs both entities marked (<e1>…</e1> and <e2>…</e2>, or \"e1\"/\"e2\" "
            f"character spans); {' and '.join(missing)} missing")


def _check_spans(text: str, e1: Span, e2: Span, where: str) -> None:
    for name, (start, end) in (("e1", e1), ("e2", e2)):
        if not text[start:end].strip():
            raise ValueError(f"{where}: entity {name} is empty")
    if e1[0] < e2[1] and e2[0] < e1[1]:
        raise ValueError(f"{where}: the entities overlap ({text[e1[0]:e1[1]]!r} and "
                         f"{text[e2[0]:e2[1]]!r}); they must be separate")


def _span_field(record: Mapping, name: str, text: str, where: str) -> Span:
    value = record.get(name)
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or not 0 <= value[0] < value[1] <= len(text)):
        raise ValueError(f"{where}: field {name!r} must be [start, end] with 0 <= start < end <= "
                         f"{len(text)} (the text's length), got {value!r:.40}")
    return value[0], value[1]


def relation_record(record: Mapping, where: str, line: int,
                    require_label: bool = True) -> RelationExample:
    """The example of one JSON record (inline markers or ``e1``/``e2`` spans, see the module
    docstring); a ValueError starting with ``where`` when it is bad."""
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError(f"{where}: field 'text' must be text, found "
                         f"{'nothing' if text is None else type(text).__name__}")
    if "e1" in record or "e2" in record:
        if _INLINE_TAG.search(text):
            raise ValueError(f"{where}: give inline <e1>/<e2> markers or \"e1\"/\"e2\" spans, "
                             "not both")
        if "e1" not in record or "e2" not in record:
            missing = [k for k in ("e1", "e2") if k not in record]
            raise ValueError(f"{where}: {_missing_entities(missing)}")
        e1, e2 = (_span_field(record, name, text, where) for name in ("e1", "e2"))
        _check_spans(text, e1, e2, where)
    else:
        text, e1, e2 = parse_marked(text, where)
    return RelationExample(text, e1, e2, _label(record.get("label"), where, require_label), line)


def _label(value: Any, where: str, require_label: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if require_label:
            raise ValueError(f"{where}: no label (field 'label')")
        return None
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where}: label must be a string or number, found {value!r:.40}")
    return str(value).strip()


# =========================================================================== files


def load_relation(path: str | os.PathLike, require_label: bool = True) -> list[RelationExample]:
    """Read a relation file (``.jsonl``, ``.csv`` or ``.tsv``, see the module docstring)."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() not in RELATION_FORMATS:
        raise ValueError(f"{path}: relation data must be .jsonl, .csv or .tsv")
    if data_format(path) != "jsonl":  # a text column with inline markers
        rows = load_classification(path, require_label=require_label)
        return [_table_example(row, path, require_label) for row in rows]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    examples = []
    with utf8_errors_named(path), open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                record = json_object_line(line, path, line_no)
                examples.append(relation_record(record, f"{path}:{line_no}", line_no,
                                                require_label))
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def _table_example(row, path: str, require_label: bool) -> RelationExample:
    where = f"{path}:{row.line}"
    if row.text_pair is not None:
        raise ValueError(f"{where}: a relation example is one text with marked entities, "
                         "not a text pair")
    text, e1, e2 = parse_marked(row.text, where)
    return RelationExample(text, e1, e2, _label(row.label, where, require_label), row.line)


def relation_records(records: Sequence, source: str = "records",
                     require_label: bool = True) -> list[RelationExample]:
    """The examples of in-memory ``records`` (dicts as the JSONL lines, or
    :class:`RelationExample`); a ValueError names ``source:N`` for the N-th record."""
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
        raise TypeError(f"{source} must be a list of records, got {type(records).__name__}")
    examples = []
    for n, record in enumerate(records, start=1):
        if isinstance(record, RelationExample):
            examples.append(record)
        elif isinstance(record, Mapping):
            examples.append(relation_record(record, f"{source}:{n}", n, require_label))
        else:
            raise TypeError(f"{source}:{n}: a record must be a dict, got {type(record).__name__}")
    if not examples:
        raise ValueError(f"{source} holds no examples")
    return examples


def write_relation(examples: Iterable[RelationExample], path: str) -> None:
    """Write examples as the ``.jsonl`` (character spans) :func:`load_relation` reads back."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            record = {"text": ex.text, "e1": list(ex.e1), "e2": list(ex.e2), "label": ex.label}
            f.write(json.dumps({k: v for k, v in record.items() if v is not None},
                               ensure_ascii=False) + "\n")


# =========================================================================== encoding


def marked_text(example: RelationExample, markers: Sequence[str] = MARKER_TOKENS) -> str:
    """The text with ``markers`` (start 1, end 1, start 2, end 2) around the two entities."""
    inserts = sorted([(example.e1[0], 1, markers[0]), (example.e1[1], 0, markers[1]),
                      (example.e2[0], 1, markers[2]), (example.e2[1], 0, markers[3])])
    pieces, last = [], 0
    for position, _, marker in inserts:  # at one position an end marker goes before a start
        pieces += [example.text[last:position], marker]
        last = position
    return "".join(pieces + [example.text[last:]])


def encode_relation(examples: Sequence[RelationExample], tokenizer,
                    label2id: Mapping[str, int] | None, max_length: int = 128) -> TaskDataset:
    """``[CLS] text-with-markers [SEP]`` items (``input_ids``, ``token_type_ids``, and
    ``labels`` for labelled examples); the tokenizer must hold :data:`MARKER_TOKENS`. A
    sentence longer than ``max_length`` keeps a window around both start markers (counted
    and warned about as a :class:`~bertkit.data.tasks.TruncationWarning`)."""
    missing = [t for t in MARKER_TOKENS if t not in tokenizer.vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks the entity markers {', '.join(missing)}: add "
                         "them with tokenizer.add_tokens(MARKER_TOKENS)")
    if max_length < 4:
        raise ValueError(f"max_length {max_length} leaves no room for the entity markers")
    starts = [tokenizer.vocab[E1_START], tokenizer.vocab[E2_START]]
    ids = tokenizer.encode_plain([marked_text(ex) for ex in examples])
    items, truncated = [], 0
    for ex, row in zip(examples, ids):
        first, second = sorted(row.index(token) for token in starts)
        kept = _window(row, first, second, max_length - 2)
        truncated += len(kept) < len(row)
        item = {"input_ids": [tokenizer.cls_token_id, *kept, tokenizer.sep_token_id],
                "token_type_ids": [0] * (len(kept) + 2)}
        if ex.label is not None and label2id is not None:
            if ex.label not in label2id:
                raise ValueError(f"line {ex.line}: label {ex.label!r} is not in label2id "
                                 f"({', '.join(label2id)})")
            item["labels"] = int(label2id[ex.label])
        items.append(item)
    if truncated:
        warnings.warn(f"{truncated} of {len(examples)} examples were longer than max_length="
                      f"{max_length} tokens and were truncated", TruncationWarning, stacklevel=2)
    return TaskDataset(items, num_truncated=truncated)


def _window(ids: list[int], first: int, second: int, budget: int) -> list[int]:
    """At most ``budget`` of ``ids``, keeping positions ``first`` <= ``second`` (the start
    markers): one window around both, or, when they are too far apart, the half budget from
    each."""
    if len(ids) <= budget:
        return ids
    if second - first < budget:
        slack = budget - (second - first + 1)
        start = max(0, min(first - slack // 2, len(ids) - budget))
        return ids[start:start + budget]
    half = budget // 2
    return ids[first:first + half] + ids[second:second + budget - half]


# =========================================================================== an example set

# Pure-Python standard-library modules: which module defines which class and function, and
# which class has which method, are facts the installed Python itself tells.
STDLIB_MODULES = (
    "argparse", "base64", "bisect", "calendar", "configparser", "csv", "difflib",
    "email.message", "fractions", "ftplib", "gettext", "glob", "gzip", "heapq", "http.client",
    "imaplib", "ipaddress", "json", "logging", "mailbox", "mimetypes", "pathlib", "pprint",
    "queue", "random", "sched", "shlex", "shutil", "smtplib", "statistics", "string", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "traceback", "urllib.parse", "uuid", "zipfile")
STDLIB_RELATIONS = ("class-in-module", "method-of-class", "function-in-module", "Other")
# {m} module, {c} class, {f} one of its methods: pairs (c, m) and (f, c).
_CLASS_TEMPLATES = (
    "the {m} module defines the class {c} , and {f} is one of its methods .",
    "{f} is a method of {c} , a class that comes with {m} .",
    "in {m} you will find {c} , whose method {f} is often called .")
# {f1} defined in {m1}, {f2} in {m2}: pairs (f1, m1), (f2, m2) and the unrelated (f1, m2), (f2, m1).
_FUNCTION_TEMPLATES = (
    "{f1} comes from the {m1} module , while {f2} comes from {m2} .",
    "the {m1} module provides {f1} ; the {m2} module provides {f2} .",
    "call {f1} from {m1} first , then {f2} from {m2} .")


def stdlib_relation_splits(sizes: Mapping[str, int] | None = None,
                           seed: int = 0) -> dict[str, list[RelationExample]]:
    """A relation set made from the installed standard library: template sentences that name
    a module, a class and a method (pairs ``class-in-module``, ``method-of-class``) or two
    functions with their modules (``function-in-module``, and ``Other`` for a function and
    the module that does not define it). One sentence gives two examples that differ only in
    the marked pair, so the label is in the markers, not in the words. The modules are split
    between train, dev and test (no entity of test is seen in training). ``sizes``: examples
    per split (default train 400, dev 100, test 100)."""
    sizes = dict(sizes or {"train": 400, "dev": 100, "test": 100})
    rng = random.Random(seed)
    names = sorted(STDLIB_MODULES)
    groups = {"dev": names[3::5], "test": names[4::5]}
    groups["train"] = [m for m in names if m not in groups["dev"] + groups["test"]]
    splits = {}
    for split, size in sizes.items():
        facts = _stdlib_facts(groups[split])
        examples: list[RelationExample] = []
        while len(examples) < size:
            if rng.random() < 0.5:
                module, cls, method = rng.choice(facts["methods"])
                values = {"m": module, "c": cls, "f": method}
                pairs = [("c", "m", "class-in-module"), ("f", "c", "method-of-class")]
                template = rng.choice(_CLASS_TEMPLATES)
            else:
                (m1, f1), (m2, f2) = _two_modules(rng, facts["functions"])
                values = {"m1": m1, "f1": f1, "m2": m2, "f2": f2}
                i = rng.choice("12")
                pairs = [(f"f{i}", f"m{i}", "function-in-module"),
                         (f"f{i}", f"m{3 - int(i)}", "Other")]
                template = rng.choice(_FUNCTION_TEMPLATES)
            text, spans = _fill(template, values)
            examples += [RelationExample(text, spans[a], spans[b], label, len(examples) + k + 1)
                         for k, (a, b, label) in enumerate(pairs)]
        splits[split] = examples[:size]
    return splits


def _stdlib_facts(modules: Sequence[str]) -> dict[str, list[tuple[str, ...]]]:
    """(module, function) and (module, class, method) triples of the public pure-Python
    functions, classes and methods each module defines itself."""
    facts: dict[str, list[tuple[str, ...]]] = {"functions": [], "methods": []}
    for name in modules:
        module = importlib.import_module(name)
        for attr, value in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(value, "__module__", None) != name:
                continue
            if inspect.isfunction(value):
                facts["functions"].append((name, attr))
            elif inspect.isclass(value):
                facts["methods"] += [(name, attr, method)
                                     for method, f in sorted(vars(value).items())
                                     if not method.startswith("_") and inspect.isfunction(f)]
    return facts


def _two_modules(rng: random.Random, functions: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Two (module, function) facts of different modules."""
    first = rng.choice(functions)
    return [first, rng.choice([f for f in functions if f[0] != first[0]])]


def _fill(template: str, values: Mapping[str, str]) -> tuple[str, dict[str, Span]]:
    """``template`` with its ``{name}`` fields filled, and the character span of each."""
    pieces, spans, last, length = [], {}, 0, 0
    for match in re.finditer(r"\{(\w+)\}", template):
        pieces.append(template[last:match.start()])
        length += match.start() - last
        value = values[match.group(1)]
        spans[match.group(1)] = (length, length + len(value))
        pieces.append(value)
        length += len(value)
        last = match.end()
    pieces.append(template[last:])
    return "".join(pieces), spans
