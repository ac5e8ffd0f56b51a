"""Inference throughput: bertkit vs transformers on real weights (all-MiniLM-L6-v2), one process.

Two measurements, each reported as real (non-pad) tokens per second:

1. forward  - the same padded batch of varied-length texts through bertkit's BertModel and
              transformers' BertModel (attn_implementation="sdpa"), after checking that the
              outputs agree (max abs diff of last_hidden_state over every position).
2. pipeline - texts -> sentence embeddings in batches of --batch-size: bertkit's
              ``bertkit.inference.embed`` (length-sorted batches) vs the usual transformers loop
              (tokenizer + model on batches in the given order, mean pooling).

Run:  python benchmarks/inference.py [--texts 256] [--batch-size 32] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved, median_ratio, minilm_folder, print_table, varied_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256, help="texts in the pipeline run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers
    from bertkit import BertModel, Tokenizer
    from bertkit.inference import embed, mean_pool

    folder = minilm_folder()
    ours = BertModel.from_pretrained(folder, verbose=False).eval()
    theirs = transformers.BertModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    tokenizer = Tokenizer.from_pretrained(folder)
    hf_tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)

    # 1. the same padded batch
    texts = varied_texts(args.batch_size, seed=1)
    batch = tokenizer(texts)
    real_tokens = int(batch["attention_mask"].sum())
    with torch.inference_mode():
        diff = (ours(**batch).last_hidden_state - theirs(**batch).last_hidden_state).abs().max()
        if diff > 1e-4:
            raise SystemExit(f"outputs disagree: max abs diff {diff:.2e}")
        forward = interleaved({"bertkit": lambda: ours(**batch), "transformers": lambda: theirs(**batch)},
                              args.repeats)

    # 2. texts -> embeddings
    corpus = varied_texts(args.texts, seed=2)

    def hf_embed():
        out = []
        for start in range(0, len(corpus), args.batch_size):
            b = hf_tokenizer(corpus[start:start + args.batch_size], padding=True, truncation=True,
                             return_tensors="pt")
            out.append(mean_pool(theirs(**b).last_hidden_state, b["attention_mask"]))
        return torch.cat(out)

    with torch.inference_mode():
        ref = hf_embed()
        got = embed(ours, tokenizer, corpus, batch_size=args.batch_size)
        diff2 = (ref - got).abs().max()
        if diff2 > 1e-4:
            raise SystemExit(f"embeddings disagree: max abs diff {diff2:.2e}")
        pipeline = interleaved({"bertkit": lambda: embed(ours, tokenizer, corpus, batch_size=args.batch_size),
                                "transformers": hf_embed}, args.repeats)
    corpus_tokens = sum(len(ids) + 2 for ids in tokenizer.encode_plain(corpus))

    def tps(tokens, times):
        return f"{tokens / (sorted(times)[len(times) // 2]):,.0f}"

    print(f"all-MiniLM-L6-v2, {args.threads} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; median of {args.repeats} interleaved runs")
    print(f"forward: batch {args.batch_size}, {real_tokens} real of {batch['input_ids'].numel()} "
          f"padded tokens, max abs diff {diff:.1e}; pipeline: {args.texts} texts, max abs diff {diff2:.1e}\n")
    print_table(["measure", "bertkit tokens/s", "transformers tokens/s", "ratio"], [
        ["forward (same padded batch)", tps(real_tokens, forward["bertkit"]),
         tps(real_tokens, forward["transformers"]),
         f"{median_ratio(forward['transformers'], forward['bertkit']):.2f}x"],
        ["pipeline (texts -> embeddings)", tps(corpus_tokens, pipeline["bertkit"]),
         tps(corpus_tokens, pipeline["transformers"]),
         f"{median_ratio(pipeline['transformers'], pipeline['bertkit']):.2f}x"],
    ])


if __name__ == "__main__":
    main()
