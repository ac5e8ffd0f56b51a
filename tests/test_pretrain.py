"""End-to-end pretraining: `bertkit pretrain` on the default corpus learns, its folder is an HF
BertForPreTraining folder, a stopped and resumed run equals a straight one, and torchrun works."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.cli import main as cli
from bertkit.data.corpus import default_pretraining_corpus


@pytest.fixture(scope="module")
def corpus_and_vocab(tmp_path_factory):
    """The default corpus and a small vocab trained on it once for the module."""
    corpus = str(default_pretraining_corpus())
    folder = tmp_path_factory.mktemp("vocab")
    Tokenizer.train(corpus, vocab_size=2000, show_progress=False).save_pretrained(folder)
    return corpus, str(folder)


def small_config(tmp_path, vocab_size, hidden=64, layers=2) -> str:
    path = tmp_path / "config.json"
    BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
               num_attention_heads=2, intermediate_size=4 * hidden,
               max_position_embeddings=64).save_pretrained(tmp_path)
    return str(path)


def eval_events(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [e for e in map(json.loads, f) if e.get("event") == "eval"]


def test_pretraining_learns_beyond_the_unigram_baseline(tmp_path, corpus_and_vocab, capsys):
    corpus, vocab = corpus_and_vocab
    out = tmp_path / "run"
    rc = cli(["pretrain", "--corpus", corpus, "--tokenizer", vocab, "--out", str(out),
              "--config", small_config(tmp_path, 2000, hidden=128), "--max-seq-length", "64",
              "--batch-size", "32", "--lr", "1e-3", "--max-steps", "300", "--eval-every", "100",
              "--save-every", "0", "--no-progress"])
    assert rc == 0
    evals = eval_events(out)
    assert [e["step"] for e in evals] == [100, 200, 300]
    last = evals[-1]
    # Always guessing the corpus's most frequent token scores the baseline; a model that learned
    # from context must beat it clearly.
    baseline = last["mlm_unigram_baseline"]
    assert last["mlm_accuracy"] > max(1.5 * baseline, baseline + 0.03), last
    assert evals[0]["mlm_loss"] > last["mlm_loss"]
    with open(out / "metrics.jsonl") as f:
        train_losses = [e["loss"] for e in map(json.loads, f) if e.get("event") == "train"]
    assert sum(train_losses[-5:]) / 5 < sum(train_losses[:5]) / 5  # the curve goes down
    assert (out / "curves.png").stat().st_size > 1000
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 300 and summary["heldout"]["mlm_accuracy"] == last["mlm_accuracy"]
    printed = capsys.readouterr().out
    assert "held-out MLM accuracy" in printed and "unigram baseline" in printed

    # The folder is an HF BertForPreTraining folder: fill-mask works on it ...
    assert cli(["fill-mask", "--model", str(out), "--top-k", "3", "--json",
                "return the [MASK] of the object"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert len(result["candidates"]) == 3
    assert sum(c["score"] for c in result["candidates"]) <= 1.0 + 1e-6
    # ... and transformers loads it with no missing or unexpected keys and the same logits.
    transformers = pytest.importorskip("transformers")
    theirs, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = BertForPreTraining.from_pretrained(out, verbose=False)
    batch = Tokenizer.from_pretrained(out)(["the module returns a list", "of strings"])
    with torch.no_grad():
        a, b = ours(**batch), theirs.eval()(**batch)
    real = batch["attention_mask"].bool()  # padding positions: unused out (unpadded path)
    assert torch.allclose(a.prediction_logits[real], b.prediction_logits[real], atol=1e-4)
    assert torch.allclose(a.seq_relationship_logits, b.seq_relationship_logits, atol=1e-5)


def run_pretrain(out, corpus, vocab, config, *extra):
    return cli(["pretrain", "--corpus", corpus, "--tokenizer", vocab, "--out", str(out),
                "--config", config, "--max-seq-length", "32", "--batch-size", "8",
                "--eval-every", "4", "--log-every", "1", "--no-progress", *extra])


def test_resume_logs_the_same_losses_as_a_straight_run(tmp_path, corpus_and_vocab):
    corpus, vocab = corpus_and_vocab
    config = small_config(tmp_path, 2000, hidden=32)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_pretrain(straight, corpus, vocab, config, "--max-steps", "8", "--save-every", "0") == 0
    # The same 8-step run killed after its step-4 checkpoint, then resumed from it.
    assert run_pretrain(resumed, corpus, vocab, config, "--max-steps", "8", "--save-every", "4") == 0
    import shutil
    shutil.rmtree(resumed / "checkpoints" / "step-8")
    (resumed / "model.safetensors").unlink()
    assert run_pretrain(resumed, corpus, vocab, config, "--max-steps", "8", "--save-every", "4",
                        "--resume", str(resumed / "checkpoints" / "step-4")) == 0

    def losses(folder):
        with open(folder / "metrics.jsonl") as f:
            return [(e["step"], e.get("loss", e.get("mlm_loss"))) for e in map(json.loads, f)
                    if e.get("event") in ("train", "eval")]

    expected, got = losses(straight), losses(resumed)
    assert [step for step, _ in got] == [step for step, _ in expected] == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], abs=1e-6)
    a = BertForPreTraining.from_pretrained(straight, verbose=False).state_dict()
    b = BertForPreTraining.from_pretrained(resumed, verbose=False).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_pretrain_rejects_bad_input(tmp_path, corpus_and_vocab, capsys):
    corpus, vocab = corpus_and_vocab
    assert cli(["pretrain", "--corpus", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.txt does not exist" in capsys.readouterr().err
    config = small_config(tmp_path, 50)  # smaller than the vocab
    assert run_pretrain(tmp_path / "o", corpus, vocab, config, "--max-steps", "1") == 2
    assert "vocab_size 50 is smaller than the tokenizer's 2000" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes(tmp_path, corpus_and_vocab):
    """`torchrun --nproc_per_node 2 -m bertkit pretrain`: gloo on CPU, rank 0 writes, the
    result is a loadable folder whose weights carry no wrapper prefix."""
    corpus, vocab = corpus_and_vocab
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "bertkit",
         "pretrain", "--corpus", corpus, "--tokenizer", vocab, "--out", str(out),
         "--config", small_config(tmp_path, 2000, hidden=32), "--max-seq-length", "32",
         "--batch-size", "8", "--max-steps", "6", "--eval-every", "3", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = next(e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                 if e.get("event") == "start")
    assert start["world_size"] == 2
    from safetensors import safe_open
    with safe_open(out / "model.safetensors", "pt") as f:
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in f.keys())
    BertForPreTraining.from_pretrained(out, verbose=False)
    assert len(eval_events(out)) == 2
