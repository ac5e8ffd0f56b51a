"""Worker launched by tests/test_distributed.py under torchrun (2 processes, gloo on CPU).

    python -m torch.distributed.run --nproc_per_node 2 tests/_ddp_worker.py OUT_DIR

Each rank writes ``OUT_DIR/rank{r}.pt`` holding:
- "accum": a deterministic run (no dropout) with batch 2 x 2 micro-batches per rank: the
  gradients and parameters after update 1, the final parameters and the logged losses. The test
  compares them with one process training on batches of 8.
- "straight" / "resumed": a run with dropout and a random collator, trained 6 steps straight,
  and trained 3 steps + crash at step 5 + resume to 6 (the same final parameters and losses).
The model, data and collators are importable by the test for its single-process reference.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

VOCAB, T, N_EXAMPLES = 16, 5, 32


@dataclass
class Output:
    loss: torch.Tensor


class TinyModel(nn.Module):
    """Embedding -> dropout -> mean over T -> Linear; cross-entropy over 4 classes."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(8, 4)

    def forward(self, input_ids, labels):
        pooled = self.drop(self.emb(input_ids)).mean(1)  # (B, D)
        return Output(F.cross_entropy(self.head(pooled), labels))


def make_data() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (N_EXAMPLES, T), generator=g)
    return [{"input_ids": ids[i], "labels": ids[i, 0] % 4} for i in range(N_EXAMPLES)]


def collate(examples: list[dict]) -> dict:
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


def noisy_collate(examples: list[dict]) -> dict:
    batch = collate(examples)
    noise = torch.rand(batch["input_ids"].shape) < 0.2  # torch's global RNG, like MLM masking
    batch["input_ids"] = batch["input_ids"].masked_fill(noise, 0)
    return batch


def accum_config(out_dir: str, batch_size: int, accum: int):
    from bertkit.training import TrainingConfig
    return TrainingConfig(out_dir=out_dir, lr=0.05, batch_size=batch_size,
                          grad_accum_steps=accum, max_steps=12, log_every=1, save_every=0,
                          max_grad_norm=None, progress_bar=False, tensorboard=False, plot=False)


def run_accum(out_dir: str, batch_size: int, accum: int) -> dict:
    """Train the deterministic model; record gradients and parameters after update 1."""
    from bertkit.training import Trainer
    torch.manual_seed(0)
    model = TinyModel()
    record = {}

    def on_step(m, step):
        if step == 1:
            record["grads1"] = {n: p.grad.clone() for n, p in m.named_parameters()}
            record["params1"] = {n: p.detach().clone() for n, p in m.named_parameters()}

    result = Trainer(model, accum_config(out_dir, batch_size, accum), make_data(), collate,
                     on_step=on_step).train()
    record["final"] = {k: v.clone() for k, v in model.state_dict().items()}
    record["losses"] = [e["loss"] for e in result.log_history if e["event"] == "train"]
    record["checkpoint_dir"] = result.checkpoint_dir
    return record


class Crash(RuntimeError):
    pass


def run_dropout(out_dir: str, resume: bool = False, crash_at: int | None = None) -> dict:
    from bertkit.training import Trainer, TrainingConfig
    torch.manual_seed(1 if resume else 0)  # a resumed run must load the weights
    model = TinyModel(dropout=0.3)

    def on_step(m, step):
        if step == crash_at:
            raise Crash

    cfg = TrainingConfig(out_dir=out_dir, lr=0.05, batch_size=2, grad_accum_steps=2,
                         max_steps=6, save_every=3, eval_every=2, log_every=1, warmup_steps=2,
                         progress_bar=False, tensorboard=False, plot=False)
    eval_batch = collate(make_data()[:8])
    trainer = Trainer(model, cfg, make_data(), noisy_collate, on_step=on_step,
                      eval_fn=lambda m: {"eval_loss": m(**noisy_collate(make_data()[:8])).loss,
                                         "clean": m(**eval_batch).loss})
    result = trainer.train(resume_from=out_dir if resume else None)
    return {"final": {k: v.clone() for k, v in model.state_dict().items()},
            "losses": [e["loss"] for e in result.log_history if e["event"] == "train"],
            "evals": [e["eval_loss"] for e in result.log_history if e["event"] == "eval"]}


def main(out: Path) -> None:
    # The worker owns the process group, so the trainers below share it.
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {"world_size": dist.get_world_size(),
              "accum": run_accum(str(out / "accum"), batch_size=2, accum=2),
              "straight": run_dropout(str(out / "straight"))}
    try:
        run_dropout(str(out / "resumed"), crash_at=5)
    except Crash:
        pass
    result["resumed"] = run_dropout(str(out / "resumed"), resume=True)
    torch.save(result, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
