"""The encoder an index is built with, and how an index knows it is the same one.

An index's vectors only mean something next to the model that made them: a query embedded by
another model lands somewhere unrelated, and the search still answers, confidently wrong. So
an index records its model's *fingerprint*: a sha256 over the files that decide the vectors
(config.json, the vocabulary and tokenizer settings, the weights, and the
sentence-transformers pooling files when there are any). The brief asked for config.json and
the vocabulary; the weights are in it too, because a fine-tuned copy of a model keeps both
and gives other vectors -- exactly the before/after pair a user compares. Hashing the weights
reads them once (about 0.2 s for all-MiniLM-L6-v2's 90 MB).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
from torch import nn

from bertkit.inference import embed, load_sentence_encoder
from bertkit.modeling.pooling import Pooling
from bertkit.tokenizer import Tokenizer

# The files whose bytes decide what vector a text gets (those of them a folder has).
FINGERPRINT_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json",
                     "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
                     os.path.join("1_Pooling", "config.json"))
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def model_fingerprint(folder: str) -> str:
    """sha256 over ``folder``'s config, vocabulary, tokenizer, pooling and weight files (name
    and bytes of each, in a fixed order): equal for two copies of a model, different after
    any change to what decides its vectors."""
    names = [n for n in FINGERPRINT_FILES if os.path.isfile(os.path.join(folder, n))]
    names += sorted(n for n in os.listdir(folder) if n.endswith(WEIGHT_SUFFIXES)
                    and os.path.isfile(os.path.join(folder, n)))
    if "config.json" not in names:
        raise FileNotFoundError(f"{folder} holds no config.json: it is not a model folder")
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.replace(os.sep, "/").encode() + b"\0")
        with open(os.path.join(folder, name), "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class Encoder:
    """A model folder loaded to embed documents and queries into unit-length vectors (so that
    an inner product is their cosine), pooled as the folder says (a sentence-transformers
    folder's ``1_Pooling``; else the mean over real tokens)."""
    folder: str
    model: nn.Module
    tokenizer: Tokenizer
    fingerprint: str
    pooling: Pooling

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_size

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dimension) float32 unit vectors, in the order of ``texts``."""
        vectors = embed(self.model, self.tokenizer, texts, batch_size=batch_size, normalize=True,
                        pooling=self.pooling)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)


def load_encoder(folder: str, device: str | None = None) -> Encoder:
    """Load the model folder ``folder`` as an :class:`Encoder` (any BERT folder: its encoder
    is used; :func:`bertkit.inference.load_sentence_encoder` reads its pooling)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    fingerprint = model_fingerprint(folder)
    model, tokenizer, pooling = load_sentence_encoder(folder, device=device)
    return Encoder(folder, model, tokenizer, fingerprint, pooling)
