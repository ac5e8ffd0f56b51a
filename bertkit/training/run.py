"""The run recipe every training command follows; each ``run_*`` supplies only its own parts.

::

    run_in_output_folder      check OUT against the inputs, write into OUT.partial, move it in
      (the run's own)         data, tokenizer, model, evaluation function
      train_to_best           Trainer: the best checkpoint on dev by the run's metric, early
                              stopping, the best weights loaded at the end
      (the run's own)         final metrics, the folder's files (metrics.json ...)
      stopped_line            "stopped after N steps (reason, s); best dev X at step S"

Pretraining, fine-tuning, translation and distillation call it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from torch import nn

from bertkit.outputs import Inputs, output_folder, relocated
from bertkit.training.trainer import Trainer, TrainingConfig, TrainResult

Result = TypeVar("Result")  # a dataclass with ``out_dir`` and ``train`` (a TrainResult)


def run_in_output_folder(training: TrainingConfig, body: Callable[[TrainingConfig], Result], *,
                         inputs: Inputs, resume_from: str | None, overwrite: bool,
                         is_main: bool, resumable: bool = True) -> Result:
    """Call ``body(training)`` with ``out_dir`` set to the staging folder, then move it in.

    The existing ``training.out_dir`` is refused unless ``resume_from`` continues it or
    ``overwrite`` replaces it (see :func:`~bertkit.outputs.output_folder`); the result's paths
    (``out_dir``, the best and last checkpoint folders) are those after the move. A command
    without ``--resume`` passes ``resumable=False``: its failed runs leave nothing behind.
    """
    with output_folder(training.out_dir, inputs=inputs, overwrite=overwrite, resume=resume_from,
                       active=is_main, resumable=resumable) as staging:
        result = body(dataclasses.replace(training, out_dir=str(staging)))
    out_dir = training.out_dir
    train = dataclasses.replace(
        result.train, best_dir=relocated(result.train.best_dir, staging, out_dir),
        checkpoint_dir=relocated(result.train.checkpoint_dir, staging, out_dir))
    return dataclasses.replace(result, out_dir=out_dir, train=train)


@dataclass
class TrainingPlan:
    """What a run hands the Trainer; everything else about training is the same for every run.

    ``eval_fn`` scores the model on dev (a dict of metrics); with it, the checkpoint best by
    ``metric`` is kept and loaded at the end, and ``patience`` evaluations without a gain stop
    the run (None: the TrainingConfig's). Without it, or with ``keep_best=False`` (pretraining:
    held-out numbers are watched, the last model is kept), the last model is kept.
    """

    model: nn.Module
    train_set: Any
    collator: Callable[[list], Any]
    save: Callable[[nn.Module, str], None]     # model and tokenizer(s) into a folder
    eval_fn: Callable[[nn.Module], dict] | None = None
    metric: str = "eval_loss"
    greater_is_better: bool = False
    patience: int | None = None
    on_step: Callable[..., Any] | None = None  # e.g. AdaLoRA's rank budget
    keep_best: bool = True


def plan_settings(plan: TrainingPlan, training: TrainingConfig) -> TrainingConfig:
    """``training`` with the best-checkpoint settings the plan asks for."""
    if plan.eval_fn is not None and plan.keep_best:
        return dataclasses.replace(
            training, metric_for_best=plan.metric, greater_is_better=plan.greater_is_better,
            patience=plan.patience if plan.patience is not None else training.patience,
            save_best=True, load_best_at_end=True)
    # No dev set, or held-out numbers only watched (pretraining): no best model to keep.
    return dataclasses.replace(training, save_best=False, load_best_at_end=False)


def train_to_best(plan: TrainingPlan, training: TrainingConfig,
                  resume_from: str | None = None) -> tuple[nn.Module, TrainResult]:
    """Train ``plan.model`` with the Trainer; returns the trained model (the best one on dev
    when there is an ``eval_fn``; in eval mode) and the Trainer's result."""
    trainer = Trainer(plan.model, plan_settings(plan, training), plan.train_set, plan.collator,
                      eval_fn=plan.eval_fn, save_fn=plan.save, on_step=plan.on_step)
    result = trainer.train(resume_from=resume_from)
    return trainer.model.eval(), result


def stopped_line(result: TrainResult, metric: str | None) -> str:
    """How a run ended, for the end of its output."""
    best = (f"best dev {metric} {result.best_metric:.4f} at step {result.best_step}"
            if result.best_step is not None else "no dev evaluation: the last model is kept")
    return (f"stopped after {result.steps} steps ({result.stop_reason}, {result.elapsed:.0f}s); "
            f"{best}")
