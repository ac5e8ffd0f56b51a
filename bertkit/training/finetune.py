"""Fine-tuning a BERT folder on a task of :data:`bertkit.tasks.TASKS` (classification,
regression, NER, extractive QA).

One path for every task; what differs between tasks is asked of the task object::

    model folder + data files -> tokenizer, examples, label map -> encoded datasets
        -> head (fresh, with id2label in its config) -> Trainer (dev metrics every epoch,
        best checkpoint, early stopping) -> best model -> dev/test metrics -> output folder

The output folder is an HF-format model of the task's head class (``config.json`` with
``architectures`` and ``id2label``, ``model.safetensors``, ``vocab.txt``,
``tokenizer_config.json``) that ``transformers`` loads with its ``AutoModelFor...`` class,
beside the run's files (``metrics.json``, ``report.txt``, ``finetune.json``, the Trainer's
``metrics.jsonl``, ``curves.png``, ``tensorboard/``, ``checkpoints/``, ``best/``).
``config.json`` also records what prediction needs (``bertkit_task`` and the task's
:class:`~bertkit.tasks.TaskSettings`), so :func:`bertkit.tasks.evaluate.evaluate_folder` and
:func:`bertkit.tasks.predict.predict_folder` take only the folder.

Public API: :class:`FinetuneConfig`, :func:`run_finetuning`, :class:`FinetuneResult`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bertkit.checkpoint import check_vocab_fits
from bertkit.config import BertConfig
from bertkit.data.tasks import (ClassificationExample, LabelMap, TaskDataset,
                                build_label_map)
from bertkit.modeling.pooling import POOLING_MODES
from bertkit.peft import RECOMMENDED_OPTIONS, apply_peft, on_step
from bertkit.tasks import TASKS, Split, Task, TaskSettings, get_task
from bertkit.tasks.evaluate import (baseline_line, headline, metrics_for_json, print_report,
                                    split_metrics, write_json)
from bertkit.tokenizer import Tokenizer
from bertkit.training.augment import AugmentConfig, augment_examples
from bertkit.training.continual import (build_head, check_old_labels, extend_label_map,
                                        folder_labels, forgetting_line, forgetting_report,
                                        metrics_before, replay_sample)
from bertkit.training.data_stats import write_training_stats
from bertkit.training.run import (TrainingPlan, run_in_output_folder, stopped_line,
                                  train_to_best)
from bertkit.training.trainer import (TrainingConfig, TrainResult, planned_steps, set_seed,
                                      setup_distributed)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.txt"
SUMMARY_FILE = "finetune.json"


# ============================================================================ configuration


@dataclass
class FinetuneConfig:
    """What to fine-tune on; the loop's settings (lr, epochs, time budget ...) are a
    :class:`~bertkit.training.trainer.TrainingConfig`.

    ``task`` is a name in :data:`bertkit.tasks.TASKS`. ``metric`` (default: the task's, e.g.
    accuracy / pearson / f1 / f1) selects the best checkpoint; ``patience`` (evaluations
    without a gain before stopping; None = never stop early) overrides the TrainingConfig's.
    ``max_length`` defaults to the task's (128; QA: 384), capped by the model's
    ``max_position_embeddings``. ``version_2`` (SQuAD 2.0 "no answer" predictions) is
    detected from the data when None.
    """

    task: str
    model: str                          # an HF BERT folder (config.json, weights, vocab.txt)
    train: str
    dev: str | None = None
    test: str | None = None
    max_length: int | None = None
    # QA (what each means: TaskSettings, whose defaults these are)
    doc_stride: int = TaskSettings.doc_stride
    max_query_length: int = TaskSettings.max_query_length
    max_answer_length: int = TaskSettings.max_answer_length
    n_best: int = TaskSettings.n_best
    version_2: bool | None = None       # QA: allow "no answer"; None = auto-detect
    null_threshold: float = 0.0         # QA v2: no answer when null score > best + this
    # retrieval: pooling (mean|cls|max) and normalize, None = the model folder's; loss scale
    pooling: str | None = None
    normalize: bool | None = None
    scale: float = TaskSettings.scale
    patience: int | None = None
    metric: str | None = None
    baseline: bool = True               # report the task's TF-IDF baseline beside the model
    augment: AugmentConfig | None = None  # new training examples (training/augment.py)
    peft: str | None = None             # lora | adapter | prefix | adalora | bitfit (bertkit.peft)
    peft_options: dict = dataclasses.field(default_factory=dict)  # e.g. {"r": 8, "alpha": 16}
    # continual fine-tuning of a fine-tuned folder (training/continual.py)
    replay: str | None = None           # old examples, a sample of which joins the training set
    replay_ratio: float = 0.2           # the old examples' share of the mixed training set
    old_test: str | None = None         # the old test set, scored before and after (forgetting)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # the Python API may pass plain options
            self.augment = AugmentConfig(**self.augment)
        if not isinstance(self.task, str) or self.task not in TASKS:
            raise ValueError(f"FinetuneConfig.task must be one of {', '.join(TASKS)}, "
                             f"got {self.task!r}")
        task = TASKS[self.task]
        if self.metric is None:
            self.metric = task.default_metric
        if isinstance(self.replay_ratio, bool) or not isinstance(self.replay_ratio, (int, float)) \
                or not 0 < self.replay_ratio < 1:
            raise ValueError(f"FinetuneConfig.replay_ratio must be a number between 0 and 1 "
                             f"(exclusive), got {self.replay_ratio!r}")
        if self.peft and task.added_tokens:
            raise ValueError(f"--peft does not work with the {self.task} task: it adds the tokens "
                             f"{' '.join(task.added_tokens)}, whose embedding rows the base "
                             "folder an adapter points to lacks")
        if self.metric == "loss":
            self.metric = "eval_loss"
        if self.metric not in task.metrics_names:
            raise ValueError(f"FinetuneConfig.metric {self.metric!r} is not a {self.task} metric; "
                             f"choose one of {', '.join(task.metrics_names)}")
        for name in ("max_length", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"FinetuneConfig.{name} must be a positive integer or None, "
                                 f"got {value!r}")
        for name in ("doc_stride", "max_query_length", "max_answer_length", "n_best"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "doc_stride" else 1):
                raise ValueError(f"FinetuneConfig.{name} must be a positive integer, got {value!r}")
        if self.pooling is not None and self.pooling not in POOLING_MODES:
            raise ValueError(f"FinetuneConfig.pooling must be one of {', '.join(POOLING_MODES)} "
                             f"or None, got {self.pooling!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) \
                or not self.scale > 0:
            raise ValueError(f"FinetuneConfig.scale must be a positive number, got {self.scale!r}")


@dataclass
class FinetuneResult:
    """What :func:`run_finetuning` returns (on rank 0; other ranks get empty ``metrics``)."""

    out_dir: str
    train: TrainResult
    metrics: dict = field(default_factory=dict)  # {"dev": {...}, "test": {...}} + report_text
    labels: list[str] | None = None               # class / tag names in id order


@dataclass
class _RunData:
    """A run's tokenizer, settings, label map and encoded splits."""

    tokenizer: Tokenizer
    settings: TaskSettings
    labels: LabelMap | None
    train: TaskDataset
    num_train: int                                # examples (QA: fewer than windows)
    dev: Split | None
    test: Split | None
    train_examples: list = field(default_factory=list)  # for training_stats.json
    old_labels: LabelMap | None = None            # continuing a fine-tuned folder: its labels
    old_test: Split | None = None                 # continual: the old test set (forgetting)

    @property
    def label_names(self) -> list[str] | None:
        return list(self.labels.names) if self.labels is not None else None

    def evaluated(self) -> list[tuple[str, Split]]:
        """The splits evaluated at the end: dev and test, those given."""
        return [(name, s) for name, s in (("dev", self.dev), ("test", self.test)) if s is not None]


# ============================================================================ fine-tuning


def run_finetuning(cfg: FinetuneConfig, training: TrainingConfig,
                   resume_from: str | None = None, overwrite: bool = False) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on ``cfg.task`` and write the output folder ``training.out_dir``.

    Steps: load the tokenizer from the model folder (a ValueError when its vocab does not fit
    the model); load train/dev/test (labels come from train, dev/test labels never seen in
    train are a ValueError naming file, line and label); build the head with ``id2label`` /
    ``label2id`` in its config; train with the Trainer, evaluating on dev every epoch (or
    ``training.eval_every`` steps), keeping the best checkpoint by ``cfg.metric`` and stopping
    after ``cfg.patience`` evaluations without a gain; load the best model, evaluate it on dev
    and test, and write the folder (module docstring) with ``metrics.json`` =
    ``{"dev": {...}, "test": {...}}`` (a split that was not given is left out). Prints the
    classification / entity report at the end.

    The run writes into ``OUT.partial`` and moves it to ``training.out_dir`` at the end
    (:func:`bertkit.outputs.output_folder`): an existing non-empty folder is refused unless
    ``resume_from`` continues it or ``overwrite`` replaces it, and a failed run leaves it as it
    was. Under torchrun every rank calls this; rank 0 evaluates and writes.
    """
    rank_info, _ = setup_distributed(training.device)
    inputs = {"--model": cfg.model, "--train": cfg.train, "--dev": cfg.dev, "--test": cfg.test,
              "--replay": cfg.replay, "--old-test": cfg.old_test}
    return run_in_output_folder(
        training, lambda staged: _finetune_into(cfg, staged, resume_from, rank_info.is_main),
        inputs=inputs, resume_from=resume_from, overwrite=overwrite, is_main=rank_info.is_main)


def _finetune_into(cfg: FinetuneConfig, training: TrainingConfig, resume_from: str | None,
                   is_main: bool) -> FinetuneResult:
    """The fine-tuning run of :func:`run_finetuning`, writing into ``training.out_dir``."""
    task = get_task(cfg.task)
    data = _load_data(cfg, task, training.seed)
    model = _build_model(cfg, task, data, training, is_main)
    id2label = task.id2label(model.config)
    eval_batch_size = training.eval_batch_size or max(64, training.batch_size)

    def eval_fn(m: nn.Module) -> dict:
        return split_metrics(m, task, data.dev, data.settings, id2label, eval_batch_size,
                             full=False)

    def save(model_to_save: nn.Module, folder: str) -> None:
        model_to_save.save_pretrained(folder)
        data.tokenizer.save_pretrained(folder)

    if is_main:
        _print_plan(cfg, task, data, model)
    plan = TrainingPlan(model, data.train, task.collator(data.tokenizer.pad_token_id), save,
                        eval_fn=eval_fn if data.dev is not None else None, metric=cfg.metric,
                        greater_is_better=cfg.metric not in task.lower_is_better,
                        patience=cfg.patience, on_step=on_step)  # on_step: AdaLoRA's budget
    model, result = train_to_best(plan, training, resume_from)
    if not is_main:
        return FinetuneResult(training.out_dir, result, {}, data.label_names)

    metrics = {name: split_metrics(model, task, split, data.settings, id2label,
                                   eval_batch_size, full=True)
               for name, split in data.evaluated()}
    if cfg.baseline:
        _add_baselines(task, data, metrics, id2label)
    if data.old_test is not None:  # forgetting: the folder as it was, and the model now
        before = metrics_before(task, cfg.model, data.old_test, data.settings, eval_batch_size,
                                next(model.parameters()).device)
        metrics["old_test"] = forgetting_report(task, before, split_metrics(
            model, task, data.old_test, data.settings, id2label, eval_batch_size, full=True))
    save(model, training.out_dir)
    _write_run_files(cfg, task, data, result, metrics, training.out_dir)
    # What a server compares its inputs with to see drift (bertkit.serve.monitoring).
    write_training_stats(training.out_dir, model, task, data.tokenizer, data.train_examples,
                         data.dev, data.label_names, eval_batch_size)
    print("\n" + stopped_line(result, cfg.metric))
    for name, m in metrics.items():
        print_report(task.name, m, name)
    if data.old_test is not None:
        print(forgetting_line(metrics["old_test"], data.old_test.path))
    return FinetuneResult(training.out_dir, result, metrics, data.label_names)


def _add_baselines(task: Task, data: _RunData, metrics: dict[str, dict],
                   id2label: dict[int, str] | None) -> None:
    """Put the task's bag-of-words baseline, trained on the same training file, beside the
    model's numbers of each evaluated split (``metrics[split]["baseline"]``)."""
    for name, split in data.evaluated():
        baseline = task.baseline_metrics(data.train_examples, split, id2label)
        if baseline is not None:
            metrics[name]["baseline"] = baseline


def _load_data(cfg: FinetuneConfig, task: Task, seed: int = 0) -> _RunData:
    """Tokenizer, examples, label map, settings and encoded splits of a run (``seed``: the
    replay sample's)."""
    if not os.path.isdir(cfg.model):
        raise FileNotFoundError(f"model folder {cfg.model} does not exist")
    tokenizer = Tokenizer.from_pretrained(cfg.model)
    model_config = BertConfig.from_pretrained(cfg.model)
    check_vocab_fits(tokenizer, model_config, cfg.model)
    if task.added_tokens:  # entity markers ...: never split, new ids
        tokenizer.add_tokens(task.added_tokens)
    max_length = _resolve_max_length(cfg, task, model_config)

    # Data first: a bad file fails in seconds, before the weights load.
    paths = {name: path for name, path in (("train", cfg.train), ("dev", cfg.dev),
                                           ("test", cfg.test), ("old_test", cfg.old_test)) if path}
    examples = {name: task.load_examples(path) for name, path in paths.items()}
    if cfg.augment is not None:  # the training split only: dev and test stay as written
        examples["train"] = examples["train"] + _augmented(examples["train"], cfg)
    labels, old_labels = _run_labels(cfg, task, examples, seed)
    label2id = labels.label2id if labels is not None else None
    for name in ("dev", "test"):
        if name in examples:
            task.check_labels(examples[name], label2id, paths[name])
    settings = _task_settings(cfg, task, max_length, examples["train"] + examples.get("dev", []))
    encoded = {name: task.encode(ex, tokenizer, settings, label2id)
               for name, ex in examples.items()}
    dev, test, old_test = (Split(paths[name], examples[name], encoded[name])
                           if name in examples else None for name in ("dev", "test", "old_test"))
    return _RunData(tokenizer, settings, labels, encoded["train"], len(examples["train"]),
                    dev, test, train_examples=examples["train"], old_labels=old_labels,
                    old_test=old_test)


def _run_labels(cfg: FinetuneConfig, task: Task, examples: dict[str, list],
                seed: int) -> tuple[LabelMap | None, LabelMap | None]:
    """The run's label map and, when ``cfg.model`` was fine-tuned on the task, the folder's
    own: kept, with the new training labels appended (training/continual.py). Mixes the
    replay sample into ``examples["train"]``; replay and old test labels must be the folder's."""
    old = folder_labels(cfg.model, task)
    # New data may hold a single (new) label when the folder brings the others.
    fresh = task.label_map(examples["train"], cfg.train) if old is None else \
        build_label_map(examples["train"])
    if old is None and cfg.old_test:
        raise ValueError(f"--old-test needs --model to be a folder fine-tuned for {task.name} "
                         f"(the model whose forgetting it measures); {cfg.model} is not")
    labels = fresh if old is None else extend_label_map(old, fresh, examples["train"],
                                                        cfg.train, cfg.model)
    if old is not None:
        added = labels.names[len(old):]
        print(f"continuing {cfg.model}: its {len(old)} labels keep their ids"
              + (f"; new: {', '.join(added)}" if added else ""))
    for name, path in (("replay", cfg.replay), ("old_test", cfg.old_test)):
        if path:
            old_examples = examples.get(name) or task.load_examples(path)
            if old is not None:
                check_old_labels(old_examples, old, path, cfg.model)
            elif labels is not None:  # a replay file beside a base folder
                task.check_labels(old_examples, labels.label2id, path)
            examples[name] = old_examples
    if cfg.replay:
        replay = replay_sample(examples.pop("replay"), cfg.replay_ratio, len(examples["train"]),
                               seed)
        print(f"replay: {len(replay):,} old examples of {cfg.replay} mixed into the "
              f"{len(examples['train']):,} new ones")
        examples["train"] = examples["train"] + replay
    return labels, old


def _augmented(train: list, cfg: FinetuneConfig) -> list:
    """The new training examples of ``cfg.augment``, counted on the console."""
    if not all(isinstance(ex, ClassificationExample) for ex in train):
        raise ValueError(f"--augment works on classification and regression data, not "
                         f"{cfg.task} examples")
    made = augment_examples(train, cfg.augment)
    print(f"augmentation ({', '.join(cfg.augment.methods)}): {len(made):,} new training "
          f"examples beside the {len(train):,} of {cfg.train}")
    return made


def _resolve_max_length(cfg: FinetuneConfig, task: Task, config: BertConfig) -> int:
    limit = config.max_tokens  # RoBERTa: max_position_embeddings - pad_token_id - 1
    if cfg.max_length is None:
        return min(task.default_max_length, limit)
    if cfg.max_length > limit:
        raise ValueError(f"max_length {cfg.max_length} exceeds the model's "
                         f"max_position_embeddings {limit} ({cfg.model}/config.json)")
    return cfg.max_length


def _task_settings(cfg: FinetuneConfig, task: Task, max_length: int,
                   examples: list) -> TaskSettings:
    """The run's settings: the config's values, and what the data decides where the config
    leaves it open (QA's version_2 when None)."""
    given: dict[str, Any] = {
        "max_length": max_length, "doc_stride": cfg.doc_stride,
        "max_query_length": cfg.max_query_length, "max_answer_length": cfg.max_answer_length,
        "n_best": cfg.n_best, "null_threshold": cfg.null_threshold, "scale": cfg.scale}
    for name in ("version_2", "pooling", "normalize"):
        if getattr(cfg, name) is not None:
            given[name] = getattr(cfg, name)
    return TaskSettings(**{**task.settings_from_folder(cfg.model),
                           **task.settings_from_data(examples), **given})


def _build_model(cfg: FinetuneConfig, task: Task, data: _RunData, training: TrainingConfig,
                 is_main: bool) -> nn.Module:
    """The task's head on the folder's encoder, its settings in the config, PEFT applied."""
    set_seed(training.seed)  # the fresh head's initialisation is part of the run's seed
    model = build_head(task, cfg.model, data.labels, data.old_labels, verbose=is_main)
    task.prepare_model(model, data.tokenizer)  # e.g. grow the embeddings for added tokens
    data.settings.write_to(model.config, task)
    if cfg.peft:
        # Freeze the base, add the method's weights; the task head stays trainable and is saved
        # with the adapter. AdaLoRA plans its rank budget over the run's steps.
        options = {**RECOMMENDED_OPTIONS.get(cfg.peft, {}), **cfg.peft_options}
        if cfg.peft == "adalora":
            options.setdefault("total_steps", planned_steps(len(data.train), training))
        model = apply_peft(model, cfg.peft, base_model_folder=cfg.model, **options)
        if is_main:
            print(model.summary())
    return model


def _print_plan(cfg: FinetuneConfig, task: Task, data: _RunData, model: nn.Module) -> None:
    sizes = ", ".join(f"{name} {len(s.examples):,}" for name, s in data.evaluated())
    labels = data.label_names
    print(f"fine-tuning {cfg.model} ({model.num_parameters():,} parameters) for {task.name}: "
          f"train {data.num_train:,}" + (f", {sizes}" if sizes else "")
          + (f"; {len(labels)} labels: {', '.join(labels)}" if labels else "")
          + f"; max_length {data.settings.max_length}; best by dev {cfg.metric}")


def _write_run_files(cfg: FinetuneConfig, task: Task, data: _RunData, result: TrainResult,
                     metrics: dict[str, dict], out_dir: str) -> None:
    """metrics.json, report.txt and finetune.json of a finished run."""
    write_json(os.path.join(out_dir, METRICS_FILE),
               {k: metrics_for_json(v) for k, v in metrics.items()})
    with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
        for name, m in metrics.items():
            f.write(f"{name} ({task.name})\n{m.get('report_text') or headline(task.name, m)}\n")
            if m.get("baseline"):
                f.write(baseline_line(m["baseline"]) + "\n")
            if m.get("before"):
                f.write(forgetting_line(m, cfg.old_test) + "\n")
            f.write("\n")
    write_json(os.path.join(out_dir, SUMMARY_FILE), {
        "task": task.name, "model": cfg.model, "labels": data.label_names, "steps": result.steps,
        "epochs": result.epochs, "stop_reason": result.stop_reason,
        "elapsed_seconds": result.elapsed, "train_loss": result.train_loss,
        "best_metric": cfg.metric, "best_value": result.best_metric, "best_step": result.best_step,
        "num_truncated": {"train": data.train.num_truncated,
                          **{name: s.dataset.num_truncated for name, s in data.evaluated()}},
        "finetune_config": dataclasses.asdict(cfg)})
