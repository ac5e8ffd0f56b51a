"""Summarization with the encoder-decoder: ``finetune --task summarization`` and ``summarize``.

Why this lives beside translation and not in :mod:`bertkit.tasks`: the task layer's
:class:`~bertkit.tasks.base.Task` is an encoder with a head (a BertConfig, one forward pass,
per-item arrays); a summary is *generated*, token by token, by a
:class:`~bertkit.modeling.seq2seq.TransformerSeq2Seq`. Translation is that same recipe
(:mod:`bertkit.training.translation`: parallel data, tokenizers, BERT-initialised encoder,
Trainer with the best checkpoint by a decoded dev score, a seq2seq folder), so summarization is
translation's run with ``task="summarization"``: ROUGE-1/2/L (the ``rouge-score`` library) in
place of BLEU, the decoder warm-started from BERT as well (BERT2BERT, Rothe et al., 2020:
cross-attention is the only new part), and the lead-sentence baseline scored beside the model.

Data: JSONL ``{"source": document, "target": summary}`` (or .tsv); the docstring set of
:mod:`bertkit.data.summarization` is one made on the machine.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence, TextIO

from bertkit.data.summarization import lead_sentence
from bertkit.training.trainer import TrainingConfig
from bertkit.training.translation import (TranslationConfig, TranslationResult, corpus_rouge,
                                          load_parallel_spec, run_translation, translate_folder)

TASK = "summarization"
# Decoding and lengths that fit one-sentence summaries of paragraph-long documents.
DEFAULTS: dict[str, Any] = dict(task=TASK, metric="rougeL", max_source_length=256,
                                max_target_length=64, num_beams=4, length_penalty=1.0,
                                label_smoothing=0.1)


def summarization_config(train: str, dev: str | None = None, test: str | None = None,
                         model: str | None = None, **options: Any) -> TranslationConfig:
    """The run's settings: :class:`~bertkit.training.translation.TranslationConfig` with the
    summarization defaults (ROUGE-L selects the best checkpoint; sources 256 tokens, summaries
    64; 4 beams). With a BERT folder as ``model`` both stacks start from it (BERT2BERT) unless
    ``warm_start_decoder=False``."""
    values = {**DEFAULTS, "warm_start_decoder": model is not None, **options}
    if values["task"] != TASK:
        raise ValueError(f"summarization_config: task must be {TASK!r}, got {values['task']!r}")
    return TranslationConfig(train=train, dev=dev, test=test, model=model, **values)


def lead_baseline(data: str) -> dict[str, float]:
    """ROUGE-1/2/L of the lead-sentence baseline (each document's first sentence as its
    summary) on a data file."""
    examples = load_parallel_spec(data)
    return corpus_rouge([lead_sentence(ex.source) for ex in examples],
                        [ex.target for ex in examples])


def run_summarization(cfg: TranslationConfig, training: TrainingConfig,
                      resume_from: str | None = None, overwrite: bool = False) -> TranslationResult:
    """Train a summarizer (the translation run recipe, ROUGE as its metric) and write the
    seq2seq folder; ``result.metrics[split]["lead_baseline"]`` holds the baseline's ROUGE on the
    same split (also in the folder's ``metrics.json``)."""
    if cfg.task != TASK:
        raise ValueError(f"run_summarization needs task={TASK!r} (see summarization_config), got "
                         f"{cfg.task!r}")
    result = run_translation(cfg, training, resume_from=resume_from, overwrite=overwrite)
    for name, path in (("dev", cfg.dev), ("test", cfg.test)):
        if path and name in result.metrics:
            baseline = result.metrics[name]["lead_baseline"]
            model = result.metrics[name]
            print(f"{name}: lead-sentence baseline ROUGE-1 {baseline['rouge1']:.2f}, ROUGE-2 "
                  f"{baseline['rouge2']:.2f}, ROUGE-L {baseline['rougeL']:.2f} (model ROUGE-L "
                  f"{model['rougeL'] - baseline['rougeL']:+.2f} over it)")
    return result


def summarize(model_dir: str, texts: Sequence[str], num_beams: int | None = None,
              max_length: int | None = None, batch_size: int = 32,
              device: str | None = None) -> list[dict]:
    """Summaries of ``texts`` by a summarization folder: one ``{"source", "summary",
    "score"}`` per text, in order (beam search as the folder says; see
    :func:`~bertkit.training.translation.translate_folder` for the options)."""
    outputs = translate_folder(model_dir, texts, num_beams=num_beams, max_length=max_length,
                               batch_size=batch_size, device=device)
    return [{"source": o["source"], "summary": o["translation"], "score": o["score"]}
            for o in outputs]


def summarize_command(model_dir: str, files: Sequence[str], num_beams: int | None = None,
                      max_length: int | None = None, as_json: bool = False,
                      out: TextIO | None = None) -> list[dict]:
    """``bertkit summarize --model DIR FILE...``: one summary per file (its whole text; ``-``
    reads stdin), printed as a line each (or JSON lines with ``as_json``)."""
    out = out or sys.stdout
    texts = []
    for path in files:
        if path == "-":
            texts.append(sys.stdin.read())
            continue
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
        if not texts[-1].strip():
            raise ValueError(f"{path} is empty: there is nothing to summarize")
    results = summarize(model_dir, [" ".join(t.split()) for t in texts], num_beams, max_length)
    for path, result in zip(files, results):
        out.write((json.dumps({"file": path, **result}, ensure_ascii=False) if as_json
                   else result["summary"]) + "\n")
    return results
