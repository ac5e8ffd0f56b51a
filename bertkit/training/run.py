"""The part every training command shares: where its run writes.

:func:`run_in_output_folder` runs a training body inside :func:`bertkit.outputs.output_folder`:
the body writes into the staging folder ``OUT.partial`` (checkpoints, logs, the final model);
only a finished run is moved to ``OUT``. Pretraining, fine-tuning and translation call it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, TypeVar

from bertkit.outputs import Inputs, output_folder, relocated
from bertkit.training.trainer import TrainingConfig

Result = TypeVar("Result")  # a dataclass with ``out_dir`` and ``train`` (a TrainResult)


def run_in_output_folder(training: TrainingConfig, body: Callable[[TrainingConfig], Result], *,
                         inputs: Inputs, resume_from: str | None, overwrite: bool,
                         is_main: bool) -> Result:
    """Call ``body(training)`` with ``out_dir`` set to the staging folder, then move it in.

    The existing ``training.out_dir`` is refused unless ``resume_from`` continues it or
    ``overwrite`` replaces it (see :func:`~bertkit.outputs.output_folder`); the result's paths
    (``out_dir``, the best and last checkpoint folders) are those after the move.
    """
    with output_folder(training.out_dir, inputs=inputs, overwrite=overwrite, resume=resume_from,
                       active=is_main, resumable=True) as staging:
        result = body(dataclasses.replace(training, out_dir=str(staging)))
    out_dir = training.out_dir
    train = dataclasses.replace(
        result.train, best_dir=relocated(result.train.best_dir, staging, out_dir),
        checkpoint_dir=relocated(result.train.checkpoint_dir, staging, out_dir))
    return dataclasses.replace(result, out_dir=out_dir, train=train)
