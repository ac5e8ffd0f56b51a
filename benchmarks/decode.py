"""Decoding speed of TransformerSeq2Seq.generate with and without the key/value cache.

Without the cache every step runs the decoder over the whole prefix again (and recomputes the
cross-attention keys/values of the source); with it every step runs one new position against
cached keys/values. Both produce the same tokens: the script checks that before timing.

The model is a randomly initialised seq2seq model of a preset size (weights do not change the
cost); ``min_length = max_length`` forces every output to be exactly ``--length`` tokens.
Reported: output tokens per second (batch x length / seconds; a beam search also decodes K
hypotheses per output), the median over ``--repeats`` interleaved runs, and the median of the
per-pair speed-ups.

Run:  python benchmarks/decode.py [--size small] [--batch-size 8] [--source-length 32]
                                  [--length 64] [--beams 1 4] [--repeats 3] [--threads 2]
                                  [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved, median_ratio, print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", help="Seq2SeqConfig preset: tiny|small|base|big")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--source-length", type=int, default=32)
    parser.add_argument("--length", type=int, default=64, help="generated tokens per output")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bertkit.modeling.seq2seq import Seq2SeqConfig, TransformerSeq2Seq

    torch.manual_seed(0)
    config = Seq2SeqConfig.from_size(args.size, vocab_size=args.vocab_size,
                                     max_position_embeddings=max(512, args.length))
    model = TransformerSeq2Seq(config).to(args.device).eval()
    ids = torch.randint(5, args.vocab_size, (args.batch_size, args.source_length),
                        device=args.device)                                  # (B, S)
    mask = torch.ones_like(ids)
    print(f"model: {args.size} ({model.num_parameters() / 1e6:.1f}M parameters, d_model "
          f"{config.d_model}, {config.encoder_layers}+{config.decoder_layers} layers), device "
          f"{args.device}, {args.threads} thread(s); batch {args.batch_size}, source "
          f"{args.source_length} tokens, output {args.length} tokens")

    rows = []
    for beams in args.beams:
        def run(use_cache: bool, beams: int = beams):
            out = model.generate(ids, mask, max_length=args.length, min_length=args.length,
                                 num_beams=beams, use_cache=use_cache)
            if args.device != "cpu":
                torch.cuda.synchronize()
            return out

        cached, full = run(True), run(False)
        if not torch.equal(cached.sequences, full.sequences):
            raise SystemExit(f"beam {beams}: cached and uncached decoding disagree")
        if cached.sequences.size(1) != args.length:
            raise SystemExit(f"expected {args.length}-token outputs, got "
                             f"{cached.sequences.size(1)}")
        times = interleaved({"no cache": lambda: run(False), "cache": lambda: run(True)},
                            args.repeats, warmup=0)
        tokens = args.batch_size * args.length
        name = "greedy" if beams == 1 else f"beam {beams}"
        rows.append([name, f"{tokens / statistics.median(times['no cache']):.0f}",
                     f"{tokens / statistics.median(times['cache']):.0f}",
                     f"{median_ratio(times['no cache'], times['cache']):.1f}x"])
    print_table(["decoding", "tokens/s without cache", "tokens/s with cache", "speed-up"], rows)


if __name__ == "__main__":
    main()
