"""Fine-tuning recipes on the demo task with real all-MiniLM-L6-v2 weights: each technique alone
against the plain recipe, several seeds each, median and IQR of test accuracy, wall time, and
the TF-IDF + logistic-regression baseline on the same split.

The demo task ("which module family does this docstring come from?", 9 classes) is built from
the standard library, so the benchmark needs no downloads. Every recipe runs the same number
of optimizer steps from the same weights; only the technique differs.

    python benchmarks/finetune_recipes.py                       # plain, fgm, lr 2e-4, llrd, eda
    python benchmarks/finetune_recipes.py --recipes plain,pgd --seeds 0,1,2 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch

from common import minilm_folder

from bertkit.data.corpus import default_classification_task
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from bertkit.training.seeds import spread
from bertkit.training.trainer import TrainingConfig

# name -> (FinetuneConfig options, TrainingConfig options); lr 5e-5 unless the recipe says.
RECIPES = {
    "plain": ({}, {}),
    "lr 2e-4": ({}, {"lr": 2e-4}),
    "fgm": ({}, {"adversarial": "fgm"}),
    "pgd": ({}, {"adversarial": "pgd", "adversarial_steps": 2}),
    "llrd 0.8 + lr 2e-4": ({}, {"layer_lr_decay": 0.8, "lr": 2e-4}),
    "eda x1": ({"augment": {"methods": ("eda",), "n": 1}}, {}),
    "lr 2e-4 + fgm + llrd": ({}, {"lr": 2e-4, "adversarial": "fgm", "layer_lr_decay": 0.8}),
}


def run_recipe(name: str, task: dict, seed: int, args, root: str) -> tuple[float, float, float]:
    """(test accuracy, baseline accuracy, seconds) of one recipe and seed."""
    task_options, training_options = RECIPES[name]
    cfg = FinetuneConfig("classification", minilm_folder(), task["train"], task["dev"],
                         task["test"], max_length=args.max_length, **task_options)
    training = TrainingConfig(
        out_dir=os.path.join(root, f"{name.replace(' ', '_')}-{seed}"), seed=seed,
        epochs=args.epochs, batch_size=32, warmup_ratio=0.1, save_every=0, keep_last=1,
        progress_bar=False, tensorboard=False, plot=False,
        **{"lr": 5e-5, **training_options})
    start = time.perf_counter()
    result = run_finetuning(cfg, training)
    seconds = time.perf_counter() - start
    test = result.metrics["test"]
    return test["accuracy"], test["baseline"]["accuracy"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default="plain,lr 2e-4,fgm,llrd 0.8 + lr 2e-4,eda x1",
                        help=f"comma-separated names of: {' | '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.recipes.split(",")]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        task = default_classification_task(os.path.join(root, "task"))
        for name in names:
            runs = [run_recipe(name, task, seed, args, root) for seed in seeds]
            accuracy = spread([r[0] for r in runs])
            rows.append({"recipe": name, "median": accuracy["median"], "iqr": accuracy["iqr"],
                         "seconds": sorted(r[2] for r in runs)[len(runs) // 2],
                         "baseline": runs[0][1]})
    print(f"\nMiniLM-L6 on the demo task ({len(task['labels'])} classes), {args.epochs:g} "
          f"epoch(s), max_length {args.max_length}, {len(seeds)} seeds, "
          f"{args.threads} threads")
    print(f"| recipe | test accuracy median | IQR | wall time (median) |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['recipe']} | {row['median']:.4f} | {row['iqr']:.4f} | "
              f"{row['seconds']:.0f} s |")
    print(f"| TF-IDF + logistic regression (same split) | {rows[0]['baseline']:.4f} | - | - |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
