"""The ``bertkit`` command line. Each command is a small function over the library's API;
errors in the user's input (a wrong path, a malformed file) print one clear line, no traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch.distributed as dist

from bertkit.compress.distill import DistillConfig, run_distillation
from bertkit.compress.onnx import export_folder
from bertkit.compress.prune import run_pruning
from bertkit.compress.quantize import quantize_folder
from bertkit.config import BertConfig
from bertkit.data.corpus import default_pretraining_corpus
from bertkit.data.pretraining import prepare_corpus
from bertkit.explain import DEFAULT_STEPS, METHODS, run_explain_command
from bertkit.demo import run_demo
from bertkit.inference import embed, fill_mask, load_for_inference, load_sentence_encoder
from bertkit.jsonfile import read_json_object
from bertkit.modeling.bert import BertForMaskedLM, bert_class_name
from bertkit.modeling.pooling import POOLING_MODES
from bertkit.outputs import check_output_folder, output_folder
from bertkit.peft import ALL_LINEAR, DEFAULT_LR, merge_lora
from bertkit.search import run_index_command, run_search_command
from bertkit.search.index import DEFAULT_CHUNK_SIZE, EF_SEARCH
from bertkit.serve import ServeConfig, run_server
from bertkit.serve.monitor import MonitorConfig, run_monitor
from bertkit.serve.ray import RayOptions, run_ray_server
from bertkit.tasks import TASKS, TaskSettings
from bertkit.tasks.evaluate import evaluate_folder, print_report
from bertkit.tasks.folder import folder_task
from bertkit.tasks.predict import predict_folder
from bertkit.tokenizer import BPETokenizer, Tokenizer
from bertkit.training.augment import AugmentConfig, augment_file
from bertkit.training.causal_lm import CausalLMConfig, run_causal_pretraining
from bertkit.training.dialogue import DialogueConfig, chat, run_dialogue
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from bertkit.training.generate import DEFAULT_MAX_NEW_TOKENS, generate_command
from bertkit.training.pretrain import PretrainConfig, run_pretraining, shard_cache_dir
from bertkit.training.seeds import parse_seeds, run_seeds
from bertkit.training.summarization import (run_summarization, summarization_config,
                                            summarize_command)
from bertkit.training.trainer import TrainingConfig
from bertkit.training.translation import (TranslationConfig, evaluate_translation,
                                          run_translation, translate_folder)
from bertkit.version import __version__


def _read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if getattr(args, "file", None):
        if not os.path.isfile(args.file):
            raise FileNotFoundError(f"--file {args.file} is not a file")
        try:
            with open(args.file, encoding="utf-8") as f:
                texts += [line.rstrip("\n") for line in f if line.strip()]
        except UnicodeDecodeError as e:
            raise ValueError(f"--file {args.file} is not UTF-8 text (byte {e.start})") from None
    if not texts:
        raise ValueError("no input text: give TEXT arguments or --file")
    return texts


OVERWRITE_HELP = ("replace an existing non-empty --out (as a whole, at the end of a successful "
                  "run); without it such a folder is refused")


# ---------------------------------------------------------------------------- commands
def cmd_embed(args: argparse.Namespace) -> None:
    model, tokenizer, pooling = load_sentence_encoder(args.model)
    texts = _read_texts(args)
    vectors = embed(model, tokenizer, texts, batch_size=args.batch_size, normalize=args.normalize,
                    pooling=pooling)
    for text, vector in zip(texts, vectors.tolist()):
        print(json.dumps({"text": text, "embedding": [round(v, 6) for v in vector]}))


def cmd_fill_mask(args: argparse.Namespace) -> None:
    architectures = BertConfig.from_pretrained(args.model).architectures or []
    # A family's MLM head (RobertaForMaskedLM ...) is BERT's under another name.
    if not {"BertForMaskedLM", "BertForPreTraining"} & {bert_class_name(a) for a in architectures}:
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
    files = _corpus_files(args.corpus)
    inputs = [("--corpus", path) for path in files]
    check_output_folder(args.out, inputs=inputs, overwrite=args.overwrite)
    if args.bpe:
        tokenizer = BPETokenizer.train(files, vocab_size=args.vocab_size,
                                       min_frequency=args.min_frequency)
    else:
        tokenizer = Tokenizer.train(files, vocab_size=args.vocab_size, lowercase=not args.cased,
                                    min_frequency=args.min_frequency)
    with output_folder(args.out, inputs=inputs, overwrite=args.overwrite) as staging:
        tokenizer.save_pretrained(staging)
    kind, written = ("byte-level BPE", "vocab.json, merges.txt") if args.bpe else (
        "WordPiece", "vocab.txt")
    print(f"trained a {kind} vocab of {tokenizer.vocab_size} tokens on {len(files)} file(s); "
          f"wrote {written} in {args.out}")
    sample = "Tokenizers split unbelievably long words into pieces."
    print(f"example: {sample!r} -> {tokenizer.tokenize(sample)}")


def _corpus_files(corpus: list[str]) -> list[str]:
    """Expand ``--corpus`` arguments: paths, or ``default`` for the standard-library corpus."""
    files = []
    for item in corpus:
        if item == "default":
            files.append(str(default_pretraining_corpus()))
        elif not os.path.isfile(item):
            raise FileNotFoundError(f"corpus file {item} does not exist")
        else:
            files.append(item)
    return files


def cmd_prepare_corpus(args: argparse.Namespace) -> None:
    shards = prepare_corpus(_corpus_files(args.corpus), Tokenizer.from_pretrained(args.tokenizer),
                            out_dir=args.out, cache_root=None if args.out else shard_cache_dir())
    print(f"{shards.num_documents:,} documents, {shards.num_sentences:,} sentences, "
          f"{shards.num_tokens:,} tokens in {shards.directory}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    if args.model_type == "gpt":
        return cmd_pretrain_gpt(args)
    cfg = PretrainConfig(
        corpus=_corpus_files(args.corpus), tokenizer=args.tokenizer, vocab_size=args.vocab_size,
        model_size=args.model_size, model_config=args.config, max_seq_length=args.max_seq_length,
        nsp=not args.no_nsp and args.model_type == "bert", mask_prob=args.mask_prob,
        whole_word_mask=args.whole_word_mask, short_seq_prob=args.short_seq_prob,
        model_type=args.model_type)
    result = run_pretraining(cfg, _training_config(args), resume_from=args.resume,
                             overwrite=args.overwrite)
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


def _default_lr(args: argparse.Namespace) -> float:
    """finetune's learning rate when --lr is not given, by task (and PEFT method)."""
    if args.task == "translation" or (args.task == "summarization" and args.model is None):
        return 1e-3  # a seq2seq model from scratch needs ~1e-3
    if args.task in ("summarization", "dialogue"):
        return 1e-4
    return DEFAULT_LR[args.peft] if args.peft else 5e-5


def cmd_finetune(args: argparse.Namespace) -> None:
    if args.schedule is None:
        args.schedule = "inverse_sqrt" if args.task == "translation" else "linear"
    if args.lr is None:
        args.lr = _default_lr(args)
    generation = {"translation": cmd_finetune_translation,
                  "summarization": cmd_finetune_summarization,
                  "dialogue": cmd_finetune_dialogue}
    if args.task in generation:
        return generation[args.task](args)
    if args.model is None:
        raise ValueError(f"--task {args.task} needs --model (a BERT folder)")
    cfg = FinetuneConfig(task=args.task, model=args.model, train=args.train, dev=args.dev,
                         test=args.test, max_length=args.max_length, doc_stride=args.doc_stride,
                         max_answer_length=args.max_answer_length, patience=args.patience,
                         metric=args.metric, baseline=not args.no_baseline,
                         augment=_augment_config(args, args.augment), replay=args.replay,
                         replay_ratio=args.replay_ratio, old_test=args.old_test,
                         pooling=args.pooling, normalize=args.normalize, scale=args.scale,
                         peft=args.peft,
                         peft_options=_peft_options(args))
    if args.seeds:
        if args.resume:
            raise ValueError("--seeds runs every seed from the start: it cannot --resume")
        seeds = run_seeds(cfg, _training_config(args, epochs=3.0), parse_seeds(args.seeds),
                          overwrite=args.overwrite)
        print(f"one model folder per seed under {seeds.out_dir} (seeds.json, seeds.txt)")
        return
    result = run_finetuning(cfg, _training_config(args, epochs=3.0), resume_from=args.resume,
                            overwrite=args.overwrite)
    print(f"model folder: {result.out_dir} (metrics.json, report.txt, curves.png)")


def _augment_config(args: argparse.Namespace, methods: str | None) -> AugmentConfig | None:
    """The AugmentConfig of the augment options (None when no method is named)."""
    if not methods:
        return None
    pair = args.backtranslate.split(",") if args.backtranslate else None
    if pair is not None and len(pair) != 2:
        raise ValueError(f"--backtranslate takes TO_DIR,BACK_DIR; got {args.backtranslate!r}")
    return AugmentConfig(methods=tuple(m.strip() for m in methods.split(",")), n=args.augment_n,
                         alpha=args.augment_alpha, seed=args.seed, mlm_model=args.mlm_model,
                         top_k=args.mlm_top_k, backtranslate=tuple(pair) if pair else None,
                         wordnet=args.wordnet)


def cmd_augment(args: argparse.Namespace) -> None:
    augment_file(args.input, args.out, _augment_config(args, args.method), args.overwrite)


def _peft_options(args: argparse.Namespace) -> dict:
    """The --lora-*/--adapter-*/--prefix-*/--adalora-* options given, as bertkit.peft options."""
    names = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
             "lora_targets": "targets", "adapter_size": "size", "adapter_variant": "variant",
             "prefix_length": "length", "adalora_init_r": "init_r", "adalora_target_r": "target_r"}
    options = {option: getattr(args, arg) for arg, option in names.items()
               if getattr(args, arg, None) is not None}
    if args.peft is None and options:
        raise ValueError(f"--{next(iter(options))} options need --peft")
    if args.peft == "adalora" and "r" in options:  # --lora-r sets AdaLoRA's starting rank
        options.setdefault("init_r", options.pop("r"))
    return options


def cmd_merge_lora(args: argparse.Namespace) -> None:
    result = merge_lora(args.adapter, args.out, base=args.base, overwrite=args.overwrite)
    print(f"merged {args.adapter} into {result['out_dir']} (merged vs unmerged outputs differ by "
          f"at most {result['max_abs_diff']:.1e} on a probe batch)")


def cmd_finetune_translation(args: argparse.Namespace) -> None:
    """`bertkit finetune --task translation`: train a seq2seq Transformer on parallel text."""
    cfg = TranslationConfig(
        train=args.train, dev=args.dev, test=args.test, model=args.model,
        tokenizer=args.tokenizer, model_size=args.model_size, model_config=args.model_config,
        vocab_size=args.vocab_size, shared_vocab=not args.separate_vocab,
        lowercase=args.lowercase, max_source_length=args.max_source_length,
        max_target_length=args.max_target_length, num_beams=args.num_beams,
        length_penalty=args.length_penalty, label_smoothing=args.label_smoothing,
        dropout=args.dropout, decoder_layers=args.decoder_layers,
        metric=args.metric or "bleu", patience=args.patience)
    # The paper's Adam settings (Vaswani et al., section 5.3).
    training = _training_config(args, epochs=10.0, adam_betas=(0.9, 0.98), adam_eps=1e-9)
    result = run_translation(cfg, training, resume_from=args.resume, overwrite=args.overwrite)
    if result.train.checkpoint_dir is not None:  # rank 0
        print(f"model folder: {result.out_dir} (metrics.json, metrics.jsonl, curves.png)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    name = os.path.splitext(os.path.basename(args.data))[0]
    output = args.out or os.path.join(args.model, f"eval_{name}.json")
    config_path = os.path.join(args.model, "config.json")
    is_seq2seq = False
    if os.path.isfile(config_path):  # (a PEFT adapter folder has adapter_config.json instead)
        is_seq2seq = read_json_object(config_path).get("model_type") == "bertkit-seq2seq"
    if is_seq2seq and args.runtime != "torch":
        raise ValueError("--runtime onnx serves encoder models; translation runs on torch")
    if is_seq2seq:
        metrics = evaluate_translation(args.model, args.data, output=output)
        print(json.dumps(metrics, indent=2))
    else:
        metrics = evaluate_folder(args.model, args.data, output=output, runtime=args.runtime,
                                  task=args.task)
        print_report(folder_task(args.model, task=args.task), metrics, name)
    print(f"wrote {output}")


def cmd_predict(args: argparse.Namespace) -> None:
    if args.question or args.context:
        if len(args.question) != len(args.context):
            raise ValueError(f"give one --context per --question, got {len(args.question)} "
                             f"question(s) and {len(args.context)} context(s)")
        results = predict_folder(args.model, questions=args.question, contexts=args.context,
                                 runtime=args.runtime)
    else:
        results = predict_folder(args.model, texts=_read_texts(args),
                                 text_pairs=args.pair or None, runtime=args.runtime)
    for result in results:
        print(json.dumps(result, ensure_ascii=False))


def cmd_translate(args: argparse.Namespace) -> None:
    results = translate_folder(args.model, _read_texts(args), num_beams=args.num_beams,
                               max_length=args.max_length, length_penalty=args.length_penalty,
                               n_best=args.n_best, batch_size=args.batch_size, device=args.device)
    for r in results:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        elif args.n_best > 1:
            print(r["source"])
            for h in r["n_best"]:
                print(f"  {h['score']:.4f}  {h['translation']}")
        else:
            print(r["translation"])


def cmd_serve(args: argparse.Namespace) -> None:
    config = ServeConfig(
        model=args.model, host=args.host, port=args.port, workers=args.workers,
        runtime=args.runtime, device=args.device, api_keys_file=args.api_keys_file,
        insecure=args.insecure, batching=not args.no_batching, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, max_padding=args.max_padding,
        max_texts=args.max_texts, max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes, graceful_timeout=args.graceful_timeout,
        max_queued_tokens=args.max_queued_tokens, request_timeout=args.request_timeout,
        allowed_hosts=args.allowed_hosts, explain_max_chars=args.explain_max_chars,
        explain_max_steps=args.explain_max_steps, explain_max_queued=args.explain_max_queued,
        drift_window=args.drift_window, index=args.index)
    if args.ray:
        run_ray_server(config, RayOptions(
            min_replicas=args.min_replicas, max_replicas=args.max_replicas,
            target_ongoing_requests=args.target_ongoing_requests,
            replica_cpus=args.replica_cpus, address=args.ray_address))
    else:
        run_server(config)


def cmd_index(args: argparse.Namespace) -> None:
    print(run_index_command(args.model, args.corpus, args.out, hnsw=args.hnsw,
                            batch_size=args.batch_size, chunk_size=args.chunk_size,
                            resume=args.resume, overwrite=args.overwrite, add=args.add,
                            ef_search=args.ef_search, progress=not args.no_progress))


def cmd_search(args: argparse.Namespace) -> None:
    print(run_search_command(args.index, _read_texts(args), args.top_k, rerank=args.rerank,
                             candidates=args.candidates, model=args.model,
                             ef_search=args.ef_search, as_json=args.json))


def cmd_generate(args: argparse.Namespace) -> None:
    generate_command(args.model, args.prompt, max_new_tokens=args.max_new_tokens,
                     do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def cmd_chat(args: argparse.Namespace) -> None:
    chat(args.model, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
         repetition_penalty=args.repetition_penalty, seed=args.seed, system=args.system)


def cmd_summarize(args: argparse.Namespace) -> None:
    summarize_command(args.model, args.files, num_beams=args.num_beams,
                      max_length=args.max_length, as_json=args.json)


def cmd_pretrain_gpt(args: argparse.Namespace) -> None:
    """`bertkit pretrain --model-type gpt`: a GPT-2 style LM on raw text."""
    cfg = CausalLMConfig(corpus=_corpus_files(args.corpus), tokenizer=args.tokenizer,
                         vocab_size=args.vocab_size, model_size=args.model_size,
                         model_config=args.config, block_size=args.max_seq_length)
    result = run_causal_pretraining(cfg, _training_config(args), resume_from=args.resume,
                                    overwrite=args.overwrite)
    print(f"model folder: {result.out_dir} (metrics.json, metrics.jsonl, curves.png); try: "
          f"bertkit generate --model {result.out_dir} \"Return the\"")


def cmd_finetune_summarization(args: argparse.Namespace) -> None:
    """`bertkit finetune --task summarization`: BERT2BERT (or a new seq2seq) with ROUGE."""
    cfg = summarization_config(
        args.train, args.dev, args.test, model=args.model, tokenizer=args.tokenizer,
        model_size=args.model_size, model_config=args.model_config, vocab_size=args.vocab_size,
        lowercase=args.lowercase, max_source_length=args.max_source_length,
        max_target_length=args.max_target_length, num_beams=args.num_beams,
        length_penalty=args.length_penalty, label_smoothing=args.label_smoothing,
        dropout=args.dropout, decoder_layers=args.decoder_layers,
        metric=args.metric or "rougeL", patience=args.patience)
    result = run_summarization(cfg, _training_config(args, epochs=3.0), resume_from=args.resume,
                               overwrite=args.overwrite)
    print(f"model folder: {result.out_dir} (metrics.json with the lead baseline, curves.png)")


def cmd_finetune_dialogue(args: argparse.Namespace) -> None:
    """`bertkit finetune --task dialogue`: a GPT-2 folder on conversations (JSONL turns)."""
    if args.model is None:
        raise ValueError("--task dialogue needs --model (a GPT-2 folder, e.g. from "
                         "`bertkit pretrain --model-type gpt`)")
    result = run_dialogue(DialogueConfig(args.train, args.model, args.dev,
                                         max_length=args.max_length),
                          _training_config(args, epochs=3.0), resume_from=args.resume,
                          overwrite=args.overwrite)
    print(f"model folder: {result.out_dir} (metrics.json); try: bertkit chat --model "
          f"{result.out_dir}")


def cmd_explain(args: argparse.Namespace) -> None:
    print(run_explain_command(args.model, args.text, pair=args.pair, target=args.target,
                              method=args.method, steps=args.steps, out=args.out,
                              as_json=args.json, file=args.file, overwrite=args.overwrite))


def cmd_prune(args: argparse.Namespace) -> None:
    run_pruning(args.model, args.out, heads=args.heads, sparsity=args.sparsity, data=args.data,
                scope=args.scope, batch_size=args.batch_size, overwrite=args.overwrite)


def cmd_distill(args: argparse.Namespace) -> None:
    cfg = DistillConfig(teacher=args.teacher, train=args.train, dev=args.dev, test=args.test,
                        student_layers=args.student_layers, student_size=args.student_size,
                        temperature=args.temperature, alpha=args.alpha,
                        hidden_weight=args.hidden_weight, student_family=args.student)
    run_distillation(cfg, _training_config(args, epochs=3.0), overwrite=args.overwrite)


def cmd_export(args: argparse.Namespace) -> None:
    print(f"exporting {args.model} to ONNX (opset {args.opset}) and checking it in onnxruntime ...",
          flush=True)
    r = export_folder(args.model, args.out, opset=args.opset, atol=args.atol,
                      overwrite=args.overwrite)
    print(f"wrote {r.path} ({r.size_bytes / 1e6:.1f} MB): {r.architecture}, inputs input_ids, "
          f"attention_mask, token_type_ids (batch, sequence) -> {', '.join(r.outputs)}")
    print(f"onnxruntime agrees with PyTorch on probe batches of other shapes, with padding: "
          f"max abs diff {r.max_abs_diff:.1e} (atol {r.atol:g})")
    in_folder = os.path.abspath(r.path) == os.path.abspath(os.path.join(args.model, "model.onnx"))
    if in_folder and r.architecture.startswith(("BertForSeq", "BertForToken", "BertForQuestion")):
        print(f"use it: bertkit predict --model {args.model} --runtime onnx ...")


def cmd_quantize(args: argparse.Namespace) -> None:
    probe = f"examples of {args.data}" if args.data else "built-in texts"
    print(f"quantizing {args.model}: each layer measured alone on {args.probe_size} {probe} ...",
          flush=True)
    r = quantize_folder(args.model, args.out, data=args.data, max_drop=args.max_drop,
                        batch_size=args.batch_size, max_layer_error=args.max_layer_error,
                        keep_fp32=args.keep_fp32, probe_size=args.probe_size,
                        overwrite=args.overwrite)
    total = len(r.fp32_modules) + len(r.quantized_modules)
    print(f"int8: {len(r.quantized_modules)} of {total} layers; kept fp32 (output error > "
          f"{r.max_layer_error:g} alone, or asked): "
          + (", ".join(f"{n} ({r.layer_errors[n]:.3f})" if n in r.layer_errors else n
                       for n in r.fp32_modules) or "none"))
    worst = sorted(r.layer_errors.items(), key=lambda kv: -kv[1])[:3]
    if worst:
        print("largest errors of one layer alone: "
              + ", ".join(f"{name} ({error:.3f})" for name, error in worst))
    print(f"relative output error of the int8 model on the probe: {r.output_error:.4f}")
    s = r.scores
    if "metric" in s:
        print(f"{s['metric']} on {s['data']}: fp32 {s['fp32']:.2f}, int8 {s['int8']:.2f}, "
              f"delta {s['int8'] - s['fp32']:+.2f} points")
    print(f"wrote {args.out} (model.safetensors {s['int8_bytes'] / 1e6:.1f} MB vs "
          f"{s['fp32_bytes'] / 1e6:.1f} MB fp32, {s['fp32_bytes'] / s['int8_bytes']:.1f}x smaller; "
          f"quantize.json); it loads as int8 in bertkit only (CPU)")


def cmd_demo(args: argparse.Namespace) -> None:
    run_demo(out_dir=args.out, quick=args.quick, time_budget=args.time_budget,
             minilm=False if args.no_minilm else None, progress=not args.no_progress,
             overwrite=args.overwrite, keep_checkpoints=args.keep_checkpoints)


def add_training_args(p: argparse.ArgumentParser, *, lr: float | None, batch_size: int,
                      epochs: str, warmup_ratio: float) -> None:
    """The options every training command shares; they fill a TrainingConfig."""
    g = p.add_argument_group("training")
    g.add_argument("--out", required=True, help="output folder (model, logs, checkpoints)")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--epochs", type=float, help="stop after this many passes over the data "
                   f"(default {epochs} when neither --max-steps nor --time-budget is given)")
    g.add_argument("--time-budget", help="stop after this long, e.g. 10m, 90s, 1h30m; the "
                   "learning-rate schedule is planned to end at the budget")
    g.add_argument("--lr", type=float, default=lr,
                   help="peak learning rate (default " + (f"{lr})" if lr else "5e-5; translation "
                                                           "1e-3; --peft: 2e-3 lora and adalora, "
                                                           "1e-3 adapter and bitfit, 1e-2 prefix)"))
    g.add_argument("--batch-size", type=int, default=batch_size, help="examples per step and process")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--warmup-ratio", type=float, default=warmup_ratio,
                   help="fraction of the steps the learning rate warms up over")
    g.add_argument("--schedule", choices=["linear", "cosine", "constant", "inverse_sqrt"],
                   default="linear", help="learning-rate decay after warmup")
    g.add_argument("--weight-decay", type=float, default=0.01,
                   help="AdamW weight decay (not on biases and LayerNorm)")
    g.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: every epoch)")
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0: at the end)")
    g.add_argument("--keep-last", type=int, help="checkpoints to keep (default 2; --peft: 1, "
                   "so that a PEFT run's folder stays the size of its adapter)")
    g.add_argument("--log-every", type=int, default=10, help="log the training loss every N steps")
    g.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                   help="auto: bf16/fp16 on CUDA, fp32 on CPU")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--seed", type=int, default=42,
                   help="seeds data order, dropout, masking and new weights")
    g.add_argument("--resume", metavar="DIR", help="continue from a checkpoint or a run folder "
                   "(OUT, or OUT.partial where an interrupted run is kept)")
    g.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_retrieval_args(p: argparse.ArgumentParser) -> None:
    """The `finetune` options only `--task retrieval` reads."""
    g = p.add_argument_group("retrieval (--task retrieval)")
    g.add_argument("--pooling", choices=POOLING_MODES, default=None,
                   help="mean|cls|max (default: the model folder's; mean for a plain BERT folder)")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="unit-length vectors (default: the folder's)")
    g.add_argument("--scale", type=float, default=20.0,
                   help="ranking-loss scale on the cosines (1/temperature)")


def add_translation_args(p: argparse.ArgumentParser) -> None:
    """The `finetune` options only `--task translation` reads."""
    g = p.add_argument_group("translation (--task translation)")
    g.add_argument("--model-size", choices=["tiny", "small", "base", "big"], default="small",
                   help="a new model: tiny 2+2x64, small 3+3x256, base 6+6x512, big 6+6x1024")
    g.add_argument("--model-config", help="a config.json for a new model instead of --model-size")
    g.add_argument("--tokenizer", help="tokenizer folder for a new model (default: train one)")
    g.add_argument("--vocab-size", type=int, default=8000, help="size of a trained vocabulary")
    g.add_argument("--separate-vocab", action="store_true",
                   help="one vocabulary per side (default: one shared, tied embeddings)")
    g.add_argument("--lowercase", action="store_true", help="lowercase a trained vocabulary")
    g.add_argument("--max-source-length", type=int, default=128,
                   help="source tokens kept per example")
    g.add_argument("--max-target-length", type=int, default=128,
                   help="target tokens kept per example")
    g.add_argument("--num-beams", type=int, default=4, help="beam size for dev/test BLEU")
    g.add_argument("--length-penalty", type=float, default=0.6, help="GNMT alpha")
    g.add_argument("--label-smoothing", type=float, default=0.1,
                   help="label smoothing of the loss (the paper's 0.1)")
    g.add_argument("--dropout", type=float, help="dropout of a new model (default: the size's)")
    g.add_argument("--decoder-layers", type=int, help="decoder depth (BERT encoder: BERT's)")


def _training_config(args: argparse.Namespace, **overrides):
    default_epochs = overrides.pop("epochs", 1.0)
    keep_last = args.keep_last
    if keep_last is None:
        keep_last = 1 if getattr(args, "peft", None) else 2
    if args.max_steps is None and args.epochs is None and args.time_budget is None:
        args.epochs = default_epochs
    return TrainingConfig(
        out_dir=args.out, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_ratio=args.warmup_ratio, batch_size=args.batch_size, grad_accum_steps=args.grad_accum,
        max_steps=args.max_steps, epochs=args.epochs, time_budget=args.time_budget,
        eval_every=args.eval_every, save_every=args.save_every, keep_last=keep_last,
        log_every=args.log_every,
        mixed_precision=args.mixed_precision, device=args.device, seed=args.seed,
        progress_bar=not args.no_progress, **_regularisation_options(args), **overrides)


def _regularisation_options(args: argparse.Namespace) -> dict:
    """The TrainingConfig fields of add_regularisation_args (only finetune has them)."""
    names = ("adversarial", "adversarial_epsilon", "adversarial_steps", "adversarial_alpha",
             "layer_lr_decay")
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def add_regularisation_args(p: argparse.ArgumentParser) -> None:
    """Fine-tuning recipe options: adversarial training and layer-wise lr decay."""
    g = p.add_argument_group("regularisation")
    g.add_argument("--adversarial", choices=["fgm", "pgd"],
                   help="train on the clean loss and on word-embedding perturbations that raise "
                        "it most: fgm (one step, 2x the compute) or pgd (--adversarial-steps "
                        "projected steps, steps+1 x the compute)")
    g.add_argument("--adversarial-epsilon", type=float, default=1.0,
                   help="L2 radius of each example's perturbation")
    g.add_argument("--adversarial-steps", type=int, default=3, help="PGD ascent steps")
    g.add_argument("--adversarial-alpha", type=float,
                   help="PGD step size (default 2.5 x epsilon / steps)")
    g.add_argument("--layer-lr-decay", type=float,
                   help="multiply the lr by this per layer below the head (e.g. 0.9: the "
                        "embeddings learn least); default: one lr for all")


# ---------------------------------------------------------------------------- parser
def _add_runtime_argument(p: argparse.ArgumentParser,
                          help: str = "onnx: run MODEL/model.onnx (from `bertkit export`) in "
                                      "onnxruntime") -> None:
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch", help=help)


def _add_text_arguments(p: argparse.ArgumentParser) -> None:
    """TEXT arguments and --file: the inputs of embed, predict and translate (_read_texts)."""
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to run (or --file)")
    p.add_argument("--file", help="read texts from this file, one per line")


def _add_embed_command(commands) -> None:
    p = commands.add_parser("embed", help="sentence embeddings (mean-pooled), one JSON line per text",
                            description="Print one JSON line per text: its mean-pooled embedding.")
    p.add_argument("--model", required=True, help="HF model folder (config.json, weights, vocab.txt)")
    _add_text_arguments(p)
    p.add_argument("--normalize", action="store_true", help="scale embeddings to unit length")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.set_defaults(func=cmd_embed)


def _add_fill_mask_command(commands) -> None:
    p = commands.add_parser("fill-mask", help="top-k tokens for each [MASK] in a text",
                            description="Predict the [MASK] tokens of each text with a model that "
                                        "has a masked-language-model head.")
    p.add_argument("--model", required=True, help="HF folder of a BertForMaskedLM/BertForPreTraining")
    p.add_argument("texts", nargs="+", metavar="TEXT", help='e.g. "the [MASK] sat on the mat"')
    p.add_argument("--top-k", type=int, default=5, help="candidates per [MASK]")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=cmd_fill_mask)


def _add_train_tokenizer_command(commands) -> None:
    p = commands.add_parser("train-tokenizer", help="train a WordPiece (or --bpe byte-level BPE) vocab",
                            description="Train a BERT WordPiece vocabulary and write a tokenizer folder.")
    p.add_argument("--corpus", nargs="+", required=True,
                   help="text files, or 'default' for the built-in standard-library corpus")
    p.add_argument("--vocab-size", type=int, default=30522, help="largest vocabulary to train "
                   "(a small corpus gives fewer pieces)")
    p.add_argument("--min-frequency", type=int, default=2,
                   help="pieces seen fewer times are not kept")
    p.add_argument("--cased", action="store_true", help="keep case and accents")
    p.add_argument("--bpe", action="store_true", help="byte-level BPE (RoBERTa: vocab.json + "
                   "merges.txt, nothing unknown) instead of WordPiece")
    p.add_argument("--out", required=True, help="folder to write vocab.txt and tokenizer_config.json")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_train_tokenizer)


def _add_prepare_corpus_command(commands) -> None:
    p = commands.add_parser("prepare-corpus", help="tokenize text files into memory-mapped shards",
                            description="Tokenize a corpus into token shards (cached by a hash of "
                                        "the files and the tokenizer; `pretrain` calls this itself).")
    p.add_argument("--corpus", nargs="+", required=True, help="text files, or 'default'")
    p.add_argument("--tokenizer", required=True, help="tokenizer or model folder with vocab.txt")
    p.add_argument("--out", help="shard folder (default: the cache, keyed by the inputs)")
    p.set_defaults(func=cmd_prepare_corpus)


def _add_pretrain_command(commands) -> None:
    p = commands.add_parser("pretrain", help="pretrain BERT (MLM + NSP), RoBERTa or a GPT LM on raw text",
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
    p.add_argument("--max-seq-length", type=int, default=128,
                   help="tokens per example, special tokens included")
    p.add_argument("--no-nsp", action="store_true", help="full-sentence packing, MLM loss only")
    p.add_argument("--model-type", choices=["bert", "roberta", "gpt"], default="bert",
                   help="bert: WordPiece, MLM + NSP; roberta: byte-level BPE, MLM only, "
                        "dynamic masking, full-sentence packing (NSP off); gpt: a GPT-2 style "
                        "causal LM (next-token loss, documents packed into --max-seq-length "
                        "blocks, held-out perplexity vs a unigram model; byte-level BPE)")
    p.add_argument("--mask-prob", type=float, default=0.15,
                   help="fraction of tokens masked for MLM (BERT: 0.15)")
    p.add_argument("--whole-word-mask", action="store_true",
                   help="mask every piece of a chosen word together")
    p.add_argument("--short-seq-prob", type=float, default=0.1,
                   help="fraction of examples made shorter than --max-seq-length (BERT: 0.1)")
    add_training_args(p, lr=1e-3, batch_size=32, warmup_ratio=0.06, epochs="1")
    p.set_defaults(func=cmd_pretrain)


def add_augment_args(p: argparse.ArgumentParser, prefix: str) -> None:
    """The options of the augmentation methods (``prefix``: "augment-" in finetune)."""
    g = p.add_argument_group("augmentation (eda, synonym, mlm, backtranslate)")
    g.add_argument(f"--{prefix}n", dest="augment_n", type=int, default=1,
                   help="new examples per original and method")
    g.add_argument(f"--{prefix}alpha", dest="augment_alpha", type=float, default=0.1,
                   help="share of the words an operation changes")
    g.add_argument("--mlm-model", help="mlm: a folder with a masked-LM head (e.g. from "
                   "`bertkit pretrain`) whose top-k words replace masked words")
    g.add_argument("--mlm-top-k", type=int, default=10, help="mlm: candidates sampled from")
    g.add_argument("--backtranslate", metavar="TO_DIR,BACK_DIR",
                   help="backtranslate: two translation folders, to a pivot language and back")
    g.add_argument("--wordnet", metavar="DIR", help="eda/synonym: a WordNet database folder "
                   "(default /usr/share/wordnet, Debian's wordnet-base; without it eda only "
                   "swaps and deletes words)")


def _add_augment_command(commands) -> None:
    p = commands.add_parser("augment", help="new training examples that keep their labels",
                            description="Write a classification file's examples followed by "
                                        "augmented copies (EDA, WordNet synonyms, MLM "
                                        "replacement, back-translation); labels are kept.")
    p.add_argument("--in", dest="input", required=True, metavar="FILE",
                   help="a classification .csv/.tsv/.jsonl file (single texts)")
    p.add_argument("--out", required=True, help="the .jsonl file to write")
    p.add_argument("--method", required=True, help="comma-separated: eda, synonym, mlm, "
                   "backtranslate")
    p.add_argument("--seed", type=int, default=0, help="seeds the random choices")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_augment_args(p, prefix="")
    p.set_defaults(func=cmd_augment)


def _add_finetune_command(commands) -> None:
    p = commands.add_parser("finetune", help="fine-tune for a task: classification, NER, QA, "
                            "relation, retrieval, rerank, translation, summarization, dialogue", description="Fine-tune a BERT folder with a fresh "
                            "task head (or train a seq2seq Transformer for translation); keeps the "
                            "best checkpoint on dev and writes metrics.json.")
    p.add_argument("--task", required=True, help="what to fine-tune for",
                   choices=[*TASKS, "translation", "summarization", "dialogue"])
    p.add_argument("--model", help="HF BERT folder to start from (translation: optional; a "
                   "seq2seq folder continues it, a BERT folder initialises the encoder)")
    p.add_argument("--train", required=True, help="classification/regression: .csv/.tsv/.jsonl; "
                   "ner: CoNLL; qa: SQuAD .json; relation: .jsonl/.csv/.tsv with <e1>/<e2> "
                   "markers or e1/e2 spans; retrieval: .jsonl/.tsv query, positive[, negative]; "
                   "rerank: query, document, label; translation/summarization: .tsv/.jsonl or "
                   "source=F,target=F; dialogue: .jsonl conversations")
    p.add_argument("--dev", help="evaluated every epoch (or --eval-every steps)")
    p.add_argument("--test", help="evaluated once with the best model")
    p.add_argument("--max-length", type=int, help="tokens per input (default 128, QA 384)")
    p.add_argument("--doc-stride", type=int, default=TaskSettings.doc_stride,
                   help=f"QA: overlap of context windows (default {TaskSettings.doc_stride})")
    p.add_argument("--max-answer-length", type=int, default=TaskSettings.max_answer_length,
                   help=f"QA: longest answer in tokens (default {TaskSettings.max_answer_length})")
    p.add_argument("--patience", type=int, help="stop after N evaluations without improvement")
    p.add_argument("--metric", help="metric that picks the best checkpoint (default: the "
                   "task's: accuracy, pearson, f1, f1, relation macro_f1, mrr@10, bleu, rougeL)")
    p.add_argument("--seeds", help="run once per seed, e.g. 0,1,2, into OUT/seed-N and report "
                   "the median and IQR of every metric (seeds.json)")
    p.add_argument("--no-baseline", action="store_true", help="classification and regression: "
                   "skip the TF-IDF + linear-model baseline reported beside the model")
    add_training_args(p, lr=None, batch_size=32, warmup_ratio=0.1, epochs="3; translation 10")
    add_regularisation_args(p)
    p.add_argument("--augment", metavar="METHODS", help="add augmented copies of the training "
                   "examples (eda, synonym, mlm, backtranslate; comma-separated); dev and test "
                   "are never augmented")
    add_augment_args(p, prefix="augment-")
    g = p.add_argument_group("continual fine-tuning (--model a folder fine-tuned for the task: its "
                             "labels keep their ids, new labels are appended, the head grows)")
    g.add_argument("--replay", metavar="FILE", help="old training examples; a random sample is "
                   "mixed into the new ones")
    g.add_argument("--replay-ratio", type=float, default=0.2, help="the old examples' share of "
                   "the training set (default 0.2)")
    g.add_argument("--old-test", metavar="FILE", help="the old test set, scored before and after "
                   "(forgetting, in metrics.json and printed)")
    p.set_defaults(schedule=None)
    g = p.add_argument_group("parameter-efficient fine-tuning (the output folder holds only the "
                             "method's weights and the task head)")
    g.add_argument("--peft", choices=["lora", "adapter", "prefix", "adalora", "bitfit"],
                   help="train only this method's weights and the head (default: everything)")
    g.add_argument("--lora-r", type=int, help="LoRA rank (default 8; AdaLoRA: starting rank 12)")
    g.add_argument("--lora-alpha", type=float, help="LoRA scale numerator (default 16)")
    g.add_argument("--lora-dropout", type=float, help="default 0.1")
    g.add_argument("--lora-targets", help="comma-separated module name patterns (default: all "
                   f"six Linear layers of each block, {','.join(ALL_LINEAR)}: the measured best)")
    g.add_argument("--adapter-size", type=int, help="adapter bottleneck (default 64)")
    g.add_argument("--adapter-variant", choices=["houlsby", "pfeiffer"],
                   help="adapters after attention and FFN (houlsby) or after the FFN only "
                        "(pfeiffer; default houlsby)")
    g.add_argument("--prefix-length", type=int, help="prefix tokens per layer (default 20)")
    g.add_argument("--adalora-init-r", type=int, help="AdaLoRA starting rank (default 12)")
    g.add_argument("--adalora-target-r", type=int, help="AdaLoRA average final rank (default 8)")
    add_retrieval_args(p)
    add_translation_args(p)
    p.set_defaults(func=cmd_finetune)


def _add_evaluate_command(commands) -> None:
    p = commands.add_parser("evaluate", help="score a fine-tuned folder on a labelled file",
                            description="Print and write (MODEL/eval_NAME.json) the task's metrics.")
    p.add_argument("--model", required=True, help="a folder written by `bertkit finetune`")
    p.add_argument("--data", required=True, help="a labelled file in the training format")
    p.add_argument("--task", choices=list(TASKS), help="the task of a folder that records none, "
                   "e.g. retrieval for a sentence-transformers folder (zero-shot)")
    p.add_argument("--out", metavar="FILE", help="where to write the metrics (default "
                   "MODEL/eval_NAME.json)")
    _add_runtime_argument(p)
    p.set_defaults(func=cmd_evaluate)


def _add_predict_command(commands) -> None:
    p = commands.add_parser("predict", help="predict with a fine-tuned folder (JSON lines)",
                            description="Classification: label and probabilities; NER: entities "
                                        "with character spans; QA: answer, span and score.")
    p.add_argument("--model", required=True, help="a folder written by `bertkit finetune`")
    _add_text_arguments(p)
    p.add_argument("--pair", action="append", default=[], help="second text of a pair task "
                   "(once per TEXT)")
    p.add_argument("--question", action="append", default=[], help="QA: a question")
    p.add_argument("--context", action="append", default=[], help="QA: its context")
    _add_runtime_argument(p)
    p.set_defaults(func=cmd_predict)


def _add_translate_command(commands) -> None:
    p = commands.add_parser("translate", help="translate texts with a seq2seq model folder",
                            description="Translate each text with a folder written by "
                                        "`bertkit finetune --task translation` (beam search).")
    p.add_argument("--model", required=True, help="seq2seq model folder")
    _add_text_arguments(p)
    p.add_argument("--num-beams", type=int, help="beam size (default: the folder's, 4)")
    p.add_argument("--length-penalty", type=float, help="GNMT alpha (default: the folder's, 0.6)")
    p.add_argument("--max-length", type=int, help="most tokens to generate")
    p.add_argument("--n-best", type=int, default=1, help="hypotheses per text (<= beams)")
    p.add_argument("--batch-size", type=int, default=32, help="texts decoded together")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="JSON lines with scores")
    p.set_defaults(func=cmd_translate)


def _add_merge_lora_command(commands) -> None:
    p = commands.add_parser("merge-lora", help="fold a LoRA adapter into a full model folder",
                            description="Write a plain HF model folder with the LoRA update merged "
                                        "into the base weights, after checking on a probe batch "
                                        "that merged and unmerged outputs agree (1e-5).")
    p.add_argument("--adapter", required=True, help="a folder from `finetune --peft lora|adalora`")
    p.add_argument("--out", required=True, help="folder for the merged full model")
    p.add_argument("--base", help="the base model folder (default: the one the adapter names)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_merge_lora)


def _add_serve_command(commands) -> None:
    p = commands.add_parser("serve", help="serve a model folder over HTTP (FastAPI + uvicorn)",
                            description="Serve a model folder: POST /v1/predict (task folders), "
                                        "/v1/embed, /v1/fill-mask (MLM folders), /v1/explain "
                                        "(torch folders); GET /healthz, "
                                        "/readyz, /metrics (Prometheus), /docs (OpenAPI) and a "
                                        "try-it page at /. With API keys every /v1 route needs "
                                        "'Authorization: Bearer <key>'.")
    p.add_argument("--model", required=True, help="a fine-tuned, adapter, pretraining or "
                   "encoder folder")
    p.add_argument("--index", help="a search index folder (`bertkit index`): serves POST "
                   "/v1/search and a search box on the page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1; another address needs API keys or --insecure)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own copy "
                   "of the model and its own metrics (default 1)")
    _add_runtime_argument(p, help="engine for /v1/predict (onnx: an exported folder)")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--api-keys-file", help="file of API keys, one a line (also: "
                   "$BERTKIT_API_KEYS, comma-separated)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without API keys")
    g = p.add_argument_group("micro-batching (concurrent requests share a forward pass)")
    g.add_argument("--max-batch", type=int, default=32,
                   help="most texts in one forward pass (default 32)")
    g.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to join its batch "
                        "(default 5)")
    g.add_argument("--max-padding", type=float, default=0.25,
                   help="a forward pass groups texts of similar length, padding at most this "
                        "fraction of its tokens (default 0.25; 1: any lengths together)")
    g.add_argument("--no-batching", action="store_true", help="one forward pass per request")
    g = p.add_argument_group("request limits (bad requests get a 4xx JSON error)")
    g.add_argument("--max-texts", type=int, default=64, help="inputs per request (default 64)")
    g.add_argument("--max-chars", type=int, default=10_000,
                   help="characters per text (default 10000)")
    g.add_argument("--max-body-bytes", type=int, default=1_000_000,
                   help="bytes per request body (default 1000000)")
    g.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on shutdown "
                        "(default 30)")
    g.add_argument("--max-queued-tokens", type=int, default=65_536,
                   help="tokens of requests queued or running at once; more get 429 with "
                        "Retry-After (default 65536)")
    g.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a request may wait for the model before a 503 (default 30)")
    g = p.add_argument_group("explanations (POST /v1/explain)")
    g.add_argument("--explain-max-chars", type=int, default=ServeConfig.explain_max_chars,
                   help="characters per text to explain (default 2000; --max-chars if lower)")
    g.add_argument("--explain-max-steps", type=int, default=ServeConfig.explain_max_steps,
                   help="most Integrated Gradients steps a request may use (default 1024)")
    g.add_argument("--explain-max-queued", type=int, default=ServeConfig.explain_max_queued,
                   help="explanations waiting or running at once; more get 429 (default 4)")
    p.add_argument("--allowed-hosts", action="append", default=[], metavar="HOST",
                   help="a Host name to answer besides the bound address, localhost, 127.0.0.1 "
                        "and [::1] (repeat; '*': any)")
    _add_serve_scaling_arguments(p)
    p.set_defaults(func=cmd_serve)


def cmd_monitor(args: argparse.Namespace) -> None:
    result = run_monitor(MonitorConfig(
        model=args.model, input=args.input, out=args.out, text_field=args.text_field,
        time_field=args.time_field, window=args.window, alert=args.alert,
        alert_zscore=args.alert_zscore, baseline_windows=args.baseline_windows,
        min_count=args.min_count, examples=args.examples, webhook=args.webhook,
        batch_size=args.batch_size, follow=args.follow, idle_timeout=args.idle_timeout,
        device=args.device, overwrite=args.overwrite))
    print(f"{result.records} records, {len(result.windows)} windows, alerts: {result.alerts}"
          + (f"; shares.jsonl, alerts.jsonl, trend.png in {result.out}" if result.out else ""),
          file=sys.stderr)


def _add_monitor_command(commands) -> None:
    p = commands.add_parser("monitor", help="classify a JSONL stream, watch label shares, alert "
                                            "on surges",
                            description="Classify a stream of JSON lines (a file, a growing file "
                                        "with --follow, or - for stdin) with a classification "
                                        "folder; count each label per time window; alert once "
                                        "per episode when a label's share breaks the rule. "
                                        "Alerts go to stdout (JSON lines), alerts.jsonl and "
                                        "--webhook; windows to stderr and shares.jsonl.")
    p.add_argument("--model", required=True, help="a fine-tuned classification folder")
    p.add_argument("--input", required=True, help="a JSONL file, or - for stdin")
    p.add_argument("--out", help="folder for shares.jsonl, alerts.jsonl and trend.png (written "
                   "as OUT.partial while running, moved to OUT when the monitor stops)")
    p.add_argument("--text-field", default="text", help="the field holding the text "
                   "(default text)")
    p.add_argument("--time-field", help="the field holding the record's time (epoch seconds or "
                   "ISO 8601); default: the time a line arrives")
    p.add_argument("--window", default="1h", help="window length: 30s, 15m, 1h, 1d "
                   "(default 1h)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--alert", metavar="SPEC", help="alert when a label's share breaks a "
                      "bound: 'label=negative,share>0.4' (> >= < <=)")
    rule.add_argument("--alert-zscore", type=float, metavar="Z", help="alert when any label's "
                      "share is Z baseline standard deviations above its baseline")
    p.add_argument("--baseline-windows", type=int, default=24, help="windows the z-score "
                   "baseline holds (default 24)")
    p.add_argument("--min-count", type=int, default=10, help="records a window needs to be "
                   "judged (default 10)")
    p.add_argument("--examples", type=int, default=3, help="example texts in an alert "
                   "(default 3)")
    p.add_argument("--webhook", metavar="URL", help="POST each alert as JSON to this URL")
    p.add_argument("--batch-size", type=int, default=32, help="records classified at once "
                   "(default 32)")
    p.add_argument("--follow", action="store_true", help="keep reading a growing --input "
                   "file (until Ctrl-C or --idle-timeout)")
    p.add_argument("--idle-timeout", metavar="DURATION", help="with --follow: stop after this "
                   "long without a new line (e.g. 10m)")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_monitor)


def _add_serve_scaling_arguments(p: argparse.ArgumentParser) -> None:
    """serve's drift window and its Ray Serve replica options."""
    p.add_argument("--drift-window", type=int, default=ServeConfig.drift_window,
                   help="inputs the drift signals on /metrics average over (default 500)")
    g = p.add_argument_group("replicas on Ray Serve (pip install bertkit[ray])")
    g.add_argument("--ray", action="store_true", help="serve as an autoscaled Ray Serve "
                   "deployment (--workers does not apply)")
    g.add_argument("--ray-address", help="a running Ray cluster: auto, or HEAD:6379 (default: "
                   "start a local one)")
    g.add_argument("--min-replicas", type=int, default=RayOptions.min_replicas,
                   help="fewest replicas (default 1)")
    g.add_argument("--max-replicas", type=int, default=RayOptions.max_replicas,
                   help="most replicas (default 1)")
    g.add_argument("--target-ongoing-requests", type=float,
                   default=RayOptions.target_ongoing_requests,
                   help="requests in flight per replica the autoscaler aims at (default 4)")
    g.add_argument("--replica-cpus", type=float, default=RayOptions.replica_cpus,
                   help="CPUs reserved per replica, also its torch threads (default 1)")


def _add_index_command(commands) -> None:
    p = commands.add_parser("index", help="embed a corpus into a search index (faiss)",
                            description="Embed every document of a corpus (.txt: one per line; "
                                        ".jsonl: {\"id\"?, \"text\"} per line) with a model "
                                        "folder into an index folder: index.faiss, docs.jsonl, "
                                        "index.json. Resumable in chunks; --add appends.")
    p.add_argument("--model", help="the encoder (any BERT or sentence-transformers folder); "
                   "with --add: optional, must be the index's model")
    p.add_argument("--corpus", required=True, help=".txt (one document a line) or .jsonl")
    p.add_argument("--out", required=True, help="the index folder to write (with --add: to grow)")
    p.add_argument("--hnsw", action="store_true", help="approximate HNSW graph instead of exact "
                   "flat search (for large corpora)")
    p.add_argument("--ef-search", type=int, default=EF_SEARCH,
                   help="HNSW search beam stored with the index (wider: higher recall, slower)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                   help="documents embedded and saved at a time (what --resume keeps)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="OUT.partial",
                   help="continue an interrupted build from its last finished chunk")
    p.add_argument("--add", action="store_true", help="append the corpus to the existing "
                   "index --out (swapped in whole at the end)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)


def _add_search_command(commands) -> None:
    p = commands.add_parser("search", help="search an index built by `bertkit index`",
                            description="The documents nearest each query by cosine (the "
                                        "index's own model embeds the queries), optionally "
                                        "re-ranked by a cross-encoder.")
    p.add_argument("--index", required=True, help="an index folder from `bertkit index`")
    _add_text_arguments(p)
    p.add_argument("--top-k", type=int, default=10, help="documents per query")
    p.add_argument("--rerank", metavar="DIR", help="a cross-encoder folder (`bertkit finetune "
                   "--task rerank`) that re-scores the hits")
    p.add_argument("--candidates", type=int, help="hits the cross-encoder re-scores "
                   "(default --top-k)")
    p.add_argument("--model", help="the index's model at another path (default: the folder "
                   "named in index.json)")
    p.add_argument("--ef-search", type=int, help="HNSW search beam (default: the index's)")
    p.add_argument("--json", action="store_true", help="one JSON line {query, results} per query")
    p.set_defaults(func=cmd_search)


def _add_sampling_arguments(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    g = p.add_argument_group("decoding (greedy unless --do-sample)")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"most tokens to generate (default {max_new_tokens}; at most the "
                        "context left after the prompt)")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (default 0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus: the likeliest tokens up to this probability (default 1)")
    g.add_argument("--seed", type=int, help="makes sampling reproducible")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="CTRL's penalty on tokens already present (default 1: off)")


def _add_generate_command(commands) -> None:
    p = commands.add_parser("generate", help="continue a prompt with a GPT-2 folder",
                            description="Print the continuation of PROMPT by a decoder-only LM "
                                        "folder (`pretrain --model-type gpt`, or an HF gpt2 "
                                        "folder), as it is generated. Greedy by default.")
    p.add_argument("--model", required=True, help="GPT-2 model folder")
    p.add_argument("prompt", help="the text to continue")
    _add_sampling_arguments(p, DEFAULT_MAX_NEW_TOKENS)
    p.set_defaults(func=cmd_generate)


def _add_chat_command(commands) -> None:
    p = commands.add_parser("chat", help="chat in the terminal with a dialogue model",
                            description="An interactive loop: each line you type is a user turn; "
                                        "the folder's LM answers (streamed), the history is kept. "
                                        "/reset forgets it, /exit or Ctrl-D ends.")
    p.add_argument("--model", required=True, help="a folder from `finetune --task dialogue` (or any GPT-2 folder)")
    p.add_argument("--system", help="a system turn put before the conversation")
    _add_sampling_arguments(p, 64)
    p.set_defaults(func=cmd_chat)


def _add_summarize_command(commands) -> None:
    p = commands.add_parser("summarize", help="summarize text files with a summarization folder",
                            description="One summary per FILE (its whole text; - reads stdin) by a "
                                        "folder from `finetune --task summarization` (beam search).")
    p.add_argument("--model", required=True, help="summarization (seq2seq) folder")
    p.add_argument("files", nargs="+", help="text files to summarize")
    p.add_argument("--num-beams", type=int, help="beam size (default: the folder's)")
    p.add_argument("--max-length", type=int, help="most summary tokens")
    p.add_argument("--json", action="store_true", help="JSON lines with file and score")
    p.set_defaults(func=cmd_summarize)


def _add_explain_command(commands) -> None:
    p = commands.add_parser("explain", help="which words a prediction rests on (HTML report)",
                            description="Attribute a folder's prediction to the words of the text "
                                        "(Integrated Gradients, gradient x input, occlusion) or "
                                        "show attention rollout; print the top words for and "
                                        "against, and write a self-contained HTML page.")
    p.add_argument("--model", required=True, help="a fine-tuned folder (or an MLM / encoder folder)")
    p.add_argument("text", nargs="?", metavar="TEXT", help="the text to explain (QA: the question)")
    p.add_argument("--pair", help="second text of a pair task (QA: the context)")
    p.add_argument("--target", help="label / entity type / [MASK] token to explain "
                                    "(default: the prediction)")
    p.add_argument("--method", choices=METHODS, default="ig", help="attribution method")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help="Integrated Gradients path points (default: doubled from 32 until the "
                        "attributions add up to f(x) - f(baseline) within 2%%)")
    p.add_argument("--out", help="HTML report to write (with --file: a folder of pages + index.html)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the terminal view")
    p.add_argument("--file", help="explain every example of this file (one text per line, or "
                                  ".jsonl with text/text_pair or question/context)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_explain)


def _add_prune_command(commands) -> None:
    p = commands.add_parser("prune", help="prune attention heads or weights of a model folder",
                            description="Remove the least important attention heads (importance "
                            "on labelled --data, Michel et al. 2019; recorded as pruned_heads in "
                            "config.json) or zero the smallest encoder weights; with --data, "
                            "report the task metrics before and after.")
    p.add_argument("--model", required=True, help="HF BERT folder (fine-tuned, for --data)")
    p.add_argument("--out", required=True, help="folder for the pruned model and prune.json")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--heads", type=float, metavar="FRACTION",
                      help="fraction of attention heads to remove, in (0, 1); needs --data")
    mode.add_argument("--sparsity", type=float, metavar="FRACTION",
                      help="fraction of encoder Linear weights to zero, in (0, 1)")
    p.add_argument("--data", help="a labelled file of the folder's task: ranks heads and is "
                   "evaluated before and after")
    p.add_argument("--scope", choices=["global", "layer"], default="global",
                   help="--sparsity over all encoder weights at once, or per layer")
    p.add_argument("--batch-size", type=int, default=16, help="batch size for head importance")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_prune)


def _add_distill_command(commands) -> None:
    p = commands.add_parser("distill", help="distil a fine-tuned classifier into a smaller one",
                            description="Train a student on a teacher's soft targets (temperature) "
                            "and the hard labels; prints teacher vs student accuracy, size and "
                            "speed. The student folder is an ordinary fine-tuned folder.")
    p.add_argument("--teacher", required=True, help="a folder from `finetune --task classification`")
    p.add_argument("--train", required=True, help="training file (.csv/.tsv/.jsonl)")
    p.add_argument("--dev", required=True, help="evaluated every epoch; picks the best student")
    p.add_argument("--test", help="evaluated once at the end, for teacher and student")
    student = p.add_mutually_exclusive_group()
    student.add_argument("--student-layers", type=int, metavar="N",
                         help="keep N evenly spaced teacher layers (default: half)")
    student.add_argument("--student-size", choices=["tiny", "mini", "small"],
                         help="a fresh model of this size instead (not initialised from the teacher)")
    p.add_argument("--student", choices=["distilbert"],
                   help="write a DistilBERT-format student initialised from every other teacher "
                        "layer (as the DistilBERT paper does)")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="weight of the soft-target loss (1 - alpha: the hard labels)")
    p.add_argument("--hidden-weight", type=float, default=0.0,
                   help="weight of an MSE loss between mapped hidden states (0: off)")
    add_training_args(p, lr=1e-4, batch_size=32, warmup_ratio=0.1, epochs="3")
    p.set_defaults(func=cmd_distill)


def _add_export_command(commands) -> None:
    p = commands.add_parser("export", help="export a model folder to ONNX, checked in onnxruntime",
                            description="Write an ONNX graph (inputs input_ids, attention_mask, "
                            "token_type_ids; dynamic batch and sequence axes), run it in "
                            "onnxruntime on probe batches and refuse to keep it if it differs "
                            "from PyTorch by more than --atol.")
    p.add_argument("--model", required=True, help="HF model folder (encoder, MLM or fine-tuned)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="only onnx for now")
    p.add_argument("--out", help="the .onnx file (default MODEL/model.onnx, where "
                   "--runtime onnx looks)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 17-23 (default 18, "
                   "the exporter's own)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest max abs difference from PyTorch accepted (default 1e-4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_export)


def _add_quantize_command(commands) -> None:
    p = commands.add_parser("quantize", help="dynamic int8 quantization of a model folder (CPU)",
                            description="Store Linear weights (and embedding tables) as int8 per "
                            "channel and run the Linears as int8 GEMMs on the CPU. Each layer is "
                            "quantized alone on a probe batch; those that move the output by "
                            "more than --max-layer-error stay fp32. With --data the fp32 and "
                            "int8 models are scored on that file; --max-drop refuses to write "
                            "a model that loses more. The folder loads (as int8) in bertkit, "
                            "not in transformers.")
    p.add_argument("--model", required=True, help="an fp32 model folder (fine-tuned or not)")
    p.add_argument("--out", required=True, help="where the int8 folder is written")
    p.add_argument("--data", help="a labelled file of the folder's task: probe batch and scores")
    p.add_argument("--max-drop", type=float, help="refuse if int8 scores more than this many "
                   "points (accuracy / F1 / pearson x 100) below fp32 on --data")
    p.add_argument("--max-layer-error", type=float, default=0.05, help="relative output error "
                   "above which a layer stays fp32 (default 0.05)")
    p.add_argument("--keep-fp32", action="append", default=[], metavar="NAME",
                   help="an HF module name to keep fp32 regardless (repeatable)")
    p.add_argument("--probe-size", type=int, default=16, help="examples in the probe batch")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_quantize)


def _add_demo_command(commands) -> None:
    p = commands.add_parser("demo", help="the whole pipeline on built-in data, no downloads",
                            description="Train a tokenizer and pretrain a tiny BERT on the Python "
                            "standard library's documentation, fine-tune it to tell which module "
                            "family a docstring comes from, search held-out docstrings before "
                            "and after retrieval fine-tuning, and show predictions (about 12 "
                            "minutes: 9 of training by its time budget plus 1.5 of retrieval "
                            "fine-tuning; --quick: a few minutes).")
    p.add_argument("--out", default="bertkit-demo", help="where everything is written")
    p.add_argument("--quick", action="store_true", help="a short run (CI)")
    p.add_argument("--time-budget", help="total training time, e.g. 10m (default 9m)")
    p.add_argument("--no-minilm", action="store_true",
                   help="skip fine-tuning the real all-MiniLM-L6-v2 weights even if installed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints/ "
                   "(optimizer state, to resume); by default only the models are kept")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it is not "
                   "an earlier demo's folder")
    p.set_defaults(func=cmd_demo)


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it (some
    defaults depend on other options, e.g. --lr on --task and --peft)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, [], argparse.SUPPRESS)
        if shown and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertkit",
        description="BERT and the Transformer from scratch: tokenizer, pretraining, fine-tuning, "
                    "inference. Every model folder is a Hugging Face folder.")
    parser.add_argument("--version", action="version", version=f"bertkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in (_add_embed_command,
                        _add_fill_mask_command,
                        _add_train_tokenizer_command,
                        _add_prepare_corpus_command,
                        _add_pretrain_command,
                        _add_finetune_command,
                        _add_augment_command,
                        _add_evaluate_command,
                        _add_predict_command,
                        _add_translate_command,
                        _add_merge_lora_command,
                        _add_serve_command,
                        _add_monitor_command,
                        _add_index_command,
                        _add_search_command,
                        _add_explain_command,
                        _add_prune_command,
                        _add_distill_command,
                        _add_export_command,
                        _add_quantize_command,
                        _add_generate_command,
                        _add_chat_command,
                        _add_summarize_command,
                        _add_demo_command):
        add_command(commands)
    for command in commands.choices.values():
        command.formatter_class = _HelpWithDefaults
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as the user should see them: one line, no source location."""
    return f"bertkit: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # bad input: one line; a bug keeps its traceback
        print(f"bertkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bertkit {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():  # a torchrun job joined a group
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
