"""Training an encoder-decoder Transformer on parallel text (translation, summarisation), and
translating with the folder it writes.

One path::

    data files -> examples -> tokenizer(s) (trained on the data, or the model folder's)
        -> TransformerSeq2Seq (new, continued from a seq2seq folder, or encoder from BERT)
        -> Trainer (dev BLEU + dev loss every epoch, best checkpoint by dev BLEU)
        -> best model -> dev/test BLEU and loss -> output folder

The output folder is a bertkit seq2seq folder: ``config.json`` (``"model_type":
"bertkit-seq2seq"``, with the decoding settings as ``bertkit_*`` keys), ``model.safetensors``,
the tokenizer (``vocab.txt`` ...; a separate target vocabulary in ``target_tokenizer/``) and
``metrics.json`` = ``{"dev": {"bleu", "loss", "nll", "signature", "bleu_detail"}, "test":
{...}, "run": {...}, "translation_config": {...}, "training_config": {...}}``, beside the
Trainer's ``metrics.jsonl``, ``curves.png``, ``tensorboard/``, ``checkpoints/`` and ``best/``.
:func:`translate_folder` and :func:`evaluate_translation` take only that folder.

BLEU is sacrebleu's corpus BLEU of the detokenised hypotheses against the raw reference
lines (default 13a tokenisation; ``case:lc`` when the tokenizer lowercases, since its output
cannot have case), reported with sacrebleu's signature string.

Public API: :class:`TranslationConfig`, :func:`run_translation`, :class:`TranslationResult`,
:func:`translate_folder`, :func:`evaluate_translation`, :func:`load_parallel_spec`,
:func:`corpus_bleu`, :func:`default_training_config`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bertkit.config import replace_bertkit_settings
from bertkit.jsonfile import read_json_object
from bertkit.data.parallel import (IGNORE_INDEX, ParallelDataset, ParallelExample,
                                   Seq2SeqCollator, encode_parallel, load_parallel,
                                   load_tokenizers, save_tokenizers, special_token_ids,
                                   train_tokenizers)
from bertkit.data.summarization import lead_sentence
from bertkit.data.tasks import TruncationWarning
from bertkit.inference import length_sorted_batches
from bertkit.modeling.seq2seq import (CONFIG_NAME, MODEL_TYPE, SEQ2SEQ_SIZES, Seq2SeqConfig,
                                      TransformerSeq2Seq)
from bertkit.tokenizer import Tokenizer
from bertkit.training.run import (TrainingPlan, plan_settings, run_in_output_folder,
                                  stopped_line, train_to_best)
from bertkit.training.trainer import (TrainingConfig, TrainResult, find_checkpoint, set_seed,
                                      setup_distributed)

TASK = "translation"
METRICS_FILE = "metrics.json"
METRICS = ("bleu", "loss")     # what can select the best checkpoint (eval keys "bleu", "loss")
# The tasks this run trains, and the metrics each can select the best checkpoint by: the
# encoder-decoder recipe is one, only the score of the decoded dev set differs.
TASK_METRICS = {TASK: METRICS, "summarization": ("rougeL", "rouge1", "rouge2", "loss")}
DEFAULT_POSITIONS = 512        # max_position_embeddings of a new model (sinusoids cost no weights)


# ============================================================================ configuration


@dataclass
class TranslationConfig:
    """What to train on and which model; the loop's settings (lr, schedule, epochs, time
    budget ...) are a :class:`~bertkit.training.trainer.TrainingConfig` (see
    :func:`default_training_config` for the paper's).

    Data (``train``, ``dev``, ``test``): a ``.tsv`` (source<TAB>target) or ``.jsonl``
    (``{"source", "target"}``) file, or two aligned text files written
    ``"source=train.en,target=train.de"`` (see :func:`load_parallel_spec`).

    ``model``: None = a new model of ``model_size`` (``tiny|small|base|big``; "small", 3+3
    layers of 256, trains on a CPU in minutes) or of the config.json file ``model_config``;
    a bertkit seq2seq folder = continue training it (its tokenizers and architecture are
    kept); a BERT folder = a new model whose encoder is that BERT (its vocabulary is the
    source one; ``decoder_layers`` defaults to BERT's layer count).

    ``tokenizer``: for a new model, a folder written by
    :func:`~bertkit.data.parallel.save_tokenizers` to use instead of training a WordPiece
    vocabulary of ``vocab_size`` on the training data (one shared by both sides with
    ``shared_vocab``, else one per side; ``lowercase`` them or not). With a BERT folder and
    ``shared_vocab=False`` the target vocabulary is trained on the targets.

    Decoding for dev/test BLEU and the folder's translation defaults: ``num_beams`` (1 =
    greedy) and the GNMT ``length_penalty`` alpha (the paper: 4 beams, alpha 0.6).
    ``metric``: ``"bleu"`` (higher is better) or ``"loss"`` selects the best checkpoint;
    ``patience`` evaluations without a gain stop the run (None: never).
    ``label_smoothing`` (the paper's 0.1), ``dropout`` (None: the size's or BERT's) and
    ``decoder_layers`` apply to new models; a continued model keeps its architecture (its
    label smoothing is set).
    """

    train: str
    dev: str | None = None
    test: str | None = None
    model: str | None = None
    tokenizer: str | None = None
    model_size: str = "small"
    model_config: str | None = None
    vocab_size: int = 8000
    shared_vocab: bool = True
    lowercase: bool = False
    max_source_length: int = 128
    max_target_length: int = 128
    num_beams: int = 4
    length_penalty: float = 0.6
    label_smoothing: float = 0.1
    dropout: float | None = None
    decoder_layers: int | None = None
    metric: str = "bleu"
    patience: int | None = None
    task: str = TASK                    # or "summarization": ROUGE instead of BLEU
    warm_start_decoder: bool = False    # BERT folder: the decoder from BERT too (BERT2BERT)

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise ValueError(f"TranslationConfig.{name} {rule}, got {getattr(self, name)!r}")

        for name in ("train", "dev", "test", "model", "tokenizer", "model_config"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if not isinstance(self.train, str) or not self.train:
            fail("train", "must name the training data")
        if self.model_size not in SEQ2SEQ_SIZES:
            fail("model_size", f"must be one of {', '.join(SEQ2SEQ_SIZES)}")
        if self.task not in TASK_METRICS:
            fail("task", f"must be one of {', '.join(TASK_METRICS)}")
        if self.metric not in TASK_METRICS[self.task]:
            fail("metric", f"must be one of {', '.join(TASK_METRICS[self.task])}")
        for name, low in (("vocab_size", 6), ("max_source_length", 3), ("max_target_length", 2),
                          ("num_beams", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                fail(name, f"must be an integer >= {low}")
        for name in ("decoder_layers", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                fail(name, "must be a positive integer or None")
        if not 0.0 <= self.label_smoothing < 1.0:
            fail("label_smoothing", "must be in [0, 1)")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            fail("dropout", "must be in [0, 1) or None")
        if self.model is not None and self.tokenizer is not None:
            raise ValueError(f"TranslationConfig.tokenizer is for a new model; the model folder "
                             f"{self.model} brings its own tokenizer")
        if self.model is not None and self.model_config is not None:
            raise ValueError("TranslationConfig: give model (a folder) or model_config (a "
                             "config.json for a new model), not both")


@dataclass
class TranslationResult:
    """What :func:`run_translation` returns (on rank 0; other ranks get empty ``metrics`` and
    no model)."""

    out_dir: str
    train: TrainResult
    metrics: dict = field(default_factory=dict)   # {"dev": {...}, "test": {...}}
    model: TransformerSeq2Seq | None = None       # the best (or last) model, in eval mode


def default_training_config(out_dir: str, **overrides: Any) -> TrainingConfig:
    """A TrainingConfig with the paper's optimisation (Vaswani et al. 2017, section 5.3):
    Adam with betas (0.9, 0.98) and eps 1e-9, no weight decay, the inverse-square-root
    schedule after 4000 warmup steps (peak lr 7e-4, the paper's rate for d_model=512 at that
    warmup); 10 epochs. ``overrides`` replace any field."""
    values: dict[str, Any] = dict(out_dir=out_dir, lr=7e-4, adam_betas=(0.9, 0.98),
                                  adam_eps=1e-9, weight_decay=0.0, schedule="inverse_sqrt",
                                  warmup_steps=4000, epochs=10.0)
    if "warmup_ratio" in overrides:
        values.pop("warmup_steps")
    values.update(overrides)
    return TrainingConfig(**values)


# ============================================================================ data


def load_parallel_spec(spec: str) -> list[ParallelExample]:
    """Read parallel data named by one string: a ``.tsv`` / ``.jsonl`` file, or two aligned
    text files as ``"source=FILE,target=FILE"`` (the order of the two parts is free)."""
    text = os.fspath(spec)
    if not (text.startswith("source=") or text.startswith("target=")):
        return load_parallel(text)
    parts = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("source", "target") or key in parts or not value.strip():
            raise ValueError(f"cannot read the data argument {text!r}: write two aligned files "
                             "as source=FILE,target=FILE (or give one .tsv/.jsonl file)")
        parts[key] = value.strip()
    if len(parts) != 2:
        raise ValueError(f"the data argument {text!r} names only the {next(iter(parts))} file; "
                         "write source=FILE,target=FILE")
    return load_parallel(source=parts["source"], target=parts["target"])


def _folder_kind(folder: str) -> str:
    """``"seq2seq"`` or ``"bert"``, from ``folder/config.json``'s model_type."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    path = os.path.join(folder, CONFIG_NAME)
    data = read_json_object(path, missing=f"{folder} has no {CONFIG_NAME}: not a model folder")
    model_type = data.get("model_type", "bert")
    if model_type == MODEL_TYPE:
        return "seq2seq"
    if model_type == "bert":
        return "bert"
    raise ValueError(f"{folder} is neither a bertkit seq2seq folder nor a BERT folder "
                     f"({path} has model_type {model_type!r}; expected {MODEL_TYPE!r} or 'bert')")


# ============================================================================ model


def _tokenizers(cfg: TranslationConfig, kind: str | None, train: list[ParallelExample],
                resume_dir: str | None, out_dir: str, rank_info) -> tuple[Tokenizer, Tokenizer]:
    """(source, target) tokenizers. A resumed run reuses its checkpoint's; a seq2seq folder
    brings its own; a BERT folder is the source one (and the target one, unless a separate
    target vocabulary is asked for); else ``cfg.tokenizer`` or a vocabulary trained here.

    Vocabulary training is not deterministic across runs (tied merges), so under torchrun
    rank 0 trains and saves it in ``out_dir`` and the other ranks load it from there."""
    if resume_dir is not None and os.path.isfile(os.path.join(resume_dir, "vocab.txt")):
        return load_tokenizers(resume_dir)
    if kind == "seq2seq":
        return load_tokenizers(cfg.model)
    if kind == "bert":
        source = Tokenizer.from_pretrained(cfg.model)
        if cfg.shared_vocab:
            return source, source
    elif cfg.tokenizer is not None:
        return load_tokenizers(cfg.tokenizer)
    if rank_info.is_main:
        if kind == "bert":
            pair = (source, Tokenizer.train([ex.target for ex in train],
                                            vocab_size=cfg.vocab_size, lowercase=cfg.lowercase,
                                            min_frequency=1, show_progress=False))
        else:
            pair = train_tokenizers(train, vocab_size=cfg.vocab_size, shared=cfg.shared_vocab,
                                    lowercase=cfg.lowercase)
        save_tokenizers(out_dir, *pair)
    if rank_info.active:
        dist.barrier()
        if not rank_info.is_main:
            pair = load_tokenizers(out_dir)
            if kind == "bert":
                pair = (source, pair[1])
    return pair


def _check_tokenizers(where: str, config: Seq2SeqConfig, source: Tokenizer,
                      target: Tokenizer) -> None:
    if source.vocab_size > config.vocab_size:
        raise ValueError(f"{where}: the source vocabulary has {source.vocab_size} tokens but the "
                         f"model's vocab_size is {config.vocab_size}")
    if target.vocab_size > config.target_vocab_size:
        raise ValueError(f"{where}: the target vocabulary has {target.vocab_size} tokens but the "
                         f"model's target vocabulary size is {config.target_vocab_size}")
    if source.pad_token_id != target.pad_token_id:
        raise ValueError(f"{where}: the source and target tokenizers give [PAD] different ids "
                         f"({source.pad_token_id} and {target.pad_token_id}); the model has one "
                         "pad id")
    ids = special_token_ids(target)
    have = {name: getattr(config, name) for name in ids}
    if have != ids:
        raise ValueError(f"{where}: the model's special ids {have} are not the target "
                         f"tokenizer's {ids}")


def _new_config(cfg: TranslationConfig, source: Tokenizer, target: Tokenizer) -> Seq2SeqConfig:
    if cfg.model_config is not None:
        path = cfg.model_config
        base = read_json_object(path, missing=f"model config {path} does not exist")
        base.setdefault("model_type", MODEL_TYPE)
    else:
        base = dict(SEQ2SEQ_SIZES[cfg.model_size])
        base["max_position_embeddings"] = max(DEFAULT_POSITIONS, cfg.max_source_length,
                                              cfg.max_target_length)
    # The vocabulary sizes and special ids are the tokenizers', whatever the file says.
    values = dict(base, vocab_size=source.vocab_size, label_smoothing=cfg.label_smoothing,
                  **special_token_ids(target))
    if cfg.dropout is not None:
        values["dropout"] = cfg.dropout
    if cfg.decoder_layers is not None:
        values["decoder_layers"] = cfg.decoder_layers
    if source is target:
        values["tgt_vocab_size"] = None
        values.setdefault("share_embeddings", True)
    else:
        values.update(tgt_vocab_size=target.vocab_size, share_embeddings=False)
    try:
        return Seq2SeqConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg.model_config or 'model_size ' + cfg.model_size}: {e}") from None


def _build_model(cfg: TranslationConfig, kind: str | None, source: Tokenizer,
                 target: Tokenizer) -> tuple[TransformerSeq2Seq, str]:
    """The model to train and a phrase saying where it comes from."""
    if kind == "seq2seq":
        model = TransformerSeq2Seq.from_pretrained(cfg.model).train()
        model.config.label_smoothing = cfg.label_smoothing  # read by the loss at every call
        origin = f"continued from {cfg.model}"
    elif kind == "bert":
        overrides: dict[str, Any] = dict(label_smoothing=cfg.label_smoothing,
                                         **special_token_ids(target))
        if source is not target:
            overrides.update(tgt_vocab_size=target.vocab_size, share_embeddings=False)
        if cfg.dropout is not None:
            overrides["dropout"] = cfg.dropout
        if cfg.decoder_layers is not None:
            overrides["decoder_layers"] = cfg.decoder_layers
        model = TransformerSeq2Seq(Seq2SeqConfig.from_bert(cfg.model, **overrides))
        model.init_encoder_from_bert(cfg.model)
        origin = f"encoder initialised from the BERT folder {cfg.model}"
        if cfg.warm_start_decoder:
            model.init_decoder_from_bert(cfg.model)
            origin = f"encoder and decoder initialised from the BERT folder {cfg.model}"
    else:
        model = TransformerSeq2Seq(_new_config(cfg, source, target))
        origin = (f"new from {cfg.model_config}" if cfg.model_config
                  else f"new, size {cfg.model_size}")
    where = cfg.model or cfg.model_config or f"model_size {cfg.model_size}"
    _check_tokenizers(where, model.config, source, target)
    positions = model.config.max_position_embeddings
    for name in ("max_source_length", "max_target_length"):
        if getattr(cfg, name) > positions:
            raise ValueError(f"TranslationConfig.{name} {getattr(cfg, name)} exceeds the model's "
                             f"max_position_embeddings {positions} ({where})")
    return model, origin


# ============================================================================ decoding, metrics


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str],
                lowercase: bool = False) -> dict[str, Any]:
    """sacrebleu's corpus BLEU with one reference per hypothesis (default 13a tokenisation).

    Returns ``{"bleu": float in [0, 100], "signature": str (e.g.
    "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"), "bleu_detail": str (n-gram
    precisions, brevity penalty, lengths)}``. ``lowercase`` compares case-insensitively."""
    import sacrebleu  # deferred: only evaluation scores BLEU, and the import is slow
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    metric = sacrebleu.BLEU(lowercase=lowercase)
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": float(score.score), "signature": str(metric.get_signature()),
            "bleu_detail": str(score)}


def corpus_rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 (x 100) of the rouge-score library (Porter
    stemming on), one reference per hypothesis: ``{"rouge1", "rouge2", "rougeL"}``."""
    from rouge_score import rouge_scorer  # deferred: only summarization evaluation needs it
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    names = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
    totals = dict.fromkeys(names, 0.0)
    for hypothesis, reference in zip(hypotheses, references):
        scores = scorer.score(reference, hypothesis)
        for name in names:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / max(len(hypotheses), 1) for name, total in totals.items()}


def _decode_length(config: Seq2SeqConfig, settings: dict, source_length: int,
                   max_length: int | None) -> int:
    """Tokens to generate for a batch of padded source length S: ``max_length`` when given,
    else ``min(2 * S + 10, max_target_length)``; never past the decoder's positions."""
    if max_length is None:
        max_length = min(2 * source_length + 10, settings["bertkit_max_target_length"])
    return max(1, min(max_length, config.max_position_embeddings))


def _generate(model: TransformerSeq2Seq, target: Tokenizer, sources: Sequence[Sequence[int]],
              settings: dict, batch_size: int, num_beams: int, length_penalty: float,
              max_length: int | None = None, n_best: int = 1) -> list[list[dict]]:
    """Decode encoded sources (``[CLS] ... [SEP]`` id lists) in length-sorted batches.

    Returns, per source in input order, ``n_best`` dicts ``{"translation": str, "score":
    float (summed log-prob / GNMT length penalty: the ranking score), "log_prob": float}``,
    best first."""
    config = model.config
    device = model.device
    collate = Seq2SeqCollator(config.pad_token_id)
    results: list[list[dict] | None] = [None] * len(sources)
    for indices in length_sorted_batches([len(s) for s in sources], batch_size):
        batch = collate([{"input_ids": list(sources[i])} for i in indices])
        ids = batch["input_ids"].to(device)                                         # (B, S)
        mask = batch["attention_mask"].to(device)                                   # (B, S)
        out = model.generate(ids, mask,
                             max_length=_decode_length(config, settings, ids.size(1), max_length),
                             num_beams=num_beams, length_penalty=length_penalty,
                             num_return_sequences=n_best)
        sequences = out.sequences.tolist()                                          # (B*R, L)
        scores, log_probs = out.normalized_scores.tolist(), out.scores.tolist()
        for row, index in enumerate(indices):
            hypotheses = []
            for r in range(row * n_best, (row + 1) * n_best):
                tokens = sequences[r]
                if config.eos_token_id in tokens:
                    tokens = tokens[:tokens.index(config.eos_token_id)]
                hypotheses.append({"translation": target.decode(tokens), "score": scores[r],
                                   "log_prob": log_probs[r]})
            results[index] = hypotheses
    return results


@torch.no_grad()
def _teacher_forced_loss(model: TransformerSeq2Seq, dataset: ParallelDataset,
                         batch_size: int) -> tuple[float, float]:
    """Per-token means over the whole split: the training loss (label-smoothed cross-entropy)
    and the plain negative log-likelihood (its exp is the perplexity)."""
    collate = Seq2SeqCollator(model.config.pad_token_id)
    device = model.device
    loss_sum = nll_sum = 0.0
    tokens = 0
    for indices in length_sorted_batches([len(item["input_ids"]) for item in dataset],
                                         batch_size):
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in indices]).items()}
        out = model(**batch)
        labels = batch["labels"].masked_fill(batch["labels"] == model.config.pad_token_id,
                                             IGNORE_INDEX)                          # (B, T)
        count = int((labels != IGNORE_INDEX).sum())
        loss_sum += float(out.loss) * count  # the loss is a mean over this batch's tokens
        nll_sum += float(F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten(),
                                         ignore_index=IGNORE_INDEX, reduction="sum"))
        tokens += count
    return loss_sum / max(tokens, 1), nll_sum / max(tokens, 1)


def _split_metrics(model: TransformerSeq2Seq, target: Tokenizer, dataset: ParallelDataset,
                   settings: dict, batch_size: int, full: bool) -> dict[str, Any]:
    """BLEU (decoding with the folder's num_beams / length_penalty), loss and nll on one
    split; ``full`` adds the sacrebleu signature and detail line."""
    was_training = model.training
    model.eval()
    try:
        outputs = _generate(model, target, [item["input_ids"] for item in dataset], settings,
                            batch_size, settings["bertkit_num_beams"],
                            settings["bertkit_length_penalty"])
        loss, nll = _teacher_forced_loss(model, dataset, batch_size)
    finally:
        model.train(was_training)
    hypotheses = [o[0]["translation"] for o in outputs]
    references = [ex.target for ex in dataset.examples]
    if settings["bertkit_task"] != TASK:
        return {**corpus_rouge(hypotheses, references), "loss": loss, "nll": nll}
    bleu = corpus_bleu(hypotheses, references, lowercase=target.do_lower_case)
    metrics = {"bleu": bleu["bleu"], "loss": loss, "nll": nll}
    if full:
        metrics.update(signature=bleu["signature"], bleu_detail=bleu["bleu_detail"])
    return metrics


# ============================================================================ training


def run_translation(cfg: TranslationConfig, training: TrainingConfig,
                    resume_from: str | None = None, overwrite: bool = False) -> TranslationResult:
    """Train a seq2seq Transformer on ``cfg.train`` and write the folder ``training.out_dir``.

    Steps: read train/dev/test (a misaligned pair of files, an empty line or an empty file is a
    ValueError naming the file); get the tokenizer(s) (see :class:`TranslationConfig`; trained
    ones are saved in the output folder at once); build the model; train with the Trainer as
    ``training`` says (schedule, epochs / max_steps / time budget, resume), evaluating on dev
    every epoch (or ``training.eval_every`` steps): BLEU of the decoded dev sources and dev
    loss; keep the best checkpoint by ``cfg.metric`` (dev BLEU by default) and load it at the
    end; evaluate dev and test and write the folder (module docstring).

    The run writes into ``OUT.partial`` and moves it to ``training.out_dir`` at the end
    (:func:`~bertkit.training.run.run_in_output_folder`). Under torchrun every rank calls
    this; rank 0 evaluates and writes.
    """
    rank_info, _ = setup_distributed(training.device)
    inputs = {"--model": cfg.model, "--tokenizer": cfg.tokenizer, "--train": cfg.train,
              "--dev": cfg.dev, "--test": cfg.test}
    return run_in_output_folder(
        training, lambda staged: _translation_into(cfg, staged, resume_from, rank_info),
        inputs=inputs, resume_from=resume_from, overwrite=overwrite, is_main=rank_info.is_main)


def _translation_into(cfg: TranslationConfig, training: TrainingConfig,
                      resume_from: str | None, rank_info) -> TranslationResult:
    """The training run of :func:`run_translation`, writing into ``training.out_dir``."""
    kind = _folder_kind(cfg.model) if cfg.model is not None else None
    if cfg.tokenizer is not None and not os.path.isdir(cfg.tokenizer):
        raise FileNotFoundError(f"tokenizer folder {cfg.tokenizer} does not exist")

    # Data first: a bad file fails in seconds, before any vocabulary is trained.
    train_examples = load_parallel_spec(cfg.train)
    dev_examples = load_parallel_spec(cfg.dev) if cfg.dev else None
    test_examples = load_parallel_spec(cfg.test) if cfg.test else None

    out_dir = training.out_dir
    resume_dir = str(find_checkpoint(resume_from)) if resume_from is not None else None
    source, target = _tokenizers(cfg, kind, train_examples, resume_dir, out_dir, rank_info)
    set_seed(training.seed)  # the fresh weights are part of the run's seed
    model, origin = _build_model(cfg, kind, source, target)
    settings = _store_decoding_settings(cfg, model.config)
    train_set = _encode_split(cfg, train_examples, source, target)
    dev_set = _encode_split(cfg, dev_examples, source, target)
    test_set = _encode_split(cfg, test_examples, source, target)

    eval_batch_size = training.eval_batch_size or training.batch_size

    def eval_fn(m: TransformerSeq2Seq) -> dict:
        return _split_metrics(m, target, dev_set, settings, eval_batch_size, full=False)

    def save(model_to_save: TransformerSeq2Seq, folder: str) -> None:
        model_to_save.save_pretrained(folder)
        save_tokenizers(folder, source, target)

    splits = {"train": train_set, "dev": dev_set, "test": test_set}
    if rank_info.is_main:
        _print_run_plan(cfg, model, origin, source, target, splits)
    plan = TrainingPlan(model, train_set, Seq2SeqCollator(model.config.pad_token_id), save,
                        eval_fn=eval_fn if dev_set is not None else None, metric=cfg.metric,
                        greater_is_better=cfg.metric != "loss", patience=cfg.patience)
    model, result = train_to_best(plan, training, resume_dir)
    training = plan_settings(plan, training)  # what the run trained with, for metrics.json
    if not rank_info.is_main:
        return TranslationResult(out_dir, result)

    metrics = {name: _split_metrics(model, target, split, settings, eval_batch_size, full=True)
               for name, split in (("dev", dev_set), ("test", test_set)) if split is not None}
    if cfg.task != TASK:  # the extractive baseline a summarizer must beat, on the same splits
        for name, split in (("dev", dev_set), ("test", test_set)):
            if split is not None:
                metrics[name]["lead_baseline"] = corpus_rouge(
                    [lead_sentence(ex.source) for ex in split.examples],
                    [ex.target for ex in split.examples])
    save(model, out_dir)
    _write_summary(out_dir, cfg, training, result, metrics, model, splits)
    print("\n" + stopped_line(result, cfg.metric))
    for name, m in metrics.items():
        if "bleu" in m:
            print(f"{name}: BLEU {m['bleu']:.2f} (sacrebleu {m['signature']}), loss "
                  f"{m['loss']:.4f}")
        else:
            print(f"{name}: ROUGE-1 {m['rouge1']:.2f}, ROUGE-2 {m['rouge2']:.2f}, ROUGE-L "
                  f"{m['rougeL']:.2f} (rouge-score F1, stemmed), loss {m['loss']:.4f}")
    return TranslationResult(out_dir, result, metrics, model)


def _store_decoding_settings(cfg: TranslationConfig, config: Seq2SeqConfig) -> dict[str, Any]:
    """Write the task and decoding settings into the model config (saved in config.json, read
    back by translate/evaluate); returns them."""
    settings = {"bertkit_task": cfg.task, "bertkit_max_source_length": cfg.max_source_length,
                "bertkit_max_target_length": cfg.max_target_length,
                "bertkit_num_beams": cfg.num_beams, "bertkit_length_penalty": cfg.length_penalty}
    replace_bertkit_settings(config.extra, settings)  # a continued folder may carry older ones
    return settings


def _encode_split(cfg: TranslationConfig, examples: list[ParallelExample] | None,
                  source: Tokenizer, target: Tokenizer) -> ParallelDataset | None:
    if examples is None:
        return None
    return encode_parallel(examples, source, target, cfg.max_source_length, cfg.max_target_length)


def _print_run_plan(cfg: TranslationConfig, model: TransformerSeq2Seq, origin: str,
                    source: Tokenizer, target: Tokenizer,
                    splits: dict[str, ParallelDataset | None]) -> None:
    vocab = (f"shared vocabulary of {source.vocab_size}" if source is target else
             f"vocabularies of {source.vocab_size} (source) and {target.vocab_size} (target)")
    sizes = "".join(f", {name} {len(splits[name]):,}" for name in ("dev", "test")
                    if splits[name] is not None)
    print(f"seq2seq model ({origin}): {model.num_parameters():,} parameters, "
          f"{model.config.encoder_layers}+{model.config.decoder_layers} layers of "
          f"{model.config.d_model}, {vocab}; train {len(splits['train']):,}{sizes}; best by dev "
          f"{cfg.metric} (decoding: {cfg.num_beams} beam(s), length penalty "
          f"{cfg.length_penalty})")


def _write_summary(out_dir: str, cfg: TranslationConfig, training: TrainingConfig,
                   result: TrainResult, metrics: dict[str, dict], model: TransformerSeq2Seq,
                   splits: dict[str, ParallelDataset | None]) -> None:
    """metrics.json: the final dev/test metrics, the run's numbers and both configs."""
    summary = {
        **metrics,
        "run": {"steps": result.steps, "epochs": result.epochs, "stop_reason": result.stop_reason,
                "elapsed_seconds": result.elapsed, "train_loss": result.train_loss,
                "best_metric": cfg.metric, "best_value": result.best_metric,
                "best_step": result.best_step, "model_parameters": model.num_parameters(),
                "num_truncated": {name: s.num_truncated for name, s in splits.items()
                                  if s is not None}},
        "translation_config": dataclasses.asdict(cfg),
        "training_config": training.to_dict()}
    with open(os.path.join(out_dir, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")


# ============================================================================ saved folders


def _load_folder(model_dir: str, device: str | None):
    """(model, source tokenizer, target tokenizer, settings) of a seq2seq folder."""
    if _folder_kind(model_dir) != "seq2seq":
        raise ValueError(f"{model_dir} is a BERT folder, not a translation model; train one "
                         "first (bertkit finetune --task translation)")
    model = TransformerSeq2Seq.from_pretrained(model_dir)
    source, target = load_tokenizers(model_dir)
    _check_tokenizers(model_dir, model.config, source, target)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = model.config
    defaults = {"bertkit_max_source_length": config.max_position_embeddings,
                "bertkit_max_target_length": config.max_position_embeddings,
                "bertkit_num_beams": 4, "bertkit_length_penalty": 0.6, "bertkit_task": TASK}
    settings = {**defaults, **{k: v for k, v in config.extra.items() if k.startswith("bertkit_")}}
    return model.to(device).eval(), source, target, settings


def translate_folder(model_dir: str, texts: Sequence[str], num_beams: int | None = None,
                     max_length: int | None = None, length_penalty: float | None = None,
                     n_best: int = 1, batch_size: int = 32,
                     device: str | None = None) -> list[dict]:
    """Translate ``texts`` with the seq2seq folder ``model_dir``.

    ``num_beams`` / ``length_penalty`` default to the folder's (those of its dev BLEU);
    ``max_length`` (tokens generated, eos included) defaults per batch to
    ``min(2 * S + 10, max_target_length)`` for padded source length S. Sources are cut to
    the folder's ``max_source_length`` tokens, as in training (one ``TruncationWarning``
    gives the count). Batched, longest texts first.

    Returns one dict per text, in order: ``{"source": str, "translation": str, "score":
    float}``, the score being the summed token log-prob divided by the GNMT length penalty
    (beam search's ranking score); with ``n_best`` > 1 (at most ``num_beams``) also
    ``"n_best": [{"translation", "score", "log_prob"}, ...]``, best first.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty: there is nothing to translate")
    model, source, target, settings = _load_folder(model_dir, device)
    num_beams = settings["bertkit_num_beams"] if num_beams is None else num_beams
    if length_penalty is None:
        length_penalty = settings["bertkit_length_penalty"]
    if not isinstance(n_best, int) or n_best < 1 or n_best > max(num_beams, 1):
        raise ValueError(f"n_best must be between 1 and num_beams ({num_beams}), got {n_best}")
    if not texts:
        return []
    limit = settings["bertkit_max_source_length"] - 2  # [CLS] and [SEP] included
    encoded = source.encode_plain(list(texts))
    truncated = sum(len(ids) > limit for ids in encoded)
    if truncated:
        warnings.warn(f"{truncated} of {len(texts)} texts were longer than the model's "
                      f"max_source_length={limit + 2} tokens and were truncated",
                      TruncationWarning, stacklevel=2)
    encoded = [ids[:limit] for ids in encoded]
    sources = [[source.cls_token_id] + ids + [source.sep_token_id] for ids in encoded]
    outputs = _generate(model, target, sources, settings, batch_size, num_beams,
                        length_penalty, max_length, n_best)
    results = []
    for text, hypotheses in zip(texts, outputs):
        entry = {"source": text, "translation": hypotheses[0]["translation"],
                 "score": hypotheses[0]["score"]}
        if n_best > 1:
            entry["n_best"] = hypotheses
        results.append(entry)
    return results


def evaluate_translation(model_dir: str, data: str, batch_size: int = 32,
                         device: str | None = None, output: str | None = None) -> dict:
    """BLEU, loss and nll of the seq2seq folder on a parallel data file (any form
    :func:`load_parallel_spec` reads), decoding as the folder says (``metrics.json`` layout of
    one split). With ``output`` the metrics are also written there as JSON."""
    model, source, target, settings = _load_folder(model_dir, device)
    examples = load_parallel_spec(data)
    dataset = encode_parallel(examples, source, target, settings["bertkit_max_source_length"],
                              settings["bertkit_max_target_length"])
    metrics = _split_metrics(model, target, dataset, settings, batch_size, full=True)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
            f.write("\n")
    return metrics
