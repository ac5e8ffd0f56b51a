"""Text generation with a decoder-only LM folder: what ``bertkit generate``, ``bertkit chat``
and ``POST /v1/generate`` call.

A folder is an HF ``gpt2`` folder (``config.json`` with ``"model_type": "gpt2"``,
``model.safetensors``) with its byte-level BPE tokenizer (``vocab.json`` + ``merges.txt`` or
``tokenizer.json``): one written by ``bertkit pretrain --model-type gpt``, ``finetune --task
dialogue``, or transformers. :func:`load_language_model` opens it once;
:func:`generate_text` / :func:`stream_text` take a prompt string and give the continuation
(greedy unless ``do_sample``), the stream as text pieces as soon as each token is chosen.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Iterator, TextIO

import torch

from bertkit.config import CONFIG_NAME
from bertkit.jsonfile import read_json_object
from bertkit.modeling.generation import GenerationSettings, StopStrings
from bertkit.modeling.gpt import GPT2LMHeadModel, prompt_tensor
from bertkit.tokenizer import BPETokenizer, Tokenizer

DEFAULT_MAX_NEW_TOKENS = 50


@dataclass
class LanguageModel:
    """An opened decoder-only LM folder: the model (eval mode) and its tokenizer."""

    folder: str
    model: GPT2LMHeadModel
    tokenizer: BPETokenizer

    @property
    def context(self) -> int:
        return self.model.config.n_positions

    def encode(self, text: str) -> list[int]:
        """A prompt's token ids (no special tokens added)."""
        if not isinstance(text, str):
            raise ValueError(f"the prompt must be a string, got {type(text).__name__}")
        return self.tokenizer.encode_plain([text])[0]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_ids(self, text: str) -> torch.Tensor:
        """``text`` as a (1, T) prompt; an empty prompt is the end-of-text token alone (GPT-2's
        start of a document)."""
        ids = self.encode(text) or [self.model.config.eos_token_id]
        return prompt_tensor(ids, self.model.device)


def load_language_model(folder: str | os.PathLike, device: str | None = None) -> LanguageModel:
    """Open a decoder-only LM folder (see the module docstring); a folder of another kind or
    without a BPE tokenizer is a one-line ValueError naming it."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    path = os.path.join(folder, CONFIG_NAME)
    model_type = read_json_object(path, missing=f"{folder} has no {CONFIG_NAME}: not a model "
                                                f"folder").get("model_type")
    if model_type != "gpt2":
        raise ValueError(f"{folder} is not a decoder-only language model ({path} has model_type "
                         f"{model_type!r}, expected 'gpt2'); train one with `bertkit pretrain "
                         "--model-type gpt`")
    tokenizer = Tokenizer.from_pretrained(folder)
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f"{folder} has a WordPiece vocab.txt; a GPT-2 model needs its byte-level "
                         "BPE tokenizer (vocab.json + merges.txt)")
    model = GPT2LMHeadModel.from_pretrained(folder)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                         f"model's vocab_size is {model.config.vocab_size}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return LanguageModel(folder, model.to(device).eval(), tokenizer)


def _opened(model: LanguageModel | str | os.PathLike) -> LanguageModel:
    return model if isinstance(model, LanguageModel) else load_language_model(model)


def _generator(seed: int | None) -> torch.Generator | None:
    # A CPU generator: the same seed gives the same draws on every device.
    return None if seed is None else torch.Generator().manual_seed(seed)


@dataclass
class Piece:
    """One generated token and the text it completes (empty while a multi-byte character is
    still incomplete, or after a stop string)."""

    token_id: int
    text: str


class TextStream:
    """The continuation of one prompt, token by token: iterate for :class:`Piece` s; once the
    iteration ends, ``finish_reason`` is ``"eos"``, ``"stop"`` (a stop string, cut off) or
    ``"length"`` (``max_new_tokens``) and ``text`` the whole continuation.

    The prompt is checked when the stream is made: a prompt that leaves no room in the context,
    or a ``max_new_tokens`` beyond it, is a one-line ValueError before anything is generated."""

    def __init__(self, lm: LanguageModel, prompt: str, settings: GenerationSettings,
                 seed: int | None = None, stop: list[str] | None = None):
        self.lm, self.settings, self.seed = lm, settings, seed
        self.stops = StopStrings(stop, lm.decode) if stop else None
        self.prompt = lm.prompt_ids(prompt)
        lm.model.check_prompt(self.prompt, settings)
        self.text, self.finish_reason, self.tokens = "", None, 0

    def __iter__(self) -> Iterator[Piece]:
        lm, generated = self.lm, []
        eos = lm.model.config.eos_token_id
        for token in lm.model.stream(self.prompt, self.settings, _generator(self.seed),
                                     self.stops):
            if token == eos:
                self.finish_reason = "eos"
                return
            self.tokens += 1  # the tokens of the continuation (eos not counted)
            generated.append(token)
            text = lm.decode(generated)
            if self.stops is not None and self.stops.cut(text) != text:
                text, self.finish_reason = self.stops.cut(text), "stop"
            # An incomplete UTF-8 character decodes to U+FFFD: wait for its other bytes.
            new = "" if text.endswith("\ufffd") or len(text) <= len(self.text) else \
                text[len(self.text):]
            self.text += new
            yield Piece(token, new)
            if self.finish_reason == "stop":
                return
        self.finish_reason = "length"


def stream_text(model: LanguageModel | str | os.PathLike, prompt: str,
                settings: GenerationSettings | None = None, seed: int | None = None,
                stop: list[str] | None = None) -> Iterator[str]:
    """The continuation of ``prompt``, yielded piece by piece as tokens are chosen (see
    :class:`TextStream`; pieces that complete no character are skipped)."""
    settings = settings or GenerationSettings(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
    for piece in TextStream(_opened(model), prompt, settings, seed, stop):
        if piece.text:
            yield piece.text


def generate_text(model: LanguageModel | str | os.PathLike, prompt: str,
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, do_sample: bool = False,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  repetition_penalty: float = 1.0, seed: int | None = None,
                  stop: list[str] | None = None) -> str:
    """The continuation of ``prompt`` by the LM folder (or opened :class:`LanguageModel`):
    greedy by default; ``do_sample`` with ``temperature`` / ``top_k`` / ``top_p``, reproducible
    with ``seed``."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  repetition_penalty=repetition_penalty)
    return "".join(stream_text(model, prompt, settings, seed, stop))


def generate_command(model: str, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                     do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, repetition_penalty: float = 1.0,
                     seed: int | None = None, out: TextIO | None = None) -> str:
    """``bertkit generate``: print the continuation of ``prompt`` as it is generated (then a
    newline); returns it. Sampling options without ``do_sample`` are a ValueError (they would
    silently do nothing)."""
    if not do_sample and (temperature != 1.0 or top_k != 0 or top_p != 1.0 or seed is not None):
        raise ValueError("--temperature, --top-k, --top-p and --seed apply to sampling: add "
                         "--do-sample (greedy decoding is the default)")
    out = out or sys.stdout
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  repetition_penalty=repetition_penalty)
    pieces = []
    for piece in stream_text(model, prompt, settings, seed):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(pieces)
