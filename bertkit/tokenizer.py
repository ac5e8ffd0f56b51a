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
import threading
from collections.abc import Iterable, Sequence
from typing import Any

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
        self._engine = self._build_engine()
        # The engine's truncation/padding settings are per-object state that each call sets;
        # the lock keeps concurrent callers (a threaded server) from mixing settings.
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # A lock cannot be pickled (DataLoader workers started with "spawn", deepcopy).
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

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
            engine.train(files, trainer)
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
        with self._lock:
            self._engine.no_truncation()
            self._engine.no_padding()
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
                ``"only_second"`` trims only the pair text, ``False`` keeps everything.
            padding: ``True``/``"longest"`` pads to the longest example, ``"max_length"`` to
                ``max_length``, ``False`` not at all (then ``return_tensors`` must be None).
            return_tensors: ``"pt"`` for LongTensors of shape (B, T), ``None`` for lists.

        Returns:
            an :class:`Encoding` with input_ids, token_type_ids, attention_mask (1 = real token),
            and offset_mapping (character (start, end) in its own text, (0, 0) for specials) /
            special_tokens_mask (1 = special) when asked.
        """
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

        inputs = texts if text_pairs is None else list(zip(texts, text_pairs))
        with self._lock:
            if truncation in _TRUNCATION_STRATEGIES:
                self._engine.enable_truncation(limit, strategy=_TRUNCATION_STRATEGIES[truncation])
            else:
                self._engine.no_truncation()
            if padding in (True, "longest", "max_length"):
                self._engine.enable_padding(
                    pad_id=self.pad_token_id, pad_token=self.special_tokens["pad_token"],
                    length=limit if padding == "max_length" else None,
                    pad_to_multiple_of=pad_to_multiple_of)
            else:
                self._engine.no_padding()
            try:
                encodings = self._engine.encode_batch(inputs, is_pretokenized=is_split_into_words)
            except Exception as e:  # the engine reports truncation errors as plain exceptions
                raise ValueError(f"cannot encode with truncation={truncation!r} and max_length="
                                 f"{limit}: {e}") from None

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
            import torch
            data = {k: torch.tensor(v, dtype=torch.long) for k, v in data.items()}
        return Encoding(data, encodings)


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
