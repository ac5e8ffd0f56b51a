"""Memory and time of sliding-window attention (Longformer mode) against full attention, at
1,024 / 2,048 / 4,096 tokens (issue 18).

One encoder (hidden 256, 4 heads, 2 layers, random weights) runs one forward pass of one
sequence in three ways: the sliding window of 512 tokens (256 each side) with the first token
global; full attention through SDPA (torch's fused kernel); full attention with the (T, T)
probabilities materialised (``output_attentions``, what an explicit implementation holds).
Each (mode, length) runs in a fresh process and reports the growth of the process's peak
resident memory during the forward pass and the median of 3 timed passes.

    python benchmarks/long_attention.py [--lengths 1024 2048 4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODES = ("window", "full-sdpa", "full-explicit")


def measure(mode: str, length: int, threads: int) -> dict:
    """One (mode, length) in this process: peak RSS growth (MiB) and median time (s)."""
    import torch  # only in the measuring child process

    from bertkit.config import RobertaConfig
    from bertkit.modeling.longformer import longformer_from_model
    from bertkit.modeling.roberta import RobertaModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=1024,
                           max_position_embeddings=length + 2, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    model = RobertaModel(config).eval()
    if mode == "window":
        model = longformer_from_model(model, attention_window=512)
    ids = torch.randint(5, 1000, (1, length))
    kwargs = {}
    if mode == "window":
        kwargs["global_attention_mask"] = torch.zeros_like(ids)
        kwargs["global_attention_mask"][:, 0] = 1
    if mode == "full-explicit":
        kwargs["output_attentions"] = True
    with torch.inference_mode():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model(ids, torch.ones_like(ids), **kwargs)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(3):
            started = time.perf_counter()
            model(ids, torch.ones_like(ids), **kwargs)
            times.append(time.perf_counter() - started)
    return {"mode": mode, "tokens": length, "peak_rss_growth_mib": round((peak - before) / 1024, 1),
            "seconds": round(statistics.median(times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.threads)))
        return
    print(f"{'mode':>14} {'tokens':>7} {'peak RSS growth':>16} {'time':>8}")
    for mode in MODES:
        for length in args.lengths:
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                  "--child", mode, str(length)], capture_output=True, text=True,
                                 check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(f"{mode:>14} {length:>7} {row['peak_rss_growth_mib']:>12.1f} MiB "
                  f"{row['seconds']:>7.3f}s", flush=True)


if __name__ == "__main__":
    main()
