"""int8 vs fp32 inference on real weights (all-MiniLM-L6-v2), one process, interleaved.

The model is quantized in the process exactly as `bertkit quantize` does it (each layer
measured alone on a probe batch; the ones that move the output by more than
--max-layer-error stay fp32), then fp32 and int8 forwards alternate run by run on the same
padded batches, for each batch size x sequence length. Reported: real tokens per second of
each and the median of the per-pair time ratios (> 1: int8 is faster). With --data (a labelled
file of the folder's task) both models are also scored on it.

--model is a fine-tuned folder (e.g. `bertkit finetune --task classification` on MiniLM);
without it MiniLM gets a fresh 9-class head, which is fine for speed but its scores mean nothing.

Run:  python benchmarks/quantize.py --model minilm-clf --data bertkit-demo/task/dev.jsonl
      [--batch-sizes 1,8,32] [--lengths 32,128] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved, median_ratio, minilm_folder, print_table, varied_texts  # noqa: E402


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
            return names[0] if names else platform.processor()
    except OSError:
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a fine-tuned model folder (default: MiniLM, fresh head)")
    parser.add_argument("--data", help="a labelled file of the folder's task: probe + scores")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--lengths", default="32,128", help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-layer-error", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bertkit import BertForSequenceClassification, Tokenizer
    from bertkit.compress.quantize import data_probe, probe_batch, quantize_model
    from bertkit.inference import load_for_inference

    if args.model:
        model, tokenizer = load_for_inference(args.model, device="cpu")
        name = args.model
    else:
        if args.data:
            raise SystemExit("--data needs --model (a fine-tuned folder): a fresh head scores nothing")
        folder = minilm_folder()
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(folder, verbose=False, num_labels=9)
        tokenizer = Tokenizer.from_pretrained(folder)
        name = "all-MiniLM-L6-v2 + fresh 9-class head"
    if args.data:
        probe, _ = data_probe(args.model, args.data, 16)
    else:
        probe = probe_batch(tokenizer)
    quantized, report = quantize_model(model, probe, args.max_layer_error)

    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        for batch_size in (int(x) for x in args.batch_sizes.split(",")):
            # texts longer than `length` tokens, cut to it: every row is real tokens, no padding
            texts = varied_texts(batch_size, min_words=length, max_words=length, seed=length)
            batch = tokenizer(texts, max_length=length, truncation=True, padding=True)
            tokens = int(batch["attention_mask"].sum())
            with torch.inference_mode():
                times = interleaved({"fp32": lambda: model(**batch), "int8": lambda: quantized(**batch)},
                                    args.repeats)
            median = lambda ts: sorted(ts)[len(ts) // 2]  # noqa: E731
            rows.append([batch_size, batch["input_ids"].shape[1],
                         f"{tokens / median(times['fp32']):,.0f}",
                         f"{tokens / median(times['int8']):,.0f}",
                         f"{median_ratio(times['fp32'], times['int8']):.2f}x"])

    print(f"{name}; {cpu_name()}, {args.threads} threads, torch {torch.__version__} "
          f"(quantized engine {torch.backends.quantized.engine}); median of {args.repeats} "
          f"interleaved runs")
    total = len(report.quantized_modules) + len(report.fp32_modules)
    print(f"int8: {len(report.quantized_modules)} of {total} layers; kept fp32 (output error > "
          f"{report.max_layer_error:g} alone): {', '.join(report.fp32_modules) or 'none'}; "
          f"relative output error on the probe {report.output_error:.4f}\n")
    print_table(["batch", "tokens", "fp32 tokens/s", "int8 tokens/s", "int8 speed-up"], rows)

    if args.data:
        from bertkit.tasks import get_task
        from bertkit.tasks.evaluate import evaluate_folder
        from bertkit.tasks.folder import folder_task
        metric = get_task(folder_task(args.model)).default_metric
        scores = {label: 100 * evaluate_folder(args.model, args.data, device="cpu", model=m)[metric]
                  for label, m in (("fp32", model), ("int8", quantized))}
        print(f"\n{metric} on {args.data}: fp32 {scores['fp32']:.2f}, int8 {scores['int8']:.2f}, "
              f"delta {scores['int8'] - scores['fp32']:+.2f} points")


if __name__ == "__main__":
    main()
