"""Helpers for the monitoring tests: a tiny sentiment classifier fine-tuned in seconds on a
keyword task (so that its predictions follow the texts), synthetic streams, /metrics parsing.
"""

from __future__ import annotations

import json
import random

import torch

from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from bertkit.training.trainer import TrainingConfig

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FILLER = ("the a of to and in is was it this that on with for as at by from very film movie "
          "story").split()
POSITIVE, NEGATIVE = ["great", "excellent", "good"], ["awful", "boring", "bad"]
VOCAB = SPECIALS + FILLER + POSITIVE + NEGATIVE
# Words of another distribution: none is in VOCAB (nor are their letters): all [UNK].
FOREIGN = ["zebra", "quantum", "xylophone", "jukebox", "wizard", "kumquat", "vortex", "pyjama"]
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


def sentence(rng: random.Random, negative: bool, filler: tuple[int, int] = (3, 9)) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(*filler))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(NEGATIVE if negative else POSITIVE))
    return " ".join(words)


def foreign_sentence(rng: random.Random) -> str:
    """A long text of out-of-vocabulary words: another distribution than the training data."""
    return " ".join(rng.choice(FOREIGN) for _ in range(rng.randint(25, 35)))


def labelled(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        label = rng.choice(["negative", "positive"])
        records.append({"text": sentence(rng, label == "negative"), "label": label})
    return records


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def finetune_sentiment(root) -> dict:
    """Fine-tune a tiny BERT (hidden 32, 2 layers) on the keyword task: ~10 s on one core.
    Returns the paths: base, train, dev, out (the fine-tuned folder)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=37)
    BertModel(config).save_pretrained(root / "base")
    Tokenizer.from_vocab(VOCAB).save_pretrained(root / "base")
    paths = {"base": str(root / "base"), "out": str(root / "out"),
             "train": write_jsonl(root / "train.jsonl", labelled(200, 0)),
             "dev": write_jsonl(root / "dev.jsonl", labelled(40, 1))}
    training = TrainingConfig(out_dir=paths["out"], lr=3e-3, batch_size=16, epochs=6,
                              warmup_ratio=0.1, save_every=0, progress_bar=False,
                              tensorboard=False, plot=False, seed=0)
    run_finetuning(FinetuneConfig("classification", paths["base"], paths["train"], paths["dev"]),
                   training)
    return paths


def stream(windows: int, per_window: int, share: callable, seed: int, window_s: int = 300,
           field: str = "ts") -> list[dict]:
    """Records spread evenly over ``windows`` windows of ``window_s`` seconds from T0 (aligned
    to a window start); ``share(i)`` is the chance that record i is negative."""
    rng = random.Random(seed)
    start = T0 - T0 % window_s
    n = windows * per_window
    return [{"text": sentence(rng, rng.random() < share(i)), field: start + i * window_s / per_window}
            for i in range(n)]


def metric_values(text: str) -> dict:
    """{(sample name, sorted labels): value} of a /metrics scrape."""
    from prometheus_client.parser import text_string_to_metric_families
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values
