"""Pretraining data: text files → token shards → NSP / packed examples → dynamically masked batches.

The path of data::

    text files ──read_documents──▶ documents (lists of sentences)
               ──prepare_corpus──▶ shard dir: tokens_*.bin (memmaps) + index .npy + meta.json
               ──build_examples──▶ PretrainingDataset (spans into the shards; items of variable length)
               ──MlmCollator────▶ padded batch (B, T) with fresh MLM masking on every call

Legend: B = batch size, T = padded sequence length (longest item of the batch, rounded up to
``pad_to_multiple_of``), N = number of examples.

The example semantics are those of google-research/bert ``create_pretraining_data.py``
(``create_instances_from_document``) for NSP, and RoBERTa's FULL-SENTENCES packing without NSP.
Masking is dynamic (RoBERTa): it happens in the collator, so every epoch sees a new mask.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from array import array
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from bertkit.modeling.bert import IGNORE_INDEX

__all__ = [
    "LAYOUTS",
    "split_sentences",
    "detect_layout",
    "read_documents",
    "iter_corpus_text",
    "tokenizer_fingerprint",
    "corpus_key",
    "prepare_corpus",
    "load_corpus",
    "ShardIndex",
    "build_examples",
    "PretrainingDataset",
    "MlmCollator",
]

# --------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------

# Words that end with a period without ending a sentence (compared lower-case, without the final
# period). Kept short on purpose: a missed split only makes a sentence longer, a wrong split cuts
# one in two, and NSP is more sensitive to the second.
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf viz approx resp mr mrs ms dr prof sr jr st fig figs eq no nos vol al ca".split()
)
# A candidate boundary: terminal punctuation, optional closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+")
# Dotted initialisms ("e.g.", "U.S.", "a.m.") and single capital initials ("J." in "J. Smith").
_INITIALISM = re.compile(r"(?:[A-Za-z]\.){2,}|[A-Z]\.")
_OPENERS = "\"'\u201c\u2018(["


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences with a small, predictable rule.

    Whitespace (newlines included) is first collapsed to single spaces. A sentence ends at
    ``.``, ``!`` or ``?`` (a run of them, e.g. ``?!`` or ``...``), optionally followed by closing
    quotes/brackets, when whitespace follows and the next sentence starts with an upper-case
    letter or a digit (optionally after an opening quote or bracket). A period does not end a
    sentence after a common abbreviation (``e.g.``, ``i.e.``, ``etc.``, ``Mr.``, ``Dr.``, ``vs.``,
    ``cf.``, ``Fig.``, ``No.`` ...), a dotted initialism (``U.S.``, ``a.m.``) or a single capital
    initial (``J. Smith``). Decimals (``3.14``) and dotted names (``os.path.join``) never split
    because no whitespace follows their periods.

    The rule is idempotent: splitting any returned sentence again returns it unchanged, which is
    what lets ``detect_layout`` recognise a one-sentence-per-line file.

    Args:
        paragraph: any text; may contain newlines.
    Returns:
        The sentences in order, stripped; ``[]`` for blank input.
    """
    text = " ".join(paragraph.split())
    if not text:
        return []
    sentences = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        nxt = match.end()  # text is stripped, so something always follows the whitespace
        first = text[nxt]
        if first in _OPENERS and nxt + 1 < len(text):
            first = text[nxt + 1]
        if not (first.isupper() or first.isdigit()):
            continue
        punct = match.group()
        if punct[0] == "." and not punct.startswith(".."):
            word = text[text.rfind(" ", 0, match.start()) + 1 : match.start()].lstrip(_OPENERS)
            if word.lower() in _ABBREVIATIONS or _INITIALISM.fullmatch(word + "."):
                continue
        sentences.append(text[start:nxt].rstrip())
        start = nxt
    sentences.append(text[start:])
    return sentences


# --------------------------------------------------------------------------------------------
# Reading text files
# --------------------------------------------------------------------------------------------

LAYOUTS = ("auto", "bert", "paragraphs")
# A BERT-layout file has (nearly) no line that the splitter cuts in two; a file of paragraphs,
# one per line or hard-wrapped, has many (a 75-column wrap of ~120-character sentences puts a
# sentence end inside most lines). 10% leaves room for lines split by another sentence splitter.
_MULTI_SENTENCE_LINE_LIMIT = 0.10
_DETECT_LINES = 1000


def _open_text(path: Path):
    return open(path, encoding="utf-8")


def _lines(path: Path) -> Iterator[str]:
    """Yield the lines of a UTF-8 file, streaming, with a decode error that names file and line."""
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                yield line
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 near line {lineno + 1} ({e.reason})") from e


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"corpus file not found: {p}")
    if not p.is_file():
        raise ValueError(f"corpus path is not a file: {p}")
    return p


def detect_layout(path: str | os.PathLike) -> str:
    """Tell whether a text file is in BERT layout or plain paragraphs.

    Rule: among the first 1000 non-blank lines, if at most 10% hold more than one sentence by
    ``split_sentences``, the file is ``"bert"`` (one sentence per line, a blank line between
    documents); otherwise it is ``"paragraphs"`` (a paragraph per line, or paragraphs wrapped over
    several lines; documents are separated by blank lines). When every line is one sentence the
    two readings give the same documents, so the rule only has to catch the lines that differ.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no non-blank line, or is not UTF-8.
    """
    p = _check_file(path)
    seen = multi = 0
    for line in _lines(p):
        if not line.strip():
            continue
        seen += 1
        multi += len(split_sentences(line)) > 1
        if seen >= _DETECT_LINES:
            break
    if seen == 0:
        raise ValueError(f"corpus file {p} is empty (no non-blank line)")
    return "bert" if multi <= _MULTI_SENTENCE_LINE_LIMIT * seen else "paragraphs"


def read_documents(path: str | os.PathLike, layout: str = "auto") -> Iterator[list[str]]:
    """Stream the documents of a text file, each as a list of sentences.

    A document is a block of non-blank lines between blank lines. In ``"bert"`` layout each line
    is a sentence (whitespace collapsed); in ``"paragraphs"`` layout the lines of a block are
    joined and cut by ``split_sentences``, which handles both a paragraph per line and wrapped
    paragraphs. ``"auto"`` picks the layout with ``detect_layout``. The file is read line by line;
    only one document is held in memory.

    Raises (at call time, before iteration):
        FileNotFoundError: naming the missing file.
        ValueError: an empty file, an unknown layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    p = _check_file(path)
    detected = detect_layout(p)  # also rejects empty files eagerly
    return _iter_documents(p, detected if layout == "auto" else layout)


def _iter_documents(path: Path, layout: str) -> Iterator[list[str]]:
    block: list[str] = []
    for line in _lines(path):
        line = line.strip()
        if line:
            block.append(line)
        elif block:
            yield _block_sentences(block, layout)
            block = []
    if block:
        yield _block_sentences(block, layout)


def _block_sentences(block: list[str], layout: str) -> list[str]:
    if layout == "bert":
        return [" ".join(line.split()) for line in block]
    return split_sentences(" ".join(block))


def iter_corpus_text(files: str | os.PathLike | Sequence[str | os.PathLike], layout: str = "auto") -> Iterator[str]:
    """Yield every sentence of the corpus files in order (e.g. to train a vocabulary on)."""
    for path in _as_file_list(files):
        for document in read_documents(path, layout):
            yield from document


def _as_file_list(files) -> list[Path]:
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no corpus files given")
    for f in files:
        _check_file(f)
    return files


# --------------------------------------------------------------------------------------------
# Corpus → shards
# --------------------------------------------------------------------------------------------

SHARD_FORMAT = "bertkit-token-shards"
SHARD_FORMAT_VERSION = 1
META_NAME = "meta.json"
DEFAULT_SHARD_TOKENS = 1 << 26  # 128 MiB of uint16 per shard
_PROBE_TEXT = "Hello WORLD, naïve café: 3.14 ++ 東京 ##x [MASK]"
_SAMPLE_BYTES = 1 << 20


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the token ids: the vocabulary, special ids and normalisation.

    Normalisation (lower-casing, accent stripping) is not visible in the vocabulary, so the
    tokenizer's normalisation settings, where it has them, and the ids of a fixed probe sentence
    are hashed too.
    """
    settings = ("do_lower_case", "lowercase", "strip_accents", "tokenize_chinese_chars")
    payload = {
        "vocab": sorted(tokenizer.vocab.items(), key=lambda kv: kv[1]),
        "settings": {name: getattr(tokenizer, name) for name in settings if hasattr(tokenizer, name)},
        "special": _special_ids(tokenizer),
        "probe": tokenizer.encode_plain([_PROBE_TEXT])[0],
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def _special_ids(tokenizer) -> dict[str, int | None]:
    return {
        name: getattr(tokenizer, f"{name}_token_id", None) for name in ("pad", "unk", "cls", "sep", "mask")
    }


def _file_fingerprint(path: Path) -> dict[str, Any]:
    # Size and mtime catch ordinary edits; a hash of the first and last MiB guards against tools
    # that keep both. Hashing the whole file would cost a full read of a corpus that may be
    # many gigabytes, on every run.
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE_BYTES))
        if st.st_size > 2 * _SAMPLE_BYTES:
            f.seek(-_SAMPLE_BYTES, os.SEEK_END)
            h.update(f.read(_SAMPLE_BYTES))
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample_sha256": h.hexdigest()}


def corpus_key(files, tokenizer, *, layout: str = "auto", shard_tokens: int = DEFAULT_SHARD_TOKENS) -> str:
    """The cache key of a shard dir: sha256 of the input files (path, size, mtime, sampled
    content), the tokenizer fingerprint and the settings that change the output."""
    payload = {
        "format": SHARD_FORMAT,
        "version": SHARD_FORMAT_VERSION,
        "files": [_file_fingerprint(p) for p in _as_file_list(files)],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "layout": layout,
        "shard_tokens": shard_tokens,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def prepare_corpus(
    files: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer,
    out_dir: str | os.PathLike | None = None,
    *,
    cache_root: str | os.PathLike | None = None,
    layout: str = "auto",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_sentences: int = 8192,
    progress: bool = True,
) -> ShardIndex:
    """Tokenize text files into memory-mapped token shards plus a sentence/document index.

    Streams: documents are read one at a time, sentences are tokenized in batches of
    ``batch_sentences`` with ``tokenizer.encode_plain`` (the Rust ``tokenizers`` library runs a
    batch on all cores; its thread count follows ``RAYON_NUM_THREADS``), and tokens and offsets
    are appended to files as they come, so memory stays bounded for corpora larger than RAM.
    Sentences that tokenize to nothing are dropped, and documents left empty with them.

    Output directory (``out_dir``, or ``cache_root/<key[:16]>`` where the key hashes the inputs,
    see ``corpus_key``)::

        tokens_00000.bin ...     token ids, raw uint16 (vocab <= 65536) or int32, ~shard_tokens each
        sentence_offsets.npy     int64 (S+1,): sentence i = global tokens [off[i], off[i+1])
        document_offsets.npy     int64 (D+1,): document d = sentences [doc[d], doc[d+1])
        meta.json                key, vocab size and hash, special ids, files, counts, shards

    The dir is built under a temporary name and renamed into place, with ``meta.json`` written
    last, so a killed run never leaves a dir that looks complete. When the target dir already
    holds a complete build with the same key it is returned without reading the text again.

    Args:
        files: one path or a list of paths (text, UTF-8).
        tokenizer: a bertkit ``Tokenizer`` (``encode_plain``, ``vocab``, ``vocab_size``,
            ``pad/unk/cls/sep/mask_token_id``).
        out_dir / cache_root: exactly one of them.
        layout: ``"auto"`` (per file, see ``detect_layout``), ``"bert"`` or ``"paragraphs"``.
        shard_tokens: tokens per shard file (shards roll over between batches).
        progress: show a tqdm bar of bytes read, with files and tokens done.
    Returns:
        The ``ShardIndex`` of the complete dir.
    Raises:
        FileNotFoundError: a corpus file is missing. ValueError: an empty file or corpus, a bad
        setting, an ``out_dir`` that holds something other than a shard dir.
    """
    if (out_dir is None) == (cache_root is None):
        raise ValueError("prepare_corpus needs exactly one of out_dir and cache_root")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if shard_tokens < 1 or batch_sentences < 1:
        raise ValueError(f"shard_tokens and batch_sentences must be >= 1, got {shard_tokens}, {batch_sentences}")
    paths = _as_file_list(files)
    key = corpus_key(paths, tokenizer, layout=layout, shard_tokens=shard_tokens)
    target = Path(out_dir) if out_dir is not None else Path(cache_root) / key[:16]
    existing = _complete_meta(target)
    if existing is not None and existing.get("key") == key:
        return ShardIndex(target)
    if target.exists() and existing is None and any(target.iterdir()):
        raise ValueError(f"{target} exists and is not a bertkit shard dir (no {META_NAME}); refusing to overwrite it")

    layouts = [detect_layout(p) if layout == "auto" else layout for p in paths]  # fails early on empty files
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = _build_shards(paths, layouts, tokenizer, tmp, shard_tokens, batch_sentences, progress)
        meta["key"] = key
        meta["settings"] = {"layout": layout, "shard_tokens": shard_tokens}
        _write_json_atomic(tmp / META_NAME, meta)
        _move_into_place(tmp, target, key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ShardIndex(target)


def _move_into_place(tmp: Path, target: Path, key: str) -> None:
    """Rename the finished build dir ``tmp`` to ``target``.

    Another process may have built the same corpus meanwhile: a complete dir with the same key
    wins and ours is dropped. Anything else at ``target`` is our own stale build (another key)
    or an empty dir (``prepare_corpus`` refused any other content before building).
    """
    if target.exists():
        if (_complete_meta(target) or {}).get("key") == key:
            shutil.rmtree(tmp)  # another process finished the same build first
            return
        shutil.rmtree(target)
    try:
        os.rename(tmp, target)
    except OSError:
        if (_complete_meta(target) or {}).get("key") != key:
            raise
        shutil.rmtree(tmp)  # lost a race against an identical build


def _complete_meta(directory: Path) -> dict | None:
    try:
        meta = json.loads((directory / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == SHARD_FORMAT else None


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _ShardWriter:
    """Appends tokens to shard files and offsets to raw int64 files, as they come."""

    def __init__(self, directory: Path, vocab_size: int, shard_tokens: int):
        self.dir = directory
        self.vocab_size = vocab_size
        self.dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._shard = None
        self.num_tokens = self.num_sentences = self.num_documents = 0
        self._sentences = open(directory / "sentence_offsets.raw", "wb")
        self._documents = open(directory / "document_offsets.raw", "wb")
        self._doc_pending = False

    def add(self, id_lists: list[list[int]], doc_starts: list[bool]) -> int:
        """Write one batch of tokenized sentences; ``doc_starts[i]`` marks a document's first."""
        lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists))
        total = int(lengths.sum())
        if total:
            tokens = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=total)
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"tokenizer produced id {hi if hi >= self.vocab_size else lo} outside [0, vocab_size={self.vocab_size})")
            if self._shard is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._roll()
            self._shard.write(tokens.astype(self.dtype).tobytes())
            self.shards[-1]["tokens"] += total
        starts = self.num_tokens + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        kept_starts, kept_docs = [], []
        for start, n, is_doc_start in zip(starts.tolist(), lengths.tolist(), doc_starts):
            # A document whose first sentences tokenize to nothing starts at its first real one;
            # a document with no real sentence disappears (the next one carries its own flag).
            self._doc_pending |= is_doc_start
            if n == 0:
                continue
            if self._doc_pending:
                kept_docs.append(self.num_sentences + len(kept_starts))
                self._doc_pending = False
            kept_starts.append(start)
        self._sentences.write(np.asarray(kept_starts, dtype=np.int64).tobytes())
        self._documents.write(np.asarray(kept_docs, dtype=np.int64).tobytes())
        self.num_sentences += len(kept_starts)
        self.num_documents += len(kept_docs)
        self.num_tokens += total
        return total

    def _roll(self) -> None:
        if self._shard is not None:
            self._shard.close()
        name = f"tokens_{len(self.shards):05d}.bin"
        self._shard = open(self.dir / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def finish(self) -> None:
        for f in (self._shard, self._sentences, self._documents):
            if f is not None:
                f.close()
        _raw_to_npy(self.dir / "sentence_offsets.raw", self.dir / "sentence_offsets.npy", self.num_tokens)
        _raw_to_npy(self.dir / "document_offsets.raw", self.dir / "document_offsets.npy", self.num_sentences)


def _raw_to_npy(raw: Path, npy: Path, last: int, chunk: int = 1 << 22) -> None:
    """Turn a raw int64 file into a .npy with ``last`` appended, in chunks (bounded memory)."""
    n = raw.stat().st_size // 8
    out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.int64, shape=(n + 1,))
    if n:
        src = np.memmap(raw, dtype=np.int64, mode="r", shape=(n,))
        for i in range(0, n, chunk):
            stop = min(i + chunk, n)
            out[i:stop] = src[i:stop]
        del src
    out[n] = last
    out.flush()
    del out
    raw.unlink()


def _build_shards(paths, layouts, tokenizer, directory, shard_tokens, batch_sentences, progress) -> dict:
    writer = _ShardWriter(directory, int(tokenizer.vocab_size), shard_tokens)
    sizes = [p.stat().st_size for p in paths]
    files_meta = []
    bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="prepare corpus", disable=not progress)
    done_bytes = 0
    try:
        for i, (path, file_layout, size) in enumerate(zip(paths, layouts, sizes)):
            bar.set_postfix_str(f"file {i + 1}/{len(paths)} {path.name}, {writer.num_tokens:,} tokens")
            before = (writer.num_documents, writer.num_sentences, writer.num_tokens)
            batch: list[str] = []
            starts: list[bool] = []

            def flush():
                writer.add(tokenizer.encode_plain(batch), starts)
                bar.set_postfix_str(f"file {i + 1}/{len(paths)} {path.name}, {writer.num_tokens:,} tokens")
                batch.clear()
                starts.clear()

            for document in _iter_documents(path, file_layout):
                for j, sentence in enumerate(document):
                    batch.append(sentence)
                    starts.append(j == 0)
                # Bytes are approximated by characters (+1 per line break); exact at file end.
                bar.update(min(sum(len(s) + 1 for s in document) + 1, done_bytes + size - bar.n))
                if len(batch) >= batch_sentences:
                    flush()
            if batch:
                flush()
            done_bytes += size
            bar.update(done_bytes - bar.n)
            files_meta.append(
                {
                    **_file_fingerprint(path),
                    "layout": file_layout,
                    "documents": writer.num_documents - before[0],
                    "sentences": writer.num_sentences - before[1],
                    "tokens": writer.num_tokens - before[2],
                }
            )
    finally:
        bar.close()
    writer.finish()
    if writer.num_tokens == 0:
        raise ValueError(f"the corpus {[str(p) for p in paths]} has no tokens after tokenization")
    return {
        "format": SHARD_FORMAT,
        "version": SHARD_FORMAT_VERSION,
        "vocab_size": int(tokenizer.vocab_size),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "special_token_ids": _special_ids(tokenizer),
        "dtype": writer.dtype.name,
        "num_documents": writer.num_documents,
        "num_sentences": writer.num_sentences,
        "num_tokens": writer.num_tokens,
        "shards": writer.shards,
        "files": files_meta,
    }


class ShardIndex:
    """Read access to a prepared shard dir; everything large stays memory-mapped.

    Attributes:
        directory, meta (the parsed meta.json), vocab_size, num_documents, num_sentences,
        num_tokens, sentence_offsets (S+1,) int64, document_offsets (D+1,) int64,
        special_token_ids (dict: pad/unk/cls/sep/mask -> id).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        meta = _complete_meta(self.directory)
        if meta is None:
            raise FileNotFoundError(f"{self.directory} is not a complete shard dir (no valid {META_NAME})")
        if meta.get("version") != SHARD_FORMAT_VERSION:
            raise ValueError(f"{self.directory / META_NAME}: shard format version {meta.get('version')}, expected {SHARD_FORMAT_VERSION}")
        self.meta = meta
        self.vocab_size = int(meta["vocab_size"])
        self.num_documents = int(meta["num_documents"])
        self.num_sentences = int(meta["num_sentences"])
        self.num_tokens = int(meta["num_tokens"])
        self.special_token_ids = dict(meta["special_token_ids"])
        self.dtype = np.dtype(meta["dtype"])
        self.sentence_offsets = np.load(self.directory / "sentence_offsets.npy", mmap_mode="r")
        self.document_offsets = np.load(self.directory / "document_offsets.npy", mmap_mode="r")
        counts = [int(s["tokens"]) for s in meta["shards"]]
        self._shard_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._shards: dict[int, np.memmap] = {}

    def __getstate__(self):
        # DataLoader workers (spawn) get the path and reopen the memmaps; pickling them would
        # copy the whole index into every worker.
        return {"directory": str(self.directory)}

    def __setstate__(self, state):
        self.__init__(state["directory"])

    def _shard(self, k: int) -> np.memmap:
        if k not in self._shards:
            name = self.meta["shards"][k]["file"]
            n = int(self._shard_offsets[k + 1] - self._shard_offsets[k])
            self._shards[k] = np.memmap(self.directory / name, dtype=self.dtype, mode="r", shape=(n,))
        return self._shards[k]

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Global token positions [start, end) as an int64 array (crossing shards if needed)."""
        if not 0 <= start <= end <= self.num_tokens:
            raise IndexError(f"token range [{start}, {end}) outside [0, {self.num_tokens})")
        k = int(np.searchsorted(self._shard_offsets, start, side="right")) - 1
        pieces = []
        while start < end:
            lo = int(self._shard_offsets[k])
            stop = min(end, int(self._shard_offsets[k + 1]))
            pieces.append(np.asarray(self._shard(k)[start - lo : stop - lo], dtype=np.int64))
            start, k = stop, k + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces) if pieces else np.zeros(0, np.int64)

    def sentence(self, i: int) -> np.ndarray:
        """Token ids of sentence ``i`` (global index), int64."""
        return self.tokens(int(self.sentence_offsets[i]), int(self.sentence_offsets[i + 1]))

    def document_sentences(self, d: int) -> range:
        """Global sentence indices of document ``d``."""
        return range(int(self.document_offsets[d]), int(self.document_offsets[d + 1]))

    def document(self, d: int) -> list[np.ndarray]:
        """The sentences of document ``d`` as token id arrays."""
        return [self.sentence(i) for i in self.document_sentences(d)]

    def __repr__(self) -> str:
        return (
            f"ShardIndex({str(self.directory)!r}, documents={self.num_documents:,}, "
            f"sentences={self.num_sentences:,}, tokens={self.num_tokens:,})"
        )


def load_corpus(directory: str | os.PathLike) -> ShardIndex:
    """Open a shard dir written by ``prepare_corpus``; FileNotFoundError if it is not complete."""
    return ShardIndex(directory)


# --------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------


def _truncation_counts(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """How many tokens BERT's ``truncate_seq_pair`` removes from A and from B.

    The original removes one token at a time from the longer segment (B on ties) until the pair
    fits. Which segment loses a token depends only on the lengths, so the counts have a closed
    form: cut the longer one down to the shorter, then alternate starting with B.
    """
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return 0, 0
    gap = abs(len_a - len_b)
    first = min(excess, gap)
    rest = excess - first
    cut_a, cut_b = (first, 0) if len_a > len_b else (0, first)
    return cut_a + rest // 2, cut_b + (rest + 1) // 2


def build_examples(
    corpus: ShardIndex,
    max_seq_length: int,
    *,
    short_seq_prob: float = 0.1,
    nsp: bool = True,
    seed: int = 0,
    dupe_factor: int = 1,
) -> PretrainingDataset:
    """Cut a prepared corpus into pretraining examples (stored as spans, not token lists).

    With ``nsp=True``: the sentence-pair examples of BERT's ``create_instances_from_document``
    (see ``_nsp_spans``); ``[CLS] A [SEP] B [SEP]`` with token types 0 for ``[CLS] A [SEP]`` and 1
    for ``B [SEP]``; label 0 = B is the real continuation (IsNext), 1 = B is random (NotNext).
    With ``nsp=False``: RoBERTa FULL-SENTENCES packing (see ``_packed_spans``).

    Args:
        corpus: a ``ShardIndex`` (needs >= 2 documents for NSP).
        max_seq_length: the longest example, special tokens included.
        short_seq_prob: NSP only; probability that a document's target length is drawn
            uniformly from [2, max_seq_length - 3] instead of the maximum.
        seed: examples are a pure function of (corpus, settings, seed).
        dupe_factor: NSP only; passes over the corpus, each cutting documents differently
            (BERT used 10 with static masks; with dynamic masking 1 is the usual choice).
    Returns:
        A ``PretrainingDataset`` in corpus order (shuffling is the sampler's job).
    """
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor must be >= 1, got {dupe_factor}")
    if nsp:
        if max_seq_length < 5:
            raise ValueError(f"max_seq_length must be >= 5 with NSP ([CLS] A [SEP] B [SEP]), got {max_seq_length}")
        if corpus.num_documents < 2:
            raise ValueError(f"NSP needs at least 2 documents to draw random segments from; {corpus.directory} has {corpus.num_documents}")
        spans, labels = _nsp_spans(corpus, max_seq_length, short_seq_prob, seed, dupe_factor)
    else:
        if max_seq_length < 3:
            raise ValueError(f"max_seq_length must be >= 3 ([CLS] x [SEP]), got {max_seq_length}")
        spans, labels = _packed_spans(corpus, max_seq_length), None
    return PretrainingDataset(corpus, spans, labels, max_seq_length)


def _nsp_spans(corpus: ShardIndex, max_seq_length: int, short_seq_prob: float, seed: int, dupe_factor: int):
    """All NSP examples: spans int64 (N, 4) [a_start, a_end, b_start, b_end], labels int8 (N,).

    ``dupe_factor`` passes over the documents in order, one random stream (``seed``) for all of
    them; ``_document_nsp_pairs`` cuts one document.
    """
    rng = np.random.default_rng(seed)
    max_num_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP] take 3 positions
    spans, labels = array("q"), array("b")
    for _ in range(dupe_factor):
        for document in range(corpus.num_documents):
            for span, is_random in _document_nsp_pairs(corpus, document, max_num_tokens, short_seq_prob, rng):
                spans.extend(span)
                labels.append(is_random)
    return np.frombuffer(spans, dtype=np.int64).reshape(-1, 4).copy(), np.frombuffer(labels, dtype=np.int8).copy()


def _document_nsp_pairs(corpus: ShardIndex, document: int, max_num_tokens: int, short_seq_prob: float, rng):
    """Yield ``((a_start, a_end, b_start, b_end), is_random)`` for one document, in order.

    BERT's ``create_instances_from_document``: gather whole sentences into a chunk until it
    reaches the target length (or the document ends), split the chunk into A and B, truncate
    the pair to ``max_num_tokens``, start the next chunk. Spans are global token positions.
    """
    sentences = corpus.document_sentences(document)
    # Token offsets within the document: local sentence s is tokens [offsets[s], offsets[s + 1]).
    offsets = corpus.sentence_offsets[sentences.start : sentences.stop + 1].tolist()
    num_sentences = len(sentences)
    target = _nsp_target_length(max_num_tokens, short_seq_prob, rng)
    chunk_start = 0
    while chunk_start < num_sentences:
        # Segments are whole sentences, so NSP asks about real discourse continuity and the
        # model does not learn to predict the break from a cut mid-sentence.
        chunk_end = _sentences_reaching(offsets, chunk_start, num_sentences, target)
        chunk_size = chunk_end - chunk_start
        # A is a random-length prefix of the chunk (at least one sentence, leaving at least one
        # for B) so segment lengths vary.
        a_end = chunk_start + (1 if chunk_size < 2 else int(rng.integers(1, chunk_size)))
        a = (offsets[chunk_start], offsets[a_end])
        next_start = chunk_end
        if chunk_size == 1 and chunk_start > 0 and rng.random() < 0.5:
            # A lone sentence (a long one, or a document's tail left by a put-back) has no
            # continuation inside its chunk, and the original then always makes it NotNext: on
            # corpora of short documents that pushes IsNext far below one half (38% on the
            # default corpus). Deviation from the original: half the time it is B after the
            # sentence before it as A, a real continuation, so IsNext stays at ~50%.
            is_random = 0
            a, b = (offsets[chunk_start - 1], offsets[chunk_start]), (offsets[chunk_start], offsets[chunk_end])
        elif chunk_size == 1 or rng.random() < 0.5:
            is_random = 1
            b = _random_segment(corpus, document, target - (a[1] - a[0]), rng)
            # The chunk's sentences not used by A are "put back": the next chunk starts right
            # after A, so no text of the document is wasted.
            next_start = a_end
        else:
            is_random = 0
            b = (a[1], offsets[chunk_end])
        yield _truncate_pair(a, b, max_num_tokens, rng), is_random
        chunk_start = next_start


def _nsp_target_length(max_num_tokens: int, short_seq_prob: float, rng) -> int:
    """The chunk length one document aims for (drawn once per document, as in the original).

    Pretraining mostly sees full-length sequences (the model is cheap to train on them and they
    carry the most context), but fine-tuning inputs are often short, so a fraction of documents
    aim for a random shorter length to avoid a train/test mismatch.
    """
    if rng.random() < short_seq_prob:
        return int(rng.integers(2, max_num_tokens + 1))
    return max_num_tokens


def _sentences_reaching(offsets: Sequence[int], first: int, stop: int, min_tokens: int) -> int:
    """The end (exclusive) of the shortest run of sentences from ``first`` that holds at least
    ``min_tokens`` tokens; ``stop`` when even all sentences up to ``stop`` hold fewer. The run
    has at least one sentence. ``offsets[s]`` is the first token of sentence ``s``."""
    end = first + 1
    while end < stop and offsets[end] - offsets[first] < min_tokens:
        end += 1
    return end


def _random_segment(corpus: ShardIndex, document: int, min_tokens: int, rng) -> tuple[int, int]:
    """B for a NotNext example: whole sentences from a random point of another document, until
    ``min_tokens`` tokens or that document's end. Returns the global token span."""
    # Never the same document: a "random" B from A's own document would often be a true
    # continuation and teach the model a wrong label.
    other = int(rng.integers(0, corpus.num_documents - 1))
    other += other >= document
    sentences = corpus.document_sentences(other)
    start = int(rng.integers(sentences.start, sentences.stop))
    end = _sentences_reaching(corpus.sentence_offsets, start, sentences.stop, min_tokens)
    return int(corpus.sentence_offsets[start]), int(corpus.sentence_offsets[end])


def _truncate_pair(a: tuple[int, int], b: tuple[int, int], max_num_tokens: int, rng) -> tuple[int, int, int, int]:
    """Cut spans A and B to ``max_num_tokens`` together (BERT's ``truncate_seq_pair``).

    Each removed token comes from the front or the back at random: always cutting the end
    would bias which words sit next to [SEP].
    """
    cut_a, cut_b = _truncation_counts(a[1] - a[0], b[1] - b[0], max_num_tokens)
    front_a = int(rng.binomial(cut_a, 0.5)) if cut_a else 0
    front_b = int(rng.binomial(cut_b, 0.5)) if cut_b else 0
    return a[0] + front_a, a[1] - (cut_a - front_a), b[0] + front_b, b[1] - (cut_b - front_b)


def _packed_spans(corpus: ShardIndex, max_seq_length: int) -> np.ndarray:
    """RoBERTa FULL-SENTENCES: contiguous whole sentences, crossing documents, up to the budget.

    Packing leaves almost no padding (every sequence is nearly full), which is why RoBERTa
    preferred it once NSP was dropped. A document boundary inside a sequence costs one [SEP]
    (inserted when the item is materialised) so the model can see where the topic changes. A
    sentence longer than the budget is cut into budget-sized pieces rather than dropped.
    """
    budget = max_seq_length - 2  # [CLS] ... [SEP]
    sent_off = corpus.sentence_offsets
    doc_off = np.asarray(corpus.document_offsets)
    out_start, out_end = array("q"), array("q")
    cur_start = cur_end = cur_len = -1
    for d in range(corpus.num_documents):
        s0, s1 = int(doc_off[d]), int(doc_off[d + 1])
        starts = sent_off[s0 : s1 + 1].tolist()
        for j in range(s1 - s0):
            lo, length = starts[j], starts[j + 1] - starts[j]
            cost = length + (1 if j == 0 and cur_len > 0 else 0)  # the [SEP] between documents
            if cur_len > 0 and cur_len + cost > budget:
                out_start.append(cur_start)
                out_end.append(cur_end)
                cur_len = 0
            if cur_len <= 0:
                while length > budget:
                    out_start.append(lo)
                    out_end.append(lo + budget)
                    lo, length = lo + budget, length - budget
                cur_start, cur_end, cur_len = lo, lo + length, length
            else:
                cur_end, cur_len = starts[j + 1], cur_len + cost
    if cur_len > 0:
        out_start.append(cur_start)
        out_end.append(cur_end)
    return np.stack([np.frombuffer(out_start, dtype=np.int64), np.frombuffer(out_end, dtype=np.int64)], axis=1).reshape(-1, 2)


class PretrainingDataset(Dataset):
    """Pretraining examples as spans into a ``ShardIndex``; tokens are read in ``__getitem__``.

    Each example costs 5 numbers (NSP) or 2 (packing), so millions fit in memory.

    Attributes:
        corpus: the ``ShardIndex``. nsp: whether items carry a next-sentence label.
        spans: int64 (N, 4) global token spans [a_start, a_end, b_start, b_end] with NSP, or
            (N, 2) [start, end] without. next_sentence_labels: int8 (N,) or None.
        max_seq_length: the bound every item respects.

    Item ``i`` is a dict of LongTensors of length T_i <= max_seq_length::

        input_ids        (T_i,)  [CLS] A [SEP] B [SEP]   or   [CLS] x ... [SEP] y ... [SEP]
        token_type_ids   (T_i,)  0 on [CLS] A [SEP], 1 on B [SEP]; all 0 without NSP
        next_sentence_label ()   0 = IsNext, 1 = NotNext (NSP only)
    """

    def __init__(self, corpus: ShardIndex, spans: np.ndarray, next_sentence_labels: np.ndarray | None, max_seq_length: int):
        self.corpus = corpus
        self.spans = spans
        self.next_sentence_labels = next_sentence_labels
        self.nsp = next_sentence_labels is not None
        self.max_seq_length = max_seq_length
        special = corpus.special_token_ids
        if special.get("cls") is None or special.get("sep") is None:
            raise ValueError(f"{corpus.directory}: the tokenizer had no [CLS]/[SEP] ids")
        self.cls_id, self.sep_id = int(special["cls"]), int(special["sep"])
        # Token offset of each document's first token: where packed items get a [SEP].
        self._doc_token_starts = np.asarray(corpus.sentence_offsets)[np.asarray(corpus.document_offsets)[:-1]]

    def __len__(self) -> int:
        return len(self.spans)

    @property
    def lengths(self) -> np.ndarray:
        """Item lengths T_i, int64 (N,) (e.g. for length-grouped batching)."""
        if self.nsp:
            return self.spans[:, 1] - self.spans[:, 0] + self.spans[:, 3] - self.spans[:, 2] + 3
        s, e = self.spans[:, 0], self.spans[:, 1]
        inner = np.searchsorted(self._doc_token_starts, e, side="left") - np.searchsorted(self._doc_token_starts, s, side="right")
        return e - s + inner + 2

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.nsp:
            a0, a1, b0, b1 = (int(x) for x in self.spans[i])
            a, b = self.corpus.tokens(a0, a1), self.corpus.tokens(b0, b1)
            ids = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]])
            types = np.zeros(len(ids), dtype=np.int64)
            types[len(a) + 2 :] = 1
            return {
                "input_ids": torch.from_numpy(ids.astype(np.int64)),
                "token_type_ids": torch.from_numpy(types),
                "next_sentence_label": torch.tensor(int(self.next_sentence_labels[i]), dtype=torch.long),
            }
        s, e = (int(x) for x in self.spans[i])
        body = self.corpus.tokens(s, e)
        # Documents starting strictly inside the span get a [SEP] in front of them.
        lo, hi = np.searchsorted(self._doc_token_starts, [s + 1, e], side="left")
        if hi > lo:
            body = np.insert(body, self._doc_token_starts[lo:hi] - s, self.sep_id)
        ids = np.concatenate([[self.cls_id], body, [self.sep_id]]).astype(np.int64)
        return {"input_ids": torch.from_numpy(ids), "token_type_ids": torch.zeros(len(ids), dtype=torch.long)}


# --------------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------------

# BERT's split of the chosen positions: 80% [MASK], 10% random token, 10% unchanged. The random
# and unchanged tokens keep the model from learning that only [MASK] positions matter, since
# [MASK] never appears at fine-tuning time.
MASK_REPLACE_PROB = 0.8
MASK_RANDOM_PROB = 0.1


class MlmCollator:
    """Pad a list of items into a batch and apply dynamic masked-language-model masking.

    Masking is drawn fresh on every call (RoBERTa's dynamic masking: each epoch sees a new mask)
    from ``generator``, or from the global torch RNG when it is None. The RNG consumption depends
    only on the batch shape, so a Trainer that restores the RNG state on resume reproduces the
    masks exactly, provided the collator runs in the main process (DataLoader ``num_workers=0``,
    or workers that do not collate).

    Selection: the candidates of a sequence are its non-padding tokens except the special tokens
    ([CLS], [SEP], [PAD], [MASK]). [UNK] is a candidate by default, as in the original BERT
    (``mask_unk=False`` excludes it). Exactly ``max(1, round(mask_prob * n_candidates))``
    positions are chosen per sequence (capped by ``max_predictions``), as the original BERT does,
    rather than a Bernoulli draw per token: a fixed count keeps the number of predictions, and
    so the loss scale and the MLM head's work, steady across sequences. Of the chosen positions
    80% become [MASK], 10% a random non-special token, 10% stay unchanged (independently per
    token).

    Whole-word masking: a word is a token plus its following ``##`` continuation pieces; words
    are drawn in random order and taken while the running token count stays within the target
    (at least one word), so a word is masked entirely or not at all. This masks slightly fewer
    than ``mask_prob`` on average (less than one word per sequence).

    Call with a list of items (dicts with ``input_ids``, optional ``token_type_ids`` and
    ``next_sentence_label``; tensors or lists). Returns LongTensors::

        input_ids       (B, T)  masked ids, padded with [PAD]
        token_type_ids  (B, T)  padded with 0
        attention_mask  (B, T)  1 on real tokens, 0 on padding
        labels          (B, T)  the original id at chosen positions, -100 elsewhere
        next_sentence_label (B,)  when every item has one
    """

    def __init__(
        self,
        tokenizer,
        mask_prob: float = 0.15,
        whole_word_mask: bool = False,
        pad_to_multiple_of: int | None = None,
        *,
        max_predictions: int | None = None,
        mask_unk: bool = True,
        generator: torch.Generator | None = None,
    ):
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        if max_predictions is not None and max_predictions < 1:
            raise ValueError(f"max_predictions must be >= 1, got {max_predictions}")
        for name in ("pad_token_id", "mask_token_id"):
            if getattr(tokenizer, name, None) is None:
                raise ValueError(f"the tokenizer has no {name}; MLM masking needs it")
        self.mask_prob = mask_prob
        self.whole_word_mask = whole_word_mask
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_predictions = max_predictions
        self.generator = generator
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.mask_token_id = int(tokenizer.mask_token_id)
        vocab_size = max(int(tokenizer.vocab_size), max(tokenizer.vocab.values()) + 1)
        self.vocab_size = vocab_size
        special = {int(i) for i in tokenizer.all_special_ids}
        special |= {self.pad_token_id, self.mask_token_id}
        unk = getattr(tokenizer, "unk_token_id", None)
        never = set(special)
        if mask_unk and unk is not None:
            never.discard(int(unk))
        self._never_chosen = torch.zeros(vocab_size, dtype=torch.bool)
        self._never_chosen[sorted(never)] = True
        # Random replacements come from ordinary tokens: a random [CLS] or [SEP] mid-sequence
        # would be a signal the model never meets in real input.
        self._replacement_ids = torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)
        self._is_continuation = torch.zeros(vocab_size, dtype=torch.bool)
        for token, i in tokenizer.vocab.items():
            if token.startswith("##") and len(token) > 2:
                self._is_continuation[i] = True

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("MlmCollator got an empty list of items")
        ids_list = [torch.as_tensor(it["input_ids"], dtype=torch.long) for it in items]
        B = len(ids_list)
        T = max(len(x) for x in ids_list)
        if self.pad_to_multiple_of:
            T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)  # (B, T)
        token_type_ids = torch.zeros((B, T), dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
        for b, (ids, item) in enumerate(zip(ids_list, items)):
            n = len(ids)
            input_ids[b, :n] = ids
            attention_mask[b, :n] = 1
            if item.get("token_type_ids") is not None:
                token_type_ids[b, :n] = torch.as_tensor(item["token_type_ids"], dtype=torch.long)
        if int(input_ids.max()) >= self.vocab_size or int(input_ids.min()) < 0:
            bad = int(input_ids.max()) if int(input_ids.max()) >= self.vocab_size else int(input_ids.min())
            raise ValueError(f"input_ids holds id {bad}, outside the tokenizer's vocabulary [0, {self.vocab_size})")
        input_ids, labels = self.mask_tokens(input_ids, attention_mask)
        batch = {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "labels": labels,
        }
        if all(it.get("next_sentence_label") is not None for it in items):
            batch["next_sentence_label"] = torch.stack(
                [torch.as_tensor(it["next_sentence_label"], dtype=torch.long).reshape(()) for it in items]
            )  # (B,)
        return batch

    def choose(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The positions to predict: bool (B, T). Consumes one (B, T) uniform draw."""
        candidates = attention_mask.bool() & ~self._never_chosen[input_ids]  # (B, T)
        n_candidates = candidates.sum(1)  # (B,)
        target = torch.round(n_candidates.double() * self.mask_prob).long().clamp(min=1)
        target = torch.where(n_candidates > 0, target, torch.zeros_like(target))  # (B,)
        if self.max_predictions is not None:
            target = target.clamp(max=self.max_predictions)
        scores = torch.rand(input_ids.shape, generator=self.generator)  # (B, T)
        if not self.whole_word_mask:
            # Random ranks among candidates: the target count with the smallest scores.
            scores = scores.masked_fill(~candidates, 2.0)
            rank = scores.argsort(1).argsort(1)  # (B, T)
            return (rank < target[:, None]) & candidates

        B, T = input_ids.shape
        prev_candidate = torch.nn.functional.pad(candidates[:, :-1], (1, 0), value=False)  # (B, T)
        # A '##' piece continues the word before it, unless nothing maskable precedes it (a
        # segment that truncation cut mid-word): then it is a word of its own.
        word_start = candidates & ~(self._is_continuation[input_ids] & prev_candidate)  # (B, T)
        word_id = (word_start.cumsum(1) - 1).clamp(min=0)  # (B, T), meaningful on candidates
        n_words = word_start.sum(1)  # (B,)
        slots = torch.arange(T)[None, :]  # word slots 0..T-1, (1, T)
        word_len = torch.zeros((B, T), dtype=torch.long).scatter_add_(1, word_id, candidates.long())  # (B, T)
        # The scores of the first n_words slots give a random order of the words.
        order = scores.masked_fill(slots >= n_words[:, None], 2.0).argsort(1)  # (B, T)
        covered = word_len.gather(1, order).cumsum(1)  # tokens covered after taking k+1 words
        take = (covered <= target[:, None]) & (slots < n_words[:, None])  # (B, T), in order
        take[:, 0] |= n_words > 0  # at least one word, even one longer than the target
        chosen_word = torch.zeros((B, T), dtype=torch.bool).scatter_(1, order, take)  # (B, T) by word id
        return chosen_word.gather(1, word_id) & candidates

    def mask_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a padded batch: returns (masked input_ids (B, T), labels (B, T) with -100)."""
        chosen = self.choose(input_ids, attention_mask)  # (B, T)
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        u = torch.rand(input_ids.shape, generator=self.generator)  # (B, T)
        random_ids = self._replacement_ids[
            torch.randint(len(self._replacement_ids), input_ids.shape, generator=self.generator)
        ]  # (B, T)
        to_mask = chosen & (u < MASK_REPLACE_PROB)
        to_random = chosen & (u >= MASK_REPLACE_PROB) & (u < MASK_REPLACE_PROB + MASK_RANDOM_PROB)
        masked = torch.where(to_mask, torch.full_like(input_ids, self.mask_token_id), input_ids)
        masked = torch.where(to_random, random_ids, masked)
        return masked, labels
