"""The Trainer: one training loop for every bertkit task.

It trains any ``nn.Module`` whose ``forward(**batch)`` returns an object with a scalar ``.loss``
(every bertkit head does when the batch carries labels). Pretraining, fine-tuning, translation
and PEFT all use it; what differs between them is passed in: the datasets and collator, an
``eval_fn`` computing the task's metrics, an ``on_step`` hook, a ``save_fn``.

Reading order: :class:`TrainingConfig` (every knob), :func:`param_groups` and
:class:`LRSchedule` (optimizer and schedule), :class:`ShardedBatchSampler` (data order),
then :class:`Trainer` -- whose :meth:`Trainer._train_step` is the whole update, top to bottom,
and whose :meth:`Trainer._checkpoint_payload` / :meth:`Trainer._restore` are the one place the
resumable state is saved and loaded.

Layout of a run folder (``config.out_dir``)::

    training_config.json      the TrainingConfig of the run
    metrics.jsonl             one JSON object per event (train log, eval, plan, start, end)
    tensorboard/              TensorBoard event files
    curves.png                training loss and eval metrics against the step (at the end)
    checkpoints/latest        text file naming the newest complete checkpoint ("step-300")
    checkpoints/step-N/       model folder (save_fn) + trainer_state.pt (everything to resume)
    best/                     model folder of the best evaluation + best.json +
                              model_state.safetensors (removed once load_best_at_end loaded it)

When some parameters are frozen (a PEFT base, a distillation teacher), trainer_state.pt and
best/model_state.safetensors hold only the trainable parameters and the buffers, plus the sha256
of the frozen ones: the caller rebuilds the frozen part from where it came from (the base
folder), and a resume refuses a model whose frozen part differs (see :func:`model_state`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import save_model as save_safetensors_model
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from bertkit.checkpoint import unwrap_model
from bertkit.modeling.bert import IGNORE_INDEX  # the padding of collected predictions/labels
from bertkit.outputs import as_user_file
from bertkit.training.adversarial import ADVERSARIAL_METHODS, Adversary
from bertkit.training.logs import CURVES_FILE, RunLogger, plot_curves

STATE_FILE = "trainer_state.pt"
BEST_DIR = "best"
BEST_STATE_FILE = "model_state.safetensors"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"

SCHEDULES = ("linear", "cosine", "constant", "inverse_sqrt")
MIXED_PRECISION = ("no", "bf16", "fp16", "auto")

# A time-budgeted run times this many updates (after the first one of a session, which pays for
# allocations and warm-up) before it fixes the schedule's total number of steps.
PLAN_STEPS = 5

# Resume is exact only if these are unchanged; a resume that changes them is allowed but warned.
_RESUME_SENSITIVE = ("batch_size", "grad_accum_steps", "seed", "drop_last", "lr", "schedule",
                     "warmup_steps", "warmup_ratio", "mixed_precision")


# ----------------------------------------------------------------------------- configuration


def parse_duration(value: str | float | int) -> float:
    """Seconds in a duration: ``"90s"`` -> 90.0, ``"10m"`` -> 600.0, ``"1h30m"`` -> 5400.0.

    A bare number (``"45"``, ``45``, ``2.5``) is seconds. Units are h, m, s, in that order, each
    at most once. Raises ``ValueError`` for anything else or for a duration that is not positive.
    """
    if isinstance(value, bool):
        raise ValueError(f"cannot parse duration {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = re.sub(r"\s+", "", str(value)).lower()
        number = r"(\d+(?:\.\d*)?|\.\d+)"
        match = re.fullmatch(rf"(?:{number}h)?(?:{number}m)?(?:{number}s)?", text)
        if re.fullmatch(number, text):
            seconds = float(text)
        elif text and match and any(match.groups()):
            h, m, s = (float(g) if g else 0.0 for g in match.groups())
            seconds = 3600 * h + 60 * m + s
        else:
            raise ValueError(f"cannot parse duration {value!r}: use seconds or h/m/s units, "
                             f"e.g. '90s', '10m', '1h30m'")
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


@dataclass
class TrainingConfig:
    """Every knob of a training run. Steps count optimizer updates (not micro-batches).

    Length: at least one of ``max_steps``, ``epochs``, ``time_budget`` must be set; the run stops
    at the first one reached. ``time_budget`` is seconds or a string for :func:`parse_duration`
    (``"10m"``); it is stored as seconds.

    Batches: ``batch_size`` is per process and per micro-batch; one update sees
    ``batch_size * grad_accum_steps * world_size`` examples.

    ``eval_every``: evaluate every N steps; 0 = at the end of every epoch. The run is always
    evaluated at its end when there is something to evaluate. ``save_every``: checkpoint every N
    steps (0 = only at the end); ``keep_last``: how many step checkpoints to keep (None = all).

    ``mixed_precision``: "no", "bf16", "fp16" or "auto" (bf16 on a CUDA device that supports it,
    else fp16 on CUDA; "no" on CPU, where bf16 matmuls are hundreds of times slower than fp32).
    """

    out_dir: str = "runs/train"
    # optimizer
    lr: float = 5e-5
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    layer_lr_decay: float | None = None   # lr x decay^(layers above): embeddings learn least
    # adversarial training on the word embeddings (training/adversarial.py)
    adversarial: str | None = None        # "fgm" | "pgd"
    adversarial_epsilon: float = 1.0      # radius of the per-example perturbation
    adversarial_steps: int = 3            # PGD ascent steps
    adversarial_alpha: float | None = None  # PGD step size (default 2.5 * epsilon / steps)
    # schedule
    schedule: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    # batches
    batch_size: int = 32
    eval_batch_size: int | None = None
    grad_accum_steps: int = 1
    drop_last: bool = False
    num_workers: int = 0
    # length
    max_steps: int | None = None
    epochs: float | None = None
    time_budget: float | str | None = None
    # evaluation, best checkpoint, early stopping
    eval_every: int = 0
    metric_for_best: str = "eval_loss"
    greater_is_better: bool | None = None
    patience: int | None = None
    save_best: bool = True
    load_best_at_end: bool = False
    # checkpoints
    save_every: int = 1000
    keep_last: int | None = 3
    # logging
    log_every: int = 10
    progress_bar: bool = True
    tensorboard: bool = True
    plot: bool = True
    # hardware
    mixed_precision: str = "auto"
    device: str | None = None
    compile: bool = False
    ddp_find_unused_parameters: bool = False
    seed: int = 42

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise ValueError(f"TrainingConfig.{name} {rule}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        self.adam_betas = tuple(self.adam_betas)
        if self.schedule not in SCHEDULES:
            fail("schedule", f"must be one of {SCHEDULES}")
        if self.mixed_precision not in MIXED_PRECISION:
            fail("mixed_precision", f"must be one of {MIXED_PRECISION}")
        if not self.lr > 0:
            fail("lr", "must be positive")
        if self.weight_decay < 0:
            fail("weight_decay", "must be >= 0")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            fail("adam_betas", "must be two numbers in [0, 1)")
        for name in ("batch_size", "grad_accum_steps", "log_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "must be a positive integer")
        for name in ("warmup_steps", "num_workers", "eval_every", "save_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "must be an integer >= 0")
        for name in ("max_steps", "keep_last", "patience", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                fail(name, "must be a positive integer or None")
        if not 0 <= self.warmup_ratio < 1:
            fail("warmup_ratio", "must be in [0, 1)")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("TrainingConfig: set warmup_steps or warmup_ratio, not both "
                             f"(got {self.warmup_steps} and {self.warmup_ratio})")
        if self.epochs is not None and not self.epochs > 0:
            fail("epochs", "must be positive or None")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            fail("max_grad_norm", "must be positive or None")
        if self.time_budget is not None:
            self.time_budget = parse_duration(self.time_budget)
        if self.layer_lr_decay is not None and not 0 < self.layer_lr_decay <= 1:
            fail("layer_lr_decay", "must be in (0, 1] or None")
        if self.adversarial is not None and self.adversarial not in ADVERSARIAL_METHODS:
            fail("adversarial", f"must be one of {ADVERSARIAL_METHODS} or None")
        if not self.adversarial_epsilon > 0:
            fail("adversarial_epsilon", "must be positive")
        if not is_int(self.adversarial_steps) or self.adversarial_steps < 1:
            fail("adversarial_steps", "must be a positive integer")
        if self.adversarial_alpha is not None and not self.adversarial_alpha > 0:
            fail("adversarial_alpha", "must be positive or None")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainingConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"TrainingConfig has no field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def resolve_mixed_precision(mode: str, device: torch.device) -> str:
    """Turn "auto" into "bf16" / "fp16" / "no" for ``device``; other modes are returned as is."""
    if mode != "auto":
        return mode
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


# ----------------------------------------------------------------------------- optimizer, schedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: trainable parameters with and without weight decay.

    Rule: a parameter gets no weight decay when it has fewer than 2 dimensions (biases,
    LayerNorm/RMSNorm gains and shifts, scalars) or belongs to a normalisation layer (module
    class name containing "Norm", or parameter name containing "LayerNorm"/"layer_norm").
    Decaying those pulls the network's scales and offsets towards 0, which is not the
    regularisation wanted (BERT's original optimizer excludes them the same way); weight
    matrices and embeddings are decayed. Frozen parameters (``requires_grad=False``) are left
    out; a parameter shared by two modules (tied embeddings) appears once.

    Returns up to two dicts ``{"params", "param_names", "weight_decay"}`` (decay group first),
    ready for ``torch.optim.AdamW``.
    """
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        is_norm_module = "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            if param.ndim < 2 or is_norm_module or re.search(r"layer_?norm", full, re.I):
                no_decay[full] = param
            else:
                decay[full] = param
    groups = [{"params": list(ps.values()), "param_names": list(ps), "weight_decay": wd}
              for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps]
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters "
                         "(every parameter has requires_grad=False)")
    return groups


_LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")  # encoder layer i in a parameter's name


def layer_depth(name: str, num_layers: int) -> int:
    """How deep parameter ``name`` sits: 0 for the embeddings, i + 1 for encoder layer i
    (``...layers.<i>.`` or ``...layer.<i>.`` in its name), ``num_layers + 1`` for the rest
    (pooler and task heads)."""
    if re.search(r"(^|\.)embeddings\.", name):
        return 0
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def layer_decayed_groups(groups: list[dict[str, Any]], lr: float,
                         decay: float) -> list[dict[str, Any]]:
    """Split :func:`param_groups` by depth, each with ``lr * decay ** (top - depth)``
    (layer-wise learning-rate decay, as ELECTRA and Sun et al., 2019 fine-tune BERT: the
    general lower layers move least). The head's group comes first, so the logged lr (group
    0's) is the base lr."""
    names = [name for group in groups for name in group["param_names"]]
    indices = [int(m.group(1)) for m in map(_LAYER_INDEX.search, names) if m]
    num_layers = max(indices, default=-1) + 1
    top = num_layers + 1
    split: dict[tuple[int, float], dict[str, Any]] = {}
    for group in groups:
        for name, param in zip(group["param_names"], group["params"]):
            depth = layer_depth(name, num_layers)
            key = (depth, group["weight_decay"])
            split.setdefault(key, {"params": [], "param_names": [],
                                   "weight_decay": group["weight_decay"],
                                   "lr": lr * decay ** (top - depth)})
            split[key]["params"].append(param)
            split[key]["param_names"].append(name)
    return [split[key] for key in sorted(split, key=lambda k: (-k[0], -k[1]))]


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (split by depth with ``layer_lr_decay``), fused when
    the parameters' device and dtype allow it (on these CPUs the fused kernel is ~40x faster
    than the per-parameter loop)."""
    def groups() -> list[dict[str, Any]]:
        plain = param_groups(model, config.weight_decay)
        if config.layer_lr_decay is None:
            return plain
        return layer_decayed_groups(plain, config.lr, config.layer_lr_decay)

    kwargs = dict(lr=config.lr, betas=config.adam_betas, eps=config.adam_eps)
    try:
        return torch.optim.AdamW(groups(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # device/dtype without a fused kernel
        return torch.optim.AdamW(groups(), **kwargs)


class LRSchedule:
    """The learning-rate multiplier of the update with 0-based index ``step``.

    With W warmup steps and T planned total steps, update ``step`` (the ``step+1``-th update)
    uses ``lr * factor(step)``:

    - warmup (all schedules except inverse_sqrt): ``(step + 1) / W`` for ``step < W``, so the
      first update already moves and update W reaches the peak;
    - "linear": ``(T - step) / (T - W)``; "cosine": ``0.5 * (1 + cos(pi * (step - W) / (T - W)))``
      -- both 1 right after warmup and 0 at ``step = T`` (the update after the last);
    - "constant": 1 after warmup;
    - "inverse_sqrt" (Vaswani et al. 2017): ``min(u / W, sqrt(W / u))`` with ``u = step + 1``.
      The paper's ``d_model^-0.5 * min(u^-0.5, u * W^-1.5)`` divided by its peak value
      ``d_model^-0.5 * W^-0.5``, so the peak is ``lr``; the paper's exact rate is
      ``lr = d_model**-0.5 * W**-0.5``. With W = 0 it is ``u^-0.5``.

    ``warmup_ratio`` sets ``W = ceil(ratio * T)``. ``total_steps`` may be unknown (None) while a
    time-budgeted run measures its speed (see :class:`Trainer`); until then decay schedules
    hold 1 after warmup, and a ratio-based warmup, whose length is not known yet, uses factor 0
    (those first few updates only accumulate Adam's moment estimates).

    Plain attributes only: ``LambdaLR`` saves and restores them with the scheduler's state, so
    a resumed run continues the same plan.
    """

    def __init__(self, kind: str, warmup_steps: int = 0, warmup_ratio: float = 0.0,
                 total_steps: int | None = None) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
        self.kind = kind
        self.warmup_steps = warmup_steps
        self.warmup_ratio = warmup_ratio
        self.total_steps = total_steps

    @property
    def warmup(self) -> int | None:
        if not self.warmup_ratio:
            return self.warmup_steps
        if self.total_steps is None:
            return None
        return math.ceil(self.warmup_ratio * self.total_steps)

    def __call__(self, step: int) -> float:
        warmup, total = self.warmup, self.total_steps
        if warmup is None:
            return 0.0
        u = step + 1
        if self.kind == "inverse_sqrt":
            return min(u / warmup, math.sqrt(warmup / u)) if warmup else u ** -0.5
        if step < warmup:
            return u / warmup
        if self.kind == "constant" or total is None:
            return 1.0
        progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
        if self.kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- data order


class ShardedBatchSampler:
    """Batches of dataset indices for one epoch on one rank, in an order fixed by (seed, epoch).

    Every rank draws the same permutation of ``range(num_examples)`` from ``(seed, epoch)``;
    rank r takes permutation positions r, r+W, r+2W, ... (W = world_size). Batch j of all ranks
    together is therefore the contiguous chunk j (size ``batch_size * W``) of the permutation:
    the examples one process with ``batch_size * W`` sees as its batch j.

    ``drop_last=True`` drops the examples that do not fill a whole batch on every rank; with
    False the permutation is first extended by wrapping around to a multiple of W (each rank
    the same number of examples, as DDP needs), and the last batch may be smaller.
    ``start`` skips the first ``start`` batches by index, without touching the dataset (resume).
    Yields lists of ints.
    """

    def __init__(self, num_examples: int, batch_size: int, *, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 drop_last: bool = False, start: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_examples, self.batch_size = num_examples, batch_size
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.shuffle, self.drop_last, self.start = shuffle, drop_last, start

    @staticmethod
    def num_batches(num_examples: int, batch_size: int, world_size: int = 1,
                    drop_last: bool = False) -> int:
        """Batches per epoch on each rank."""
        if drop_last:
            return num_examples // (batch_size * world_size)
        return math.ceil(math.ceil(num_examples / world_size) / batch_size)

    def __len__(self) -> int:
        return max(0, self.num_batches(self.num_examples, self.batch_size, self.world_size,
                                       self.drop_last) - self.start)

    def __iter__(self):
        n, w, b = self.num_examples, self.world_size, self.batch_size
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            order = order[: (n // (b * w)) * b * w]
        else:
            order = np.resize(order, math.ceil(n / w) * w)  # wraps around to a multiple of w
        share = order[self.rank::w].tolist()
        for j in range(self.start, self.num_batches(n, b, w, self.drop_last)):
            yield share[j * b:(j + 1) * b]


def step_limit(config: TrainingConfig, batches_per_epoch: int) -> tuple[int | None, str | None]:
    """The optimizer update at which ``config``'s max_steps or epochs ends a run with
    ``batches_per_epoch`` micro-batches per epoch (per rank), and which of the two ends it
    first; (None, None) for a run bounded only by its time budget. The one rule the Trainer
    stops by and :func:`planned_steps` plans by."""
    limits = []
    if config.max_steps is not None:
        limits.append((config.max_steps, "max_steps"))
    if config.epochs is not None:
        limits.append((math.ceil(config.epochs * batches_per_epoch / config.grad_accum_steps),
                       "epochs"))
    return min(limits) if limits else (None, None)


def planned_steps(num_examples: int, training_config: TrainingConfig, world_size: int = 1) -> int:
    """Optimizer updates a Trainer run of ``training_config`` on ``num_examples`` examples over
    ``world_size`` processes will make (:func:`step_limit`): what AdaLoRA takes as
    ``total_steps``. ValueError for a run bounded only by a time budget (its length is known
    only once it runs)."""
    batches = ShardedBatchSampler.num_batches(num_examples, training_config.batch_size,
                                              world_size, training_config.drop_last)
    limit, _ = step_limit(training_config, batches)
    if limit is None:
        raise ValueError("AdaLoRA needs the planned number of steps: set max_steps or epochs "
                         "(a run bounded only by time_budget has none)")
    return limit


class _BatchStream:
    """Micro-batches epoch after epoch; ``(epoch, index)`` is always the next batch to read."""

    def __init__(self, make_loader: Callable[[int, int], DataLoader], batches_per_epoch: int,
                 epoch: int, index: int) -> None:
        self.make_loader, self.batches_per_epoch = make_loader, batches_per_epoch
        self.epoch, self.index = epoch, index
        self._it = None

    def __next__(self) -> Any:
        if self._it is None:
            self._it = iter(self.make_loader(self.epoch, self.index))
        batch = next(self._it)
        self.index += 1
        if self.index == self.batches_per_epoch:  # roll over now so the position is unambiguous
            self.epoch, self.index, self._it = self.epoch + 1, 0, None
        return batch


# ----------------------------------------------------------------------------- small helpers


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _capture_rng() -> dict[str, Any]:
    # NumPy's state holds an ndarray; stored as a list so trainer_state.pt loads with
    # torch.load(weights_only=True).
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _isolated_rng(seed: int):
    """Run a block with every global generator seeded to ``seed`` and restore them after.

    Evaluation runs inside it: it draws the same masks every time (eval numbers are comparable
    across the run) and leaves the training stream untouched (resume stays exact).
    """
    saved = _capture_rng()
    set_seed(seed)
    try:
        yield
    finally:
        _restore_rng(saved)


def default_save_fn(model: nn.Module, folder: str) -> None:
    """``model.save_pretrained(folder)`` when the model has it, else its state_dict as
    ``folder/model.safetensors`` (tied tensors stored once)."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        save_safetensors_model(model, os.path.join(folder, "model.safetensors"))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _count_tokens(batch: Mapping[str, Any]) -> int:
    """Real tokens in a batch: sum of attention_mask, else input_ids.numel(), else 0."""
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return int(mask.sum())
    ids = batch.get("input_ids")
    return ids.numel() if isinstance(ids, torch.Tensor) else 0


def _batch_len(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return value.shape[0]
    return 1


def _loss_of(output: Any, batch: Mapping[str, Any]) -> torch.Tensor:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"the model's forward returned {type(output).__name__} without a "
                         f"tensor .loss; the batch (keys {sorted(batch)}) must carry the labels")
    if loss.ndim != 0:
        raise ValueError(f"the model's loss must be a scalar, got shape {tuple(loss.shape)}")
    return loss


def _float_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers as Python floats (tensors and numpy scalars included); other values kept."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (torch.Tensor, np.generic)) and np.ndim(value) == 0:
            value = float(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[str(key)] = value
    return out


# Batch fields that hold targets: what :meth:`Trainer.predict` collects as ``label_ids``.
LABEL_KEYS = ("labels", "start_positions", "end_positions", "next_sentence_label")


class EvalPrediction(NamedTuple):
    """What ``compute_metrics`` receives (transformers' name and fields; it unpacks as
    ``predictions, label_ids = p``).

    ``predictions``: the model's ``logits`` over the dataset as a float32 array (N, ...), or a
    tuple of arrays for a model without ``logits`` and several outputs (QA: start and end
    logits, each (N, T)). ``label_ids``: the batches' targets (:data:`LABEL_KEYS`; a tuple when
    there are several, None when there are none). Batches of sequences of different lengths
    are padded to the longest with -100, like the labels the loss ignores.
    """

    predictions: np.ndarray | tuple[np.ndarray, ...]
    label_ids: np.ndarray | tuple[np.ndarray, ...] | None


class PredictionOutput(NamedTuple):
    """What :meth:`Trainer.predict` returns: :class:`EvalPrediction`'s two fields and the
    ``metrics`` (``eval_loss`` and ``compute_metrics``' numbers when the data has labels)."""

    predictions: np.ndarray | tuple[np.ndarray, ...]
    label_ids: np.ndarray | tuple[np.ndarray, ...] | None
    metrics: dict[str, Any]


def _output_arrays(output: Any) -> tuple[np.ndarray, ...]:
    """One batch's predictions: ``logits``, else every tensor output but the loss, in numpy."""
    fields = output if isinstance(output, Mapping) else vars(output)
    tensors = [v for k, v in fields.items() if k != "loss" and isinstance(v, torch.Tensor)]
    if isinstance(fields.get("logits"), torch.Tensor):
        tensors = [fields["logits"]]
    return tuple(t.detach().float().cpu().numpy() for t in tensors)


def _label_arrays(batch: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    return tuple(batch[k].cpu().numpy() for k in LABEL_KEYS
                 if isinstance(batch.get(k), torch.Tensor))


def _joined(parts: list[tuple[np.ndarray, ...]]) -> np.ndarray | tuple[np.ndarray, ...] | None:
    """Per-batch arrays joined along the first axis, field by field; sequence fields padded
    to the longest batch with -100. One field: its array; none: None."""
    if not parts or not parts[0]:
        return None
    joined = []
    for arrays in zip(*parts):
        if arrays[0].ndim >= 2:
            width = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
                             constant_values=IGNORE_INDEX) for a in arrays]
        joined.append(np.concatenate(arrays))
    return joined[0] if len(joined) == 1 else tuple(joined)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- model state


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` a checkpoint holds: its whole ``state_dict`` when every
    parameter trains, else the trainable parameters and every persistent buffer.

    Frozen parameters (``requires_grad=False``: a PEFT base, a distillation teacher) are left
    out because training never changes them: the caller rebuilds them from where they came from
    (the base model folder) and :func:`frozen_fingerprint`, saved beside the state, proves they
    are the same. Buffers are kept whoever owns them: they are where modules keep state that
    changes during training (AdaLoRA's rank masks and importance averages, normalisation
    statistics), and bertkit's base models have no persistent buffers, so they cost nothing.
    """
    state = model.state_dict()
    frozen = set(_frozen_parameter_names(model))
    return {k: v for k, v in state.items() if k not in frozen} if frozen else state


def frozen_fingerprint(model: nn.Module) -> str | None:
    """sha256 over the frozen parameters' names, dtypes, shapes and bytes (sorted by name);
    None when every parameter trains. Independent of the device the model is on."""
    names = _frozen_parameter_names(model)
    if not names:
        return None
    params = dict(model.named_parameters(remove_duplicate=False))
    digest = hashlib.sha256()
    for name in names:
        tensor = params[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # Raw bytes of any dtype (bf16 has no NumPy equivalent): flatten, then view as bytes.
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor],
                     fingerprint: str | None, source: str | os.PathLike,
                     deduplicated: bool = False) -> None:
    """Load a :func:`model_state` (saved with ``fingerprint``) into ``model``.

    A partial state (``fingerprint`` not None) is loaded only into a model whose frozen part
    has the same :func:`frozen_fingerprint`. ``deduplicated``: the state had its tied twins
    removed (:func:`_without_aliases`; safetensors files). Raises a one-line ValueError naming
    ``source`` when the frozen part differs or the tensors do not fit the model.
    """
    if fingerprint is not None:
        current = frozen_fingerprint(model)
        if current != fingerprint:
            have = f"sha256 {current[:16]}" if current else "no frozen parameters"
            raise ValueError(
                f"the base model of this run changed: {source} was saved with frozen weights of "
                f"sha256 {fingerprint[:16]}, the model given has {have}; rebuild it from the "
                "same base model folder, with the same parameters frozen")
    expected = model_state(model) if fingerprint is not None else model.state_dict()
    expected_names = set(_without_aliases(expected) if deduplicated else expected)
    missing, unexpected = expected_names - set(state), set(state) - expected_names
    if missing or unexpected:
        raise ValueError(f"{source} does not fit this model: missing tensors "
                         f"{_few(missing)}, unexpected tensors {_few(unexpected)}")
    try:
        model.load_state_dict(state, strict=fingerprint is None and not deduplicated)
    except RuntimeError as error:  # shape mismatches: a multi-line message from torch
        raise ValueError(f"{source} does not fit this model: "
                         f"{' '.join(str(error).split())[:400]}") from None


def _frozen_parameter_names(model: nn.Module) -> list[str]:
    """state_dict names of the frozen parameters (a tied parameter under each of its names)."""
    return sorted(name for name, p in model.named_parameters(remove_duplicate=False)
                  if not p.requires_grad)


def _without_aliases(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with tied twins dropped (a name whose tensor is the same view of the same
    memory as an earlier name's): safetensors refuses shared tensors, and ``load_state_dict``
    fills the twin through the name kept, since both name one parameter."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for name, tensor in state.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
               tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if key not in seen:
            seen.add(key)
            kept[name] = tensor
    return kept


def _safetensors_ready(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied twins dropped, and a copy of any tensor that still overlaps another's memory."""
    out, storages = {}, set()
    for name, tensor in _without_aliases(state).items():
        ptr = (tensor.device, tensor.untyped_storage().data_ptr())
        out[name] = tensor.detach().clone() if ptr in storages else tensor.detach().contiguous()
        storages.add(ptr)
    return out


def _few(names: set[str], limit: int = 4) -> str:
    shown = sorted(names)[:limit]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}" if names else "none"


# ----------------------------------------------------------------------------- checkpoint files


class _UnreadableCheckpoint(ValueError):
    """A trainer_state.pt that is truncated or corrupt: resume may fall back past it (a file
    refused for its content raises a plain ValueError instead, and stops the resume)."""


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``root/step-N`` that holds a trainer state, oldest first.
    Half-written saves live in ``.tmp-*`` folders and never match."""
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = re.fullmatch(r"step-(\d+)", child.name)
            if match and (child / STATE_FILE).is_file():
                found.append((int(match.group(1)), child))
    return sorted(found)


def _resume_candidates(path: Path) -> list[Path]:
    """Checkpoint folders to try for ``path``, preferred first (see :func:`find_checkpoint`)."""
    if not path.exists():
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    if (path / STATE_FILE).is_file():
        return [path]  # an explicit checkpoint: that one or none
    for root in (path / CHECKPOINTS_DIR, path):
        candidates = [folder for _, folder in reversed(_complete_checkpoints(root))]
        pointer = root / LATEST_FILE
        if pointer.is_file():
            target = root / pointer.read_text(encoding="utf-8").strip()
            if (target / STATE_FILE).is_file():
                candidates = [target] + [c for c in candidates if c != target]
            else:
                warnings.warn(f"{pointer} points at {target}, which is not a complete "
                              "checkpoint; using the newest complete one", stacklevel=3)
        if candidates:
            return candidates
    raise FileNotFoundError(f"cannot resume: no checkpoint in {path} (expected a folder holding "
                            f"{STATE_FILE}, or a run folder with {CHECKPOINTS_DIR}/step-N/)")


def _check_state_file(file: Path) -> None:
    """Cheap integrity check of a trainer_state.pt (a zip archive, as torch.save writes): its
    central directory, at the very end, is gone from a truncated or zero-filled file."""
    try:
        with zipfile.ZipFile(file) as archive:
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in archive.namelist()):
                raise _UnreadableCheckpoint(f"{file} is not a torch checkpoint (no data.pkl)")
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise _UnreadableCheckpoint(f"{file} is truncated or corrupt ({error})") from None


def read_trainer_state(file: str | os.PathLike) -> dict[str, Any]:
    """Load a trainer_state.pt with ``torch.load(weights_only=True)``; never runs its code.

    Raises a one-line ValueError naming ``file``: a subclass that resume may fall back past
    when the file is truncated or corrupt, a plain ValueError when its pickle asks for
    anything but tensors and plain containers (the file is refused, not loaded: a checkpoint
    bertkit wrote never does that, so the folder was tampered with or is not a bertkit run).
    """
    file = Path(file)
    _check_state_file(file)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            payload = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        wanted = re.search(r"GLOBAL ([\w.]+)", str(error), re.I)
        if wanted is None:  # not a pickle at all: damaged bytes
            raise _UnreadableCheckpoint(f"{file} is corrupt (not a readable pickle)") from None
        raise ValueError(f"{file} was refused and not loaded: not a plain tensor checkpoint (its "
                         f"pickle asks for {wanted.group(1)}); delete it, or its step folder, to "
                         "resume from an earlier checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).split())[:120] or type(error).__name__
        raise _UnreadableCheckpoint(f"{file} is truncated or corrupt ({reason})") from None
    required = {"state", "model", "optimizer", "scheduler", "rng"}
    if not isinstance(payload, dict) or not required <= set(payload):
        raise ValueError(f"{file} is not a bertkit trainer state (expected the keys "
                         f"{sorted(required)})")
    return payload


def _intact_checkpoints(path: Path, skipped: list[str]):
    """Yield the candidates of :func:`_resume_candidates` whose state file passes the cheap
    check, preferred first; warn for (and append to ``skipped``) each one that does not."""
    for folder in _resume_candidates(path):
        try:
            _check_state_file(folder / STATE_FILE)
        except _UnreadableCheckpoint as error:
            _skip_checkpoint(folder, error, skipped)
            continue
        yield folder


def _skip_checkpoint(folder: Path, error: Exception, skipped: list[str]) -> None:
    skipped.append(str(error))
    warnings.warn(f"skipping checkpoint {folder.name}: {error}; trying an earlier one, if any",
                  stacklevel=4)


def _no_intact_checkpoint(path: Path, skipped: list[str]) -> ValueError:
    return ValueError(f"cannot resume from {path}: no intact checkpoint ({'; '.join(skipped)})")


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder to resume from.

    ``path`` is a checkpoint folder (holds ``trainer_state.pt``), a run folder (its
    ``checkpoints/latest`` is used) or a ``checkpoints`` folder. If the ``latest`` pointer is
    missing or points at a folder that is gone, the complete checkpoint with the highest step is
    used. A checkpoint whose ``trainer_state.pt`` is truncated or corrupt is skipped with a
    warning naming it, for the newest intact one before it (an explicit checkpoint folder has
    no fallback). Raises ``FileNotFoundError`` naming ``path`` when there is no checkpoint,
    ``ValueError`` when none is intact.
    """
    path = Path(path)
    skipped: list[str] = []
    folder = next(_intact_checkpoints(path, skipped), None)
    if folder is None:
        raise _no_intact_checkpoint(path, skipped)
    return folder


def load_checkpoint(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The folder :func:`find_checkpoint` picks and its trainer state (:func:`read_trainer_state`),
    falling back, with a warning, past a state file that fails to load as truncated or corrupt.
    A state file refused for its content stops the resume with its ValueError: skipping it
    quietly would hide that the run folder was tampered with."""
    path = Path(path)
    skipped: list[str] = []
    for folder in _intact_checkpoints(path, skipped):
        try:
            return folder, read_trainer_state(folder / STATE_FILE)
        except _UnreadableCheckpoint as error:
            _skip_checkpoint(folder, error, skipped)
    raise _no_intact_checkpoint(path, skipped)


# ----------------------------------------------------------------------------- trainer


@dataclass
class TrainerState:
    """Progress of a run: the counters saved with every checkpoint (besides the model,
    optimizer, scheduler, scaler and RNG states)."""

    step: int = 0                 # optimizer updates done
    epoch: int = 0                # data position: epoch of the next micro-batch ...
    batch_in_epoch: int = 0       # ... and its index in this rank's share of that epoch
    elapsed: float = 0.0          # seconds of training over all sessions (for the time budget)
    tokens_seen: int = 0          # on this rank
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    last_eval_step: int | None = None
    last_save_step: int | None = None
    # The open log window (steps since the last "train" log line), so a resumed run logs the
    # same means as one that never stopped.
    window_loss: float = 0.0
    window_steps: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` returns."""

    steps: int
    epochs: float                 # epochs of data consumed (fractional)
    stop_reason: str              # max_steps | epochs | time_budget | early_stopping | callback
    train_loss: float | None      # mean loss of the last logged window
    metrics: dict[str, Any]       # the last evaluation ({} when nothing to evaluate)
    best_metric: float | None
    best_step: int | None
    best_dir: str | None          # out_dir/best when a best model was saved and kept (None
                                  # when load_best_at_end loaded it and removed the folder)
    checkpoint_dir: str | None    # the final checkpoint (None on ranks other than 0)
    elapsed: float
    log_history: list[dict[str, Any]]


@dataclass
class _Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_initialized()


def setup_distributed(device: str | None = None) -> tuple[_Dist, torch.device]:
    """Join the process group when launched by torchrun (env WORLD_SIZE > 1): gloo on CPU,
    nccl on CUDA, one GPU per local rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not dist.is_initialized():
        return _Dist(), torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), local_rank, dist.get_world_size()), dev


@dataclass
class _Session:
    """What one ``Trainer.train`` call tracks besides the checkpointed TrainerState."""
    stream: _BatchStream
    bar: tqdm
    window_loss: torch.Tensor  # summed update losses since the last train log, on the device
    started: float             # perf_counter() at the session's start
    elapsed_before: float      # training time of earlier sessions (resume)
    first_step: int            # the step the session started from
    window_tokens: int = 0
    window_start: float = field(default_factory=time.perf_counter)
    probe_start: float | None = None  # when the step-time measurement for the budget began
    last_metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint_dir: str | None = None


class Trainer:
    """Trains ``model`` on ``train_dataset``: AdamW, warmup + decay, accumulation, clipping,
    autocast, DDP, evaluation, early stopping, best model, checkpoints and exact resume.

    Args:
        model: any ``nn.Module`` (possibly already ``torch.compile``-d) whose ``forward(**batch)``
            returns an object (or dict) with a scalar ``loss``.
        config: a :class:`TrainingConfig`.
        train_dataset: a map-style dataset (``__len__`` and ``__getitem__``).
        collate_fn: list of examples -> batch dict of tensors, e.g. ``input_ids`` (B, T),
            ``attention_mask`` (B, T), labels... (B = batch, T = sequence length). It may draw
            random numbers from torch's global generator (MLM masking): that generator is part
            of the checkpoint, so a resumed run draws the same masks.
        eval_fn: ``eval_fn(model) -> {name: number}``, the task's metrics, called with the
            unwrapped model in eval mode under ``torch.no_grad()``, with all global generators
            seeded to ``config.seed`` (same masks on every evaluation) and restored after.
        eval_dataset: used when ``eval_fn`` is None: the Trainer reports ``eval_loss``, the mean
            of the per-batch losses weighted by batch size, plus ``compute_metrics``' numbers.
        compute_metrics: ``compute_metrics(EvalPrediction) -> {name: number}``, like
            transformers': given the logits and labels the Trainer collects over the evaluated
            dataset (:class:`EvalPrediction`); used when there is no ``eval_fn``. Its names are
            kept as they are (``metric_for_best="accuracy"``).
        on_step: ``on_step(model, step) -> bool | None``, called after every optimizer update
            (``step`` updates done) while the gradients are still there (e.g. AdaLoRA's rank
            allocation); returning True stops the run cleanly (final eval and checkpoint).
        save_fn: ``save_fn(model, folder)`` writes the model folder of a checkpoint or of the
            best model (default :func:`default_save_fn`); always given the unwrapped model.

    Distributed: launched under torchrun, every rank builds the same Trainer; rank r reads
    its share of each epoch (:class:`ShardedBatchSampler`); only rank 0 logs, evaluates
    (metrics are broadcast) and writes files.
    """

    def __init__(self, model: nn.Module, config: TrainingConfig, train_dataset: Any,
                 collate_fn: Callable[[list], Mapping[str, Any]] | None = None,
                 eval_fn: Callable[[nn.Module], Mapping[str, Any]] | None = None,
                 eval_dataset: Any = None,
                 on_step: Callable[[nn.Module, int], bool | None] | None = None,
                 save_fn: Callable[[nn.Module, str], None] | None = None,
                 compute_metrics: Callable[[EvalPrediction], Mapping[str, Any]] | None = None,
                 ) -> None:
        if not isinstance(config, TrainingConfig):
            raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}")
        if config.max_steps is None and config.epochs is None and config.time_budget is None:
            raise ValueError("TrainingConfig: set at least one of max_steps, epochs, time_budget")
        try:
            num_examples = len(train_dataset)
        except TypeError:
            raise ValueError("train_dataset must be a map-style dataset with __len__ "
                             f"(got {type(train_dataset).__name__})") from None
        self.config = config
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.collate_fn, self.eval_fn = collate_fn, eval_fn
        self.compute_metrics = compute_metrics
        self.on_step, self.save_fn = on_step, save_fn or default_save_fn
        self.out_dir = Path(config.out_dir)
        self.state = TrainerState()

        self.dist, self.device = setup_distributed(config.device)
        self.precision = resolve_mixed_precision(config.mixed_precision, self.device)
        self.batches_per_epoch = ShardedBatchSampler.num_batches(
            num_examples, config.batch_size, self.dist.world_size, config.drop_last)
        if self.batches_per_epoch == 0:
            raise ValueError(f"train_dataset has {num_examples} examples: not one batch of "
                             f"batch_size={config.batch_size} x {self.dist.world_size} process(es)"
                             " with drop_last=True")

        # `model` is what gets saved (no wrapper prefixes); `_forward` is what gets called.
        self.model = unwrap_model(model).to(self.device)
        self.model.train()
        self._ddp = None
        forward: nn.Module = self.model
        if self.dist.world_size > 1:
            self._ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=config.ddp_find_unused_parameters)
            forward = self._ddp
        elif model is not self.model:
            forward = model  # keep the caller's torch.compile wrapper for the forward pass
        self._forward = torch.compile(forward) if config.compile else forward
        self._logger: RunLogger | None = None

        self.optimizer = build_optimizer(self.model, config)
        self._trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.schedule = LRSchedule(config.schedule, config.warmup_steps, config.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [self.schedule] * len(self.optimizer.param_groups))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self._adversary = (Adversary(self.model, config.adversarial, config.adversarial_epsilon,
                                     config.adversarial_steps, config.adversarial_alpha)
                           if config.adversarial else None)

    def _apply_lr(self) -> None:
        """Set the optimizer's lr for the next update from the schedule (after its plan changed)."""
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.schedule(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ------------------------------------------------------------------ limits and plan
    def _step_limit(self) -> tuple[int | None, str | None]:
        """The step count at which max_steps or epochs ends the run, and which of them."""
        return step_limit(self.config, self.batches_per_epoch)

    def _plan_for_budget(self, step_time: float) -> None:
        """Fix the schedule's total steps for the time budget from the measured update time.

        Rule: ``T = step + floor((budget - elapsed) / step_time)``, capped by max_steps/epochs,
        where ``step_time`` is the mean wall time of PLAN_STEPS updates after the first one
        of the session (slowest rank). Evaluation and checkpoint time is not in the estimate:
        a run that evaluates often reaches the budget slightly before T, and stops there.
        """
        if self.dist.active:  # every rank must plan the same T
            t = torch.tensor([step_time], dtype=torch.float64, device=self._collective_device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            step_time = float(t)
        remaining = self.config.time_budget - self.state.elapsed
        total = self.state.step + max(0, math.floor(remaining / max(step_time, 1e-9)))
        limit, _ = self._step_limit()
        if limit is not None:
            total = min(total, limit)
        self.schedule.total_steps = max(total, self.state.step)
        self._apply_lr()
        self._log({"event": "plan", "step": self.state.step, "elapsed": self.state.elapsed,
                   "planned_steps": self.schedule.total_steps, "step_time": step_time})

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _stop_reason(self, callback_stop: bool) -> str | None:
        cfg, st = self.config, self.state
        time_over = cfg.time_budget is not None and st.elapsed >= cfg.time_budget
        if self.dist.active and (cfg.time_budget is not None or self.on_step is not None):
            # Clocks and hooks differ between ranks; all stop if any must.
            flags = torch.tensor([float(callback_stop), float(time_over)],
                                 device=self._collective_device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            callback_stop, time_over = bool(flags[0]), bool(flags[1])
        limit, limit_name = self._step_limit()
        if callback_stop:
            return "callback"
        if cfg.patience is not None and st.evals_without_improvement >= cfg.patience:
            return "early_stopping"
        if limit is not None and st.step >= limit:
            return limit_name
        if time_over or (cfg.time_budget is not None and self.schedule.total_steps is not None
                         and st.step >= self.schedule.total_steps):
            return "time_budget"
        return None

    # ------------------------------------------------------------------ the update
    def _train_step(self, stream: _BatchStream) -> dict[str, Any]:
        """One optimizer update, top to bottom. Returns the update's mean loss (a tensor, to
        avoid a device sync per step), its token count, lr, gradient norm and whether the
        on_step hook asked to stop."""
        k = self.config.grad_accum_steps
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(k):
            batch = next(stream)
            if not isinstance(batch, Mapping):
                raise ValueError("collate_fn must return a dict of tensors (the model is called "
                                 f"as forward(**batch)), got {type(batch).__name__}")
            tokens += _count_tokens(batch)
            batch = _to_device(batch, self.device)
            loss_sum += self._backward_micro_batch(batch, k, last=micro == k - 1).float()

        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)  # true gradients for clipping and the hook
        grad_norm = None
        if self.config.max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self._trainable, self.config.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)  # skipped by the scaler if fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        self.state.step += 1
        stop = bool(self.on_step(self.model, self.state.step)) if self.on_step else False
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_sum, "tokens": tokens, "lr": lr, "grad_norm": grad_norm,
                "stop": stop}

    def _backward_micro_batch(self, batch: Mapping[str, Any], k: int, last: bool) -> torch.Tensor:
        """Forward and backward of one of the update's ``k`` micro-batches (with the
        adversarial passes when configured); returns its detached loss share."""
        def forward(model: nn.Module) -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=self._autocast_dtype,
                                enabled=self.precision != "no"):
                output = model(**batch)
            # Each micro-batch's mean loss counts 1/k: k equal-size micro-batches give the
            # mean over all their examples, and DDP then averages over ranks, so the
            # update equals one batch of the combined size.
            return _loss_of(output, batch) / k

        def forward_backward(final: bool) -> torch.Tensor:
            # DDP all-reduces gradients in every backward unless told not to; only the last
            # backward of an update needs the averaged gradients, so the others skip it.
            skip_sync = self._ddp is not None and not (last and final)
            with self._ddp.no_sync() if skip_sync else contextlib.nullcontext():
                loss = forward(self._forward)
                self.scaler.scale(loss).backward()
            return loss.detach()

        if self._adversary is None:
            return forward_backward(True)
        # The attack's inner passes run the bare model: they take gradients with respect to
        # the perturbation only, which a DDP forward (expecting a backward) must not see.
        return self._adversary.backward(forward_backward, lambda: forward(self.model))

    @property
    def _autocast_dtype(self) -> torch.dtype:
        return torch.float16 if self.precision == "fp16" else torch.bfloat16

    # ------------------------------------------------------------------ the loop
    def train(self, resume_from: str | os.PathLike | None = None) -> TrainResult:
        """Run until max_steps / epochs / time budget / early stopping / the hook stops it.

        ``resume_from``: a checkpoint folder, or a run folder (its latest checkpoint); the run
        continues exactly where that checkpoint left it: same data position and order,
        optimizer, scheduler, scaler and RNG states, best metric and log history (see
        :meth:`_resume` for damaged checkpoints and frozen parameters).
        At the end the run is evaluated (if there is something to evaluate) and checkpointed,
        rank 0 draws ``curves.png``, and with ``load_best_at_end`` the best weights are loaded
        and ``best/`` removed (:meth:`_best_at_end`).
        """
        self._start_session(resume_from)
        st = self.state
        session = _Session(
            stream=_BatchStream(self._make_loader, self.batches_per_epoch, st.epoch,
                                st.batch_in_epoch),
            bar=tqdm(total=self.schedule.total_steps or self._step_limit()[0], initial=st.step,
                     desc="train", unit="step", dynamic_ncols=True,
                     disable=not (self.dist.is_main and self.config.progress_bar)),
            window_loss=torch.tensor(st.window_loss, device=self.device),
            started=time.perf_counter(), elapsed_before=st.elapsed, first_step=st.step)
        try:
            stop_reason = self._stop_reason(callback_stop=False)
            while stop_reason is None:
                out = self._step_and_follow_up(session)
                stop_reason = self._stop_reason(callback_stop=out["stop"])
            self._end_session(session, stop_reason)
        finally:
            session.bar.close()
            if self._logger is not None:
                self._logger.close()
        return self._result(session, stop_reason)

    def _start_session(self, resume_from: str | os.PathLike | None) -> None:
        """Seed, restore the checkpoint (if any), fix a step-bounded schedule, open the logs."""
        cfg = self.config
        set_seed(cfg.seed + self.dist.rank)  # each rank its own dropout and masking stream
        resumed = self._resume(resume_from) if resume_from is not None else None
        st = self.state
        if cfg.time_budget is None and self.schedule.total_steps is None:
            self.schedule.total_steps = self._step_limit()[0]
            self._apply_lr()

        self._logger = None
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.out_dir / "training_config.json",
                          json.dumps(cfg.to_dict(), indent=2) + "\n")
            self._logger = RunLogger(str(self.out_dir), st.log_history, st.step,
                                     tensorboard=cfg.tensorboard)
        self._log({"event": "start", "step": st.step, "resumed_from": str(resumed or ""),
                   "world_size": self.dist.world_size, "device": str(self.device),
                   "mixed_precision": self.precision, "batches_per_epoch": self.batches_per_epoch})

    def _step_and_follow_up(self, session: _Session) -> dict[str, Any]:
        """One update (:meth:`_train_step`), then what is due after it: counters, the train
        log, evaluation, a checkpoint, the time-budget plan. Returns the update's summary."""
        cfg, st, stream = self.config, self.state, session.stream
        epoch_before = stream.epoch
        out = self._train_step(stream)
        st.elapsed = session.elapsed_before + time.perf_counter() - session.started
        st.epoch, st.batch_in_epoch = stream.epoch, stream.index
        st.tokens_seen += out["tokens"]
        session.window_loss += out["loss"]
        session.window_tokens += out["tokens"]
        st.window_steps += 1
        session.bar.update(1)

        if st.step % cfg.log_every == 0:
            self._log_train(session.window_loss, session.window_tokens,
                            time.perf_counter() - session.window_start, out, session.bar)
            session.window_loss.zero_()
            session.window_tokens, session.window_start, st.window_steps = 0, time.perf_counter(), 0
        epoch_done = stream.epoch > epoch_before
        if self._can_evaluate and (cfg.eval_every and st.step % cfg.eval_every == 0
                                   or not cfg.eval_every and epoch_done):
            session.last_metrics = self._evaluate_and_track()
        if cfg.save_every and st.step % cfg.save_every == 0:
            st.window_loss = float(session.window_loss)
            session.checkpoint_dir = self.save_checkpoint()
        if cfg.time_budget is not None and self.schedule.total_steps is None:
            self._measure_step_time(session)
        return out

    def _measure_step_time(self, session: _Session) -> None:
        """Time PLAN_STEPS updates after the session's first (which pays for warm-up and
        compilation), then plan the schedule for the budget (:meth:`_plan_for_budget`)."""
        st = self.state
        if st.step == session.first_step + 1:
            session.probe_start = time.perf_counter()
        elif session.probe_start is not None and st.step == session.first_step + 1 + PLAN_STEPS:
            self._plan_for_budget((time.perf_counter() - session.probe_start) / PLAN_STEPS)
            session.bar.total = self.schedule.total_steps
            session.bar.refresh()

    def _end_session(self, session: _Session, stop_reason: str) -> None:
        """A clean end: final evaluation and checkpoint, unless this step already has them;
        the end event and, on rank 0, the curves."""
        cfg, st = self.config, self.state
        if self._can_evaluate and st.last_eval_step != st.step:
            session.last_metrics = self._evaluate_and_track()
        elif st.last_eval_step == st.step and st.log_history:
            session.last_metrics = next((e for e in reversed(st.log_history)
                                         if e.get("event") == "eval"), {})
        if st.last_save_step != st.step:
            st.window_loss = float(session.window_loss)
            session.checkpoint_dir = self.save_checkpoint()
        elif self.dist.is_main:
            session.checkpoint_dir = str(self.out_dir / CHECKPOINTS_DIR / f"step-{st.step}")
        self._log({"event": "end", "step": st.step, "stop_reason": stop_reason,
                   "elapsed": st.elapsed})
        if self.dist.is_main and cfg.plot:
            plot_curves(st.log_history, str(self.out_dir / CURVES_FILE),
                        best_step=st.best_step if cfg.save_best else None)

    def _result(self, session: _Session, stop_reason: str) -> TrainResult:
        """The TrainResult of the session, after the best model is dealt with."""
        st = self.state
        best_dir = self._best_at_end()
        last_train = next((e["loss"] for e in reversed(st.log_history)
                           if e.get("event") == "train"), None)
        metrics = {k: v for k, v in session.last_metrics.items()
                   if k not in ("event", "step", "epoch")}
        return TrainResult(
            steps=st.step, epochs=self._epoch_progress(), stop_reason=stop_reason,
            train_loss=last_train, metrics=metrics, best_metric=st.best_metric,
            best_step=st.best_step, best_dir=best_dir,
            checkpoint_dir=session.checkpoint_dir, elapsed=st.elapsed,
            log_history=list(st.log_history))

    def _best_at_end(self) -> str | None:
        """The best model's folder to report once the loop is over (None when there is none).

        With ``load_best_at_end`` the best weights are loaded into the model and ``best/`` is
        removed: the caller saves the model as the run's final folder, and a second copy of
        the weights would only fill the disk (None is returned then). A session resumed after
        that tracks the best afresh (:meth:`_resume`).
        """
        cfg, st = self.config, self.state
        best_dir = self.out_dir / BEST_DIR
        if st.best_step is None or not cfg.save_best:
            return None
        if not cfg.load_best_at_end:
            return str(best_dir)
        if not self._best_exists():  # deleted by someone else while the run went on
            warnings.warn(f"the best model (step {st.best_step}) is no longer in {best_dir}; "
                          "keeping the last weights", stacklevel=3)
            return None
        self.load_best()
        if self.dist.active:
            dist.barrier()  # every rank has read it before it is deleted
        if self.dist.is_main:
            shutil.rmtree(best_dir)
        return None

    def _resume(self, resume_from: str | os.PathLike) -> Path:
        """Restore the checkpoint :func:`load_checkpoint` picks (a truncated or corrupt newest
        one is skipped with a warning); returns its folder. With frozen parameters the caller
        has rebuilt them (the base reloaded from its folder): a frozen part that differs from
        the checkpoint's is a ValueError ("the base model of this run changed: ..."). A best
        model the checkpoint names but ``best/`` no longer holds is forgotten, with a warning."""
        folder, payload = load_checkpoint(resume_from)
        self._restore(payload, folder / STATE_FILE)
        st, best_dir = self.state, self.out_dir / BEST_DIR
        if self.config.save_best and st.best_step is not None and not self._best_exists():
            # An earlier session ended with load_best_at_end (which removes best/), or the run
            # moved: the best weights are gone, so keeping their metric would end this session
            # with a "best" that no file holds. The best is tracked afresh instead.
            warnings.warn(f"the best model of step {st.best_step} is not in {best_dir} (an "
                          "earlier session loaded it at its end and removed it); the best model "
                          f"is tracked afresh from step {st.step}", stacklevel=3)
            st.best_metric = st.best_step = None
            st.evals_without_improvement = 0
        return folder

    def _best_exists(self) -> bool:
        """Whether ``best/`` holds a best state, as rank 0 sees it (the same answer on every
        rank; rank 0 writes it, and waits here for the others)."""
        present = [(self.out_dir / BEST_DIR / BEST_STATE_FILE).is_file()]
        if self.dist.active:
            dist.broadcast_object_list(present, src=0)
        return present[0]

    def _make_loader(self, epoch: int, start: int) -> DataLoader:
        cfg = self.config
        sampler = ShardedBatchSampler(
            len(self.train_dataset), cfg.batch_size, seed=cfg.seed, epoch=epoch,
            rank=self.dist.rank, world_size=self.dist.world_size, drop_last=cfg.drop_last,
            start=start)
        # A private generator: DataLoader draws its worker base seed from the *global* torch
        # generator otherwise, which would shift the collator's random stream at every epoch
        # and differently in a resumed run.
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        return DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.collate_fn,
                          num_workers=cfg.num_workers, generator=generator,
                          pin_memory=self.device.type == "cuda")

    def _epoch_progress(self) -> float:
        return self.state.epoch + self.state.batch_in_epoch / self.batches_per_epoch

    # ------------------------------------------------------------------ logging
    def _log(self, event: dict[str, Any]) -> None:
        """Record an event in the resumable history and, on rank 0, in metrics.jsonl/TensorBoard."""
        self.state.log_history.append(event)
        if self._logger is not None:
            self._logger.log(event)

    def _log_train(self, window_loss: torch.Tensor, tokens: int, seconds: float,
                   out: Mapping[str, Any], bar: tqdm) -> None:
        steps = self.state.window_steps
        totals = torch.stack([window_loss.double().cpu(), torch.tensor(float(tokens),
                                                                        dtype=torch.float64)])
        if self.dist.active:  # the loss of all ranks, the tokens of all ranks
            totals = totals.to(self._collective_device)
            dist.all_reduce(totals)
            totals = totals.cpu() / torch.tensor([self.dist.world_size, 1.0], dtype=torch.float64)
        loss = float(totals[0]) / steps
        event = {"event": "train", "step": self.state.step, "epoch": self._epoch_progress(),
                 "loss": loss, "lr": out["lr"],
                 "grad_norm": None if out["grad_norm"] is None else float(out["grad_norm"]),
                 "tokens_per_s": float(totals[1]) / max(seconds, 1e-9),
                 "elapsed": self.state.elapsed}
        self._log(event)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{out['lr']:.2e}",
                        tok_s=f"{event['tokens_per_s']:.0f}", refresh=False)

    # ------------------------------------------------------------------ evaluation
    @property
    def _can_evaluate(self) -> bool:
        return self.eval_fn is not None or self.eval_dataset is not None

    def evaluate(self, dataset: Any = None) -> dict[str, Any]:
        """The model's metrics, in eval mode.

        Without ``dataset``: ``eval_fn(model)`` when the Trainer has one, else the metrics of
        ``eval_dataset``. The metrics of a dataset: ``eval_loss`` (the mean of the batch
        losses weighted by batch size) and ``compute_metrics``' numbers when it is given.
        Rank 0 computes them on the unwrapped model (no_grad, generators seeded to
        ``config.seed`` and restored after); every rank receives the same dict.
        """
        metrics = None
        if self.dist.is_main:
            with self._eval_mode():
                if dataset is None and self.eval_fn is not None:
                    metrics = self.eval_fn(self.model)
                elif dataset is None and self.eval_dataset is None:
                    raise ValueError("nothing to evaluate: give the Trainer an eval_fn or "
                                     "an eval_dataset")
                else:
                    metrics = self._dataset_metrics(
                        self.eval_dataset if dataset is None else dataset)
            if not isinstance(metrics, Mapping):
                raise ValueError(f"eval_fn must return a dict of metrics, got "
                                 f"{type(metrics).__name__}")
            metrics = _float_metrics(metrics)
        if self.dist.active:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    def predict(self, dataset: Any) -> PredictionOutput:
        """Run the model (eval mode, no_grad) over ``dataset`` in order, in batches of
        ``eval_batch_size`` made by the collator; returns the logits (:class:`EvalPrediction`
        says which outputs and how batches are joined), the labels when the batches carry
        them, and the metrics of :meth:`evaluate` when they do. Runs in this process only."""
        with self._eval_mode():
            loss, predictions, labels = self._run_dataset(dataset, collect=True)
        metrics: dict[str, Any] = {}
        if loss is not None:
            metrics["eval_loss"] = loss
        if labels is not None and self.compute_metrics is not None:
            metrics.update(self._computed(EvalPrediction(predictions, labels)))
        return PredictionOutput(predictions, labels, _float_metrics(metrics))

    @contextlib.contextmanager
    def _eval_mode(self):
        """The model in eval mode under no_grad, global generators seeded to ``config.seed``
        (the same dropout-free, mask-fixed evaluation every time) and restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with _isolated_rng(self.config.seed), torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _dataset_metrics(self, dataset: Any) -> dict[str, Any]:
        loss, predictions, labels = self._run_dataset(
            dataset, collect=self.compute_metrics is not None, need_loss=True)
        metrics = {"eval_loss": loss}
        if self.compute_metrics is not None:
            metrics.update(self._computed(EvalPrediction(predictions, labels)))
        return metrics

    def _computed(self, prediction: EvalPrediction) -> dict[str, Any]:
        metrics = self.compute_metrics(prediction)
        if not isinstance(metrics, Mapping):
            raise ValueError(f"compute_metrics must return a dict of metrics, got "
                             f"{type(metrics).__name__}")
        return dict(metrics)

    def _run_dataset(self, dataset: Any, collect: bool, need_loss: bool = False):
        """(mean loss or None, predictions, labels) of the model over ``dataset``; the last
        two are None unless ``collect``. ``need_loss``: a batch without a loss is an error."""
        loader = DataLoader(dataset, shuffle=False, collate_fn=self.collate_fn,
                            batch_size=self.config.eval_batch_size or self.config.batch_size,
                            num_workers=self.config.num_workers, generator=torch.Generator())
        total, count = 0.0, 0
        outputs, labels = [], []
        for batch in loader:
            n = _batch_len(batch)
            batch = _to_device(batch, self.device)
            with torch.autocast(self.device.type, dtype=self._autocast_dtype,
                                enabled=self.precision != "no"):
                output = self.model(**batch)
            has_loss = need_loss or isinstance(getattr(output, "loss", None), torch.Tensor) \
                or (isinstance(output, Mapping) and isinstance(output.get("loss"), torch.Tensor))
            if has_loss:
                total += float(_loss_of(output, batch)) * n
                count += n
            if collect:
                outputs.append(_output_arrays(output))
                labels.append(_label_arrays(batch))
        if not outputs and count == 0:
            raise ValueError("the evaluated dataset is empty")
        return (total / count if count else None), _joined(outputs), _joined(labels)

    def _evaluate_and_track(self) -> dict[str, Any]:
        """Evaluate, log, and update best metric / best model / early-stopping counter."""
        cfg, st = self.config, self.state
        metrics = self.evaluate()
        st.last_eval_step = st.step
        self._log({"event": "eval", "step": st.step, "epoch": self._epoch_progress(), **metrics})
        name = cfg.metric_for_best
        if name not in metrics:
            raise ValueError(f"TrainingConfig.metric_for_best={name!r} is not among the eval "
                             f"metrics {sorted(metrics)}")
        value = float(metrics[name])
        greater = cfg.greater_is_better
        if greater is None:
            greater = "loss" not in name  # losses go down, scores go up
        best = st.best_metric
        improved = math.isfinite(value) and (
            best is None or (value > best if greater else value < best))
        if improved:
            st.best_metric, st.best_step, st.evals_without_improvement = value, st.step, 0
            if cfg.save_best:
                self._save_best(metrics)
        else:
            st.evals_without_improvement += 1
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_payload(self) -> dict[str, Any]:
        """Everything a resumed run needs, as one object (the content of trainer_state.pt).

        Called on every rank: the RNG states of all ranks are gathered so each rank resumes
        its own stream. The model is stored as the unwrapped model's :func:`model_state`
        (besides the model folder written by save_fn, which is for people and other tools), so
        resuming never depends on the model folder's format; with frozen parameters, only the
        trainable part and the ``frozen_sha256`` of the rest (rank 0 only: the others' payload
        is not written).
        """
        rng = _capture_rng()
        if self.dist.active:
            all_rng = [None] * self.dist.world_size
            dist.all_gather_object(all_rng, rng)
        else:
            all_rng = [rng]
        is_main = self.dist.is_main
        return {
            "format": 1,
            "state": dataclasses.asdict(self.state),
            "model": model_state(self.model) if is_main else {},
            "frozen_sha256": frozen_fingerprint(self.model) if is_main else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": all_rng,
            "world_size": self.dist.world_size,
            "config": self.config.to_dict(),
        }

    def _restore(self, payload: Mapping[str, Any], source: Path) -> None:
        """Load a :meth:`_checkpoint_payload` read from ``source`` into this Trainer (before
        the loop starts). The model is checked first (its frozen part must be the one the
        checkpoint was saved with): a ValueError then leaves the rest untouched."""
        load_model_state(self.model, payload["model"], payload.get("frozen_sha256"), source)
        saved_cfg = payload.get("config", {})
        changed = [k for k in _RESUME_SENSITIVE if k in saved_cfg
                   and saved_cfg[k] != self.config.to_dict()[k]]
        if changed:
            warnings.warn(f"resuming with changed {changed}: the run will not continue exactly "
                          "as it would have", stacklevel=3)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler.is_enabled() and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainerState(**payload["state"])
        rng = payload["rng"]
        if len(rng) == self.dist.world_size:
            _restore_rng(rng[self.dist.rank])
        else:
            warnings.warn(f"checkpoint was written by {len(rng)} process(es), resuming with "
                          f"{self.dist.world_size}: random streams are reseeded and the data "
                          "position (a batch index in each rank's share) is approximate", stacklevel=3)
            set_seed(self.config.seed + self.dist.rank + 7919 * self.state.step)

    def save_checkpoint(self) -> str | None:
        """Write ``out_dir/checkpoints/step-N`` atomically, point ``latest`` at it, keep the
        last ``keep_last``. Collective under DDP (call on every rank); returns the folder on
        rank 0, None elsewhere.

        Atomic: everything is written into ``checkpoints/.tmp-step-N`` which is renamed to
        ``step-N`` only when complete, and ``latest`` is replaced (write + rename) after that.
        A run killed at any moment leaves ``latest`` naming a complete checkpoint; leftover
        ``.tmp-*`` folders are ignored by resume and deleted by the next save.
        """
        self.state.last_save_step = self.state.step
        payload = self._checkpoint_payload()
        if not self.dist.is_main:
            return None
        root = self.out_dir / CHECKPOINTS_DIR
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        name = f"step-{self.state.step}"
        tmp, final = root / f".tmp-{name}", root / name
        tmp.mkdir()
        self.save_fn(self.model, str(tmp))
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes the checkpoint visible
        if final.exists():  # the same step saved again (a resumed run): swap, then delete
            old = root / f".tmp-old-{name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _write_atomic(root / LATEST_FILE, name + "\n")
        if self.config.keep_last is not None:
            for _, folder in _complete_checkpoints(root)[:-self.config.keep_last]:
                if folder != final:
                    shutil.rmtree(folder)
        return str(final)

    def _save_best(self, metrics: Mapping[str, Any]) -> None:
        """Replace ``out_dir/best`` (model folder + model_state.safetensors + best.json)
        atomically. The state is the model's :func:`model_state` (the trainable part only when
        some parameters are frozen), its frozen fingerprint in the file's metadata."""
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp, final = self.out_dir / ".tmp-best", self.out_dir / BEST_DIR
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.save_fn(self.model, str(tmp))
        save_file(_safetensors_ready(model_state(self.model)), str(tmp / BEST_STATE_FILE),
                  metadata={"format": "pt",
                            "frozen_sha256": frozen_fingerprint(self.model) or ""})
        as_user_file(tmp / BEST_STATE_FILE)
        info = {"step": self.state.step, "metric": self.config.metric_for_best,
                "value": self.state.best_metric, "metrics": dict(metrics)}
        (tmp / "best.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        old = self.out_dir / ".tmp-best-old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def load_best(self) -> None:
        """Load the weights of ``out_dir/best`` into the model (every rank)."""
        if self.dist.active:
            dist.barrier()  # rank 0 may still be writing it
        path = self.out_dir / BEST_DIR / BEST_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no best model at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                fingerprint = (f.metadata() or {}).get("frozen_sha256") or None
            state = load_file(str(path))
        except (OSError, SafetensorError) as error:
            raise ValueError(f"{path} is truncated or corrupt ({error})") from None
        load_model_state(self.model, state, fingerprint, path, deduplicated=True)
