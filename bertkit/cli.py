"""The ``bertkit`` command line. Each command is a small function over the library's API;
errors in the user's input (a wrong path, a malformed file) print one clear line, no traceback."""

from __future__ import annotations

import argparse
import json
import sys


def _read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if getattr(args, "file", None):
        with open(args.file, encoding="utf-8") as f:
            texts += [line.rstrip("\n") for line in f if line.strip()]
    if not texts:
        raise ValueError("no input text: give TEXT arguments or --file")
    return texts


# ---------------------------------------------------------------------------- commands
def cmd_embed(args: argparse.Namespace) -> None:
    from bertkit.inference import embed, load_for_inference
    from bertkit.modeling.bert import BertModel
    model, tokenizer = load_for_inference(args.model, BertModel)
    texts = _read_texts(args)
    vectors = embed(model, tokenizer, texts, batch_size=args.batch_size, normalize=args.normalize)
    for text, vector in zip(texts, vectors.tolist()):
        print(json.dumps({"text": text, "embedding": [round(v, 6) for v in vector]}))


def cmd_fill_mask(args: argparse.Namespace) -> None:
    from bertkit.config import BertConfig
    from bertkit.inference import fill_mask, load_for_inference
    from bertkit.modeling.bert import BertForMaskedLM
    architectures = BertConfig.from_pretrained(args.model).architectures or []
    if not {"BertForMaskedLM", "BertForPreTraining"} & set(architectures):
        raise ValueError(f"{args.model} has no masked-language-model head (architectures: "
                         f"{', '.join(architectures) or 'none'}); fill-mask needs a model saved as "
                         "BertForMaskedLM or BertForPreTraining, e.g. one from `bertkit pretrain`")
    model, tokenizer = load_for_inference(args.model, BertForMaskedLM)
    for text in args.texts:
        for index, candidates in enumerate(fill_mask(model, tokenizer, text, args.top_k)):
            if args.json:
                print(json.dumps({"text": text, "mask": index, "candidates": candidates}))
                continue
            print(f"{text}  [mask {index}]")
            for c in candidates:
                print(f"  {c['score']:.4f}  {c['token']:<15} {c['sequence']}")


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    import os
    from bertkit.tokenizer import Tokenizer
    files = _corpus_files(args.corpus)
    tokenizer = Tokenizer.train(files, vocab_size=args.vocab_size, lowercase=not args.cased,
                                min_frequency=args.min_frequency)
    tokenizer.save_pretrained(args.out)
    print(f"trained a WordPiece vocab of {tokenizer.vocab_size} tokens on {len(files)} file(s); "
          f"wrote {os.path.join(args.out, 'vocab.txt')}")
    sample = "Tokenizers split unbelievably long words into pieces."
    print(f"example: {sample!r} -> {tokenizer.tokenize(sample)}")


def _corpus_files(corpus: list[str]) -> list[str]:
    """Expand ``--corpus`` arguments: paths, or ``default`` for the standard-library corpus."""
    import os
    files = []
    for item in corpus:
        if item == "default":
            from bertkit.data.corpus import default_pretraining_corpus
            files.append(str(default_pretraining_corpus()))
        elif not os.path.isfile(item):
            raise FileNotFoundError(f"corpus file {item} does not exist")
        else:
            files.append(item)
    return files


def cmd_prepare_corpus(args: argparse.Namespace) -> None:
    from bertkit.data.pretraining import prepare_corpus
    from bertkit.tokenizer import Tokenizer
    from bertkit.training.pretrain import shard_cache_dir
    shards = prepare_corpus(_corpus_files(args.corpus), Tokenizer.from_pretrained(args.tokenizer),
                            out_dir=args.out, cache_root=None if args.out else shard_cache_dir())
    print(f"{shards.num_documents:,} documents, {shards.num_sentences:,} sentences, "
          f"{shards.num_tokens:,} tokens in {shards.directory}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from bertkit.training.pretrain import PretrainConfig, run_pretraining
    cfg = PretrainConfig(
        corpus=_corpus_files(args.corpus), tokenizer=args.tokenizer, vocab_size=args.vocab_size,
        model_size=args.model_size, model_config=args.config, max_seq_length=args.max_seq_length,
        nsp=not args.no_nsp, mask_prob=args.mask_prob, whole_word_mask=args.whole_word_mask,
        short_seq_prob=args.short_seq_prob)
    result = run_pretraining(cfg, _training_config(args), resume_from=args.resume)
    if result.train.checkpoint_dir is None:
        return  # not rank 0
    heldout = result.metrics
    print(f"\nstopped after {result.train.steps} steps ({result.train.stop_reason}, "
          f"{result.train.elapsed:.0f}s)")
    if heldout:
        line = (f"held-out MLM accuracy {heldout['mlm_accuracy']:.3f} (unigram baseline "
                f"{heldout['mlm_unigram_baseline']:.3f}), MLM loss {heldout['mlm_loss']:.3f}")
        if "nsp_accuracy" in heldout:
            line += f", NSP accuracy {heldout['nsp_accuracy']:.3f}"
        print(line)
    print(f"model folder: {result.out_dir} (metrics.json, metrics.jsonl, curves.png, tensorboard/)")


def add_training_args(p: argparse.ArgumentParser, *, lr: float, batch_size: int,
                      warmup_ratio: float) -> None:
    """The options every training command shares; they fill a TrainingConfig."""
    g = p.add_argument_group("training")
    g.add_argument("--out", required=True, help="output folder (model, logs, checkpoints)")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--epochs", type=float, help="stop after this many passes over the data")
    g.add_argument("--time-budget", help="stop after this long, e.g. 10m, 90s, 1h30m; the "
                   "learning-rate schedule is planned to end at the budget")
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    g.add_argument("--batch-size", type=int, default=batch_size, help="examples per step and process")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--warmup-ratio", type=float, default=warmup_ratio)
    g.add_argument("--schedule", choices=["linear", "cosine", "constant", "inverse_sqrt"],
                   default="linear")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: every epoch)")
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0: at the end)")
    g.add_argument("--keep-last", type=int, default=2, help="checkpoints to keep")
    g.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                   help="auto: bf16/fp16 on CUDA, fp32 on CPU")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--resume", metavar="DIR", help="continue from a checkpoint or a run folder")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _training_config(args: argparse.Namespace, **overrides):
    from bertkit.training.trainer import TrainingConfig
    if args.max_steps is None and args.epochs is None and args.time_budget is None:
        args.epochs = 1.0 if "epochs" not in overrides else overrides.pop("epochs")
    return TrainingConfig(
        out_dir=args.out, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_ratio=args.warmup_ratio, batch_size=args.batch_size, grad_accum_steps=args.grad_accum,
        max_steps=args.max_steps, epochs=args.epochs, time_budget=args.time_budget,
        eval_every=args.eval_every, save_every=args.save_every, keep_last=args.keep_last,
        mixed_precision=args.mixed_precision, device=args.device, seed=args.seed,
        progress_bar=not args.no_progress, **overrides)


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertkit",
        description="BERT and the Transformer from scratch: tokenizer, pretraining, fine-tuning, "
                    "inference. Every model folder is a Hugging Face folder.")
    from bertkit import __version__
    parser.add_argument("--version", action="version", version=f"bertkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("embed", help="sentence embeddings (mean-pooled), one JSON line per text",
                            description="Print one JSON line per text: its mean-pooled embedding.")
    p.add_argument("--model", required=True, help="HF model folder (config.json, weights, vocab.txt)")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--file", help="read texts from this file, one per line")
    p.add_argument("--normalize", action="store_true", help="scale embeddings to unit length")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_embed)

    p = commands.add_parser("fill-mask", help="top-k tokens for each [MASK] in a text",
                            description="Predict the [MASK] tokens of each text with a model that "
                                        "has a masked-language-model head.")
    p.add_argument("--model", required=True, help="HF folder of a BertForMaskedLM/BertForPreTraining")
    p.add_argument("texts", nargs="+", metavar="TEXT", help='e.g. "the [MASK] sat on the mat"')
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=cmd_fill_mask)

    p = commands.add_parser("train-tokenizer", help="train a WordPiece vocab on text files",
                            description="Train a BERT WordPiece vocabulary and write a tokenizer folder.")
    p.add_argument("--corpus", nargs="+", required=True,
                   help="text files, or 'default' for the built-in standard-library corpus")
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--cased", action="store_true", help="keep case and accents")
    p.add_argument("--out", required=True, help="folder to write vocab.txt and tokenizer_config.json")
    p.set_defaults(func=cmd_train_tokenizer)

    p = commands.add_parser("prepare-corpus", help="tokenize text files into memory-mapped shards",
                            description="Tokenize a corpus into token shards (cached by a hash of "
                                        "the files and the tokenizer; `pretrain` calls this itself).")
    p.add_argument("--corpus", nargs="+", required=True, help="text files, or 'default'")
    p.add_argument("--tokenizer", required=True, help="tokenizer or model folder with vocab.txt")
    p.add_argument("--out", help="shard folder (default: the cache, keyed by the inputs)")
    p.set_defaults(func=cmd_prepare_corpus)

    p = commands.add_parser("pretrain", help="pretrain BERT (MLM + NSP) on raw text",
                            description="Pretrain a BERT with masked language modelling and next-"
                                        "sentence prediction; writes an HF BertForPreTraining folder.")
    p.add_argument("--corpus", nargs="+", required=True,
                   help="text files (one sentence per line with blank lines between documents, "
                        "or paragraphs), or 'default' for the built-in standard-library corpus")
    p.add_argument("--tokenizer", help="tokenizer folder (default: train a vocab on the corpus)")
    p.add_argument("--vocab-size", type=int, default=8192, help="size of a trained vocab")
    p.add_argument("--model-size", choices=["tiny", "mini", "small", "medium", "base"], default="tiny",
                   help="tiny 2x128, mini 4x256, small 4x512, medium 8x512, base 12x768")
    p.add_argument("--config", help="a config.json to use instead of --model-size")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--no-nsp", action="store_true", help="full-sentence packing, MLM loss only")
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--whole-word-mask", action="store_true")
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    add_training_args(p, lr=1e-3, batch_size=32, warmup_ratio=0.06)
    p.set_defaults(func=cmd_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: one line; a bug keeps its traceback
        print(f"bertkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bertkit {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():  # a torchrun job joined a group
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
