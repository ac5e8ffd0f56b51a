"""Pretraining BERT on raw text: corpus -> tokenizer -> shards -> examples -> Trainer -> folder.

The output folder is an HF-format ``BertForPreTraining`` folder (config.json,
model.safetensors, vocab.txt, tokenizer_config.json) beside the run's logs (metrics.jsonl,
curves.png, tensorboard/) and its resumable checkpoints (checkpoints/step-N/).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset

from bertkit.config import BertConfig, RobertaConfig
from bertkit.data.corpus import cache_dir as bertkit_cache_dir
from bertkit.data.pretraining import (MlmCollator, ShardIndex, build_examples, iter_corpus_text,
                                      load_corpus, prepare_corpus)
from bertkit.modeling.bert import IGNORE_INDEX, BertForPreTraining
from bertkit.modeling.roberta import RobertaForMaskedLM
from bertkit.tokenizer import BPETokenizer, Tokenizer
from bertkit.training.run import TrainingPlan, run_in_output_folder, train_to_best
from bertkit.training.trainer import (TrainingConfig, TrainResult, find_checkpoint, set_seed,
                                      setup_distributed)


PRETRAIN_MODEL_TYPES = ("bert", "roberta")


@dataclass
class PretrainConfig:
    """What to pretrain on and what to build; the loop's settings are a TrainingConfig."""

    corpus: list[str]                  # text files (BERT layout or paragraphs)
    tokenizer: str | None = None       # a tokenizer/model folder; None = train a vocab first
    vocab_size: int = 8192             # for a trained vocab
    model_size: str = "tiny"           # tiny | mini | small | medium | base
    model_config: str | None = None    # a config.json to use instead of model_size
    max_seq_length: int = 128
    nsp: bool = True                   # False: RoBERTa-style full-sentence packing, MLM only
    mask_prob: float = 0.15
    whole_word_mask: bool = False
    short_seq_prob: float = 0.1
    heldout_fraction: float = 0.02     # examples kept out of training for evaluation
    cache_dir: str | None = None       # shard cache (default: $BERTKIT_CACHE/shards)
    # "bert": WordPiece, MLM (+ NSP), BertForPreTraining. "roberta": byte-level BPE, MLM only
    # on full-sentence packing with dynamic masking (a fresh mask per batch), RobertaForMaskedLM.
    model_type: str = "bert"

    def __post_init__(self) -> None:
        if not self.corpus:
            raise ValueError("PretrainConfig.corpus: give at least one text file")
        if self.model_type not in PRETRAIN_MODEL_TYPES:
            raise ValueError(f"PretrainConfig.model_type must be one of "
                             f"{', '.join(PRETRAIN_MODEL_TYPES)}, got {self.model_type!r}")
        if self.model_type == "roberta" and self.nsp:
            raise ValueError("RoBERTa pretrains with MLM only: turn NSP off (--no-nsp)")
        if not 0 < self.heldout_fraction < 0.5:
            raise ValueError(f"PretrainConfig.heldout_fraction must be in (0, 0.5), got "
                             f"{self.heldout_fraction}")
        if self.max_seq_length < 8:
            raise ValueError(f"PretrainConfig.max_seq_length must be at least 8, got {self.max_seq_length}")
        # Checked here, before a vocab is trained or a file written (the collator checks again).
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"PretrainConfig.mask_prob must be in (0, 1), got {self.mask_prob}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"PretrainConfig.short_seq_prob must be in [0, 1], got "
                             f"{self.short_seq_prob}")


@dataclass
class PretrainResult:
    out_dir: str
    train: TrainResult
    metrics: dict = field(default_factory=dict)  # held-out MLM/NSP metrics and the baseline


def shard_cache_dir(cache_dir: str | None = None) -> str:
    return cache_dir or os.path.join(str(bertkit_cache_dir()), "shards")


def most_frequent_token(corpus: ShardIndex, special_ids: list[int], vocab_size: int,
                        chunk: int = 1 << 24) -> int:
    """The most frequent non-special token of the corpus: the unigram baseline's answer."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    total = int(corpus.sentence_offsets[-1])
    for start in range(0, total, chunk):
        counts += np.bincount(corpus.tokens(start, min(total, start + chunk)), minlength=vocab_size)
    counts[special_ids] = 0
    return int(counts.argmax())


def make_pretraining_eval(dataset, collator: MlmCollator, batch_size: int, baseline_token: int):
    """An ``eval_fn`` for the Trainer: held-out MLM loss and accuracy, NSP accuracy, and the
    unigram baseline (always predicting the corpus's most frequent token) on the same masks."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        mlm_loss_sum = nsp_loss_sum = 0.0
        mlm_correct = mlm_total = baseline_correct = nsp_correct = nsp_total = 0
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            targets = batch["labels"][batch["labels"] != IGNORE_INDEX]          # (M,)
            # BertForPreTraining's output, or an MLM-only model's (RoBERTa: loss, logits).
            mlm_loss = getattr(out, "mlm_loss", None) or out.loss
            logits = getattr(out, "prediction_logits", None)
            logits = out.logits if logits is None else logits                   # (M, V)
            mlm_loss_sum += float(mlm_loss) * targets.numel()
            mlm_correct += int((logits.argmax(-1) == targets).sum())
            baseline_correct += int((targets == baseline_token).sum())
            mlm_total += targets.numel()
            if getattr(out, "nsp_loss", None) is not None:
                labels = batch["next_sentence_label"]
                nsp_loss_sum += float(out.nsp_loss) * labels.numel()
                nsp_correct += int((out.seq_relationship_logits.argmax(-1) == labels).sum())
                nsp_total += labels.numel()
        metrics = {"mlm_loss": mlm_loss_sum / max(mlm_total, 1),
                   "mlm_accuracy": mlm_correct / max(mlm_total, 1),
                   "mlm_unigram_baseline": baseline_correct / max(mlm_total, 1)}
        if nsp_total:
            metrics["nsp_loss"] = nsp_loss_sum / nsp_total
            metrics["nsp_accuracy"] = nsp_correct / nsp_total
        metrics["eval_loss"] = metrics["mlm_loss"] + metrics.get("nsp_loss", 0.0)
        return metrics

    return evaluate


def _load_or_train_tokenizer(cfg: PretrainConfig, resume_dir: str | None,
                             is_main: bool) -> Tokenizer:
    if cfg.tokenizer:
        tokenizer = Tokenizer.from_pretrained(cfg.tokenizer)
        if (cfg.model_type == "roberta") != isinstance(tokenizer, BPETokenizer):
            raise ValueError(f"{cfg.tokenizer}: a {cfg.model_type} model needs a "
                             f"{'byte-level BPE' if cfg.model_type == 'roberta' else 'WordPiece'} "
                             f"tokenizer folder")
        return tokenizer
    if resume_dir is not None and any(os.path.isfile(os.path.join(resume_dir, name))
                                      for name in ("vocab.txt", "vocab.json")):
        return Tokenizer.from_pretrained(resume_dir)  # a resumed run keeps the vocab it began with
    kind = "byte-level BPE" if cfg.model_type == "roberta" else "WordPiece"
    if is_main:
        print(f"training a {kind} vocab of {cfg.vocab_size} on {len(cfg.corpus)} file(s)")
    trainer = BPETokenizer.train if cfg.model_type == "roberta" else Tokenizer.train
    return trainer(iter_corpus_text(cfg.corpus), vocab_size=cfg.vocab_size, show_progress=is_main)


def build_model_config(cfg: PretrainConfig, tokenizer: Tokenizer) -> BertConfig:
    if cfg.model_config:
        config = BertConfig.from_pretrained(cfg.model_config)
        if config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"{cfg.model_config}: vocab_size {config.vocab_size} is smaller than "
                             f"the tokenizer's {tokenizer.vocab_size} tokens")
        if config.model_type != cfg.model_type:
            raise ValueError(f"{cfg.model_config}: model_type {config.model_type!r}, but the run "
                             f"pretrains {cfg.model_type!r}")
    else:
        config_class = RobertaConfig if cfg.model_type == "roberta" else BertConfig
        config = config_class.from_size(cfg.model_size, vocab_size=tokenizer.vocab_size,
                                        pad_token_id=tokenizer.pad_token_id)
    if cfg.max_seq_length > config.max_tokens:
        raise ValueError(f"max_seq_length {cfg.max_seq_length} exceeds the {config.max_tokens} "
                         f"tokens the model's max_position_embeddings cover")
    return config


def run_pretraining(cfg: PretrainConfig, training: TrainingConfig,
                    resume_from: str | None = None, overwrite: bool = False) -> PretrainResult:
    """Pretrain a BERT with MLM (+ NSP) and write an HF ``BertForPreTraining`` folder.

    The run writes into ``OUT.partial`` and moves it to ``training.out_dir`` at the end
    (:func:`bertkit.outputs.output_folder`: an existing folder is refused unless resumed or
    ``overwrite``; a failed run leaves it as it was). A resumed run keeps its checkpoint's
    vocab; a vocab is trained only for a new run without ``cfg.tokenizer``.

    Under torchrun every rank calls this; rank 0 prepares the tokenizer and the shards while
    the others wait, then every rank trains on its share of the examples.
    """
    rank_info, _ = setup_distributed(training.device)
    resume_dir = str(find_checkpoint(resume_from)) if resume_from is not None else None
    inputs = [("--tokenizer", cfg.tokenizer), ("--config", cfg.model_config),
              *(("--corpus", path) for path in cfg.corpus)]
    return run_in_output_folder(
        training, lambda staged: _pretrain_into(cfg, staged, resume_from, resume_dir, rank_info),
        inputs=inputs, resume_from=resume_from, overwrite=overwrite, is_main=rank_info.is_main)


def _pretrain_into(cfg: PretrainConfig, training: TrainingConfig, resume_from: str | None,
                   resume_dir: str | None, rank_info) -> PretrainResult:
    """The pretraining run of :func:`run_pretraining`, writing into ``training.out_dir``."""
    out_dir = training.out_dir
    is_main = rank_info.is_main

    # Rank 0 trains the vocab and tokenizes the corpus (cached); the others then load both.
    tokenizer = shards = None
    if is_main:
        tokenizer = _load_or_train_tokenizer(cfg, resume_dir, is_main)
        tokenizer.save_pretrained(out_dir)
        shards = prepare_corpus(cfg.corpus, tokenizer, cache_root=shard_cache_dir(cfg.cache_dir),
                                progress=training.progress_bar)
    if rank_info.active:
        path = [str(shards.directory) if shards is not None else None]
        dist.barrier()
        dist.broadcast_object_list(path, src=0)
        if not is_main:
            tokenizer = Tokenizer.from_pretrained(cfg.tokenizer or out_dir)
            shards = load_corpus(path[0])

    examples = build_examples(shards, cfg.max_seq_length, short_seq_prob=cfg.short_seq_prob,
                              nsp=cfg.nsp, seed=training.seed)
    # The held-out examples are the last ones in corpus order, i.e. the last documents: whole
    # documents stay on one side (NSP's random B segments aside).
    heldout = max(1, int(len(examples) * cfg.heldout_fraction))
    if len(examples) - heldout < 1:
        raise ValueError(f"the corpus gives only {len(examples)} example(s): too small to pretrain on")
    train_set = Subset(examples, range(len(examples) - heldout))
    eval_set = Subset(examples, range(len(examples) - heldout, len(examples)))

    config = build_model_config(cfg, tokenizer)
    set_seed(training.seed)  # the same seed gives the same initial weights on every rank and run
    model = RobertaForMaskedLM(config) if cfg.model_type == "roberta" else BertForPreTraining(config)
    collator = MlmCollator(tokenizer, mask_prob=cfg.mask_prob, whole_word_mask=cfg.whole_word_mask)
    baseline_token = most_frequent_token(shards, tokenizer.all_special_ids, tokenizer.vocab_size)
    eval_fn = make_pretraining_eval(eval_set, collator, training.eval_batch_size or training.batch_size,
                                    baseline_token)
    if is_main:
        print(f"corpus: {shards.num_documents:,} documents, {shards.num_tokens:,} tokens -> "
              f"{len(train_set):,} training and {len(eval_set):,} held-out examples of <= "
              f"{cfg.max_seq_length} tokens; model: {model.num_parameters():,} parameters "
              f"({config.num_hidden_layers} layers x {config.hidden_size})")

    def save(model_to_save, folder):
        model_to_save.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    # Held-out numbers are watched, not used to pick a model: pretraining keeps the last one.
    plan = TrainingPlan(model, train_set, collator, save, eval_fn=eval_fn, keep_best=False)
    model, result = train_to_best(plan, training, resume_from)
    metrics = dict(result.metrics)
    if is_main:
        save(model, out_dir)
        summary = {"steps": result.steps, "epochs": result.epochs, "stop_reason": result.stop_reason,
                   "elapsed_seconds": result.elapsed, "train_loss": result.train_loss,
                   "heldout": metrics, "pretrain_config": asdict(cfg),
                   "model_parameters": model.num_parameters()}
        with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return PretrainResult(out_dir, result, metrics)
