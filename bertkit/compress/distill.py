"""Knowledge distillation: train a smaller student classifier on a fine-tuned teacher's outputs.

The loss (Hinton et al., 2015) mixes the teacher's soft targets and the true labels::

    loss = alpha * T² * KL(softmax(teacher / T) || softmax(student / T))
         + (1 - alpha) * CE(student, labels)
         [+ hidden_weight * MSE(student layer j, teacher layer map[j]) over real tokens]

A temperature T > 1 flattens both distributions so that the teacher's small probabilities
("this docstring looks a bit like a numeric one") carry signal; T² keeps the soft term's
gradient on the scale of the hard one as T changes. The optional hidden-state term (as in
TinyBERT / PKD) pulls each student layer towards the teacher layer it was copied from.

The student is either the teacher with fewer layers (``student_layers=N``: layers evenly
spaced ending at the top one, e.g. 1, 3, 5 of 0..5, copied with the embeddings, pooler and
classifier -- DistilBERT's initialisation), or a fresh BERT of a family size
(``student_size="mini"``: nothing is copied, the shapes differ). It uses the teacher's
tokenizer. Training is the ordinary :class:`~bertkit.training.trainer.Trainer` over a module
(:class:`Distiller`) whose ``forward`` returns the distillation loss; the output is an ordinary
fine-tuned folder (``bertkit predict`` / ``evaluate`` and transformers load it).

Only classification teachers are supported so far (soft targets over classes); NER and QA are
a clear error.

Public API: :class:`DistillConfig`, :func:`distillation_loss`, :func:`make_student`,
:class:`Distiller`, :func:`run_distillation`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bertkit.checkpoint import unwrap_model
from bertkit.compress.prune import compare_speed, folder_size
from bertkit.config import MODEL_SIZES, SETTINGS_PREFIX, BertConfig, DistilBertConfig
from bertkit.data.tasks import PaddingCollator
from bertkit.modeling.bert import BertForSequenceClassification, ClassifierOutput
from bertkit.modeling.distilbert import DistilBertForSequenceClassification
from bertkit.outputs import output_folder
from bertkit.peft import is_adapter_folder
from bertkit.tasks.evaluate import load_split, metrics_for_json, split_metrics, write_json
from bertkit.tasks.folder import TaskFolder, folder_task, open_task_folder
from bertkit.training.run import TrainingPlan, train_to_best
from bertkit.training.trainer import set_seed

REPORT_FILE = "distill.json"
STUDENT_SIZES = ("tiny", "mini", "small")
STUDENT_FAMILIES = ("distilbert",)


@dataclass
class DistillConfig:
    """What to distil; the loop's settings are a :class:`~bertkit.training.trainer.TrainingConfig`.

    ``teacher``: a folder written by ``bertkit finetune --task classification``. Exactly one of
    ``student_layers`` (fewer teacher layers, copied) and ``student_size`` (a fresh model);
    neither means half the teacher's layers. ``temperature`` T > 0, ``alpha`` in [0, 1] (the
    weight of the soft targets), ``hidden_weight`` >= 0 (0: no hidden-state loss).
    """

    teacher: str
    train: str
    dev: str
    test: str | None = None
    student_layers: int | None = None
    student_size: str | None = None
    # "distilbert": a DistilBERT-format student (HF ``distilbert`` folder) from every other
    # teacher layer, as the DistilBERT paper initialises it; None: the teacher's own family.
    student_family: str | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.student_layers is not None and self.student_size is not None:
            raise ValueError("give --student-layers or --student-size, not both")
        if self.student_size is not None and self.student_size not in STUDENT_SIZES:
            raise ValueError(f"student size must be one of {', '.join(STUDENT_SIZES)}, "
                             f"got {self.student_size!r}")
        if self.student_layers is not None and (not isinstance(self.student_layers, int)
                                                or self.student_layers < 1):
            raise ValueError(f"--student-layers must be a positive integer, got "
                             f"{self.student_layers!r}")
        if not self.temperature > 0:
            raise ValueError(f"the temperature must be positive, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha (the weight of the soft targets) must be in [0, 1], got "
                             f"{self.alpha}")
        if self.hidden_weight < 0:
            raise ValueError(f"the hidden-state loss weight must be >= 0, got {self.hidden_weight}")
        if self.student_family not in (None, *STUDENT_FAMILIES):
            raise ValueError(f"--student must be one of {', '.join(STUDENT_FAMILIES)}, got "
                             f"{self.student_family!r}")
        if self.student_family is not None and self.student_size is not None:
            raise ValueError("a DistilBERT student is made from the teacher's layers: give "
                             "--student-layers (or nothing), not --student-size")


# ============================================================================ the loss


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor | None, temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels).

    Logits (B, C), labels (B,) class ids or None (soft targets only). Returns a scalar.
    """
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=-1),
                    F.log_softmax(teacher_logits / t, dim=-1),
                    log_target=True, reduction="batchmean") * t * t
    if labels is None or alpha == 1:
        return soft
    hard = F.cross_entropy(student_logits, labels.view(-1).long())
    return alpha * soft + (1 - alpha) * hard


def hidden_state_loss(student_hidden: tuple[torch.Tensor, ...],
                      teacher_hidden: tuple[torch.Tensor, ...], layer_map: list[int],
                      attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over mapped layers of the MSE between student layer j's output and teacher layer
    ``layer_map[j]``'s, over real tokens. Hidden states are the models' ``hidden_states``
    tuples (L + 1 of (B, T, H), embeddings first)."""
    losses = []
    for j, i in enumerate(layer_map):
        diff = (student_hidden[j + 1] - teacher_hidden[i + 1]).pow(2).mean(-1)   # (B, T)
        if attention_mask is not None:
            mask = attention_mask.to(diff.dtype)                                 # (B, T)
            losses.append((diff * mask).sum() / mask.sum().clamp(min=1))
        else:
            losses.append(diff.mean())
    return torch.stack(losses).mean()


class Distiller(nn.Module):
    """The module the Trainer trains: a frozen teacher (always in eval mode) and a student.

    ``forward(input_ids, attention_mask, token_type_ids, labels)`` returns a
    :class:`ClassifierOutput` with the student's logits and the distillation loss.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float, alpha: float,
                 hidden_weight: float = 0.0, layer_map: list[int] | None = None):
        super().__init__()
        if hidden_weight > 0 and (layer_map is None or student.config.hidden_size
                                  != teacher.config.hidden_size):
            raise ValueError("the hidden-state loss needs a student with the teacher's hidden size "
                             f"({teacher.config.hidden_size}, got {student.config.hidden_size}); "
                             "use --student-layers, or drop --hidden-weight")
        self.student, self.teacher = student, teacher
        self.teacher.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.hidden_weight, self.layer_map = hidden_weight, layer_map

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()  # the targets come from the teacher as it predicts: no dropout
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> ClassifierOutput:
        hidden = self.hidden_weight > 0
        with torch.no_grad():
            teacher = self.teacher(input_ids, attention_mask, token_type_ids,
                                   output_hidden_states=hidden)
        student = self.student(input_ids, attention_mask, token_type_ids,
                               output_hidden_states=hidden)
        loss = distillation_loss(student.logits, teacher.logits, labels, self.temperature,
                                 self.alpha)                                   # ()
        if hidden:
            loss = loss + self.hidden_weight * hidden_state_loss(
                student.hidden_states, teacher.hidden_states, self.layer_map, attention_mask)
        return ClassifierOutput(loss, student.logits)


# ============================================================================ the student


def teacher_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers ending at the top one: 6 -> 3 gives [1, 3, 5]. The top
    layer is kept because the pooler and classifier were trained on its output."""
    return [(j + 1) * teacher_layers // student_layers - 1 for j in range(student_layers)]


def make_student(teacher: BertForSequenceClassification, student_layers: int | None = None,
                 student_size: str | None = None) -> tuple[BertForSequenceClassification, list[int]]:
    """The student and its layer map (student layer j <-> teacher layer map[j]).

    ``student_layers=N`` (N below the teacher's L): the teacher's config with N layers, and
    the embeddings, the mapped layers, the pooler and the classifier copied (pruned heads
    follow their layer). ``student_size``: a fresh BERT of that family size with the teacher's
    vocabulary, positions and labels; nothing copied. Neither: L // 2 layers.
    """
    tconfig: BertConfig = teacher.config
    teacher_n = tconfig.num_hidden_layers
    if student_size is None:
        n = student_layers if student_layers is not None else max(1, teacher_n // 2)
        if not 1 <= n < teacher_n:
            raise ValueError(f"--student-layers must be between 1 and {teacher_n - 1} (the "
                             f"teacher has {teacher_n} layers), got {n}")
        layer_map = teacher_layer_map(teacher_n, n)
        config = copy.deepcopy(tconfig)
        config.num_hidden_layers = n
        if tconfig.pruned_heads:
            config.pruned_heads = {j: tconfig.pruned_heads[i] for j, i in enumerate(layer_map)
                                   if i in tconfig.pruned_heads}
        config.__post_init__()
        student = BertForSequenceClassification(config)
        student.bert.embeddings.load_state_dict(teacher.bert.embeddings.state_dict())
        for j, i in enumerate(layer_map):
            student.bert.encoder.layers[j].load_state_dict(teacher.bert.encoder.layers[i].state_dict())
        student.bert.pooler.load_state_dict(teacher.bert.pooler.state_dict())
        student.classifier.load_state_dict(teacher.classifier.state_dict())
        return student, layer_map
    if student_size not in STUDENT_SIZES:
        raise ValueError(f"student size must be one of {', '.join(STUDENT_SIZES)}, got "
                         f"{student_size!r}")
    config = BertConfig.from_size(
        student_size, vocab_size=tconfig.vocab_size,
        max_position_embeddings=tconfig.max_position_embeddings,
        type_vocab_size=tconfig.type_vocab_size, pad_token_id=tconfig.pad_token_id,
        id2label=dict(tconfig.id2label), label2id=dict(tconfig.label2id),
        extra={k: v for k, v in tconfig.extra.items() if k.startswith(SETTINGS_PREFIX)})
    n = MODEL_SIZES[student_size]["num_hidden_layers"]
    return BertForSequenceClassification(config), teacher_layer_map(teacher_n, min(n, teacher_n))


def make_distilbert_student(teacher: BertForSequenceClassification,
                            student_layers: int | None = None
                            ) -> tuple[DistilBertForSequenceClassification, list[int]]:
    """A DistilBERT student of a BERT classifier and its layer map, initialised as the
    DistilBERT paper does: every other teacher layer (``student_layers`` default L // 2, the
    layers of :func:`teacher_layer_map`), the word and position embeddings and their
    LayerNorm. DistilBERT has no token types: the teacher's type-0 row is added to every
    position row, so a single text embeds exactly as in the teacher (the second text of a pair
    loses its type-1 offset). The head: the pooler's dense initialises ``pre_classifier`` (its
    tanh becomes DistilBERT's ReLU) and the classifier is copied."""
    tconfig: BertConfig = teacher.config
    if tconfig.model_type != "bert" or tconfig.pruned_heads:
        raise ValueError(f"a DistilBERT student is made from a BERT teacher without pruned "
                         f"heads; this teacher is a {tconfig.model_type} model"
                         + (" with pruned heads" if tconfig.pruned_heads else ""))
    teacher_n = tconfig.num_hidden_layers
    n = student_layers if student_layers is not None else max(1, teacher_n // 2)
    if not 1 <= n < teacher_n:
        raise ValueError(f"--student-layers must be between 1 and {teacher_n - 1} (the "
                         f"teacher has {teacher_n} layers), got {n}")
    fields = ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
              "max_position_embeddings", "initializer_range", "pad_token_id", "problem_type")
    config = DistilBertConfig(
        num_hidden_layers=n, layer_norm_eps=tconfig.layer_norm_eps,
        id2label=dict(tconfig.id2label), label2id=dict(tconfig.label2id),
        extra={k: v for k, v in tconfig.extra.items() if k.startswith(SETTINGS_PREFIX)},
        **{name: getattr(tconfig, name) for name in fields})
    student = DistilBertForSequenceClassification(config)
    layer_map = teacher_layer_map(teacher_n, n)
    source, target = teacher.bert.embeddings, student.bert.embeddings
    with torch.no_grad():
        target.word_embeddings.weight.copy_(source.word_embeddings.weight)
        target.position_embeddings.weight.copy_(source.position_embeddings.weight
                                                + source.token_type_embeddings.weight[0])
        target.LayerNorm.load_state_dict(source.LayerNorm.state_dict())
        for j, i in enumerate(layer_map):
            student.bert.encoder.layers[j].load_state_dict(
                teacher.bert.encoder.layers[i].state_dict())
        student.pre_classifier.load_state_dict(teacher.bert.pooler.dense.state_dict())
        student.classifier.load_state_dict(teacher.classifier.state_dict())
    return student, layer_map


# ============================================================================ the run


def _load_teacher(folder: str) -> TaskFolder:
    """A classification folder opened on the CPU, or a ValueError saying why not."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"teacher folder {folder} does not exist")
    if is_adapter_folder(folder):
        raise ValueError(f"{folder} is a PEFT adapter folder; merge it into a full model first "
                         "(bertkit merge-lora) and distil that")
    task = folder_task(folder)
    if task != "classification":
        raise ValueError(f"{folder} is a {task} model; distillation supports classification "
                         "teachers only (soft targets over classes), not yet NER, QA or regression")
    return open_task_folder(folder, device="cpu")


def run_distillation(cfg: DistillConfig, training, overwrite: bool = False) -> dict[str, Any]:
    """Distil ``cfg.teacher`` into a student written to ``training.out_dir``.

    The folder is written as a whole at the end (:func:`bertkit.outputs.output_folder`): an
    existing one is refused unless ``overwrite``, and a failed run leaves it as it was.

    Trains with the Trainer (dev accuracy every epoch, best checkpoint kept and loaded at the
    end), then evaluates teacher and student on dev (and test), times both on dev in this
    process, and writes the student folder with ``metrics.json`` (the student's) and
    ``distill.json`` (the comparison). Prints the comparison table and returns it.
    """
    inputs = {"--teacher": cfg.teacher, "--train": cfg.train, "--dev": cfg.dev,
              "--test": cfg.test}
    with output_folder(training.out_dir, inputs=inputs, overwrite=overwrite) as staging:
        report = _distill_into(cfg, dataclasses.replace(training, out_dir=str(staging)))
    print(f"student folder: {training.out_dir} (metrics.json, {REPORT_FILE}, curves.png)")
    return report


def _distill_into(cfg: DistillConfig, training) -> dict[str, Any]:
    """The run of :func:`run_distillation`, writing into ``training.out_dir``."""
    opened = _load_teacher(cfg.teacher)
    teacher, tokenizer, task = opened.model, opened.tokenizer, opened.task
    settings = opened.settings
    id2label = opened.id2label
    splits = {name: load_split(task, path, tokenizer, settings, opened.label2id)
              for name, path in (("train", cfg.train), ("dev", cfg.dev), ("test", cfg.test))
              if path is not None}

    set_seed(training.seed)  # a fresh student's initialisation is part of the run's seed
    if cfg.student_family == "distilbert":
        student, layer_map = make_distilbert_student(teacher, cfg.student_layers)
    else:
        student, layer_map = make_student(teacher, cfg.student_layers, cfg.student_size)
    distiller = Distiller(student, teacher, cfg.temperature, cfg.alpha, cfg.hidden_weight,
                          layer_map)
    eval_batch_size = training.eval_batch_size or max(64, training.batch_size)

    def eval_fn(model: nn.Module) -> dict:
        return split_metrics(unwrap_model(model).student, task, splits["dev"], settings,
                             id2label, eval_batch_size, full=False)

    def save(model: nn.Module, folder: str) -> None:
        unwrap_model(model).student.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    print(f"distilling {cfg.teacher} ({teacher.config.num_hidden_layers} layers, "
          f"{teacher.num_parameters():,} parameters) into a student of "
          f"{student.config.num_hidden_layers} layers x {student.config.hidden_size} "
          f"({student.num_parameters():,} parameters, "
          + ("DistilBERT format, " if cfg.student_family else "")
          + (f"initialised from teacher layers {layer_map}" if cfg.student_size is None
             else f"fresh {cfg.student_size} model") + f"); T={cfg.temperature}, "
          f"alpha={cfg.alpha}, hidden-state loss weight {cfg.hidden_weight}")
    collator = PaddingCollator(tokenizer.pad_token_id)
    plan = TrainingPlan(distiller, splits["train"].dataset, collator, save, eval_fn=eval_fn,
                        metric="accuracy", greater_is_better=True)
    distiller, result = train_to_best(plan, training)

    student = unwrap_model(distiller).student.eval()
    teacher = teacher.to(next(student.parameters()).device).eval()
    out_dir = training.out_dir
    save(distiller, out_dir)
    metrics = {"teacher": {}, "student": {}}
    for name in ("dev", "test"):
        if name in splits:
            for who, model in (("teacher", teacher), ("student", student)):
                metrics[who][name] = split_metrics(model, task, splits[name], settings, id2label,
                                                   eval_batch_size, full=True)
    speed = compare_speed({"teacher": teacher, "student": student}, task.name,
                          splits["dev"].dataset, collator, eval_batch_size)
    copied = layer_map if cfg.student_size is None else None  # a fresh student copies nothing
    report = {"teacher": cfg.teacher, "student_layers_from_teacher": copied,
              "distill_config": dataclasses.asdict(cfg), "steps": result.steps,
              "elapsed_seconds": result.elapsed, "best_dev_accuracy_step": result.best_step}
    for who, model, folder in (("teacher", teacher, cfg.teacher), ("student", student, out_dir)):
        report[who + "_stats"] = {
            "layers": model.config.num_hidden_layers, "hidden_size": model.config.hidden_size,
            "parameters": model.num_parameters(), "bytes_on_disk": folder_size(folder),
            "tokens_per_s_dev": speed[who],
            **{f"{split}_{k}": v for split, m in metrics[who].items() for k, v in m.items()
               if k in ("accuracy", "macro_f1")}}
    write_json(os.path.join(out_dir, "metrics.json"),
               {split: metrics_for_json(m) for split, m in metrics["student"].items()})
    write_json(os.path.join(out_dir, REPORT_FILE), report)
    print_comparison(report)
    return report


def print_comparison(report: dict[str, Any]) -> None:
    """The teacher-vs-student table of a :func:`run_distillation` report."""
    t, s = report["teacher_stats"], report["student_stats"]
    rows = [("layers x hidden", f"{t['layers']} x {t['hidden_size']}",
             f"{s['layers']} x {s['hidden_size']}", ""),
            ("parameters", f"{t['parameters']:,}", f"{s['parameters']:,}",
             f"{s['parameters'] / t['parameters']:.2f}x"),
            ("weights on disk", f"{t['bytes_on_disk'] / 1e6:.1f} MB",
             f"{s['bytes_on_disk'] / 1e6:.1f} MB", f"{s['bytes_on_disk'] / t['bytes_on_disk']:.2f}x")]
    for key in ("dev_accuracy", "test_accuracy", "dev_macro_f1", "test_macro_f1"):
        if key in t:
            rows.append((key.replace("_", " "), f"{t[key]:.4f}", f"{s[key]:.4f}",
                         f"{s[key] / t[key]:.1%} of teacher" if t[key] else ""))
    rows.append(("tokens/s (dev)", f"{t['tokens_per_s_dev']:,.0f}", f"{s['tokens_per_s_dev']:,.0f}",
                 f"{s['tokens_per_s_dev'] / t['tokens_per_s_dev']:.2f}x"))
    print(f"\n{'':<17}{'teacher':>14}{'student':>14}")
    for name, a, b, note in rows:
        print(f"{name:<17}{a:>14}{b:>14}  {note}")
