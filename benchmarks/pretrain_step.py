"""Pretraining step throughput: bertkit vs transformers' BertForPreTraining, one process.

One step = forward (MLM + NSP loss), backward, AdamW update, on the same config, the same
weights and the same masked batch (15% of tokens masked, as in pretraining). Before timing,
the two losses are checked to agree. Reported: tokens/s of each and their ratio (median of
interleaved runs).

Where bertkit's speed comes from: its MLM head projects onto the vocabulary only at the
masked positions (as the original BERT does), instead of at every position.

Run:  python benchmarks/pretrain_step.py [--sizes tiny mini small] [--batch-size 32]
                                         [--seq-len 128] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved, median_ratio, print_table  # noqa: E402


def make_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=g)
    labels = torch.full_like(input_ids, -100)
    chosen = torch.rand(batch_size, seq_len, generator=g) < 0.15
    labels[chosen] = input_ids[chosen]
    input_ids = input_ids.masked_fill(chosen, 4)  # [MASK]
    return {"input_ids": input_ids, "token_type_ids": torch.zeros_like(input_ids),
            "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "next_sentence_label": torch.randint(0, 2, (batch_size,), generator=g)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mini", "small"])
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import tempfile
    import transformers
    from bertkit import BertConfig, BertForPreTraining

    rows = []
    for size in args.sizes:
        config = BertConfig.from_size(size, vocab_size=args.vocab_size, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
        ours = BertForPreTraining(config)
        with tempfile.TemporaryDirectory() as folder:  # the same weights in both
            ours.save_pretrained(folder)
            theirs = transformers.BertForPreTraining.from_pretrained(folder, attn_implementation="sdpa")
        ours.train()
        theirs.train()
        batch = make_batch(args.vocab_size, args.batch_size, args.seq_len)
        hf_batch = {k: v for k, v in batch.items()}
        with torch.no_grad():
            diff = abs(float(ours(**batch).loss) - float(theirs(**hf_batch).loss))
        if diff > 1e-4:
            raise SystemExit(f"{size}: losses disagree by {diff:.2e}")

        def stepper(model, optimizer, inputs):
            def step():
                optimizer.zero_grad(set_to_none=True)
                model(**inputs).loss.backward()
                optimizer.step()
            return step

        # The same optimizer for both (torch's fused AdamW), so the model is what differs.
        opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True)
        opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4, fused=True)
        times = interleaved({"bertkit": stepper(ours, opt_ours, batch),
                             "transformers": stepper(theirs, opt_theirs, hf_batch)}, args.repeats)
        tokens = args.batch_size * args.seq_len
        median = lambda ts: sorted(ts)[len(ts) // 2]  # noqa: E731
        rows.append([f"{size} ({config.num_hidden_layers}x{config.hidden_size})",
                     f"{tokens / median(times['bertkit']):,.0f}",
                     f"{tokens / median(times['transformers']):,.0f}",
                     f"{median_ratio(times['transformers'], times['bertkit']):.2f}x"])

    print(f"pretraining step (forward + backward + AdamW), batch {args.batch_size} x "
          f"{args.seq_len} tokens, vocab {args.vocab_size}, {args.threads} threads, torch "
          f"{torch.__version__}, transformers {transformers.__version__}; median of "
          f"{args.repeats} interleaved runs\n")
    print_table(["model", "bertkit tokens/s", "transformers tokens/s", "ratio"], rows)


if __name__ == "__main__":
    main()
