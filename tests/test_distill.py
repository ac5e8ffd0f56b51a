"""Distillation: the loss, the student's initialisation, and a student with half the teacher's
layers keeping >= 95% of its accuracy on a task made here."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
import torch.nn.functional as F

from bertkit import BertConfig, BertForSequenceClassification, BertModel, Tokenizer
from bertkit.cli import main
from bertkit.compress.distill import (DistillConfig, Distiller, distillation_loss, make_student,
                                      run_distillation, teacher_layer_map)
from bertkit.compress.prune import prune_heads
from bertkit.tasks.evaluate import evaluate_folder
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from bertkit.training.trainer import TrainingConfig

from conftest import TINY, TINY_VOCAB

# The task: which of three keywords a string of filler words holds.
KEYWORDS = {"hello": "greeting", "cafe": "place", "world": "planet"}
FILLER = ["a", "b", "c", "d", "e", "the", "x", "y", "z", "1", "2", "3"]


def _write_task(path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
            keyword = rng.choice(list(KEYWORDS))
            words.insert(rng.randrange(len(words) + 1), keyword)
            f.write(json.dumps({"text": " ".join(words), "label": KEYWORDS[keyword]}) + "\n")
    return str(path)


def _quiet(out_dir, **overrides) -> TrainingConfig:
    settings = dict(out_dir=str(out_dir), lr=1e-3, batch_size=16, epochs=6, warmup_ratio=0.1,
                    progress_bar=False, tensorboard=False, plot=False, save_every=0,
                    log_every=100, seed=0)
    settings.update(overrides)
    return TrainingConfig(**settings)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_vocab_folder):
    """(teacher folder, train, dev): a 4-layer tiny BERT fine-tuned on the keyword task."""
    root = tmp_path_factory.mktemp("distill")
    train = _write_task(root / "train.jsonl", 240, 0)
    dev = _write_task(root / "dev.jsonl", 60, 1)
    torch.manual_seed(0)
    base = root / "base"
    config = BertConfig(**{**TINY, "vocab_size": len(TINY_VOCAB), "num_hidden_layers": 4,
                           "hidden_dropout_prob": 0.0})
    BertModel(config).save_pretrained(base)
    Tokenizer.from_pretrained(tiny_vocab_folder).save_pretrained(base)
    result = run_finetuning(FinetuneConfig("classification", str(base), train, dev),
                            _quiet(root / "teacher"))
    assert result.metrics["dev"]["accuracy"] >= 0.9, "the teacher must learn the task"
    return str(root / "teacher"), train, dev


def test_distillation_loss_is_soft_kl_times_t2_plus_hard_ce():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)                  # (B, C)
    labels = torch.tensor([0, 1, 2, 1, 0])
    t = 3.0
    p = F.softmax(teacher / t, -1)
    kl = (p * (p.log() - F.log_softmax(student / t, -1))).sum(-1).mean()
    ce = F.cross_entropy(student, labels)
    torch.testing.assert_close(distillation_loss(student, teacher, labels, t, 1.0), kl * t * t)
    torch.testing.assert_close(distillation_loss(student, teacher, labels, t, 0.0), ce)
    torch.testing.assert_close(distillation_loss(student, teacher, labels, t, 0.3),
                               0.3 * kl * t * t + 0.7 * ce)
    assert float(distillation_loss(teacher, teacher, None, t, 0.5)) == pytest.approx(0, abs=1e-6)


def test_student_takes_evenly_spaced_teacher_layers_ending_at_the_top():
    assert teacher_layer_map(6, 3) == [1, 3, 5]
    assert teacher_layer_map(4, 2) == [1, 3]
    assert teacher_layer_map(12, 4) == [2, 5, 8, 11]
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(**{**TINY, "num_hidden_layers": 4},
                                                       id2label={0: "a", 1: "b"}))
    prune_heads(teacher, {3: [0], 2: [1]})
    student, layer_map = make_student(teacher, student_layers=2)
    assert layer_map == [1, 3] and student.config.num_hidden_layers == 2
    assert student.config.pruned_heads == {1: [0]}  # teacher layer 3's pruning came along
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, value in s_state.items():
        source = key
        if ".layers." in key:
            j = int(key.split(".layers.")[1].split(".")[0])
            source = key.replace(f".layers.{j}.", f".layers.{layer_map[j]}.")
        assert torch.equal(value, t_state[source]), key
    with pytest.raises(ValueError, match="between 1 and 3"):
        make_student(teacher, student_layers=4)
    fresh, _ = make_student(teacher, student_size="mini")
    assert (fresh.config.hidden_size, fresh.config.num_hidden_layers) == (256, 4)
    assert fresh.config.id2label == teacher.config.id2label
    with pytest.raises(ValueError, match="hidden size"):
        Distiller(fresh, teacher, 2.0, 0.5, hidden_weight=1.0, layer_map=[0, 1, 2, 3])


def test_distiller_trains_only_the_student_with_teacher_in_eval_mode():
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(**{**TINY, "num_hidden_layers": 4},
                                                       id2label={0: "a", 1: "b"}))
    student, layer_map = make_student(teacher, student_layers=2)
    distiller = Distiller(student, teacher, 2.0, 0.5, hidden_weight=1.0, layer_map=layer_map).train()
    assert not teacher.training and student.training
    ids = torch.randint(5, 99, (3, 7))
    out = distiller(ids, torch.ones_like(ids), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_student_with_half_the_layers_keeps_95_percent_of_the_teacher(task, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    teacher, train, dev = task
    out = tmp_path / "student"
    report = run_distillation(DistillConfig(teacher, train, dev, test=dev, student_layers=2),
                              _quiet(out))
    t, s = report["teacher_stats"], report["student_stats"]
    assert (t["layers"], s["layers"]) == (4, 2)
    assert s["dev_accuracy"] >= 0.95 * t["dev_accuracy"], report
    assert s["parameters"] < t["parameters"] and s["bytes_on_disk"] < t["bytes_on_disk"]
    assert s["tokens_per_s_dev"] > 0 and t["tokens_per_s_dev"] > 0
    printed = capsys.readouterr().out
    assert "dev accuracy" in printed and "of teacher" in printed and "tokens/s (dev)" in printed

    # The student folder is an ordinary fine-tuned folder: bertkit evaluate and transformers.
    metrics = evaluate_folder(str(out), dev)
    assert metrics["accuracy"] == pytest.approx(s["dev_accuracy"])
    assert json.loads((out / "metrics.json").read_text())["dev"]["accuracy"] == \
        pytest.approx(s["dev_accuracy"])
    ours = BertForSequenceClassification.from_pretrained(out)
    theirs = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    ids = torch.randint(5, len(TINY_VOCAB), (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, ours(ids).logits,
                                   atol=1e-5, rtol=0)


def test_cli_distill_fresh_student_and_bad_input(task, tmp_path, tiny_vocab_folder, capsys):
    teacher, train, dev = task
    out = tmp_path / "fresh"
    assert main(["distill", "--teacher", teacher, "--train", train, "--dev", dev, "--out",
                 str(out), "--student-size", "tiny", "--max-steps", "3", "--no-progress"]) == 0
    assert "fresh tiny model" in capsys.readouterr().out
    assert BertConfig.from_pretrained(out).hidden_size == 128

    base = tmp_path / "base"
    BertModel(BertConfig(**{**TINY, "vocab_size": len(TINY_VOCAB)})).save_pretrained(base)
    Tokenizer.from_pretrained(tiny_vocab_folder).save_pretrained(base)
    ner = tmp_path / "ner"
    config = BertConfig(**{**TINY, "vocab_size": len(TINY_VOCAB)}, id2label={0: "O", 1: "B-X"},
                        extra={"bertkit_task": "ner"})
    from bertkit import BertForTokenClassification
    BertForTokenClassification(config).save_pretrained(ner)
    cases = [(["--teacher", str(base)], "not a fine-tuned task model"),
             (["--teacher", str(ner)], "classification teachers only"),
             (["--teacher", teacher, "--student-layers", "4"], "between 1 and 3"),
             (["--teacher", teacher, "--alpha", "1.5"], r"alpha .* must be in \[0, 1\]")]
    for args, message in cases:
        code = main(["distill", *args, "--train", train, "--dev", dev, "--out",
                     str(tmp_path / "bad"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("bertkit distill: error:"), err
        assert re.search(message, err), err
    with pytest.raises(SystemExit):
        main(["distill", "--teacher", teacher, "--train", train, "--dev", dev, "--out", "x",
              "--student-layers", "2", "--student-size", "mini"])
