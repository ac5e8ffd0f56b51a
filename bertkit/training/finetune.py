"""Fine-tuning a BERT folder on a task: classification, regression, NER or extractive QA.

One path for every task::

    model folder + data files -> tokenizer, examples, label map -> encoded datasets
        -> head (fresh, with id2label in its config) -> Trainer (dev metrics every epoch,
        best checkpoint, early stopping) -> best model -> dev/test metrics -> output folder

The output folder is an HF-format model of the task's head class (``config.json`` with
``architectures`` and ``id2label``, ``model.safetensors``, ``vocab.txt``,
``tokenizer_config.json``) that ``transformers`` loads with its ``AutoModelFor...`` class,
beside the run's files (``metrics.json``, ``report.txt``, ``finetune.json``, the Trainer's
``metrics.jsonl``, ``curves.png``, ``tensorboard/``, ``checkpoints/``, ``best/``).
``config.json`` also records what prediction needs (``bertkit_task``, ``bertkit_max_length``,
QA's ``bertkit_doc_stride`` ...), so :func:`evaluate_folder` and :func:`predict_folder` take
only the folder.

Public API: :class:`FinetuneConfig`, :func:`run_finetuning`, :func:`evaluate_folder`,
:func:`predict_folder`, :func:`load_predictor` / :class:`Predictor` (load once, predict many),
:func:`print_report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from bertkit.checkpoint import check_vocab_fits
from bertkit.config import BertConfig
from bertkit.data.tasks import (ClassificationExample, NerSentence, PaddingCollator, QaExample,
                                TaskDataset, build_label_map, check_labels,
                                encode_classification, encode_ner, encode_qa,
                                entities_from_text, load_classification, load_conll,
                                load_squad, ner_predictions_to_words, postprocess_qa, qa_gold,
                                split_words)
from bertkit.modeling.bert import (BertForQuestionAnswering, BertForSequenceClassification,
                                   BertForTokenClassification)
from bertkit.tokenizer import Tokenizer
from bertkit.training.run import run_in_output_folder
from bertkit.training.trainer import (Trainer, TrainingConfig, TrainResult, set_seed,
                                      setup_distributed)

TASKS = ("classification", "regression", "ner", "qa")
HEADS = {"classification": BertForSequenceClassification,
         "regression": BertForSequenceClassification,
         "ner": BertForTokenClassification,
         "qa": BertForQuestionAnswering}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "pearson", "ner": "f1", "qa": "f1"}
# The numbers each task's evaluation reports; any of them can select the best checkpoint.
# eval_loss is the mean loss on the dev set (lower is better, like mse).
TASK_METRICS = {"classification": ("accuracy", "macro_f1", "eval_loss"),
                "regression": ("pearson", "spearman", "mse", "eval_loss"),
                "ner": ("f1", "precision", "recall", "eval_loss"),
                "qa": ("f1", "exact_match", "eval_loss")}
LOWER_IS_BETTER = ("eval_loss", "mse")
RUNTIMES = ("torch", "onnx")  # inference engines: PyTorch, or the exported model.onnx
DEFAULT_MAX_LENGTH = {"classification": 128, "regression": 128, "ner": 128, "qa": 384}

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.txt"
SUMMARY_FILE = "finetune.json"


# ============================================================================ configuration


@dataclass
class FinetuneConfig:
    """What to fine-tune on; the loop's settings (lr, epochs, time budget ...) are a
    :class:`~bertkit.training.trainer.TrainingConfig`.

    ``metric`` (default per task: accuracy / pearson / f1 / f1) selects the best checkpoint;
    ``patience`` (evaluations without a gain before stopping; None = never stop early)
    overrides the TrainingConfig's. ``max_length`` defaults to 128 (QA: 384), capped by the
    model's ``max_position_embeddings``. ``version_2`` (SQuAD 2.0 "no answer" predictions)
    is detected from the data when None.
    """

    task: str
    model: str                          # an HF BERT folder (config.json, weights, vocab.txt)
    train: str
    dev: str | None = None
    test: str | None = None
    max_length: int | None = None
    doc_stride: int = 128               # QA: tokens shared by consecutive context windows
    max_query_length: int = 64          # QA: longer questions are truncated
    max_answer_length: int = 30         # QA: longest answer, in tokens
    n_best: int = 20                    # QA: start/end candidates per window
    version_2: bool | None = None       # QA: allow "no answer"; None = auto-detect
    null_threshold: float = 0.0         # QA v2: no answer when null score > best + this
    patience: int | None = None
    metric: str | None = None
    peft: str | None = None             # lora | adapter | prefix | adalora | bitfit (bertkit.peft)
    peft_options: dict = dataclasses.field(default_factory=dict)  # e.g. {"r": 8, "alpha": 16}

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"FinetuneConfig.task must be one of {', '.join(TASKS)}, "
                             f"got {self.task!r}")
        if self.metric is None:
            self.metric = DEFAULT_METRIC[self.task]
        if self.metric == "loss":
            self.metric = "eval_loss"
        if self.metric not in TASK_METRICS[self.task]:
            raise ValueError(f"FinetuneConfig.metric {self.metric!r} is not a {self.task} metric; "
                             f"choose one of {', '.join(TASK_METRICS[self.task])}")
        for name in ("max_length", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"FinetuneConfig.{name} must be a positive integer or None, "
                                 f"got {value!r}")
        for name in ("doc_stride", "max_query_length", "max_answer_length", "n_best"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "doc_stride" else 1):
                raise ValueError(f"FinetuneConfig.{name} must be a positive integer, got {value!r}")


@dataclass
class FinetuneResult:
    """What :func:`run_finetuning` returns (on rank 0; other ranks get empty ``metrics``)."""

    out_dir: str
    train: TrainResult
    metrics: dict = field(default_factory=dict)  # {"dev": {...}, "test": {...}} + report_text
    labels: list[str] | None = None               # class / tag names in id order


@dataclass
class _Split:
    """One data file, loaded and encoded: the examples keep what metrics compare against."""

    path: str
    examples: list
    dataset: TaskDataset


# ============================================================================ data


def _load_examples(task: str, path: str, require_label: bool = True) -> list:
    if task in ("classification", "regression"):
        return load_classification(path, regression=task == "regression",
                                   require_label=require_label)
    if task == "ner":
        return load_conll(path)
    return load_squad(path)


def _encode(task: str, examples: Sequence, tokenizer: Tokenizer, settings: dict,
            label2id: dict | None, labelled: bool = True) -> TaskDataset:
    """Encode examples with the folder/run settings (``bertkit_*`` keys of config.json)."""
    max_length = settings["bertkit_max_length"]
    if task in ("classification", "regression"):
        if not labelled:
            examples = [dataclasses.replace(ex, label=None) for ex in examples]
        return encode_classification(examples, tokenizer,
                                     label2id if task == "classification" else None, max_length)
    if task == "ner":
        return encode_ner(examples, tokenizer, label2id if labelled else None, max_length)
    return encode_qa(examples, tokenizer, max_length=max_length,
                     doc_stride=settings["bertkit_doc_stride"], training=labelled,
                     max_query_length=settings["bertkit_max_query_length"])


def _resolve_max_length(cfg: FinetuneConfig, config: BertConfig) -> int:
    limit = config.max_position_embeddings
    if cfg.max_length is None:
        return min(DEFAULT_MAX_LENGTH[cfg.task], limit)
    if cfg.max_length > limit:
        raise ValueError(f"max_length {cfg.max_length} exceeds the model's "
                         f"max_position_embeddings {limit} ({cfg.model}/config.json)")
    return cfg.max_length


# ============================================================================ evaluation


@torch.inference_mode()
def _forward_items(model: nn.Module, task: str, dataset: TaskDataset, collator: PaddingCollator,
                   batch_size: int) -> tuple[list[np.ndarray], float | None]:
    """Run ``model`` over every item of ``dataset`` in length-sorted batches.

    Sorting by length puts items of similar length in one batch, so little compute goes to
    padding; outputs are put back in item order. Returns per item: classification/regression
    logits (C,); NER predicted tag ids (T_i,); QA start and end logits (2, T_i) -- T_i the
    item's own length -- and the mean loss when the items carry labels (else None).
    """
    device = _input_device(model)
    n = len(dataset)
    order = sorted(range(n), key=lambda i: -len(dataset[i]["input_ids"]))
    outputs: list[np.ndarray | None] = [None] * n
    loss_sum, loss_count = 0.0, 0
    for start in range(0, n, batch_size):
        indices = order[start:start + batch_size]
        batch = collator([dataset[i] for i in indices])
        lengths = batch["attention_mask"].sum(1).tolist()                   # (B,)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        out = model(**batch)
        if out.loss is not None:
            loss_sum += float(out.loss) * len(indices)
            loss_count += len(indices)
        if task == "qa":
            rows = torch.stack([out.start_logits, out.end_logits], 1).float().cpu().numpy()  # (B, 2, T)
        elif task == "ner":
            rows = out.logits.argmax(-1).cpu().numpy()                      # (B, T)
        else:
            rows = out.logits.float().cpu().numpy()                         # (B, C)
        for row, (index, length) in enumerate(zip(indices, lengths)):
            outputs[index] = rows[row][..., :length] if task in ("qa", "ner") else rows[row]
    return outputs, (loss_sum / loss_count if loss_count else None)


def _input_device(model) -> torch.device:
    """Where a batch goes: the model's parameters' device; CPU for an ONNX session."""
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


def _settings(config: BertConfig) -> dict:
    return {k: v for k, v in config.extra.items() if k.startswith("bertkit_")}


def _split_metrics(model: nn.Module, task: str, split: _Split, settings: dict,
                   id2label: dict[int, str] | None, batch_size: int, full: bool) -> dict:
    """The task metrics of the model on one split; ``full`` adds the per-class/type report
    (``report``) and its printable table (``report_text``)."""
    collator = PaddingCollator(_pad_id(model))
    outputs, loss = _forward_items(model, task, split.dataset, collator, batch_size)
    if task == "classification":
        names = [id2label[i] for i in range(len(id2label))]
        label2id = {name: i for i, name in enumerate(names)}
        y_true = [label2id[ex.label] for ex in split.examples]
        y_pred = [int(np.argmax(row)) for row in outputs]
        from bertkit.training.metrics import classification_metrics
        metrics = classification_metrics(y_true, y_pred, names)
    elif task == "regression":
        from bertkit.training.metrics import regression_metrics
        metrics = regression_metrics([ex.label for ex in split.examples],
                                     [float(row[0]) for row in outputs])
    elif task == "ner":
        from bertkit.training.metrics import entity_metrics
        tags = ner_predictions_to_words(outputs, split.dataset.features, id2label)
        metrics = entity_metrics([s.tags for s in split.examples], tags)
    else:
        from bertkit.training.metrics import squad_metrics
        answers = postprocess_qa(split.dataset.features, [o[0] for o in outputs],
                                 [o[1] for o in outputs], n_best=settings["bertkit_n_best"],
                                 max_answer_length=settings["bertkit_max_answer_length"],
                                 version_2=settings["bertkit_version_2"],
                                 null_threshold=settings["bertkit_null_threshold"])
        metrics = squad_metrics({qid: a["text"] for qid, a in answers.items()},
                                qa_gold(split.examples))
    if loss is not None:
        metrics["eval_loss"] = loss
    if not full:
        metrics = {k: v for k, v in metrics.items() if k not in ("report", "report_text")}
    return metrics


def _pad_id(model: nn.Module) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def _id2label(config: BertConfig, task: str) -> dict[int, str] | None:
    return dict(config.id2label) if task in ("classification", "ner") else None


def print_report(task: str, metrics: dict, split: str = "test") -> None:
    """Print one split's metrics: the classification / entity report table when there is
    one, then the headline numbers."""
    if metrics.get("report_text"):
        print(f"\n{split} report ({task}):\n{metrics['report_text'].rstrip()}")
    numbers = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                        if isinstance(v, float) and k in TASK_METRICS[task])
    print(f"{split}: {numbers}")


def _for_json(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "report_text"}


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
    inputs = {"--model": cfg.model, "--train": cfg.train, "--dev": cfg.dev, "--test": cfg.test}
    return run_in_output_folder(
        training, lambda staged: _finetune_into(cfg, staged, resume_from, rank_info.is_main),
        inputs=inputs, resume_from=resume_from, overwrite=overwrite, is_main=rank_info.is_main)


def _finetune_into(cfg: FinetuneConfig, training: TrainingConfig, resume_from: str | None,
                   is_main: bool) -> FinetuneResult:
    """The fine-tuning run of :func:`run_finetuning`, writing into ``training.out_dir``."""
    task = cfg.task
    if not os.path.isdir(cfg.model):
        raise FileNotFoundError(f"model folder {cfg.model} does not exist")
    tokenizer = Tokenizer.from_pretrained(cfg.model)
    model_config = BertConfig.from_pretrained(cfg.model)
    check_vocab_fits(tokenizer, model_config, cfg.model)
    max_length = _resolve_max_length(cfg, model_config)

    # Data first: a bad file fails in seconds, before the weights load.
    train_examples = _load_examples(task, cfg.train)
    dev_examples = _load_examples(task, cfg.dev) if cfg.dev else None
    test_examples = _load_examples(task, cfg.test) if cfg.test else None
    labels = label2id = None
    if task in ("classification", "ner"):
        label_map = build_label_map(train_examples)
        labels, label2id = list(label_map.names), label_map.label2id
        if task == "classification" and len(labels) < 2:
            raise ValueError(f"{cfg.train}: every example has the label {labels[0]!r}; "
                             "classification needs at least two labels (numeric targets: "
                             "use the regression task)")
        for path, examples in ((cfg.dev, dev_examples), (cfg.test, test_examples)):
            if examples is not None:
                check_labels(examples, label2id, path)
    version_2 = cfg.version_2
    if task == "qa" and version_2 is None:
        version_2 = any(ex.is_impossible for ex in train_examples + (dev_examples or []))
    settings = {"bertkit_task": task, "bertkit_max_length": max_length}
    if task == "qa":
        settings.update(bertkit_doc_stride=cfg.doc_stride,
                        bertkit_max_query_length=cfg.max_query_length,
                        bertkit_max_answer_length=cfg.max_answer_length,
                        bertkit_n_best=cfg.n_best, bertkit_version_2=bool(version_2),
                        bertkit_null_threshold=cfg.null_threshold)

    train_set = _encode(task, train_examples, tokenizer, settings, label2id)
    dev = _Split(cfg.dev, dev_examples,
                 _encode(task, dev_examples, tokenizer, settings, label2id)) if cfg.dev else None
    test = _Split(cfg.test, test_examples,
                  _encode(task, test_examples, tokenizer, settings, label2id)) if cfg.test else None

    set_seed(training.seed)  # the fresh head's initialisation is part of the run's seed
    overrides: dict[str, Any] = {}
    if task in ("classification", "ner"):
        overrides = {"id2label": dict(enumerate(labels)), "label2id": label2id}
    elif task == "regression":
        overrides = {"num_labels": 1, "problem_type": "regression"}
    model = HEADS[task].from_pretrained(cfg.model, verbose=is_main, **overrides)
    # A folder fine-tuned before may carry another task's settings: replace them all.
    for key in [k for k in model.config.extra if k.startswith("bertkit_")]:
        del model.config.extra[key]
    model.config.extra.update(settings)
    id2label = _id2label(model.config, task)
    if cfg.peft:
        # Freeze the base, add the method's weights; the task head stays trainable and is saved
        # with the adapter. AdaLoRA plans its rank budget over the run's steps.
        from bertkit.peft import apply_peft, planned_steps
        options = dict(cfg.peft_options)
        if cfg.peft == "adalora":
            options.setdefault("total_steps", planned_steps(len(train_set), training))
        model = apply_peft(model, cfg.peft, base_model_folder=cfg.model, **options)
        if is_main:
            print(model.summary())

    eval_batch_size = training.eval_batch_size or max(64, training.batch_size)
    eval_fn = None
    if dev is not None:
        def eval_fn(m: nn.Module) -> dict:
            return _split_metrics(m, task, dev, settings, id2label, eval_batch_size, full=False)

    training = dataclasses.replace(
        training, metric_for_best=cfg.metric, greater_is_better=cfg.metric not in LOWER_IS_BETTER,
        patience=cfg.patience if cfg.patience is not None else training.patience,
        save_best=dev is not None, load_best_at_end=dev is not None)

    def save(model_to_save: nn.Module, folder: str) -> None:
        model_to_save.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    if is_main:
        sizes = ", ".join(f"{name} {len(s.examples):,}" for name, s in (("dev", dev), ("test", test))
                          if s is not None)
        print(f"fine-tuning {cfg.model} ({model.num_parameters():,} parameters) for {task}: "
              f"train {len(train_examples):,}" + (f", {sizes}" if sizes else "")
              + (f"; {len(labels)} labels: {', '.join(labels)}" if labels else "")
              + f"; max_length {max_length}; best by dev {cfg.metric}")
    from bertkit.peft import on_step  # a no-op for plain models; drives AdaLoRA's allocation
    trainer = Trainer(model, training, train_set, PaddingCollator(tokenizer.pad_token_id),
                      eval_fn=eval_fn, save_fn=save, on_step=on_step)
    result = trainer.train(resume_from=resume_from)
    out_dir = training.out_dir
    if not is_main:
        return FinetuneResult(out_dir, result, {}, labels)

    model = trainer.model.eval()
    metrics: dict[str, dict] = {}
    for name, split in (("dev", dev), ("test", test)):
        if split is not None:
            metrics[name] = _split_metrics(model, task, split, settings, id2label,
                                           eval_batch_size, full=True)
    save(model, out_dir)
    _write_json(os.path.join(out_dir, METRICS_FILE), {k: _for_json(v) for k, v in metrics.items()})
    with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
        for name, m in metrics.items():
            f.write(f"{name} ({task})\n{m.get('report_text') or _headline(task, m)}\n\n")
    _write_json(os.path.join(out_dir, SUMMARY_FILE), {
        "task": task, "model": cfg.model, "labels": labels, "steps": result.steps,
        "epochs": result.epochs, "stop_reason": result.stop_reason,
        "elapsed_seconds": result.elapsed, "train_loss": result.train_loss,
        "best_metric": cfg.metric, "best_value": result.best_metric, "best_step": result.best_step,
        "num_truncated": {"train": train_set.num_truncated,
                          **{name: s.dataset.num_truncated for name, s in
                             (("dev", dev), ("test", test)) if s is not None}},
        "finetune_config": dataclasses.asdict(cfg)})
    best = (f"best dev {cfg.metric} {result.best_metric:.4f} at step {result.best_step}"
            if result.best_step is not None else "no dev evaluation: the last model is kept")
    print(f"\nstopped after {result.steps} steps ({result.stop_reason}, {result.elapsed:.0f}s); "
          f"{best}")
    for name, m in metrics.items():
        print_report(task, m, name)
    return FinetuneResult(out_dir, result, metrics, labels)


def _headline(task: str, metrics: dict) -> str:
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in TASK_METRICS[task] if k in metrics)


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


# ============================================================================ saved folders


def folder_task(folder: str, config: BertConfig | None = None) -> str:
    """The task of a fine-tuned folder: ``bertkit_task`` in its config.json, else guessed from
    ``architectures`` (a folder fine-tuned by transformers)."""
    config = config or BertConfig.from_pretrained(folder)
    task = config.extra.get("bertkit_task")
    if task in TASKS:
        return task
    arch = (config.architectures or [None])[0]
    if arch == "BertForSequenceClassification":
        one = config.problem_type == "regression" or (config.id2label and len(config.id2label) == 1)
        return "regression" if one else "classification"
    if arch == "BertForTokenClassification":
        return "ner"
    if arch == "BertForQuestionAnswering":
        return "qa"
    raise ValueError(f"{folder} is not a fine-tuned task model (architectures: {arch}); "
                     "fine-tune it first (bertkit finetune --task ...)")


def _load_folder(folder: str, device: str | None, runtime: str = "torch"):
    """(model, tokenizer, task, settings) of a fine-tuned folder, ready for inference.

    ``runtime="onnx"`` loads ``folder/model.onnx`` (written by ``bertkit export``) into an
    onnxruntime session (:class:`bertkit.compress.onnx.OnnxModel`, CPU) instead."""
    from bertkit.inference import load_for_inference
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    from bertkit.peft import is_adapter_folder, load_adapter
    if runtime == "onnx":
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"the onnx runtime runs on the CPU, not {device}")
        from bertkit.compress.onnx import load_for_onnx_inference
        model, tokenizer = load_for_onnx_inference(folder)
        config = model.config
        task = folder_task(folder, config)
    elif is_adapter_folder(folder):  # a PEFT folder: base model + adapter + head
        model = load_adapter(folder, device=device)
        config = model.config
        task = folder_task(folder, config)
        tokenizer = Tokenizer.from_pretrained(folder)
    else:
        config = BertConfig.from_pretrained(folder)
        task = folder_task(folder, config)
        model, tokenizer = load_for_inference(folder, HEADS[task], device=device)
    defaults = {"bertkit_max_length": min(DEFAULT_MAX_LENGTH[task], config.max_position_embeddings),
                "bertkit_doc_stride": 128, "bertkit_max_query_length": 64,
                "bertkit_max_answer_length": 30, "bertkit_n_best": 20,
                "bertkit_version_2": False, "bertkit_null_threshold": 0.0}
    return model, tokenizer, task, {**defaults, **_settings(config)}


def evaluate_folder(model_dir: str, data_path: str, batch_size: int = 64,
                    device: str | None = None, output: str | None = None,
                    runtime: str = "torch", model: nn.Module | None = None) -> dict:
    """Evaluate a fine-tuned folder on a labelled data file of its task.

    Returns the same metrics as ``metrics.json`` holds for a split (classification:
    accuracy, macro_f1, report; regression: pearson, spearman, mse; NER: precision, recall,
    f1, report; QA: exact_match, f1) plus ``eval_loss`` and, for classification and NER,
    ``report_text`` (the printable table; see :func:`print_report`). A label the model does
    not know is a ValueError naming the file and line. With ``output`` the metrics (without
    ``report_text``) are also written there as JSON. ``runtime="onnx"`` runs the folder's
    exported ``model.onnx`` in onnxruntime (``bertkit export`` writes it). ``model`` (e.g. an
    int8 copy of the folder's model) replaces the folder's weights; tokenizer and settings
    still come from the folder.
    """
    loaded, tokenizer, task, settings = _load_folder(model_dir, device, runtime)
    model = loaded if model is None else model
    examples = _load_examples(task, data_path)
    id2label = _id2label(model.config, task)
    label2id = None
    if id2label is not None:
        label2id = {name: i for i, name in id2label.items()}
        check_labels(examples, label2id, data_path)
    split = _Split(data_path, examples, _encode(task, examples, tokenizer, settings, label2id))
    metrics = _split_metrics(model, task, split, settings, id2label, batch_size, full=True)
    if output:
        _write_json(output, _for_json(metrics))
    return metrics


class Predictor:
    """A fine-tuned folder loaded once, ready to predict many times (``bertkit predict`` and
    ``bertkit serve`` both use one).

    Holds ``model`` (eval mode), ``tokenizer``, ``task`` (see :data:`TASKS`) and ``settings``
    (the folder's ``bertkit_*`` values: max length, QA doc stride ...). Build one with
    :func:`load_predictor`. :meth:`predict` keeps no state between calls, so one Predictor
    may serve calls from several threads (the model is only read).
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, task: str, settings: dict):
        self.model, self.tokenizer, self.task, self.settings = model, tokenizer, task, settings
        self._collator = PaddingCollator(tokenizer.pad_token_id)

    @property
    def labels(self) -> list[str] | None:
        """The label names of a classification/NER model, in id order (else None)."""
        id2label = _id2label(self.model.config, self.task)
        return [id2label[i] for i in range(len(id2label))] if id2label else None

    def predict(self, texts: Sequence[str] | None = None, text_pairs: Sequence[str] | None = None,
                questions: Sequence[str] | None = None, contexts: Sequence[str] | None = None,
                batch_size: int = 32) -> list[dict]:
        """Predict on a list of inputs; one dict per input, in order (see :func:`predict_folder`
        for the inputs each task takes and the dicts it returns)."""
        task, settings, tokenizer = self.task, self.settings, self.tokenizer
        model, collator = self.model, self._collator
        _check_predict_inputs(task, texts, text_pairs, questions, contexts)

        if task == "qa":
            examples = [QaExample(str(i), q, c) for i, (q, c) in enumerate(zip(questions, contexts))]
            if not examples:
                return []
            dataset = _encode(task, examples, tokenizer, settings, None, labelled=False)
            outputs, _ = _forward_items(model, task, dataset, collator, batch_size)
            answers = postprocess_qa(dataset.features, [o[0] for o in outputs],
                                     [o[1] for o in outputs], n_best=settings["bertkit_n_best"],
                                     max_answer_length=settings["bertkit_max_answer_length"],
                                     version_2=settings["bertkit_version_2"],
                                     null_threshold=settings["bertkit_null_threshold"])
            return [{"answer": a["text"], "start": a["start"], "end": a["end"], "score": a["score"]}
                    for a in (answers[ex.id] for ex in examples)]

        texts = list(texts)
        if task == "ner":
            words = [split_words(t) for t in texts]
            has_words = [i for i, w in enumerate(words) if w]  # a text of spaces has no entities
            sentences = [NerSentence([w for w, _, _ in words[i]], ["O"] * len(words[i]),
                                     [i + 1] * len(words[i])) for i in has_words]
            results = [{"entities": []} for _ in texts]
            if sentences:
                dataset = _encode(task, sentences, tokenizer, settings, None, labelled=False)
                outputs, _ = _forward_items(model, task, dataset, collator, batch_size)
                tags = ner_predictions_to_words(outputs, dataset.features, model.config.id2label)
                for i, word_tags in zip(has_words, tags):
                    results[i] = {"entities": entities_from_text(texts[i], word_tags, words[i])}
            return results

        if not texts:
            return []
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        examples = [ClassificationExample(t, p, None, i + 1)
                    for i, (t, p) in enumerate(zip(texts, pairs))]
        dataset = _encode(task, examples, tokenizer, settings, None, labelled=False)
        outputs, _ = _forward_items(model, task, dataset, collator, batch_size)
        if task == "regression":
            return [{"score": float(row[0])} for row in outputs]
        names = self.labels
        results = []
        for row in outputs:
            probs = torch.softmax(torch.from_numpy(row).double(), -1).tolist()
            results.append({"label": names[int(np.argmax(row))],
                            "probabilities": dict(zip(names, probs))})
        return results


def load_predictor(folder: str, device: str | None = None, runtime: str = "torch") -> Predictor:
    """Load a fine-tuned folder (full model or PEFT adapter folder) once for many predictions.

    ``runtime`` picks the engine: ``"torch"`` (default) or ``"onnx"`` (an exported folder).
    """
    return Predictor(*_load_folder(folder, device, runtime=runtime))


def predict_folder(model_dir: str, texts: Sequence[str] | None = None,
                   text_pairs: Sequence[str] | None = None,
                   questions: Sequence[str] | None = None, contexts: Sequence[str] | None = None,
                   batch_size: int = 32, device: str | None = None,
                   runtime: str = "torch") -> list[dict]:
    """Predict with a fine-tuned folder; the task comes from its config.json.

    Loads the folder on every call: to predict many times, :func:`load_predictor` once and
    call :meth:`Predictor.predict`. ``runtime="onnx"`` runs the folder's exported
    ``model.onnx`` in onnxruntime (``bertkit export`` writes it).

    Inputs: ``texts`` (+ optional ``text_pairs``) for classification, regression and NER;
    ``questions`` and ``contexts`` (same length) for QA. Over-long inputs are truncated with
    a warning giving the count (QA contexts are windowed instead).

    Returns one dict per input, in order:

    - classification: ``{"label": str, "probabilities": {label: p}}``
    - regression: ``{"score": float}``
    - NER: ``{"entities": [{"entity", "label", "start", "end"}]}`` with
      ``text[start:end] == entity``
    - QA: ``{"answer": str, "start": int | None, "end": int | None, "score": float}`` with
      ``context[start:end] == answer`` (``""`` and None spans for a v2.0 "no answer").
    """
    predictor = load_predictor(model_dir, device, runtime)
    return predictor.predict(texts=texts, text_pairs=text_pairs, questions=questions,
                             contexts=contexts, batch_size=batch_size)


def _check_predict_inputs(task, texts, text_pairs, questions, contexts) -> None:
    def strings(name, values):
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}")
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise TypeError(f"{name}[{i}] must be a string, got {type(v).__name__}")

    if task == "qa":
        if questions is None or contexts is None:
            raise ValueError("a question-answering model needs questions and contexts "
                             "(--question and --context)")
        if texts is not None or text_pairs is not None:
            raise ValueError("a question-answering model takes questions and contexts, not texts")
        strings("questions", questions)
        strings("contexts", contexts)
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        return
    if questions is not None or contexts is not None:
        raise ValueError(f"a {task} model takes texts, not questions/contexts")
    if texts is None:
        raise ValueError(f"a {task} model needs texts to predict on")
    strings("texts", texts)
    if text_pairs is not None:
        if task == "ner":
            raise ValueError("an NER model takes single texts, not text pairs")
        strings("text_pairs", text_pairs)
        if len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text_pairs")
