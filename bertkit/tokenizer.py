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
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Engine
from tokenizers.models import BPE, Unigram, WordPiece

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



def _write_settings(folder: str | os.PathLike, settings: dict, special_tokens: dict) -> None:
    """``tokenizer_config.json`` and ``special_tokens_map.json``, as transformers reads them."""
    with open(os.path.join(folder, TOKENIZER_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2, ensure_ascii=False)
    with open(os.path.join(folder, SPECIAL_TOKENS_MAP_NAME), "w", encoding="utf-8") as f:
        json.dump(special_tokens, f, indent=2, ensure_ascii=False)

class Tokenizer:
    """A BERT WordPiece tokenizer.

    Build one with :meth:`from_pretrained` (a folder with ``vocab.txt``), :meth:`from_vocab`
    (a token list) or :meth:`train` (a corpus).
    """

    uses_token_types = True  # token type 0/1 on the two texts of a pair
    added_tokens: tuple[str, ...] = ()  # never-split tokens beside the specials (add_tokens)

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
        engine.add_tokens([AddedToken(tok, special=False, normalized=False)
                           for tok in self.added_tokens])
        return engine

    def add_tokens(self, tokens: Iterable[str]) -> int:
        """Add ``tokens`` (entity markers such as ``[E1]``) as never-split tokens: each one not
        in the vocab yet takes the next id; in a text each is matched as written (never
        lowercased, never cut into pieces, whatever is around it). :meth:`save_pretrained`
        writes them to ``vocab.txt`` and to ``tokenizer_config.json``'s
        ``added_tokens_decoder``, which :meth:`from_pretrained` and transformers'
        ``BertTokenizerFast`` both read. Returns how many ids were added; the model's embedding
        table must grow to match (``model.resize_token_embeddings(len(tokenizer))``)."""
        if type(self)._build_engine is not Tokenizer._build_engine:
            raise NotImplementedError(f"add_tokens is for WordPiece tokenizers, not "
                                      f"{type(self).__name__}")
        tokens = [tokens] if isinstance(tokens, str) else list(tokens)
        for token in tokens:
            if not isinstance(token, str) or not token.strip() or token != token.strip():
                raise ValueError(f"an added token must be a non-empty string without "
                                 f"surrounding spaces, got {token!r}")
        new = [t for t in dict.fromkeys(tokens) if t not in self.vocab]
        for token in new:
            self.vocab[token] = len(self._ids_to_tokens)
            self._ids_to_tokens[self.vocab[token]] = token
        specials = set(self.special_tokens.values())
        self.added_tokens = tuple(dict.fromkeys(
            [*self.added_tokens, *(t for t in tokens if t not in specials)]))
        with self._settings_lock:  # engines built before would split the new tokens
            self._engine = self._build_engine()
            self._settings_engines.clear()
        return len(new)

    @classmethod
    def from_vocab(cls, tokens: Sequence[str], **kwargs: Any) -> "Tokenizer":
        return cls(list(tokens), **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "Tokenizer":
        """Load ``folder/vocab.txt`` with the settings of ``tokenizer_config.json`` and
        ``special_tokens_map.json`` when they are present (BERT defaults otherwise).

        Called as ``Tokenizer.from_pretrained``, a folder of byte-level BPE files
        (``vocab.json`` + ``merges.txt``, or a BPE ``tokenizer.json``) gives a
        :class:`BPETokenizer`: the folder's files choose the tokenizer."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        if cls is Tokenizer and is_bpe_folder(folder):  # a RoBERTa / GPT-2 folder
            return BPETokenizer.from_pretrained(folder)
        if cls is Tokenizer and is_sentencepiece_folder(folder):  # an ALBERT folder
            return SentencePieceTokenizer.from_pretrained(folder)
        vocab_path = os.path.join(folder, VOCAB_NAME)
        json_path = os.path.join(folder, TOKENIZER_JSON_NAME)
        tokens: list[str] | dict[str, int]
        added: Any = None  # never-split tokens of a transformers 5 tokenizer.json
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
            added = {str(e.get("id")): e for e in _read_json(json_path).get("added_tokens") or []
                     if isinstance(e, dict)}
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
            tokenizer = cls(tokens, do_lower_case=settings.get("do_lower_case", True),
                            strip_accents=settings.get("strip_accents"),
                            tokenize_chinese_chars=settings.get("tokenize_chinese_chars", True),
                            model_max_length=max_length, special_tokens=special_tokens)
        except ValueError as e:
            raise ValueError(f"{vocab_path}: {e}") from None
        tokenizer._add_saved_tokens(settings.get("added_tokens_decoder") or added,
                                    os.path.join(folder, TOKENIZER_CONFIG_NAME))
        return tokenizer

    def _add_saved_tokens(self, decoder: Any, source: str) -> None:
        """Register the never-split tokens of ``tokenizer_config.json``'s
        ``added_tokens_decoder`` (``{"id": {"content": token, ...}}``, as bertkit and
        transformers write it) other than the special tokens; a token missing from the vocab
        takes its id when that id is the next one. A token whose id disagrees is a ValueError."""
        if not isinstance(decoder, dict):
            return
        specials = set(self.special_tokens.values())
        entries = sorted((int(i), e["content"]) for i, e in decoder.items()
                         if str(i).isdigit() and isinstance(e, dict)
                         and isinstance(e.get("content"), str) and e["content"] not in specials)
        for index, token in entries:
            if self.vocab.get(token, len(self._ids_to_tokens)) != index:
                raise ValueError(f"{source}: added token {token!r} has id {index}, but the "
                                 f"vocab gives it {self.vocab.get(token, 'no id')}")
        if entries:
            self.add_tokens([token for _, token in entries])

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
        _train_engine(engine, trainer, files_or_iterator)
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
        if self.added_tokens:  # transformers' key: these ids are never-split tokens
            settings["added_tokens_decoder"] = {
                str(self.vocab[tok]): {"content": tok, "lstrip": False, "normalized": False,
                                       "rstrip": False, "single_word": False, "special": False}
                for tok in self.added_tokens}
        _write_settings(folder, settings, self.special_tokens)

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return len(self._ids_to_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk_token")

    @property
    def cls_token_id(self) -> int | None:
        return self._special_id("cls_token")

    @property
    def sep_token_id(self) -> int | None:
        return self._special_id("sep_token")

    @property
    def mask_token_id(self) -> int | None:
        return self._special_id("mask_token")

    @property
    def mask_token(self) -> str | None:
        return self.special_tokens.get("mask_token")

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({self.vocab[tok] for tok in self.special_tokens.values()})

    def _special_id(self, key: str) -> int | None:
        """The id of the special token named ``key`` (``"pad_token"``...), None when the
        tokenizer has none (a GPT-2 vocab has no pad, cls, sep nor mask token)."""
        token = self.special_tokens.get(key)
        return None if token is None else self.vocab[token]

    def num_special_tokens(self, pair: bool = False) -> int:
        """How many special tokens a single text (or a pair) gets: 2 (3) for BERT."""
        return self._engine.post_processor.num_special_tokens_to_add(pair)

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
        if limit is not None and limit < self.num_special_tokens(text_pairs is not None) + 1:
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
                            return_special_tokens_mask, self.uses_token_types)

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
        budget = limit - self.num_special_tokens(text_pairs is not None)  # beside the specials
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

    def _cut_pattern(self) -> re.Pattern[str]:
        """Matches the characters before which a text can be cut cleanly (see _CUT_BEFORE)."""
        return _CUT_BEFORE_WITH_CJK if self.tokenize_chinese_chars else _CUT_BEFORE

    def _cut_point(self, text: str, start: int) -> int:
        """The first position from ``start`` on before which ``text`` can be cut without
        changing a token before it (``len(text)`` when there is none)."""
        for match in self._cut_pattern().finditer(text, start):
            cut = match.start()
            # "[MA|SK]" is one special token in the whole text and punctuation in the prefix.
            if not _splits_a_special_token(text, cut, [*self.special_tokens.values(),
                                                       *self.added_tokens]):
                return cut
        return len(text)


# ---------------------------------------------------------------------------- byte-level BPE
BPE_VOCAB_NAME = "vocab.json"
BPE_MERGES_NAME = "merges.txt"
# The two layouts of byte-level BPE models: RoBERTa's "<s> A </s>" / "<s> A </s></s> B </s>"
# and GPT-2's bare "A" / "A B" (its one special token, <|endoftext|>, is added by the caller).
BPE_KINDS = ("roberta", "gpt2")
ROBERTA_SPECIAL_TOKENS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                          "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
                          "mask_token": "<mask>"}
GPT2_SPECIAL_TOKENS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                       "unk_token": "<|endoftext|>"}
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                 "mask_token")
_HF_TOKENIZER_CLASSES = {"roberta": "RobertaTokenizer", "gpt2": "GPT2Tokenizer"}
# Byte-level BPE pre-tokenisation (the GPT-2 regex) never joins a non-space character with the
# whitespace after it, so a text can be cut before a whitespace character that follows a
# non-space one. ``\S`` here (Python) excludes more characters than the engine's ``\s`` does.
_CUT_BEFORE_BPE = re.compile(r"(?<=\S)[ \t\n\r]")
_NO_PAD_TOKEN = ("this tokenizer has no pad token: use padding=False, or load it with "
                 "pad_token=... (GPT-2: pad_token='<|endoftext|>')")


def is_bpe_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a byte-level BPE tokenizer (``vocab.json`` + ``merges.txt``,
    or a ``tokenizer.json`` whose model is BPE) rather than a WordPiece ``vocab.txt``."""
    folder = os.fspath(folder)
    if os.path.isfile(os.path.join(folder, VOCAB_NAME)):
        return False
    if os.path.isfile(os.path.join(folder, BPE_VOCAB_NAME)) and \
            os.path.isfile(os.path.join(folder, BPE_MERGES_NAME)):
        return True
    json_path = os.path.join(folder, TOKENIZER_JSON_NAME)
    return os.path.isfile(json_path) and \
        (_read_json(json_path).get("model") or {}).get("type") == "BPE"


def is_sentencepiece_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an ALBERT SentencePiece tokenizer (``spiece.model`` or a
    Unigram ``tokenizer.json``) rather than a WordPiece ``vocab.txt``."""
    folder = os.fspath(folder)
    if os.path.isfile(os.path.join(folder, VOCAB_NAME)):
        return False
    if os.path.isfile(os.path.join(folder, "spiece.model")):
        return True
    json_path = os.path.join(folder, TOKENIZER_JSON_NAME)
    return os.path.isfile(json_path) and \
        (_read_json(json_path).get("model") or {}).get("type") == "Unigram"


class BPETokenizer(Tokenizer):
    """A byte-level BPE tokenizer (RoBERTa, GPT-2) with the call interface of
    :class:`Tokenizer`: ``tok(texts, text_pairs, max_length=..., truncation=..., padding=...,
    return_tensors="pt")``, ``decode``, the special token ids, ``save_pretrained``.

    ``kind="roberta"`` adds ``<s> A </s>`` / ``<s> A </s></s> B </s>``; ``kind="gpt2"`` adds
    nothing (GPT-2's ``<|endoftext|>`` is appended by whoever builds the sequence, and it has no
    pad token unless one is given). There are no token types: ``token_type_ids`` are all 0.

    Build one with :meth:`from_pretrained` (a folder), :meth:`from_files` (``vocab.json`` +
    ``merges.txt``) or :meth:`train` (a corpus).
    """

    uses_token_types = False

    def __init__(self, engine: _Engine, *, kind: str = "roberta",
                 special_tokens: dict[str, str] | None = None, add_prefix_space: bool = False,
                 trim_offsets: bool = True, model_max_length: int = 512):
        if kind not in BPE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(BPE_KINDS)}, got {kind!r}")
        self.kind, self.add_prefix_space, self.trim_offsets = kind, add_prefix_space, trim_offsets
        self.model_max_length = model_max_length
        defaults = ROBERTA_SPECIAL_TOKENS if kind == "roberta" else GPT2_SPECIAL_TOKENS
        self.special_tokens = {k: v for k, v in {**defaults, **(special_tokens or {})}.items()
                               if v is not None}
        # Settings the BERT rules have and byte-level BPE does not (read by shared code).
        self.do_lower_case, self.strip_accents, self.tokenize_chinese_chars = False, False, False
        _adopt_engine(self, engine)

    def _build_engine(self) -> _Engine:
        engine = _Engine.from_str(self._engine_json)
        # Registered as special (never split, skipped by decode); ids are those of the vocab.
        known = {token.content for token in engine.get_added_tokens_decoder().values()}
        engine.add_special_tokens([AddedToken(tok, special=True, normalized=False)
                                   for tok in dict.fromkeys(self.special_tokens.values())
                                   if tok not in known])
        return engine

    @classmethod
    def _engine_from_parts(cls, vocab: dict[str, int], merges: list[tuple[str, str]], kind: str,
                           special_tokens: dict[str, str], add_prefix_space: bool,
                           trim_offsets: bool) -> _Engine:
        """The engine transformers' RobertaTokenizer / GPT2Tokenizer build from the same files."""
        engine = _Engine(BPE(vocab, merges, dropout=None, continuing_subword_prefix="",
                             end_of_word_suffix="", fuse_unk=False))
        engine.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        engine.decoder = decoders.ByteLevel()
        if kind == "roberta":
            sep, cls_token = special_tokens["sep_token"], special_tokens["cls_token"]
            engine.post_processor = processors.RobertaProcessing(
                (sep, vocab[sep]), (cls_token, vocab[cls_token]), trim_offsets=trim_offsets,
                add_prefix_space=add_prefix_space)
        else:
            engine.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
        engine.add_special_tokens([AddedToken(tok, special=True, normalized=False)
                                   for tok in dict.fromkeys(special_tokens.values())])
        return engine

    @classmethod
    def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike, *,
                   kind: str = "roberta", special_tokens: dict[str, str] | None = None,
                   add_prefix_space: bool = False, trim_offsets: bool = True,
                   model_max_length: int = 512) -> "BPETokenizer":
        """Load a GPT-2-style ``vocab.json`` (token -> id) and ``merges.txt`` (one merge a
        line, after an optional ``#version`` line)."""
        vocab = _read_json(os.fspath(vocab_file)) if os.path.isfile(vocab_file) else None
        if not vocab or not all(isinstance(i, int) for i in vocab.values()):
            raise ValueError(f"{os.fspath(vocab_file)} does not hold a JSON object of token ids")
        merges = _read_merges(os.fspath(merges_file))
        specials = {k: v for k, v in {**(ROBERTA_SPECIAL_TOKENS if kind == "roberta" else
                                         GPT2_SPECIAL_TOKENS), **(special_tokens or {})}.items()
                    if v is not None}
        missing = sorted({tok for tok in specials.values() if tok not in vocab})
        if kind == "roberta" and missing:  # GPT-2's <|endoftext|> may come after the vocab
            raise ValueError(f"{os.fspath(vocab_file)}: the vocabulary lacks the special "
                             f"token(s) {', '.join(missing)}")
        engine = cls._engine_from_parts(vocab, merges, kind, specials, add_prefix_space,
                                        trim_offsets)
        return cls(engine, kind=kind, special_tokens=specials, add_prefix_space=add_prefix_space,
                   trim_offsets=trim_offsets, model_max_length=model_max_length)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **special_tokens: str) -> "BPETokenizer":
        """Load a RoBERTa or GPT-2 tokenizer folder as transformers writes it: ``tokenizer.json``
        (transformers 5) or ``vocab.json`` + ``merges.txt`` (older folders), with the settings
        of ``tokenizer_config.json``. ``special_tokens`` override the folder's, e.g.
        ``pad_token="<|endoftext|>"`` to pad a GPT-2 batch."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        settings = _read_json(os.path.join(folder, TOKENIZER_CONFIG_NAME))
        json_path = os.path.join(folder, TOKENIZER_JSON_NAME)
        engine_settings = _read_json(json_path) if os.path.isfile(json_path) else {}
        kind = _bpe_kind(settings, engine_settings)
        found = _special_tokens_from(settings,
                                     _read_json(os.path.join(folder, SPECIAL_TOKENS_MAP_NAME)))
        if kind == "gpt2" and "pad_token" in settings and settings["pad_token"] is None:
            found.pop("pad_token", None)
        found.update(special_tokens)
        options = dict(kind=kind, special_tokens=found,
                       add_prefix_space=bool(settings.get("add_prefix_space", False)),
                       trim_offsets=bool(settings.get("trim_offsets", True)),
                       model_max_length=_max_length_setting(settings))
        try:
            if (engine_settings.get("model") or {}).get("type") == "BPE":
                return cls(_Engine.from_file(json_path), **options)
            vocab_path = os.path.join(folder, BPE_VOCAB_NAME)
            merges_path = os.path.join(folder, BPE_MERGES_NAME)
            for path in (vocab_path, merges_path):
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{folder} has no {os.path.basename(path)} (nor a "
                                            f"BPE {TOKENIZER_JSON_NAME})")
            return cls.from_files(vocab_path, merges_path, **options)
        except ValueError as e:
            if folder in str(e):
                raise
            raise ValueError(f"{folder}: {e}") from None

    @classmethod
    def train(cls, files_or_iterator: str | os.PathLike | Iterable[str], vocab_size: int = 50265,
              min_frequency: int = 2, model_max_length: int = 512, show_progress: bool = True,
              kind: str = "roberta", lowercase: bool = False) -> "BPETokenizer":
        """Train a byte-level BPE vocabulary on text files (paths) or an iterator of strings.

        The 256 byte symbols are always in the vocab (no text is ever unknown); the special
        tokens come first (RoBERTa: ``<s> <pad> </s> <unk> <mask>`` = ids 0-4, as roberta-base;
        GPT-2: ``<|endoftext|>`` = 0), then the most frequent merges up to ``vocab_size``.
        ``lowercase`` is accepted for the WordPiece signature and must stay False."""
        if lowercase:
            raise ValueError("byte-level BPE keeps case: lowercase=True is not supported")
        if kind not in BPE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(BPE_KINDS)}, got {kind!r}")
        specials = ROBERTA_SPECIAL_TOKENS if kind == "roberta" else GPT2_SPECIAL_TOKENS
        special_list = list(dict.fromkeys(
            [specials[k] for k in ("bos_token", "pad_token", "eos_token", "unk_token",
                                   "mask_token") if k in specials]))
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(special_list) + len(alphabet):
            raise ValueError(f"vocab_size must be at least {len(special_list) + len(alphabet)} "
                             f"(the special tokens and 256 bytes), got {vocab_size}")
        engine = _Engine(BPE())
        engine.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=special_list, initial_alphabet=alphabet,
                                      show_progress=show_progress)
        _train_engine(engine, trainer, files_or_iterator)
        model = json.loads(engine.to_str())["model"]
        if not model["merges"]:
            raise ValueError("the training corpus is empty (or too small): no merge was learned")
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
                  for m in model["merges"]]
        engine = cls._engine_from_parts(model["vocab"], merges, kind, dict(specials), False, True)
        return cls(engine, kind=kind, special_tokens=dict(specials),
                   model_max_length=model_max_length)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``vocab.json``, ``merges.txt``, ``tokenizer.json``, ``tokenizer_config.json``
        and ``special_tokens_map.json``: transformers' RobertaTokenizer / GPT2Tokenizer (and
        AutoTokenizer) load the folder, old versions through the vocab and merges files."""
        os.makedirs(folder, exist_ok=True)
        model = json.loads(self._engine_json)["model"]
        with open(os.path.join(folder, BPE_VOCAB_NAME), "w", encoding="utf-8") as f:
            json.dump(model["vocab"], f, ensure_ascii=False)
        with open(os.path.join(folder, BPE_MERGES_NAME), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for merge in model["merges"]:
                f.write((merge if isinstance(merge, str) else " ".join(merge)) + "\n")
        with open(os.path.join(folder, TOKENIZER_JSON_NAME), "w", encoding="utf-8") as f:
            f.write(self._engine.to_str())
        settings = {"tokenizer_class": _HF_TOKENIZER_CLASSES[self.kind],
                    "add_prefix_space": self.add_prefix_space, "trim_offsets": self.trim_offsets,
                    "model_max_length": self.model_max_length, "errors": "replace",
                    **self.special_tokens}
        if self.kind == "gpt2":
            settings.setdefault("pad_token", None)
        _write_settings(folder, settings, self.special_tokens)

    @property
    def vocab_size(self) -> int:
        return max(self._ids_to_tokens) + 1

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    def __call__(self, texts: Any, text_pairs: Any = None, **options: Any) -> Encoding:
        """Encode as :meth:`Tokenizer.__call__`. Without a pad token (GPT-2) ``padding=True``
        pads nothing: examples of one length (a single prompt) still come back as tensors."""
        if self.pad_token_id is None and options.get("padding", True) not in (False,
                                                                               "do_not_pad"):
            if options.get("padding", True) == "max_length":
                raise ValueError(_NO_PAD_TOKEN)
            options["padding"] = False
            try:
                return super().__call__(texts, text_pairs, **options)
            except ValueError as e:
                if "different lengths" in str(e):
                    raise ValueError(f"examples have different lengths and {_NO_PAD_TOKEN}")
                raise
        return super().__call__(texts, text_pairs, **options)

    def _cut_pattern(self) -> re.Pattern[str]:
        return _CUT_BEFORE_BPE


def _adopt_engine(tokenizer: Tokenizer, engine: _Engine) -> None:
    """Make ``engine`` (a configured BPE / Unigram engine) the engine of ``tokenizer``, whose
    ``special_tokens`` are set: its vocab, the special tokens checked, the per-settings
    engines rebuilt from its JSON (``_build_engine``)."""
    tokenizer.vocab = engine.get_vocab(with_added_tokens=True)
    tokenizer._ids_to_tokens = {i: t for t, i in tokenizer.vocab.items()}
    missing = sorted({tok for tok in tokenizer.special_tokens.values()
                      if tok not in tokenizer.vocab})
    if missing:
        raise ValueError(f"the vocabulary lacks the special token(s) {', '.join(missing)}")
    engine.no_truncation()
    engine.no_padding()
    tokenizer._engine_json = engine.to_str()  # each settings engine is a fresh copy of it
    tokenizer._engine = tokenizer._build_engine()
    tokenizer._settings_engines = {}
    tokenizer._settings_lock = threading.Lock()


def _bpe_kind(settings: dict[str, Any], engine_settings: dict[str, Any]) -> str:
    """'gpt2' or 'roberta' from tokenizer_config.json's class, else from tokenizer.json's
    post-processor (RobertaProcessing adds <s> </s>)."""
    name = str(settings.get("tokenizer_class") or "")
    if name.startswith("GPT2"):
        return "gpt2"
    if name:
        return "roberta"
    processor = engine_settings.get("post_processor") or {}
    return "roberta" if processor.get("type") == "RobertaProcessing" or not engine_settings \
        else "gpt2"


def _special_tokens_from(*sources: dict[str, Any]) -> dict[str, str]:
    """The special tokens named in tokenizer_config.json / special_tokens_map.json (a value may
    be a string or ``{"content": ..., "lstrip": ...}``); later sources win."""
    found: dict[str, str] = {}
    for source in sources:
        for key in _SPECIAL_KEYS:
            value = source.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                found[key] = value
    return found


def _max_length_setting(settings: dict[str, Any]) -> int:
    max_length = settings.get("model_max_length", 512)
    if not isinstance(max_length, int) or max_length > 1_000_000:
        return 512  # HF writes a huge sentinel when no limit was set
    return max_length


def _read_merges(path: str) -> list[tuple[str, str]]:
    """The merges of a GPT-2 ``merges.txt``: one ``a b`` pair a line; a ``#version`` first line
    and blank lines are skipped; any other line is an error naming the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"merges file {path} does not exist")
    merges = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line or (number == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{path} line {number}: a merge is two tokens separated by one "
                                 f"space, got {line!r:.60}")
            merges.append((parts[0], parts[1]))
    return merges


def _train_engine(engine: _Engine, trainer: Any, files_or_iterator: Any) -> None:
    """Train ``engine`` on files (checked, with a clear error on bad UTF-8) or texts."""
    files = _corpus_files(files_or_iterator)
    if files is None:
        engine.train_from_iterator(files_or_iterator, trainer)
        return
    try:
        engine.train(files, trainer)
    except Exception:  # the engine says "stream did not contain valid UTF-8", no file
        for path in files:
            _check_utf8_file(path)
        raise


# ---------------------------------------------------------------------------- SentencePiece (ALBERT)
SPIECE_NAME = "spiece.model"
ALBERT_SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "[CLS]",
                         "sep_token": "[SEP]", "mask_token": "[MASK]"}
_SPM_UNIGRAM = 1  # TrainerSpec.model_type of a unigram model (sentencepiece_model.proto)


class SentencePieceTokenizer(Tokenizer):
    """ALBERT's SentencePiece (unigram) tokenizer with the call interface of
    :class:`Tokenizer`: ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with token types 0 / 1.

    Loads ``spiece.model`` (read here: its pieces, scores and normalisation table, no
    ``sentencepiece`` package needed) or a Unigram ``tokenizer.json``, and builds the same
    engine as transformers' AlbertTokenizer: `` and '' as ", NFKD and accents stripped
    unless ``keep_accents``, lowercase when ``do_lower_case``, the model's precompiled
    normalisation, whitespace split and "▁" word markers."""

    def __init__(self, engine: _Engine, *, do_lower_case: bool = True, keep_accents: bool = False,
                 special_tokens: dict[str, str] | None = None, model_max_length: int = 512,
                 spiece_bytes: bytes | None = None):
        self.do_lower_case, self.keep_accents = do_lower_case, keep_accents
        self.strip_accents, self.tokenize_chinese_chars = not keep_accents, False
        self.model_max_length = model_max_length
        self.special_tokens = {**ALBERT_SPECIAL_TOKENS, **(special_tokens or {})}
        self._spiece_bytes = spiece_bytes  # written back by save_pretrained
        _adopt_engine(self, engine)

    def _build_engine(self) -> _Engine:
        return _Engine.from_str(self._engine_json)

    @classmethod
    def from_spiece(cls, path: str | os.PathLike, *, do_lower_case: bool = True,
                    keep_accents: bool = False, special_tokens: dict[str, str] | None = None,
                    model_max_length: int = 512) -> "SentencePieceTokenizer":
        """Load a SentencePiece unigram ``spiece.model``."""
        path = os.fspath(path)
        with open(path, "rb") as f:
            data = f.read()
        pieces, unk_id, model_type, charsmap = _read_spiece_model(data, path)
        if model_type != _SPM_UNIGRAM:
            raise ValueError(f"{path} is a SentencePiece model of type {model_type}; ALBERT's "
                             f"is a unigram model (type {_SPM_UNIGRAM})")
        specials = {**ALBERT_SPECIAL_TOKENS, **(special_tokens or {})}
        engine = _Engine(Unigram(pieces, unk_id, byte_fallback=False))
        steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
        if not keep_accents:
            steps += [normalizers.NFKD(), normalizers.StripAccents()]
        if do_lower_case:
            steps.append(normalizers.Lowercase())
        if charsmap:
            steps.append(normalizers.Precompiled(charsmap))
        engine.normalizer = normalizers.Sequence(steps)
        engine.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
        engine.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        cls_token, sep = specials["cls_token"], specials["sep_token"]
        missing = sorted({tok for tok in specials.values() if tok not in vocab})
        if missing:
            raise ValueError(f"{path}: the vocabulary lacks the special token(s) "
                             f"{', '.join(missing)}")
        engine.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0 {sep}:0", pair=f"{cls_token}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls_token, vocab[cls_token]), (sep, vocab[sep])])
        engine.add_special_tokens([AddedToken(tok, special=True, normalized=False)
                                   for tok in dict.fromkeys(specials.values())])
        return cls(engine, do_lower_case=do_lower_case, keep_accents=keep_accents,
                   special_tokens=specials, model_max_length=model_max_length,
                   spiece_bytes=data)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "SentencePieceTokenizer":
        """An ALBERT tokenizer folder: ``tokenizer.json`` (Unigram; transformers 5) or
        ``spiece.model``, with ``tokenizer_config.json``'s do_lower_case / keep_accents."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        settings = _read_json(os.path.join(folder, TOKENIZER_CONFIG_NAME))
        specials = _special_tokens_from(settings,
                                        _read_json(os.path.join(folder, SPECIAL_TOKENS_MAP_NAME)))
        options = dict(do_lower_case=bool(settings.get("do_lower_case", True)),
                       keep_accents=bool(settings.get("keep_accents", False)),
                       special_tokens={k: v for k, v in specials.items()
                                       if k in ALBERT_SPECIAL_TOKENS},
                       model_max_length=_max_length_setting(settings))
        spiece = os.path.join(folder, SPIECE_NAME)
        json_path = os.path.join(folder, TOKENIZER_JSON_NAME)
        try:
            if os.path.isfile(spiece):
                return cls.from_spiece(spiece, **options)
            if (_read_json(json_path).get("model") or {}).get("type") == "Unigram":
                return cls(_Engine.from_file(json_path), **options)
        except ValueError as e:
            raise ValueError(e if folder in str(e) else f"{folder}: {e}") from None
        raise FileNotFoundError(f"{folder} has no {SPIECE_NAME} (nor a Unigram "
                                f"{TOKENIZER_JSON_NAME})")

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` (AlbertTokenizer),
        ``special_tokens_map.json`` and, when it was loaded from one, ``spiece.model``."""
        os.makedirs(folder, exist_ok=True)
        if self._spiece_bytes is not None:
            with open(os.path.join(folder, SPIECE_NAME), "wb") as f:
                f.write(self._spiece_bytes)
        with open(os.path.join(folder, TOKENIZER_JSON_NAME), "w", encoding="utf-8") as f:
            f.write(self._engine.to_str())
        settings = {"tokenizer_class": "AlbertTokenizer", "do_lower_case": self.do_lower_case,
                    "keep_accents": self.keep_accents, "model_max_length": self.model_max_length,
                    "bos_token": self.special_tokens["cls_token"],
                    "eos_token": self.special_tokens["sep_token"], **self.special_tokens}
        _write_settings(folder, settings, self.special_tokens)

    @property
    def vocab_size(self) -> int:
        return max(self._ids_to_tokens) + 1

    def _cut_pattern(self) -> re.Pattern[str]:
        return _CUT_BEFORE_BPE  # whitespace split: the same clean cuts as byte-level BPE


def _protobuf_fields(data: bytes, where: str) -> Iterator[tuple[int, Any]]:
    """(field number, value) of a serialised protobuf message: an int for a varint, bytes for
    a length-delimited or fixed-size field (the four wire types sentencepiece uses)."""
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            field_number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                value, pos = _varint(data, pos)
            elif wire_type in (1, 5):
                size = 8 if wire_type == 1 else 4
                value, pos = data[pos:pos + size], pos + size
            elif wire_type == 2:
                size, pos = _varint(data, pos)
                value, pos = data[pos:pos + size], pos + size
            else:
                raise IndexError(wire_type)
            if pos > len(data):
                raise IndexError(pos)
            yield field_number, value
    except IndexError:
        raise ValueError(f"{where} is not a SentencePiece model (bad protobuf data)") from None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _read_spiece_model(data: bytes, where: str) -> tuple[list[tuple[str, float]], int, int, bytes]:
    """(pieces with scores, unk id, model type, precompiled charsmap) of a ``spiece.model``:
    ModelProto fields 1 (SentencePiece: 1 piece, 2 score), 2 (TrainerSpec: 3 model_type,
    40 unk_id) and 3 (NormalizerSpec: 2 precompiled_charsmap)."""
    pieces, model_type, unk_id, charsmap = [], _SPM_UNIGRAM, 0, b""
    for number, value in _protobuf_fields(data, where):
        if number == 1 and isinstance(value, bytes):
            fields = dict(_protobuf_fields(value, where))
            piece, score = fields.get(1, b""), fields.get(2, b"\0\0\0\0")
            pieces.append((piece.decode("utf-8", errors="replace"),
                           struct.unpack("<f", score)[0]))
        elif number == 2 and isinstance(value, bytes):
            spec = dict(_protobuf_fields(value, where))
            model_type, unk_id = spec.get(3, model_type), spec.get(40, unk_id)
        elif number == 3 and isinstance(value, bytes):
            charsmap = dict(_protobuf_fields(value, where)).get(2, b"")
    if not pieces:
        raise ValueError(f"{where} is not a SentencePiece model (no pieces)")
    return pieces, unk_id, model_type, charsmap


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
                 return_special_tokens_mask: bool, uses_token_types: bool = True) -> Encoding:
    data: dict[str, Any] = {
        "input_ids": [e.ids for e in encodings],
        # Models without token types (RoBERTa, GPT-2) get zeros: every caller may pass them on.
        "token_type_ids": [e.type_ids if uses_token_types else [0] * len(e.ids)
                           for e in encodings],
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
