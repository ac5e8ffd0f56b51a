"""Bi-encoder fine-tuning, bertkit against sentence-transformers, on the docstring retrieval set.

Both start from all-MiniLM-L6-v2 and train the same (query, positive) pairs with the same
loss (multiple-negatives ranking, scale 20), batch size, number of steps, learning rate,
schedule (linear, 10% warm-up), weight decay, gradient clipping, max length and seed;
sentence-transformers runs its own ``SentenceTransformerTrainer`` with
``MultipleNegativesRankingLoss``. Both fine-tuned folders, and the untrained model
(zero-shot), are then scored the same way on the test split: every test query against the
test corpus, by cosine (``bertkit evaluate --task retrieval``, whose numbers equal
sentence-transformers' InformationRetrievalEvaluator; tests/test_retrieval.py checks that).

The time compared is the training alone (the optimizer steps), not loading or evaluation.
These machines are shared and noisy: ``--repeats`` alternates the two and reports the median
time ratio. Needs ``datasets`` (sentence-transformers' trainer reads its data from one).

    python benchmarks/retrieval_train.py                    # 80 steps of batch 32, ~ minutes
    python benchmarks/retrieval_train.py --steps 120 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch

from common import minilm_folder

# benchmarks/peft.py would shadow the peft package that transformers' trainer imports.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

from bertkit.data.retrieval import docstring_retrieval_set, load_retrieval
from bertkit.tasks.evaluate import evaluate_folder
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from bertkit.training.trainer import TrainingConfig

METRICS = ("mrr@10", "ndcg@10", "recall@1", "recall@10")


def train_bertkit(data: dict, args, out: str) -> float:
    """Fine-tune with bertkit into ``out``; the training seconds."""
    cfg = FinetuneConfig("retrieval", minilm_folder(), data["train"], max_length=args.max_length)
    training = TrainingConfig(
        out_dir=out, seed=args.seed, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0, schedule="linear",
        save_every=0, progress_bar=False, tensorboard=False, plot=False)
    return run_finetuning(cfg, training).train.elapsed


def train_sentence_transformers(data: dict, args, out: str) -> float:
    """Fine-tune with sentence-transformers' trainer into ``out``; the training seconds."""
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    examples = load_retrieval(data["train"])
    dataset = Dataset.from_dict({"anchor": [ex.query for ex in examples],
                                 "positive": [ex.positive for ex in examples]})
    model = SentenceTransformer(minilm_folder(), device="cpu")
    model.max_seq_length = args.max_length
    arguments = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(out, "trainer"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, warmup_ratio=0.1,
        weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="linear", seed=args.seed,
        save_strategy="no", report_to=[], logging_steps=max(1, args.steps // 4),
        disable_tqdm=True, use_cpu=True, dataloader_drop_last=False)
    trainer = SentenceTransformerTrainer(model=model, args=arguments, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model, scale=20.0))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.save(out)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    root = tempfile.mkdtemp(prefix="retrieval-bench-")
    data = docstring_retrieval_set(os.path.join(root, "data"))
    print(f"docstring retrieval set: {data['counts']}", flush=True)
    scores = {"zero-shot": evaluate_folder(minilm_folder(), data["test"], device="cpu",
                                           task="retrieval")}
    times: dict[str, list[float]] = {"bertkit": [], "sentence-transformers": []}
    trainers = {"bertkit": train_bertkit, "sentence-transformers": train_sentence_transformers}
    for repeat in range(args.repeats):
        for name, train in trainers.items():
            out = os.path.join(root, f"{name}-{repeat}")
            times[name].append(train(data, args, out))
            print(f"{name}: trained {args.steps} steps in {times[name][-1]:.1f}s", flush=True)
            if repeat == 0:  # the same seed trains the same model again: score it once
                scores[name] = evaluate_folder(out, data["test"], device="cpu",
                                               task="retrieval")
    ratios = [b / s for b, s in zip(times["bertkit"], times["sentence-transformers"])]

    print(f"\ntest split: {data['counts']['test']} queries against their "
          f"{scores['zero-shot']['corpus_size']} documents; {args.steps} steps of batch "
          f"{args.batch_size}, lr {args.lr}, max_length {args.max_length}, seed {args.seed}\n")
    print("| model | " + " | ".join(METRICS) + " | training time |")
    print("| --- |" + " ---: |" * (len(METRICS) + 1))
    for name, metrics in scores.items():
        seconds = f"{statistics.median(times[name]):.0f}s" if name in times else "-"
        print(f"| {name} | " + " | ".join(f"{metrics[m]:.4f}" for m in METRICS)
              + f" | {seconds} |")
    print(f"\nbertkit / sentence-transformers training time: median ratio "
          f"{statistics.median(ratios):.2f} over {len(ratios)} pair(s)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "counts": data["counts"], "times": times,
                       "ratios": ratios, "scores": scores}, f, indent=2)


if __name__ == "__main__":
    main()
