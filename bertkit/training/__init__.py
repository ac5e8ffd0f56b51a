"""Training: the one loop every bertkit task reuses (:class:`Trainer`) and its pieces."""

from bertkit.training.trainer import (
    LRSchedule,
    ShardedBatchSampler,
    Trainer,
    TrainerState,
    TrainingConfig,
    TrainResult,
    build_optimizer,
    default_save_fn,
    find_checkpoint,
    param_groups,
    parse_duration,
    planned_steps,
    resolve_mixed_precision,
    set_seed,
    unwrap_model,
)

__all__ = [
    "LRSchedule", "ShardedBatchSampler", "Trainer", "TrainerState", "TrainingConfig",
    "TrainResult", "build_optimizer", "default_save_fn", "find_checkpoint", "param_groups",
    "parse_duration", "planned_steps", "resolve_mixed_precision", "set_seed", "unwrap_model",
]
