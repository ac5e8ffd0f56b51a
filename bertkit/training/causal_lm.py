"""Pretraining a GPT-2 style decoder-only LM on raw text (``bertkit pretrain --model-type gpt``):
corpus -> byte-level BPE tokenizer -> documents packed into blocks -> Trainer -> folder.

The run recipe is pretraining's (:mod:`bertkit.training.run`): the output folder guard, the
Trainer, held-out numbers watched and the last model kept. What is its own: the data (whole
documents, each followed by ``<|endoftext|>``, packed into ``block_size`` blocks; the last
documents held out), the model (:class:`~bertkit.modeling.gpt.GPT2LMHeadModel`, next-token
loss) and the evaluation: held-out perplexity beside the perplexity of the unigram model of
the training tokens (add-one smoothed) on the same targets.

The folder is an HF ``gpt2`` folder (``config.json``, ``model.safetensors``, ``vocab.json``,
``merges.txt``, ``tokenizer.json``, ``tokenizer_config.json``) that transformers'
GPT2LMHeadModel and AutoTokenizer load, with ``metrics.json`` and the Trainer's logs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch

from bertkit.config import GPT2_SIZES, GPT2Config
from bertkit.data.causal import (CausalCollator, PackedBlocks, pack_documents,
                                 unigram_perplexity)
from bertkit.data.pretraining import iter_corpus_text, read_documents
from bertkit.modeling.gpt import GPT2LMHeadModel
from bertkit.tokenizer import BPETokenizer, Tokenizer
from bertkit.training.run import TrainingPlan, run_in_output_folder, train_to_best
from bertkit.training.trainer import TrainingConfig, TrainResult, find_checkpoint, set_seed

METRICS_FILE = "metrics.json"


@dataclass
class CausalLMConfig:
    """What to pretrain on and what to build; the loop's settings are a TrainingConfig.

    ``tokenizer``: a byte-level BPE folder (a ``gpt2`` folder's); None trains one of
    ``vocab_size`` on the corpus. ``model_size`` (``tiny|mini|small|base``) or ``model_config``
    (a GPT-2 config.json) sizes the model; its context (``n_positions``) is ``block_size``.
    """

    corpus: list[str]
    tokenizer: str | None = None
    vocab_size: int = 8192
    model_size: str = "tiny"
    model_config: str | None = None
    block_size: int = 128
    heldout_fraction: float = 0.02
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.corpus:
            raise ValueError("CausalLMConfig.corpus: give at least one text file")
        if self.model_size not in GPT2_SIZES:
            raise ValueError(f"CausalLMConfig.model_size must be one of {', '.join(GPT2_SIZES)}, "
                             f"got {self.model_size!r}")
        if not 0 < self.heldout_fraction < 0.5:
            raise ValueError(f"CausalLMConfig.heldout_fraction must be in (0, 0.5), got "
                             f"{self.heldout_fraction}")
        if not isinstance(self.block_size, int) or self.block_size < 8:
            raise ValueError(f"CausalLMConfig.block_size must be an integer >= 8, got "
                             f"{self.block_size!r}")


@dataclass
class CausalLMResult:
    out_dir: str
    train: TrainResult
    metrics: dict = field(default_factory=dict)  # held-out loss, perplexity, unigram perplexity


def make_perplexity_eval(blocks: PackedBlocks, batch_size: int, unigram: float):
    """An ``eval_fn``: held-out next-token loss and perplexity, with the unigram model's
    perplexity on the same targets beside it."""

    @torch.no_grad()
    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, len(blocks), batch_size):
            ids = blocks.blocks[start:start + batch_size].to(device)                 # (B, T)
            targets = ids.size(0) * (ids.size(1) - 1)  # every position but the first
            total += float(model(ids, labels=ids).loss) * targets
            count += targets
        loss = total / max(count, 1)
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                "unigram_perplexity": unigram}

    return evaluate


def load_or_train_bpe(cfg: CausalLMConfig, resume_dir: str | None) -> BPETokenizer:
    """The run's tokenizer: a resumed run's, ``cfg.tokenizer``'s, or a GPT-2 style byte-level
    BPE trained on the corpus."""
    folder = resume_dir if resume_dir and os.path.isfile(os.path.join(resume_dir, "vocab.json")) \
        else cfg.tokenizer
    if folder:
        tokenizer = Tokenizer.from_pretrained(folder)
        if not isinstance(tokenizer, BPETokenizer) or tokenizer.eos_token_id is None:
            raise ValueError(f"{folder}: a GPT model needs a byte-level BPE tokenizer with an "
                             "end-of-text token (vocab.json + merges.txt, e.g. a gpt2 folder)")
        return tokenizer
    print(f"training a byte-level BPE vocab of {cfg.vocab_size} on {len(cfg.corpus)} file(s)")
    return BPETokenizer.train(iter_corpus_text(cfg.corpus), vocab_size=cfg.vocab_size,
                              kind="gpt2", show_progress=False)


def encode_documents(files: list[str], tokenizer: Tokenizer) -> list[list[int]]:
    """Every document of the corpus files (sentences joined by spaces) as token ids."""
    texts = [" ".join(sentences) for path in files for sentences in read_documents(path)]
    return tokenizer.encode_plain(texts)


def build_gpt_config(cfg: CausalLMConfig, tokenizer: BPETokenizer) -> GPT2Config:
    eos = tokenizer.eos_token_id
    values = dict(vocab_size=tokenizer.vocab_size, n_positions=cfg.block_size,
                  bos_token_id=eos, eos_token_id=eos, resid_pdrop=cfg.dropout,
                  embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout)
    if cfg.model_config:
        config = GPT2Config.from_pretrained(cfg.model_config)
        if config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"{cfg.model_config}: vocab_size {config.vocab_size} is smaller than "
                             f"the tokenizer's {tokenizer.vocab_size} tokens")
        if cfg.block_size > config.n_positions:
            raise ValueError(f"block_size {cfg.block_size} exceeds {cfg.model_config}'s "
                             f"n_positions {config.n_positions}")
        config.bos_token_id = config.eos_token_id = eos
        config.validate()
        return config
    return GPT2Config.from_size(cfg.model_size, **values)


def run_causal_pretraining(cfg: CausalLMConfig, training: TrainingConfig,
                           resume_from: str | None = None,
                           overwrite: bool = False) -> CausalLMResult:
    """Pretrain a GPT-2 style LM and write an HF ``gpt2`` folder at ``training.out_dir``
    (staged in ``OUT.partial`` and moved in at the end; see
    :func:`~bertkit.training.run.run_in_output_folder`). One process (no torchrun)."""
    resume_dir = str(find_checkpoint(resume_from)) if resume_from is not None else None
    inputs = [("--tokenizer", cfg.tokenizer), ("--config", cfg.model_config),
              *(("--corpus", path) for path in cfg.corpus)]
    return run_in_output_folder(
        training, lambda staged: _causal_into(cfg, staged, resume_from, resume_dir),
        inputs=inputs, resume_from=resume_from, overwrite=overwrite, is_main=True)


def _causal_into(cfg: CausalLMConfig, training: TrainingConfig, resume_from: str | None,
                 resume_dir: str | None) -> CausalLMResult:
    out_dir = training.out_dir
    tokenizer = load_or_train_bpe(cfg, resume_dir)
    tokenizer.save_pretrained(out_dir)
    documents = encode_documents(cfg.corpus, tokenizer)
    # The last documents are held out whole: no held-out text was seen in training.
    heldout_docs = max(1, int(len(documents) * cfg.heldout_fraction))
    train_blocks = pack_documents(documents[:-heldout_docs], cfg.block_size, tokenizer.eos_token_id)
    heldout_blocks = pack_documents(documents[-heldout_docs:], cfg.block_size,
                                    tokenizer.eos_token_id)
    if len(train_blocks) < 1 or len(heldout_blocks) < 1:
        raise ValueError(f"the corpus gives {len(train_blocks)} training and {len(heldout_blocks)} "
                         f"held-out blocks of {cfg.block_size} tokens: too small to pretrain on")
    config = build_gpt_config(cfg, tokenizer)
    set_seed(training.seed)  # the same seed gives the same initial weights
    model = GPT2LMHeadModel(config)
    unigram = unigram_perplexity(train_blocks, heldout_blocks, config.vocab_size)
    eval_fn = make_perplexity_eval(PackedBlocks(heldout_blocks),
                                   training.eval_batch_size or training.batch_size, unigram)
    print(f"corpus: {len(documents):,} documents -> {len(train_blocks):,} training and "
          f"{len(heldout_blocks):,} held-out blocks of {cfg.block_size} tokens; model: "
          f"{model.num_parameters():,} parameters ({config.n_layer} layers x {config.n_embd}), "
          f"vocab {config.vocab_size}")

    def save(model_to_save, folder):
        model_to_save.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    plan = TrainingPlan(model, PackedBlocks(train_blocks), CausalCollator(tokenizer.eos_token_id),
                        save, eval_fn=eval_fn, keep_best=False)
    model, result = train_to_best(plan, training, resume_from)
    metrics = dict(result.metrics)
    save(model, out_dir)
    summary = {"steps": result.steps, "epochs": result.epochs, "stop_reason": result.stop_reason,
               "elapsed_seconds": result.elapsed, "train_loss": result.train_loss,
               "heldout": metrics, "causal_lm_config": asdict(cfg),
               "model_parameters": model.num_parameters(),
               "tokens": {"train": int(train_blocks.size), "heldout": int(heldout_blocks.size)}}
    with open(os.path.join(out_dir, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print(f"\nstopped after {result.steps} steps ({result.stop_reason}, {result.elapsed:.0f}s)")
    if metrics:
        print(f"held-out perplexity {metrics['perplexity']:.1f} (unigram model "
              f"{metrics['unigram_perplexity']:.1f}), loss {metrics['eval_loss']:.3f}")
    return CausalLMResult(out_dir, result, metrics)
