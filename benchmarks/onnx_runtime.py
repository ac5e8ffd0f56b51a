"""Inference speed: bertkit in PyTorch vs the same model exported to ONNX in onnxruntime.

One process, the same weights and the same batches: the model folder (default
all-MiniLM-L6-v2) is exported with ``bertkit.compress.onnx.export_folder`` to a temporary
file, then each batch shape is run through both, alternating run by run. Reported per shape:
the max abs difference of the outputs at real tokens, the median time per batch, real (non-pad)
tokens per second, and the median of the per-pair time ratios (> 1: onnxruntime is faster).

Shapes: batch 1 of a short text (the serving case), batch 8 and batch 32 of varied-length
texts padded to the longest (unsorted: more padding than bertkit's length-sorted batches).

Run:  python benchmarks/onnx_runtime.py [--model DIR] [--repeats 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved, median_ratio, minilm_folder, print_table, varied_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="for both runtimes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime
    from bertkit.compress.onnx import export_folder
    from bertkit.runtime.onnx import OnnxModel
    from bertkit.inference import load_for_inference

    folder = args.model or minilm_folder()
    model, tokenizer = load_for_inference(folder, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_folder(folder, os.path.join(tmp, "model.onnx"))
        session = OnnxModel(exported.path, model.config, threads=args.threads)
        # The session has the graph in memory; the file is no longer needed.

    shapes = [("batch 1, short text", ["How do I reset my password?"]),
              ("batch 8, varied texts", varied_texts(8, seed=3)),
              ("batch 32, varied texts", varied_texts(32, seed=1))]
    rows = []
    for label, texts in shapes:
        batch = tokenizer(texts)
        real = batch["attention_mask"].bool()                                 # (B, T)
        with torch.inference_mode():
            want = model(**batch)
            got = session(**batch)
            diff = 0.0
            for name in exported.outputs:
                d = (getattr(want, name) - getattr(got, name)).abs()
                diff = max(diff, float((d[real] if d.dim() >= 2 and d.shape[:2] == real.shape
                                        else d).max()))
            times = interleaved({"torch": lambda: model(**batch), "onnx": lambda: session(**batch)},
                                args.repeats, warmup=2)
        tokens = int(real.sum())
        t_torch, t_onnx = statistics.median(times["torch"]), statistics.median(times["onnx"])
        rows.append([label, f"{tokens} / {real.numel()}", f"{t_torch * 1e3:.1f}",
                     f"{t_onnx * 1e3:.1f}", f"{tokens / t_torch:,.0f}", f"{tokens / t_onnx:,.0f}",
                     f"{median_ratio(times['torch'], times['onnx']):.2f}x", f"{diff:.1e}"])

    name = os.path.basename(os.path.normpath(folder)) if args.model else "all-MiniLM-L6-v2"
    print(f"{name} ({exported.architecture}, "
          f"{model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}), "
          f"{args.threads} threads; torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, opset {exported.opset}; median of {args.repeats} "
          f"interleaved runs\n")
    print_table(["batch", "real / padded tokens", "PyTorch ms", "onnxruntime ms",
                 "PyTorch tokens/s", "onnxruntime tokens/s", "onnxruntime speed-up",
                 "max abs diff"], rows)


if __name__ == "__main__":
    main()
