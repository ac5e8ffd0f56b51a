"""The unpadded encoder (issue 13): one forward pass over 32 unsorted varied-length real texts,
bertkit (packed real tokens, the default) vs transformers (attn_implementation="sdpa"), in one
process, the sides alternated run by run; bertkit's padded path beside them for reference.

Rows:
1. all-MiniLM-L6-v2 (real weights) on the demo task's texts (``default_classification_task``:
   docstring openings of up to 400 characters), in file order, padded to the longest.
2. the same texts through a bert-base-shaped model (12 x 768, random weights, both sides the
   same weights).
3. real tokens/s of row 1 as a share of transformers' throughput on a 32 x 128 batch with no
   padding at all (the ceiling a padded implementation reaches only on such a batch).

Outputs are checked equal (real positions, max abs diff <= 1e-4) before anything is timed.

Run:  python benchmarks/unpadded.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import torch
import transformers

from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.data.corpus import default_classification_task
from bertkit.modeling.bert import padded_path

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved, median_ratio, minilm_folder, print_table  # noqa: E402

TEXTS = 32
MAX_LENGTH = 128


def demo_texts(n: int) -> list[str]:
    """The first ``n`` texts of the demo task's training file, unsorted."""
    with tempfile.TemporaryDirectory() as folder:
        task = default_classification_task(folder)
        with open(task["train"], encoding="utf-8") as f:
            return [json.loads(line)["text"] for line, _ in zip(f, range(n))]


def check_equal(ours, theirs, batch) -> float:
    """Max abs diff of last_hidden_state at real positions; raises if above 1e-4."""
    real = batch["attention_mask"].bool()                                     # (B, T)
    with torch.inference_mode():
        mine = ours(**batch).last_hidden_state
        ref = theirs(**batch).last_hidden_state
        with padded_path(ours):
            padded = ours(**batch).last_hidden_state
    diff = max((mine - ref)[real].abs().max().item(), (mine - padded)[real].abs().max().item())
    if not diff <= 1e-4:
        raise SystemExit(f"outputs differ: max abs diff {diff:.3g} at real positions")
    return diff


def race(ours, theirs, batch, repeats: int) -> dict[str, list[float]]:
    """Seconds per forward of bertkit unpadded, bertkit padded, transformers, alternated."""

    def unpadded():
        with torch.inference_mode():
            ours(**batch)

    def padded():
        with torch.inference_mode(), padded_path(ours):
            ours(**batch)

    def reference():
        with torch.inference_mode():
            theirs(**batch)

    return interleaved({"bertkit": unpadded, "bertkit padded": padded, "transformers": reference},
                       repeats)


def row(name: str, times: dict[str, list[float]], real_tokens: int, diff: float) -> list[object]:
    med = {k: statistics.median(v) for k, v in times.items()}
    return [name, f"{med['transformers'] * 1e3:.0f}", f"{med['bertkit padded'] * 1e3:.0f}",
            f"{med['bertkit'] * 1e3:.0f}", f"{real_tokens / med['bertkit']:.0f}",
            f"{median_ratio(times['transformers'], times['bertkit']):.2f}x", f"{diff:.1e}"]


def bert_base_pair(folder: str):
    """(bertkit, transformers) bert-base-shaped models with the same random weights."""
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    ours = BertModel.from_pretrained(folder, verbose=False).eval()
    theirs = transformers.BertModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)


    folder = minilm_folder()
    tok = Tokenizer.from_pretrained(folder)
    batch = tok(demo_texts(TEXTS), max_length=MAX_LENGTH, truncation=True)
    real_tokens = int(batch["attention_mask"].sum())
    shape = tuple(batch["input_ids"].shape)
    ours = BertModel.from_pretrained(folder, verbose=False).eval()
    theirs = transformers.BertModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    rows = [row(f"MiniLM-L6, {shape[0]} demo texts", race(ours, theirs, batch, args.repeats),
                real_tokens, check_equal(ours, theirs, batch))]

    full = {k: torch.ones(TEXTS, MAX_LENGTH, dtype=torch.long) for k in ("attention_mask",)}
    full["input_ids"] = torch.randint(1000, 29000, (TEXTS, MAX_LENGTH))
    full["token_type_ids"] = torch.zeros(TEXTS, MAX_LENGTH, dtype=torch.long)
    ceiling = interleaved({"transformers": lambda: _forward(theirs, full)}, args.repeats)
    ceiling_tps = TEXTS * MAX_LENGTH / statistics.median(ceiling["transformers"])

    with tempfile.TemporaryDirectory() as base_folder:
        base, base_ref = bert_base_pair(base_folder)
        rows.append(row("bert-base shape (random), same texts",
                        race(base, base_ref, batch, max(3, args.repeats // 2)), real_tokens,
                        check_equal(base, base_ref, batch)))

    print(f"batch {shape[0]} x {shape[1]}: {real_tokens} real tokens "
          f"({100 * real_tokens / (shape[0] * shape[1]):.0f}% of positions); "
          f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.threads} threads, median of {args.repeats} alternated runs\n")
    print_table(["model", "transformers ms", "bertkit padded ms", "bertkit ms",
                 "bertkit real tok/s", "speed-up vs transformers", "max diff"], rows)
    bertkit_tps = float(rows[0][4])
    print(f"\ntransformers, 32 x 128 with no padding: {ceiling_tps:.0f} tok/s; bertkit on the "
          f"varied batch: {bertkit_tps:.0f} real tok/s = {100 * bertkit_tps / ceiling_tps:.0f}%")


def _forward(model, batch) -> None:
    with torch.inference_mode():
        model(**batch)


if __name__ == "__main__":
    main()
