"""WordPiece tokenizer with the BERT rules, on the Rust `tokenizers` engine.

The pipeline is the one of the original BERT ``FullTokenizer``:

1. normalise: clean text (drop control characters, map whitespace to spaces), put spaces around
   CJK characters, lowercase and strip accents when ``do_lower_case`` (``strip_accents``
   overrides the accent rule either way);
2. pre-tokenise: split on whitespace and punctuation;
3. WordPiece: greedy longest-match-first sub-words with the ``##`` continuation prefix; a word
   longer than 100 characters, or one with no match, becomes ``[UNK]``;
4. add ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with token types 0 / 1.

The special tokens are registered with the engine so that ``"[MASK]"`` typed in a text is one
token and is never lowercased or split.
"""

from __future__ import annotations

import json
import os
import re
import string
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Engine
from tokenizers.models import WordPiece

from bertkit.jsonfile import read_json_object

VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
TOKENIZER_JSON_NAME = "tokenizer.json"

DEFAULT_SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
# The original BERT rule: longer words are almost always noise (URLs, hashes) and would make
# WordPiece's greedy match quadratic.
MAX_INPUT_CHARS_PER_WORD = 100

_TRUNCATION_STRATEGIES = {True: "longest_first", "longest_first": "longest_first",
                          "only_second": "only_second", "only_first": "only_first"}
# One engine per truncation/padding setting: an engine's settings are object state, so engines
# are configured once and never changed after, which lets threads encode at the same time (the
# Rust encode releases the GIL) without a lock around it. A server uses one or two settings.
_MAX_SETTINGS_ENGINES = 16

# With truncation on, a text longer than this many characters per token it may keep is cut
# before encoding (English averages about 5; a cut that proves too short is widened).
_CHARS_PER_TOKEN_GUESS = 8
# Positions before which a text can be cut without changing any token before the cut: under the
# BERT rules an ASCII space or punctuation character and (when CJK characters are split) a CJK
# ideograph always start a new word, and none of them is a combining mark, so neither Unicode
# normalisation nor word splitting looks across them. Other splitting characters exist; these
# are enough to cut real text quickly.
_CJK_RANGES = ("\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df"
               "\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f")
_ASCII_CUTS = " \t\n\r" + re.escape(string.punctuation)
_CUT_BEFORE = re.compile(f"[{_ASCII_CUTS}]")
_CUT_BEFORE_WITH_CJK = re.compile(f"[{_ASCII_CUTS}{_CJK_RANGES}]")
# Characters per chunk when a whole long text must be counted (see _first_has_more_tokens).
_COUNT_CHUNK_CHARS = 1 << 16


class Encoding(dict):
    """The output of :meth:`Tokenizer.__call__`: a dict of ``input_ids``, ``token_type_ids``,
    ``attention_mask`` (and ``offset_mapping`` / ``special_tokens_mask`` when asked), each of
    shape (B, T) as a LongTensor or as lists, plus per-example word and sequence indices."""

    def __init__(self, data: dict[str, Any], encodings: list[Any]):
        super().__init__(data)
        self._encodings = encodings

    def word_ids(self, index: int = 0) -> list[int | None]:
        """For each token of example ``index``: the index of the word it came from within its
        sequence (``None`` for special and padding tokens)."""
        return list(self._encodings[index].word_ids)

    def sequence_ids(self, index: int = 0) -> list[int | None]:
        """For each token: 0 for the first text, 1 for the pair text, ``None`` for special tokens."""
        return list(self._encodings[index].sequence_ids)

    def tokens(self, index: int = 0) -> list[str]:
        return list(self._encodings[index].tokens)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Tokenizer:
    """A BERT WordPiece tokenizer.

    Build one with :meth:`from_pretrained` (a folder with ``vocab.txt``), :meth:`from_vocab`
    (a token list) or :meth:`train` (a corpus).
    """

    def __init__(self, vocab: Sequence[str] | dict[str, int], *, do_lower_case: bool = True,
                 strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                 model_max_length: int = 512, special_tokens: dict[str, str] | None = None):
        if isinstance(vocab, dict):
            self.vocab = dict(vocab)
            self._ids_to_tokens = {i: t for t, i in self.vocab.items()}
        else:
            self.vocab, self._ids_to_tokens = {}, {}
            for index, token in enumerate(vocab):
                self.vocab[token] = index  # a repeated line keeps its last id, as HF does
                self._ids_to_tokens[index] = token  # ... but every line keeps its id
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = model_max_length
        self.special_tokens = dict(DEFAULT_SPECIAL_TOKENS)
        self.special_tokens.update(special_tokens or {})
        missing = [tok for tok in self.special_tokens.values() if tok not in self.vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks the special token(s) {', '.join(missing)}; a "
                             f"BERT vocab needs {', '.join(self.special_tokens.values())}")
        # The plain engine never truncates nor pads and is never reconfigured: tokenize(),
        # encode_plain() and decode() use it, and no call can change what another gets.
        self._engine = self._build_engine()
        self._settings_engines: dict[tuple[Any, ...], _Engine] = {}
        self._settings_lock = threading.Lock()  # held only to look up or add an engine

    def __getstate__(self) -> dict[str, Any]:
        # A lock cannot be pickled (DataLoader workers started with "spawn", deepcopy); the
        # per-setting engines are rebuilt on demand.
        state = dict(self.__dict__)
        del state["_settings_lock"], state["_settings_engines"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._settings_engines = {}
        self._settings_lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    def _build_engine(self) -> _Engine:
        engine = _Engine(WordPiece(self.vocab, unk_token=self.special_tokens["unk_token"],
                                   max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
                                   continuing_subword_prefix="##"))
        engine.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=self.tokenize_chinese_chars,
            strip_accents=self.strip_accents, lowercase=self.do_lower_case)
        engine.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls, sep = self.special_tokens["cls_token"], self.special_tokens["sep_token"]
        engine.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, self.vocab[cls]), (sep, self.vocab[sep])])
        engine.decoder = decoders.WordPiece(prefix="##")
        engine.add_special_tokens([AddedToken(tok, special=True, normalized=False)
                                   for tok in self.special_tokens.values()])
        return engine

    @classmethod
    def from_vocab(cls, tokens: Sequence[str], **kwargs: Any) -> "Tokenizer":
        return cls(list(tokens), **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "Tokenizer":
        """Load ``folder/vocab.txt`` with the settings of ``tokenizer_config.json`` and
        ``special_tokens_map.json`` when they are present (BERT defaults otherwise)."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        vocab_path = os.path.join(folder, VOCAB_NAME)
        json_path = os.path.join(folder, TOKENIZER_JSON_NAME)
        tokens: list[str] | dict[str, int]
        if os.path.isfile(vocab_path):
            with open(vocab_path, encoding="utf-8") as f:
                tokens = [line.rstrip("\n").rstrip("\r") for line in f]
            while tokens and tokens[-1] == "":
                tokens.pop()  # a trailing newline is not a token
            if not tokens:
                raise ValueError(f"{vocab_path} is empty")
        elif os.path.isfile(json_path):
            # transformers 5 saves tokenizer.json without vocab.txt.
            vocab_path = json_path
            model = _read_json(json_path).get("model") or {}
            if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
                raise ValueError(f"{json_path} does not hold a WordPiece model with a vocab")
            tokens = model["vocab"]
        else:
            raise FileNotFoundError(f"{folder} has no {VOCAB_NAME} (nor {TOKENIZER_JSON_NAME}); a "
                                    f"bertkit/BERT tokenizer folder holds one token per line in "
                                    f"{VOCAB_NAME}")

        settings = _read_json(os.path.join(folder, TOKENIZER_CONFIG_NAME))
        special_tokens = {}
        for source in (settings, _read_json(os.path.join(folder, SPECIAL_TOKENS_MAP_NAME))):
            for key in DEFAULT_SPECIAL_TOKENS:
                value = source.get(key)
                if isinstance(value, dict):  # {"content": "[PAD]", "lstrip": false, ...}
                    value = value.get("content")
                if isinstance(value, str):
                    special_tokens[key] = value
        max_length = settings.get("model_max_length", 512)
        if not isinstance(max_length, int) or max_length > 1_000_000:
            max_length = 512  # HF writes a huge sentinel when no limit was set
        try:
            return cls(tokens, do_lower_case=settings.get("do_lower_case", True),
                       strip_accents=settings.get("strip_accents"),
                       tokenize_chinese_chars=settings.get("tokenize_chinese_chars", True),
                       model_max_length=max_length, special_tokens=special_tokens)
        except ValueError as e:
            raise ValueError(f"{vocab_path}: {e}") from None

    @classmethod
    def train(cls, files_or_iterator: str | os.PathLike | Iterable[str], vocab_size: int = 30522,
              lowercase: bool = True, min_frequency: int = 2, model_max_length: int = 512,
              show_progress: bool = True) -> "Tokenizer":
        """Train a WordPiece vocabulary on text files (paths) or an iterator of strings.

        The special tokens take ids 0-4 ([PAD] [UNK] [CLS] [SEP] [MASK]); the rest of the vocab
        is every character seen, then the most useful merges up to ``vocab_size``.
        """
        if vocab_size < len(DEFAULT_SPECIAL_TOKENS) + 1:
            raise ValueError(f"vocab_size must be above {len(DEFAULT_SPECIAL_TOKENS)}, got {vocab_size}")
        special = list(DEFAULT_SPECIAL_TOKENS.values())
        # Train an engine with the same normaliser and pre-tokeniser the result will use, so the
        # vocab is learned on exactly the words it will later see.
        seed = {tok: i for i, tok in enumerate(special)}
        engine = cls(seed, do_lower_case=lowercase)._engine
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=special, continuing_subword_prefix="##",
                                            show_progress=show_progress)
        files = _corpus_files(files_or_iterator)
        if files is not None:
            try:
                engine.train(files, trainer)
            except Exception:  # the engine says "stream did not contain valid UTF-8", no file
                for path in files:
                    _check_utf8_file(path)
                raise
        else:
            engine.train_from_iterator(files_or_iterator, trainer)
        vocab = engine.get_vocab()
        if len(vocab) <= len(special):
            raise ValueError("the training corpus is empty: no vocabulary could be learned")
        return cls(vocab, do_lower_case=lowercase, model_max_length=model_max_length)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``vocab.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json`` as
        transformers' ``BertTokenizer`` reads them."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, VOCAB_NAME), "w", encoding="utf-8") as f:
            for index in range(len(self._ids_to_tokens)):
                f.write(self._ids_to_tokens[index] + "\n")
        settings = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
                    "strip_accents": self.strip_accents,
                    "tokenize_chinese_chars": self.tokenize_chinese_chars,
                    "model_max_length": self.model_max_length, **self.special_tokens}
        with open(os.path.join(folder, TOKENIZER_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=2)
        with open(os.path.join(folder, SPECIAL_TOKENS_MAP_NAME), "w", encoding="utf-8") as f:
            json.dump(self.special_tokens, f, indent=2)

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return len(self._ids_to_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_token_id(self) -> int:
        return self.vocab[self.special_tokens["pad_token"]]

    @property
    def unk_token_id(self) -> int:
        return self.vocab[self.special_tokens["unk_token"]]

    @property
    def cls_token_id(self) -> int:
        return self.vocab[self.special_tokens["cls_token"]]

    @property
    def sep_token_id(self) -> int:
        return self.vocab[self.special_tokens["sep_token"]]

    @property
    def mask_token_id(self) -> int:
        return self.vocab[self.special_tokens["mask_token"]]

    @property
    def mask_token(self) -> str:
        return self.special_tokens["mask_token"]

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(self.vocab[tok] for tok in self.special_tokens.values())

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self._ids_to_tokens[ids]
        return [self._ids_to_tokens[int(i)] for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        unk = self.unk_token_id
        if isinstance(tokens, str):
            return self.vocab.get(tokens, unk)
        return [self.vocab.get(t, unk) for t in tokens]

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text``, without special tokens."""
        return self._engine.encode(_check_text(text, "text"), add_special_tokens=False).tokens

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Join WordPiece tokens back into text (``##`` pieces glued to their word)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._engine.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ encoding
    def encode_plain(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text without special tokens, truncation or padding; batched and
        parallel in the Rust engine (the fast path for preparing a corpus)."""
        texts = _check_texts(texts, "texts")
        return [e.ids for e in self._engine.encode_batch(texts, add_special_tokens=False)]

    def __call__(self, texts: str | Sequence[str] | Sequence[Sequence[str]],
                 text_pairs: str | Sequence[str] | None = None, *, max_length: int | None = None,
                 truncation: bool | str = True, padding: bool | str = True,
                 return_tensors: str | None = "pt", return_offsets_mapping: bool = False,
                 return_special_tokens_mask: bool = False, is_split_into_words: bool = False,
                 pad_to_multiple_of: int | None = None) -> Encoding:
        """Encode a batch of texts (or text pairs) for the model.

        Args:
            texts: a string or a list of B strings (with ``is_split_into_words``, a list of B
                word lists). A single string is encoded as a batch of one.
            text_pairs: the second segment of each example (same length as ``texts``).
            max_length: the longest sequence kept, special tokens included (default: the
                tokenizer's ``model_max_length``).
            truncation: ``True``/``"longest_first"`` trims the longer segment token by token,
                ``"only_second"`` trims only the pair text, ``False`` keeps everything. A long
                text is cut at a word boundary before encoding, so time and memory follow
                ``max_length``; ids and offsets are those of the whole text.
            padding: ``True``/``"longest"`` pads to the longest example, ``"max_length"`` to
                ``max_length``, ``False`` not at all (then ``return_tensors`` must be None).
            return_tensors: ``"pt"`` for LongTensors of shape (B, T), ``None`` for lists.

        Returns:
            an :class:`Encoding` with input_ids, token_type_ids, attention_mask (1 = real token),
            and offset_mapping (character (start, end) in its own text, (0, 0) for specials) /
            special_tokens_mask (1 = special) when asked.
        """
        texts, text_pairs = _check_inputs(texts, text_pairs, is_split_into_words)
        if truncation not in _TRUNCATION_STRATEGIES and truncation not in (False, "do_not_truncate"):
            raise ValueError(f"truncation must be True, False, 'longest_first', 'only_first' or "
                             f"'only_second', got {truncation!r}")
        if padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        limit = max_length if max_length is not None else self.model_max_length
        if limit is not None and limit < (3 if text_pairs is not None else 2):
            raise ValueError(f"max_length {limit} leaves no room for the special tokens")

        strategy = _TRUNCATION_STRATEGIES.get(truncation)  # None: no truncation
        pad_length = (limit if padding == "max_length" else None) \
            if padding in (True, "longest", "max_length") else False
        engine = self._engine_for(strategy, limit, pad_length, pad_to_multiple_of)
        if strategy is not None and not is_split_into_words:
            texts, text_pairs = self._cut_for_truncation(texts, text_pairs, strategy, limit)
        inputs = texts if text_pairs is None else list(zip(texts, text_pairs))
        try:
            encodings = engine.encode_batch(inputs, is_pretokenized=is_split_into_words)
        except Exception as e:  # the engine reports truncation errors as plain exceptions
            raise ValueError(f"cannot encode with truncation={truncation!r} and max_length="
                             f"{limit}: {e}") from None
        return _to_encoding(encodings, return_tensors, return_offsets_mapping,
                            return_special_tokens_mask)

    def _engine_for(self, strategy: str | None, limit: int, pad_length: int | None | bool,
                    pad_to_multiple_of: int | None) -> _Engine:
        """The engine that truncates with ``strategy`` to ``limit`` (None: not at all) and pads
        to ``pad_length`` (None: the longest example, False: not at all); built on first use and
        never changed after, so that concurrent calls cannot see each other's settings."""
        key = (strategy, limit if strategy else None, pad_length,
               pad_to_multiple_of if pad_length is not False else None)
        with self._settings_lock:
            engine = self._settings_engines.get(key)
            if engine is None:
                engine = self._build_engine()
                if strategy is not None:
                    engine.enable_truncation(limit, strategy=strategy)
                if pad_length is not False:
                    engine.enable_padding(pad_id=self.pad_token_id,
                                          pad_token=self.special_tokens["pad_token"],
                                          length=pad_length, pad_to_multiple_of=pad_to_multiple_of)
                if len(self._settings_engines) >= _MAX_SETTINGS_ENGINES:
                    del self._settings_engines[next(iter(self._settings_engines))]  # the oldest
                self._settings_engines[key] = engine
        return engine

    # ------------------------------------------------------------------ cutting long texts
    def _cut_for_truncation(self, texts: list[str], text_pairs: list[str] | None, strategy: str,
                            limit: int) -> tuple[list[str], list[str] | None]:
        """``texts`` and ``text_pairs`` with each long text cut to a prefix that the truncation
        ``strategy`` turns into exactly the same tokens, ids and offsets as the whole text: the
        engine's time and memory then follow ``limit``, not the text's length."""
        budget = limit - (2 if text_pairs is None else 3)  # tokens left beside the specials
        window = _CHARS_PER_TOKEN_GUESS * (budget + 1)
        cuttable = [strategy != "only_second", strategy != "only_first"]
        # longest_first gives the extra token of an odd budget to the longer side: when both
        # sides are too long, which one is longer must survive the cut.
        ordered = text_pairs is not None and strategy == "longest_first" and budget % 2 == 1
        cut_texts, cut_pairs = list(texts), None if text_pairs is None else list(text_pairs)
        for index in range(len(texts)):
            sides = [texts[index]] if text_pairs is None else [texts[index], text_pairs[index]]
            if any(can and len(side) > window for can, side in zip(cuttable, sides)):
                sides = self._cut_example(sides, cuttable[:len(sides)], budget, window, ordered)
                cut_texts[index] = sides[0]
                if cut_pairs is not None:
                    cut_pairs[index] = sides[1]
        return cut_texts, cut_pairs

    def _cut_example(self, sides: list[str], cuttable: list[bool], budget: int, window: int,
                     ordered: bool) -> list[str]:
        """Cut the ``cuttable`` sides (one text, or a text and its pair) to the shortest clean
        prefixes, from ``window`` characters on and doubling, whose token counts prove that
        truncation to ``budget`` tokens cannot tell them from the whole texts.

        A prefix that ends at a clean cut has exactly the first tokens of the whole text, so a
        cut side is enough once it still has more than ``budget`` tokens; when the order of
        the two sides' lengths matters (``ordered``), the prefixes must also keep it."""
        lengths = [0 if can else len(side) for side, can in zip(sides, cuttable)]
        new_lengths = [self._cut_point(side, window) if can else len(side)
                       for side, can in zip(sides, cuttable)]
        counts = [0] * len(sides)
        grow = [i for i, can in enumerate(cuttable) if can]  # the sides counted so far
        first_longer = None  # whether the whole first text has more tokens than the second
        while True:
            # Only the added piece is encoded: between clean cuts it has exactly its own tokens.
            added = self._engine.encode_batch([sides[i][lengths[i]:new_lengths[i]] for i in grow],
                                              add_special_tokens=False)
            for i, encoding in zip(grow, added):
                counts[i] += len(encoding)
                lengths[i] = new_lengths[i]
            cut = [i for i, can in enumerate(cuttable) if can and lengths[i] < len(sides[i])]
            grow = [i for i in cut if counts[i] <= budget]
            if ordered and cut and not grow:
                if len(cut) == 1:  # the other side is whole: its count is exact
                    grow = cut if counts[cut[0]] <= counts[1 - cut[0]] else []
                else:
                    if first_longer is None:
                        first_longer = self._first_has_more_tokens(sides[0], sides[1])
                    if (counts[0] > counts[1]) != first_longer:
                        grow = [0] if first_longer else [1]
            if not grow:
                return [side[:length] for side, length in zip(sides, lengths)]
            for i in grow:
                new_lengths[i] = self._cut_point(sides[i], 2 * lengths[i])

    def _first_has_more_tokens(self, first: str, second: str) -> bool:
        """Whether ``first`` has more tokens than ``second``: both counted in clean chunks side
        by side (memory bounded by the chunk size), until the answer is known."""
        texts, positions, counts = (first, second), [0, 0], [0, 0]
        while True:
            done = [positions[i] >= len(texts[i]) for i in (0, 1)]
            if done[0] and (done[1] or counts[1] >= counts[0]):
                return counts[0] > counts[1]
            if done[1] and counts[0] > counts[1]:
                return True
            active = [i for i in (0, 1) if not done[i]]
            ends = [self._cut_point(texts[i], positions[i] + _COUNT_CHUNK_CHARS) for i in active]
            chunks = [texts[i][positions[i]:end] for i, end in zip(active, ends)]
            for i, end, encoding in zip(active, ends, self._engine.encode_batch(
                    chunks, add_special_tokens=False)):
                counts[i] += len(encoding)
                positions[i] = end

    def _cut_point(self, text: str, start: int) -> int:
        """The first position from ``start`` on before which ``text`` can be cut without
        changing a token before it (``len(text)`` when there is none)."""
        pattern = _CUT_BEFORE_WITH_CJK if self.tokenize_chinese_chars else _CUT_BEFORE
        for match in pattern.finditer(text, start):
            cut = match.start()
            # "[MA|SK]" is one special token in the whole text and punctuation in the prefix.
            if not _splits_a_special_token(text, cut, self.special_tokens.values()):
                return cut
        return len(text)


def _splits_a_special_token(text: str, cut: int, tokens: Iterable[str]) -> bool:
    """Whether an occurrence of one of ``tokens`` in ``text`` starts before ``cut`` and ends
    after it."""
    for token in tokens:
        found = text.find(token, max(0, cut - len(token) + 1), cut + len(token) - 1)
        if found != -1 and found < cut:
            return True
    return False


def _check_inputs(texts: Any, text_pairs: Any, is_split_into_words: bool
                  ) -> tuple[list[Any], list[Any] | None]:
    """``texts`` and ``text_pairs`` as lists of B examples, each checked (a single example
    becomes a batch of one)."""
    if isinstance(texts, str) or (is_split_into_words and texts and isinstance(texts[0], str)):
        texts = [texts]
        if text_pairs is not None:
            text_pairs = [text_pairs]
    if is_split_into_words:
        texts = [_check_texts(words, f"texts[{i}]") for i, words in enumerate(texts)]
    else:
        texts = _check_texts(texts, "texts")
    if text_pairs is not None:
        if is_split_into_words:
            text_pairs = [_check_texts(w, f"text_pairs[{i}]") for i, w in enumerate(text_pairs)]
        else:
            text_pairs = _check_texts(text_pairs, "text_pairs")
        if len(text_pairs) != len(texts):
            raise ValueError(f"texts and text_pairs must have the same length, got "
                             f"{len(texts)} texts and {len(text_pairs)} text_pairs")
    return texts, text_pairs


def _to_encoding(encodings: list[Any], return_tensors: str | None, return_offsets_mapping: bool,
                 return_special_tokens_mask: bool) -> Encoding:
    data: dict[str, Any] = {
        "input_ids": [e.ids for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
    }
    if return_offsets_mapping:
        data["offset_mapping"] = [e.offsets for e in encodings]
    if return_special_tokens_mask:
        data["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
    if return_tensors == "pt":
        lengths = {len(ids) for ids in data["input_ids"]}
        if len(lengths) > 1:
            raise ValueError("examples have different lengths; use padding=True to return tensors")
        data = {k: torch.tensor(v, dtype=torch.long) for k, v in data.items()}
    return Encoding(data, encodings)


def _check_utf8_file(path: str) -> None:
    """Raise a one-line ValueError naming ``path`` and its first byte that is not UTF-8."""
    offset, pending = 0, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            data = pending + chunk
            try:
                data.decode("utf-8")
                offset, pending = offset + len(data), b""
            except UnicodeDecodeError as e:
                if chunk and e.reason == "unexpected end of data":  # cut by the chunk boundary
                    offset, pending = offset + e.start, data[e.start:]
                else:
                    raise ValueError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} "
                                     f"at offset {offset + e.start})") from None
            if not chunk:
                return


def _corpus_files(source: Any) -> list[str] | None:
    """The file paths in ``source`` when it names files (one path, or a list of paths), else
    None (an iterable of texts). A path given as such that does not exist is an error."""
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    elif not isinstance(source, (list, tuple)):
        return None
    if not source:
        raise ValueError("no corpus given: the list of files or texts is empty")
    named_as_paths = [p for p in source if isinstance(p, os.PathLike)]
    if not named_as_paths and not all(isinstance(p, str) and os.path.isfile(p) for p in source):
        if len(source) == 1 and isinstance(source[0], str) and "\n" not in source[0] \
                and os.sep in source[0]:
            raise FileNotFoundError(f"corpus file {source[0]} does not exist")
        return None  # a list of texts
    for p in source:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"corpus file {os.fspath(p)} does not exist")
    return [os.fspath(p) for p in source]


def _check_text(text: Any, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}: {text!r:.60}")
    return text


def _check_texts(texts: Any, name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    for index, text in enumerate(texts):
        _check_text(text, f"{name}[{index}]")
    return list(texts)


def _read_json(path: str) -> dict[str, Any]:
    return read_json_object(path) if os.path.isfile(path) else {}
