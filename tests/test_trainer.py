"""Tests of the Trainer on a tiny model defined here (no dependency on bertkit's BERT).

Each test checks behaviour against an independent reference: hand-computed schedule values, a
big-batch gradient computed directly with autograd, a run that never stopped, files parsed back
with their own readers (json, TensorBoard's event reader, safetensors).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from bertkit.training import (LRSchedule, ShardedBatchSampler, Trainer, TrainingConfig,
                              find_checkpoint, param_groups, parse_duration,
                              resolve_mixed_precision, unwrap_model)
from bertkit.data import PaddingCollator
from bertkit.training.trainer import PLAN_STEPS, STATE_FILE, EvalPrediction, planned_steps

VOCAB, T = 32, 6


@dataclass
class TinyOutput:
    loss: torch.Tensor
    logits: torch.Tensor


class TinyClassifier(nn.Module):
    """Embedding -> dropout -> LayerNorm -> masked mean over T -> Linear; cross-entropy loss."""

    def __init__(self, dropout: float = 0.1, classes: int = 3, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, labels, attention_mask=None):
        h = self.norm(self.drop(self.emb(input_ids)))           # (B, T, D)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D)
        logits = self.head(pooled)                               # (B, C)
        return TinyOutput(F.cross_entropy(logits, labels), logits)


def make_data(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, T), generator=g)
    return [{"input_ids": ids[i], "label": int(ids[i, 0]) % 3} for i in range(n)]


def collate(examples: list[dict]) -> dict:
    ids = torch.stack([e["input_ids"] for e in examples])        # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.tensor([e["label"] for e in examples])}


def noisy_collate(examples: list[dict]) -> dict:
    """Like an MLM collator: replaces 20% of tokens with 0, drawing from torch's global RNG."""
    batch = collate(examples)
    noise = torch.rand(batch["input_ids"].shape) < 0.2
    batch["input_ids"] = batch["input_ids"].masked_fill(noise, 0)
    return batch


class Crash(RuntimeError):
    pass


def config(tmp_path: Path, name: str = "run", **kw) -> TrainingConfig:
    base = dict(out_dir=str(tmp_path / name), lr=1e-2, batch_size=4, log_every=1,
                save_every=0, progress_bar=False, tensorboard=False, plot=False)
    base.update(kw)
    return TrainingConfig(**base)


def train_events(history, event="train"):
    return [e for e in history if e["event"] == event]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("text, seconds", [
    ("10m", 600.0), ("90s", 90.0), ("1h30m", 5400.0), ("45", 45.0), (2.5, 2.5),
    ("1h 2m 3s", 3723.0), ("0.5h", 1800.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "", "m", "1m1h", "-5", "0s"])
def test_parse_duration_errors(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="TrainingConfig.schedule"):
        TrainingConfig(schedule="step")
    with pytest.raises(ValueError, match="TrainingConfig.mixed_precision"):
        TrainingConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="TrainingConfig.batch_size"):
        TrainingConfig(batch_size=0)
    with pytest.raises(ValueError, match="warmup_steps or warmup_ratio"):
        TrainingConfig(warmup_steps=10, warmup_ratio=0.1)
    with pytest.raises(ValueError, match="cannot parse duration"):
        TrainingConfig(time_budget="ten minutes")
    assert TrainingConfig(time_budget="2m").time_budget == 120.0
    with pytest.raises(ValueError, match="no field.*'bogus'"):
        TrainingConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="max_steps, epochs, time_budget"):
        Trainer(TinyClassifier(), config(tmp_path), make_data(8), collate)


def test_model_without_loss_and_bad_metric_name_are_explained(tmp_path):
    class NoLoss(TinyClassifier):
        def forward(self, input_ids, labels, attention_mask=None):
            return {"logits": super().forward(input_ids, labels).logits}

    with pytest.raises(ValueError, match="without a tensor .loss"):
        Trainer(NoLoss(), config(tmp_path, max_steps=1), make_data(8), collate).train()
    trainer = Trainer(TinyClassifier(), config(tmp_path, "m", max_steps=1, metric_for_best="f1"),
                      make_data(8), collate, eval_fn=lambda m: {"accuracy": 0.5})
    with pytest.raises(ValueError, match=r"metric_for_best='f1' is not among .*accuracy"):
        trainer.train()


def test_mixed_precision_auto_is_fp32_on_cpu():
    assert resolve_mixed_precision("auto", torch.device("cpu")) == "no"
    assert resolve_mixed_precision("bf16", torch.device("cpu")) == "bf16"


# ----------------------------------------------------------------------------- optimizer, schedule


def lrs_of(schedule: LRSchedule, steps: int, lr: float = 1.0) -> list[float]:
    """lr of updates 0..steps-1, read from a real optimizer driven by LambdaLR."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_match_hand_computation():
    # W = 2 warmup, T = 6 total: warmup (s+1)/W, then decay to 0 at step T.
    assert lrs_of(LRSchedule("linear", 2, total_steps=6), 7) == pytest.approx(
        [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    c = [0.5 * (1 + math.cos(math.pi * p)) for p in (0, 0.25, 0.5, 0.75, 1.0)]
    assert lrs_of(LRSchedule("cosine", 2, total_steps=6), 7) == pytest.approx([0.5, 1.0, *c])
    assert lrs_of(LRSchedule("constant", 4), 6) == pytest.approx([.25, .5, .75, 1, 1, 1])
    # warmup_ratio 0.25 of T = 8 -> W = 2.
    assert lrs_of(LRSchedule("linear", warmup_ratio=0.25, total_steps=8), 4) == pytest.approx(
        [0.5, 1.0, 1.0, 5 / 6])
    # inverse_sqrt against Vaswani et al.'s formula divided by its peak (d_model cancels).
    d, w = 512, 4
    vaswani = [d ** -0.5 * min(u ** -0.5, u * w ** -1.5) for u in range(1, 13)]
    expected = [v / (d ** -0.5 * w ** -0.5) for v in vaswani]
    assert lrs_of(LRSchedule("inverse_sqrt", w), 12, lr=3e-4) == pytest.approx(
        [3e-4 * e for e in expected])
    assert expected[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert expected[8] == pytest.approx(2 / 3)  # sqrt(4 / 9)
    # Unplanned total (time budget still being measured): decay holds 1, ratio warmup is 0.
    assert lrs_of(LRSchedule("linear", 0), 3) == [1.0, 1.0, 1.0]
    assert lrs_of(LRSchedule("cosine", warmup_ratio=0.1), 2) == [0.0, 0.0]


def test_weight_decay_skips_biases_and_layernorm_and_frozen_params():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.proj = nn.Linear(4, 4)
            self.LayerNorm = nn.LayerNorm(4)
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight  # tied: must appear once

    groups = param_groups(Net(), weight_decay=0.01)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert groups[0]["param_names"] == ["emb.weight", "proj.weight"]
    assert groups[1]["param_names"] == ["proj.bias", "LayerNorm.weight", "LayerNorm.bias"]
    opt = torch.optim.AdamW(groups, lr=1.0)
    assert sum(len(g["params"]) for g in opt.param_groups) == 5


# ----------------------------------------------------------------------------- accumulation


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    """4 micro-batches of 2 give the gradients and the update of one batch of 8, and both equal
    a big-batch gradient computed directly with autograd (clipped by hand when clipping)."""
    data = make_data(8)
    torch.manual_seed(0)
    init = TinyClassifier(dropout=0.0)
    ref = copy.deepcopy(init)
    ref(**collate(data)).loss.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    norm = torch.sqrt(sum((g ** 2).sum() for g in ref_grads.values()))
    seen = {}

    def run(name, batch_size, accum, max_grad_norm):
        def record(m, step):
            seen[name] = ({n: p.grad.clone() for n, p in m.named_parameters()},
                          {n: p.detach().clone() for n, p in m.named_parameters()})

        cfg = config(tmp_path, name, batch_size=batch_size, grad_accum_steps=accum, max_steps=1,
                     max_grad_norm=max_grad_norm, weight_decay=0.1)
        Trainer(copy.deepcopy(init), cfg, data, collate, on_step=record).train()

    run("accum", 2, 4, max_grad_norm=100.0)  # clipping inactive: gradients compared as they are
    run("big", 8, 1, max_grad_norm=100.0)
    run("clipped", 2, 4, max_grad_norm=0.5 * float(norm))
    for name, grad in ref_grads.items():
        torch.testing.assert_close(seen["accum"][0][name], grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(seen["big"][0][name], grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(seen["accum"][1][name], seen["big"][1][name], rtol=0, atol=1e-6)
        torch.testing.assert_close(seen["clipped"][0][name], grad * 0.5 * norm / (norm + 1e-6),
                                   rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- resume


def test_resume_is_bit_identical_after_crash_or_clean_stop(tmp_path):
    """8 steps straight == 3 steps, crash at 5, resume to 8 == 5 steps, clean stop, resume to 8:
    same losses, evaluations and weights.

    The model has dropout and the collator draws masks from torch's RNG; 5 batches per epoch
    with 2 micro-batches per update, so updates straddle epochs and checkpoints sit mid-epoch;
    the checkpoint at 3 falls inside a log window (2 steps). The clean stop adds an evaluation
    (with its own random masks) the straight run does not have.
    """
    data, eval_data = make_data(20), collate(make_data(8, seed=1))

    def eval_fn(model):
        noisy = dict(eval_data, input_ids=eval_data["input_ids"].masked_fill(
            torch.rand(eval_data["input_ids"].shape) < 0.2, 0))
        return {"eval_loss": model(**noisy).loss}

    def run(name, resume=False, crash_at=None, stop_at=None, seed=0):
        torch.manual_seed(seed)
        model = TinyClassifier(dropout=0.2)

        def on_step(m, step):
            if step == crash_at:
                raise Crash
            return step == stop_at

        cfg = config(tmp_path, name, grad_accum_steps=2, max_steps=8, save_every=3, eval_every=3,
                     warmup_steps=2, log_every=2)
        trainer = Trainer(model, cfg, data, noisy_collate, eval_fn=eval_fn, on_step=on_step)
        return trainer.train(resume_from=tmp_path / name if resume else None), model

    def evals(result):
        return {e["step"]: e["eval_loss"] for e in train_events(result.log_history, "eval")}

    straight, straight_model = run("straight")
    assert [e["step"] for e in train_events(straight.log_history)] == [2, 4, 6, 8]
    assert list(evals(straight)) == [3, 6, 8]

    with pytest.raises(Crash):
        run("crashed", crash_at=5)
    run_dir = tmp_path / "crashed"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-3"
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in train_events(logged)] == [2, 4]
    stopped, _ = run("stopped", stop_at=5)
    assert (stopped.stop_reason, stopped.steps, list(evals(stopped))) == ("callback", 5, [3, 5])

    for name in ("crashed", "stopped"):
        resumed, resumed_model = run(name, resume=True, seed=123)  # other init: must load
        assert resumed.steps == 8
        assert [e["loss"] for e in train_events(resumed.log_history)] == \
            [e["loss"] for e in train_events(straight.log_history)]
        assert [e["lr"] for e in train_events(resumed.log_history)] == \
            [e["lr"] for e in train_events(straight.log_history)]
        assert {s: v for s, v in evals(resumed).items() if s != 5} == evals(straight)
        for (n, a), b in zip(straight_model.state_dict().items(),
                             resumed_model.state_dict().values()):
            assert torch.equal(a, b), (name, n)
        assert resumed.epochs == pytest.approx(16 / 5)
    # metrics.jsonl was rewritten from the checkpoint: step 4 of the crashed run appears once.
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in train_events(logged)] == [2, 4, 6, 8]


# ----------------------------------------------------------------------------- checkpoints


def test_keep_last_and_leftover_temp_dirs_are_ignored(tmp_path):
    cfg = config(tmp_path, max_steps=5, save_every=1, keep_last=2)
    result = Trainer(TinyClassifier(), cfg, make_data(8), collate).train()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-4", "step-5"]
    assert result.checkpoint_dir == str(root / "step-5")
    assert set(load_file(root / "step-5" / "model.safetensors")) == \
        set(TinyClassifier().state_dict())

    # A save killed half way: a temp folder with a broken state file.
    (root / ".tmp-step-6").mkdir()
    (root / ".tmp-step-6" / STATE_FILE).write_bytes(b"\x00garbage")
    assert find_checkpoint(tmp_path / "run") == root / "step-5"
    (root / "latest").unlink()
    assert find_checkpoint(tmp_path / "run") == root / "step-5"  # newest complete one
    (root / "latest").write_text("step-9\n")
    with pytest.warns(UserWarning, match="not a complete checkpoint"):
        assert find_checkpoint(root) == root / "step-5"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        find_checkpoint(tmp_path / "empty")


def test_crash_while_saving_keeps_latest_complete(tmp_path):
    def dying_save(model, folder):
        torch.save(model.state_dict(), Path(folder) / "partial.bin")
        if folder.endswith("step-3"):
            raise Crash("killed while saving")

    cfg = config(tmp_path, max_steps=4, save_every=1, keep_last=None)
    with pytest.raises(Crash):
        Trainer(TinyClassifier(), cfg, make_data(8), collate, save_fn=dying_save).train()
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-2"
    assert not (root / "step-3").exists() and (root / ".tmp-step-3").exists()
    result = Trainer(TinyClassifier(), cfg, make_data(8), collate).train(resume_from=root.parent)
    assert result.steps == 4
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-1", "step-2", "step-3",
                                                      "step-4"]


def test_saved_keys_have_no_wrapper_prefix(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier()
    compiled = torch.compile(model, backend="eager")
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    trainer = Trainer(compiled, config(tmp_path, max_steps=2), make_data(8), collate)
    assert unwrap_model(compiled) is model and trainer.model is model
    result = trainer.train()
    folder = Path(result.checkpoint_dir)
    expected = set(model.state_dict())
    assert set(load_file(folder / "model.safetensors")) == expected
    assert set(torch.load(folder / STATE_FILE, weights_only=True)["model"]) == expected


# ----------------------------------------------------------------------------- stopping


def test_time_budget_plans_schedule_and_stops_cleanly(tmp_path):
    def slow_collate(examples):
        time.sleep(0.03)
        return collate(examples)

    budget = 1.0
    cfg = config(tmp_path, time_budget=budget, lr=1e-2)
    result = Trainer(TinyClassifier(), cfg, make_data(16), slow_collate).train()
    assert result.stop_reason == "time_budget"
    plan = train_events(result.log_history, "plan")
    assert len(plan) == 1
    # Planned after 1 + PLAN_STEPS updates, by the documented rule.
    assert plan[0]["step"] == 1 + PLAN_STEPS and plan[0]["step_time"] >= 0.03
    total = plan[0]["step"] + math.floor((budget - plan[0]["elapsed"]) / plan[0]["step_time"])
    assert plan[0]["planned_steps"] == total
    # Stopped at the planned total or when the clock ran out, whichever came first.
    assert result.steps == total or budget <= result.elapsed < budget + 0.5
    assert result.steps <= total
    # After the plan, the lr follows linear decay (no warmup) to 0 at the planned total.
    for e in train_events(result.log_history)[plan[0]["step"]:]:
        assert e["lr"] == pytest.approx(cfg.lr * (total - (e["step"] - 1)) / total)
    assert Path(result.checkpoint_dir).name == f"step-{result.steps}"
    assert (Path(result.checkpoint_dir) / STATE_FILE).is_file()


def test_early_stopping_keeps_best_weights(tmp_path):
    scores = iter([0.3, 0.6, 0.5, 0.55, 0.9])
    snapshots = {}
    trainer = None

    def eval_fn(model):
        snapshots[trainer.state.step] = copy.deepcopy(model.state_dict())
        return {"accuracy": next(scores)}

    torch.manual_seed(0)
    model = TinyClassifier()
    cfg = config(tmp_path, max_steps=50, eval_every=2, metric_for_best="accuracy", patience=2,
                 load_best_at_end=True)
    trainer = Trainer(model, cfg, make_data(8), collate, eval_fn=eval_fn)
    result = trainer.train()
    assert result.stop_reason == "early_stopping"
    assert result.steps == 8 and sorted(snapshots) == [2, 4, 6, 8]  # no extra final eval
    assert (result.best_step, result.best_metric) == (4, 0.6)
    # load_best_at_end: the model holds the best weights, and best/ (loaded) is gone
    assert result.best_dir is None and not (tmp_path / "run" / "best").exists()
    for name, value in snapshots[4].items():
        assert torch.equal(model.state_dict()[name], value)
    assert not torch.equal(snapshots[8]["head.weight"], snapshots[4]["head.weight"])


def test_hook_stop_and_epochs_limit_with_eval_each_epoch(tmp_path):
    # 20 examples / batch 4 = 5 batches per epoch, 2 per update: 2 epochs = ceil(10 / 2) = 5
    # steps; epoch 1 ends inside update 3, epoch 2 with update 5.
    cfg = config(tmp_path, epochs=2, grad_accum_steps=2, eval_every=0)
    result = Trainer(TinyClassifier(), cfg, make_data(20), collate,
                     eval_dataset=make_data(4)).train()
    assert (result.stop_reason, result.steps) == ("epochs", 5)
    assert [e["step"] for e in train_events(result.log_history, "eval")] == [3, 5]
    assert set(result.metrics) == {"eval_loss"}

    cfg = config(tmp_path, "hook", max_steps=10, save_every=4)
    result = Trainer(TinyClassifier(), cfg, make_data(8), collate,
                     on_step=lambda m, step: step == 3).train()
    assert (result.stop_reason, result.steps) == ("callback", 3)
    assert Path(result.checkpoint_dir).name == "step-3"


@pytest.mark.parametrize("kw, steps, reason", [
    # 10 examples / batch 4 = 3 batches per epoch (last one short), 2 per update: ceil(9 / 2)
    (dict(epochs=3, grad_accum_steps=2), 5, "epochs"),
    (dict(epochs=2, drop_last=True), 4, "epochs"),        # 2 whole batches per epoch
    (dict(epochs=3, max_steps=2), 2, "max_steps"),
])
def test_planned_steps_is_where_the_trainer_stops(tmp_path, kw, steps, reason):
    """AdaLoRA plans its budget with planned_steps; the Trainer stops by the same rule."""
    cfg = config(tmp_path, **kw)
    assert planned_steps(10, cfg) == steps
    result = Trainer(TinyClassifier(), cfg, make_data(10), collate).train()
    assert (result.stop_reason, result.steps) == (reason, steps)


# ----------------------------------------------------------------------------- evaluation, data


def test_default_eval_loss_is_the_example_weighted_mean(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier(dropout=0.5)
    eval_data = make_data(10, seed=3)
    trainer = Trainer(model, config(tmp_path, max_steps=1, eval_batch_size=4), make_data(8),
                      collate, eval_dataset=eval_data)
    metrics = trainer.evaluate()  # batches of 4, 4, 2
    assert model.training  # back in train mode
    model.eval()
    with torch.no_grad():
        expected = model(**collate(eval_data)).loss  # one batch of all 10, dropout off
    assert metrics["eval_loss"] == pytest.approx(float(expected), abs=1e-6)


class TinyTagger(nn.Module):
    """Per-token logits (B, T, C); a cross-entropy loss when ``labels`` (B, T) are given."""

    def __init__(self, classes: int = 3, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask, labels=None):
        logits = self.head(self.emb(input_ids))                  # (B, T, C)
        loss = None if labels is None else F.cross_entropy(logits.transpose(1, 2), labels)
        return TinyOutput(loss, logits)


def tagged_items(lengths: list[int], labelled: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    items = []
    for n in lengths:
        ids = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        items.append({"input_ids": ids, **({"labels": [i % 3 for i in ids]} if labelled else {})})
    return items


def test_compute_metrics_sees_the_logits_and_labels_of_the_eval_dataset(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier(dropout=0.5)
    eval_data = make_data(10, seed=3)
    seen = []

    def accuracy(prediction: EvalPrediction) -> dict:
        logits, labels = prediction  # unpacks like transformers' EvalPrediction
        seen.append(prediction)
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}

    trainer = Trainer(model, config(tmp_path, max_steps=1, eval_batch_size=4), make_data(8),
                      collate, eval_dataset=eval_data, compute_metrics=accuracy)
    metrics = trainer.evaluate()  # batches of 4, 4, 2
    model.eval()
    with torch.no_grad():
        expected = model(**collate(eval_data))  # one batch of all 10, dropout off
    labels = np.array([e["label"] for e in eval_data])
    np.testing.assert_allclose(seen[0].predictions, expected.logits.numpy(), atol=1e-6)
    np.testing.assert_array_equal(seen[0].label_ids, labels)
    assert metrics == pytest.approx({
        "eval_loss": float(expected.loss),
        "accuracy": float((expected.logits.argmax(-1).numpy() == labels).mean())}, abs=1e-6)


def test_compute_metrics_selects_the_best_checkpoint(tmp_path):
    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    cfg = config(tmp_path, epochs=3, metric_for_best="accuracy", load_best_at_end=True)
    result = Trainer(TinyClassifier(), cfg, make_data(16), collate, eval_dataset=make_data(8, 1),
                     compute_metrics=accuracy).train()
    evals = train_events(result.log_history, "eval")
    assert len(evals) == 3 and all(set(e) >= {"accuracy", "eval_loss"} for e in evals)
    assert result.best_metric == max(e["accuracy"] for e in evals)


def test_predict_pads_sequence_outputs_across_batches(tmp_path):
    torch.manual_seed(0)
    model = TinyTagger()
    lengths = [3, 7, 2, 5, 4]
    items = tagged_items(lengths)
    trainer = Trainer(model, config(tmp_path, max_steps=1, eval_batch_size=2), items,
                      PaddingCollator(), compute_metrics=lambda p: {"n": len(p.label_ids)})
    out = trainer.predict(items)  # batches of widths 7, 5, 4
    assert out.predictions.shape == (5, 7, 3) and out.label_ids.shape == (5, 7)
    for i, (item, n) in enumerate(zip(items, lengths)):
        with torch.no_grad():
            alone = model(torch.tensor([item["input_ids"]]), torch.ones(1, n, dtype=torch.long))
        np.testing.assert_allclose(out.predictions[i, :n], alone.logits[0].numpy(), atol=1e-6)
        assert out.label_ids[i, :n].tolist() == item["labels"]
        assert (out.label_ids[i, n:] == -100).all()
    assert (out.predictions[2, 5:] == -100).all()  # item 2's batch (items 2, 3) is 5 wide
    assert set(out.metrics) == {"eval_loss", "n"} and out.metrics["n"] == 5
    assert trainer.evaluate(items) == pytest.approx(out.metrics)  # a dataset given to evaluate

    unlabelled = trainer.predict(tagged_items(lengths, labelled=False))
    np.testing.assert_array_equal(unlabelled.predictions, out.predictions)
    assert unlabelled.label_ids is None and unlabelled.metrics == {}


def test_compute_metrics_must_return_a_dict(tmp_path):
    trainer = Trainer(TinyClassifier(), config(tmp_path, max_steps=1), make_data(8), collate,
                      eval_dataset=make_data(4), compute_metrics=lambda p: 0.5)
    with pytest.raises(ValueError, match="^compute_metrics must return a dict of metrics, "
                                         "got float$"):
        trainer.evaluate()


def test_evaluation_draws_fixed_random_numbers_and_restores_the_generators(tmp_path):
    import random

    def eval_fn(model):
        return {"torch": torch.rand(()), "python": random.random(), "numpy": np.random.rand()}

    trainer = Trainer(TinyClassifier(), config(tmp_path, max_steps=1, seed=5), make_data(8),
                      collate, eval_fn=eval_fn)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    first = trainer.evaluate()
    after = (torch.rand(()), random.random(), np.random.rand())
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    expected_after = (torch.rand(()), random.random(), np.random.rand())
    assert after == expected_after  # the caller's streams are where they were
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    assert first == {"torch": float(torch.rand(())), "python": random.random(),
                     "numpy": np.random.rand()}  # drawn from generators seeded with config.seed
    assert trainer.evaluate() == first


def test_sampler_shards_and_order():
    n, b = 10, 2
    perm = np.random.default_rng([7, 3]).permutation(n)
    ranks = [list(ShardedBatchSampler(n, b, seed=7, epoch=3, rank=r, world_size=2))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == ShardedBatchSampler.num_batches(n, b, 2) == 3
    for j in range(3):  # batch j of both ranks = chunk j of the permutation
        assert sorted(ranks[0][j] + ranks[1][j]) == sorted(perm[j * 4:(j + 1) * 4].tolist())
    assert sorted(sum(ranks[0] + ranks[1], [])) == list(range(n))
    assert list(ShardedBatchSampler(n, b, seed=7, epoch=3, start=2)) == \
        [perm[4:6].tolist(), perm[6:8].tolist(), perm[8:10].tolist()]
    assert list(ShardedBatchSampler(n, b, seed=7, epoch=4)) != \
        list(ShardedBatchSampler(n, b, seed=7, epoch=3))
    dropped = list(ShardedBatchSampler(n, 3, seed=7, world_size=2, rank=1, drop_last=True))
    assert len(dropped) == 1 and len(dropped[0]) == 3
    # Fewer than world_size examples: wraps around so every rank still gets a batch.
    tiny = [list(ShardedBatchSampler(1, 4, world_size=2, rank=r)) for r in range(2)]
    assert tiny == [[[0]], [[0]]]


# ----------------------------------------------------------------------------- logs, precision


def test_logs_tensorboard_and_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(tmp_path, max_steps=6, warmup_steps=2, eval_every=3, tensorboard=True,
                 plot=True)
    result = Trainer(TinyClassifier(), cfg, make_data(16), collate,
                     eval_dataset=make_data(4)).train()
    run = tmp_path / "run"
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events == json.loads(json.dumps(result.log_history))
    train = train_events(events)
    assert [e["step"] for e in train] == [1, 2, 3, 4, 5, 6]
    # lr per update: warmup 2 then linear decay to 0 at step 6, by hand.
    assert [e["lr"] for e in train] == pytest.approx(
        [1e-2 * f for f in (0.5, 1.0, 1.0, 0.75, 0.5, 0.25)])
    assert all(e["tokens_per_s"] > 0 and e["grad_norm"] > 0 for e in train)
    assert [e["step"] for e in train_events(events, "eval")] == [3, 6]

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    scalars = acc.Scalars("train/loss")
    assert [s.step for s in scalars] == [1, 2, 3, 4, 5, 6]
    assert [s.value for s in scalars] == pytest.approx([e["loss"] for e in train], rel=1e-6)
    assert [s.step for s in acc.Scalars("eval/eval_loss")] == [3, 6]

    png = (run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert json.loads((run / "training_config.json").read_text())["max_steps"] == 6


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_runs_and_fp16_scaler_is_checkpointed(tmp_path, precision):
    cfg = config(tmp_path, max_steps=2, mixed_precision=precision)
    trainer = Trainer(TinyClassifier(), cfg, make_data(8), collate)
    result = trainer.train()
    assert trainer.precision == precision
    assert all(math.isfinite(e["loss"]) for e in train_events(result.log_history))
    scaler = torch.load(Path(result.checkpoint_dir) / STATE_FILE, weights_only=True)["scaler"]
    assert bool(scaler) == (precision == "fp16")
