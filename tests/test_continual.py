"""Continual fine-tuning (issue 17): a fine-tuned classification folder goes on training on new
data. Old label ids stay, new labels are appended, the head grows with its old rows copied
(checked against the old folder's weights), replay mixes old examples in, and the old test
set is scored before and after (checked against evaluate_folder on both folders); a folder of
another task, a label spelled differently, an old test label the model does not know -> one
line, files untouched, nothing written."""

import contextlib
import hashlib
import io
import json
import os

import pytest
import torch

from bertkit import BertConfig, Tokenizer
from bertkit.checkpoint import read_state_dict
from bertkit.data.tasks import LabelMap
from bertkit.modeling.bert import BertForTokenClassification
from bertkit.tasks import get_task
from bertkit.tasks.evaluate import evaluate_folder
from bertkit.training.continual import build_head
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from tests.test_finetune import (VOCAB, classification_records, tiny_model_folder, training,
                                 write_jsonl)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def records(n, seed, labels):
    return [r for r in classification_records(4 * n, seed) if r["label"] in labels][:n]


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A folder fine-tuned on neg/pos, and the files of the old and the new task."""
    root = tmp_path_factory.mktemp("continual")
    files = {
        "old_train": write_jsonl(root / "old_train.jsonl", records(160, 0, ("neg", "pos"))),
        "old_test": write_jsonl(root / "old_test.jsonl", records(60, 1, ("neg", "pos"))),
        # the new data: a new class, and one old class
        "new_train": write_jsonl(root / "new_train.jsonl", records(160, 2, ("neutral", "pos"))),
        "new_test": write_jsonl(root / "new_test.jsonl", records(60, 3, ("neutral", "pos"))),
    }
    cfg = FinetuneConfig("classification", tiny_model_folder(root / "base"), files["old_train"])
    result = run_finetuning(cfg, training(root / "old", epochs=10))
    return root, result.out_dir, files


def continue_run(root, old_folder, files, name, epochs=6, **kw):
    cfg = FinetuneConfig("classification", old_folder, files["new_train"],
                         test=files["new_test"], old_test=files["old_test"], **kw)
    return run_finetuning(cfg, training(root / name, epochs=epochs))


@pytest.fixture(scope="module")
def plain_run(old_run):
    """The old folder continued on the new data without replay, and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = continue_run(*old_run, "plain", epochs=8)
    return result, printed.getvalue()


def test_old_label_ids_stay_and_new_labels_are_appended(old_run, plain_run):
    _, old_folder, _ = old_run
    assert json.load(open(f"{old_folder}/config.json"))["id2label"] == {"0": "neg", "1": "pos"}
    result, printed = plain_run
    config = json.load(open(f"{result.out_dir}/config.json"))
    # "neutral" sorts between the two, yet takes the next id: the old ids never move
    assert config["id2label"] == {"0": "neg", "1": "pos", "2": "neutral"}
    assert result.labels == ["neg", "pos", "neutral"]
    assert result.metrics["test"]["accuracy"] > 0.9  # the new task is learned
    assert "its 2 labels keep their ids; new: neutral" in printed
    assert "old test set old_test.jsonl: accuracy" in printed


def test_forgetting_before_and_after_equal_evaluating_both_folders(old_run, plain_run):
    _, old_folder, files = old_run
    result = plain_run[0]
    saved = json.load(open(f"{result.out_dir}/metrics.json"))["old_test"]
    before = evaluate_folder(old_folder, files["old_test"])
    after = evaluate_folder(result.out_dir, files["old_test"])
    assert saved["before"]["accuracy"] == pytest.approx(before["accuracy"])
    assert saved["accuracy"] == pytest.approx(after["accuracy"])
    assert saved["forgetting"]["accuracy"] == pytest.approx(before["accuracy"]
                                                            - after["accuracy"])
    assert before["accuracy"] > 0.9
    assert "old test set old_test.jsonl: accuracy" in open(f"{result.out_dir}/report.txt").read()


def test_replay_mixes_old_examples_in_and_keeps_the_old_class(old_run, plain_run, capsys):
    root, old_folder, files = old_run
    plain = plain_run[0]
    replayed = continue_run(root, old_folder, files, "replay", epochs=8,
                            replay=files["old_train"], replay_ratio=0.3)
    assert "replay: 69 old examples of" in capsys.readouterr().out  # 160 * 0.3 / 0.7
    summary = json.load(open(f"{replayed.out_dir}/finetune.json"))
    assert summary["finetune_config"]["replay_ratio"] == 0.3
    assert summary["steps"] == 8 * -(-(160 + 69) // 16)  # the replayed examples are trained on
    # without replay "neg" is never seen again and is forgotten; with it, it is kept
    assert plain.metrics["old_test"]["report"]["neg"]["recall"] < 0.5
    assert replayed.metrics["old_test"]["report"]["neg"]["recall"] > 0.8


def test_the_grown_head_copies_the_old_rows(old_run):
    _, old_folder, _ = old_run
    old = read_state_dict(old_folder)
    torch.manual_seed(0)
    labels = LabelMap(("neg", "pos", "neutral", "other"))
    model = build_head(get_task("classification"), old_folder, labels,
                       LabelMap(("neg", "pos")), verbose=False)
    weight, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    assert weight.shape == (4, 32) and model.config.id2label[3] == "other"
    assert torch.equal(weight[:2], old["classifier.weight"])
    assert torch.equal(bias[:2], old["classifier.bias"])
    assert torch.equal(bias[2:], torch.zeros(2)) and 0 < float(weight[2:].std()) < 0.1


def test_bad_continual_runs_are_one_line_and_touch_nothing(old_run, tmp_path):
    root, old_folder, files = old_run
    # an NER folder given classification data
    ner = tmp_path / "ner"
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64,
                        id2label={0: "O", 1: "B-PER"})
    config.extra["bertkit_task"] = "ner"
    BertForTokenClassification(config).save_pretrained(ner)
    Tokenizer.from_vocab(VOCAB).save_pretrained(ner)
    cases = [
        (dict(model=str(ner)), rf"{ner} is a fine-tuned ner model \(config.json\); it continues "
                               r"with --task ner, or fine-tune classification from a base"),
        (dict(train=write_jsonl(tmp_path / "cased.jsonl", [{"text": "great", "label": "pos"},
                                                          {"text": "fine", "label": "Pos "}])),
         r"cased.jsonl:2: label 'Pos' conflicts with the model's label 'pos'"),
        (dict(old_test=write_jsonl(tmp_path / "unknown.jsonl",
                                   [{"text": "okay", "label": "neutral"}])),
         r"unknown.jsonl:1: label 'neutral' is not one of the model's labels \(.*: neg, pos\)"),
        (dict(model=str(root / "base")), r"--old-test needs --model to be a folder fine-tuned "),
    ]
    for change, message in cases:
        options = {"model": old_folder, "train": files["new_train"], "old_test": files["old_test"],
                   **change}
        inputs = {p: sha(p) for p in (options["train"], options["old_test"],
                                      f"{options['model']}/config.json")}
        cfg = FinetuneConfig("classification", options.pop("model"), options.pop("train"),
                             **options)
        with pytest.raises(ValueError, match=message):
            run_finetuning(cfg, training(tmp_path / "out"))
        assert {p: sha(p) for p in inputs} == inputs
        assert not os.path.exists(tmp_path / "out")
    with pytest.raises(ValueError, match="replay_ratio must be a number between 0 and 1"):
        FinetuneConfig("classification", old_folder, files["new_train"], replay_ratio=1.0)
