"""The Python API (bertkit.finetune / load / serving_app, issue 20): in-memory records give the
same run as the same data in files, records are checked like files (errors name the split and
the record), and every task's records round-trip through its file writer and reader."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch

import bertkit
from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.tasks import TASKS, get_task
from bertkit.tasks.evaluate import evaluate_folder

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

WORDS = "a the film plot great awful fine boring ada paris lives in who where ?".split()
RECORDS = {
    "classification": [{"text": "a great film", "label": "pos"},
                       {"text": "the plot", "text_pair": "awful", "label": "neg"}],
    "regression": [{"text": "a great film", "label": 4.5}, {"text": "awful", "label": "1"}],
    "ner": [{"tokens": ["ada", "lives", "in", "paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}],
    "qa": [{"question": "who lives in paris ?", "context": "ada lives in paris",
            "answers": [{"text": "ada", "answer_start": 0}]},
           {"id": "q2", "question": "where ?", "context": "a film",
            "answers": {"text": [], "answer_start": []}}],  # Hugging Face datasets' columns
}


def tiny_base(path) -> str:
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=37)).save_pretrained(path)
    Tokenizer.from_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]).save_pretrained(path)
    return str(path)


QUIET = dict(epochs=2, batch_size=2, seed=0, progress_bar=False, tensorboard=False, plot=False)
TRAIN = [{"text": t, "label": label} for t, label in [
    ("a great film", "pos"), ("awful plot", "neg"), ("great fine film", "pos"),
    ("a boring plot", "neg"), ("fine", "pos"), ("the awful film", "neg")]]
DEV = [{"text": "great plot", "label": "pos"}, {"text": "boring film", "label": "neg"}]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_records_round_trip_through_the_task_files(tmp_path, name):
    task = get_task(name)
    examples = task.examples_from_records(RECORDS[name], "train")
    path = str(tmp_path / f"data{task.data_suffix}")
    task.write_examples(examples, path)
    assert content(task.load_examples(path)) == content(examples)  # file lines aside
    # the task's own example objects are records too
    assert task.examples_from_records(examples, "train") == examples


def content(examples: list) -> list[dict]:
    """The examples' fields but the file lines they came from."""
    return [{k: v for k, v in vars(ex).items() if k not in ("line", "lines")} for ex in examples]


def test_record_fields_are_read_as_a_file_reads_them():
    (first, second) = get_task("regression").examples_from_records(RECORDS["regression"])
    assert (first.label, second.label, second.line) == (4.5, 1.0, 2)
    (_, pair) = get_task("classification").examples_from_records(RECORDS["classification"])
    assert (pair.text_pair, pair.label) == ("awful", "neg")
    (answered, impossible) = get_task("qa").examples_from_records(RECORDS["qa"])
    assert (answered.id, impossible.id, impossible.is_impossible) == ("1", "q2", True)


@pytest.mark.parametrize("task, records, message", [
    ("classification", [{"text": "a", "label": "x"}, {"txt": "b"}],
     "train:2: no text column; expected 'text'"),
    ("classification", [{"text": "a"}], "train:1: no label column 'label'; columns found: text"),
    ("classification", "not a list", None),
    ("classification", [], "train holds no examples"),
    ("classification", ["a text"], "train:1: a record must be a dict, got str 'a text'"),
    ("regression", [{"text": "a", "label": "high"}],
     "train:1: regression label 'high' is not a number"),
    ("ner", [{"tokens": ["ada", "x"], "tags": ["B-PER"]}], "train:1: 2 tokens but 1 tags"),
    ("ner", [{"tokens": ["ada lovelace"], "tags": ["B-PER"]}],
     "train:1: token 'ada lovelace' must be one word without whitespace"),
    ("ner", [{"tokens": ["ada"], "tags": ["PER"]}],
     "train:1: tag 'PER' is not O, B-TYPE or I-TYPE (BIO/IOB2 tags)"),
    ("qa", [{"question": "who?", "context": "ada", "answers": [{"text": "ada",
                                                                "answer_start": 1}]}],
     "train: question 1: answer 'ada' is not at answer_start 1; the context there reads 'da'"),
    ("qa", [{"context": "ada", "answers": []}],
     "train: record 1 (id 1) has no 'question' (found: context, answers, id)"),
])
def test_bad_records_name_the_split_and_the_record(task, records, message):
    with pytest.raises(ValueError) as error:
        get_task(task).examples_from_records(records, "train")
    assert str(error.value).startswith(message or "train: expected a list of records (dicts), "
                                       "got str")


def test_finetune_on_records_equals_finetune_on_the_same_files(tmp_path, monkeypatch):
    base = tiny_base(tmp_path / "base")
    files = {}
    for name, records in (("train", TRAIN), ("dev", DEV)):
        files[name] = str(tmp_path / f"{name}.jsonl")
        with open(files[name], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    from_records = bertkit.finetune(model=base, train=TRAIN, dev=DEV, out=tmp_path / "a", **QUIET)
    from_files = bertkit.finetune(model=base, train=files["train"], dev=files["dev"],
                                  out=tmp_path / "b", **QUIET)
    assert from_records.metrics["dev"] == from_files.metrics["dev"]
    assert from_records.labels == ["neg", "pos"] and from_records.train.steps == 6
    assert [p.name for p in temp.iterdir() if p.name.startswith("bertkit")] == []  # removed

    clf = bertkit.load(tmp_path / "a")
    assert clf.task is TASKS["classification"] and clf.labels == ["neg", "pos"]
    assert clf.evaluate(DEV) == evaluate_folder(str(tmp_path / "a"), files["dev"])
    pairs = clf.predict([("great", "film"), ("awful", "plot")])
    assert pairs == clf.predict(["great", "awful"], ["film", "plot"])
    with pytest.raises(ValueError, match=r"^data:1: label 'meh' never appears in the training "
                                         r"data \(training labels: neg, pos\)$"):
        clf.evaluate([{"text": "fine", "label": "meh"}])

    clf.save(tmp_path / "copy")
    assert bertkit.load(tmp_path / "copy").predict(["great"]) == clf.predict(["great"])
    with pytest.raises(ValueError, match="copy"):
        clf.save(tmp_path / "copy")  # an existing folder is never written over


def test_unknown_options_and_bad_records_fail_before_training(tmp_path):
    base = tiny_base(tmp_path / "base")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"^finetune\(\) got an unknown option 'epoch' \(did "
                                         r"you mean 'epochs'\?\); the options are"):
        bertkit.finetune(model=base, train=TRAIN, out=out, epoch=3)
    with pytest.raises(ValueError, match=r"^dev:2: label 'meh' never appears in the training "
                                         r"data \(training labels: neg, pos\)$"):
        bertkit.finetune(model=base, train=TRAIN, dev=[DEV[0], {"text": "a", "label": "meh"}],
                         out=out, **QUIET)
    with pytest.raises(ValueError, match=r"^TrainingConfig.lr must be positive, got -1"):
        bertkit.finetune(model=base, train=TRAIN, out=out, lr=-1)
    with pytest.raises(ValueError, match=r"^serving_app\(\) got an unknown option 'prot'"):
        bertkit.serving_app(base, prot=8000)
    assert not os.path.exists(out) and not os.path.exists(f"{out}.partial")


def test_ner_and_qa_fine_tune_from_records(tmp_path):
    base = tiny_base(tmp_path / "base")
    ner = bertkit.finetune(model=base, task="ner", train=RECORDS["ner"] * 4,
                           dev=RECORDS["ner"], out=tmp_path / "ner", **QUIET)
    assert ner.labels == ["B-LOC", "B-PER", "O"] and "f1" in ner.metrics["dev"]
    train = [{**record, "id": f"{i}-{j}"} for i in range(2) for j, record in
             enumerate(RECORDS["qa"])]
    qa = bertkit.finetune(model=base, task="qa", train=train, out=tmp_path / "qa",
                          max_length=32, doc_stride=8, **QUIET)
    (answer,) = bertkit.load(qa.out_dir).predict(questions=["who ?"], contexts=["ada lives"])
    assert qa.out_dir == str(tmp_path / "qa") and set(answer) == {"answer", "start", "end",
                                                                   "score"}
    if answer["start"] is not None:
        assert "ada lives"[answer["start"]:answer["end"]] == answer["answer"]
