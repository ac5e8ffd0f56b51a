"""The task layer (bertkit.tasks): the registry, TaskSettings read from and written to
config.json, the task guessed from a folder's architectures, and a new task added as one
class plus one table entry working through fine-tuning, prediction and evaluation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bertkit import BertConfig, BertForSequenceClassification, Tokenizer
from bertkit.modeling.bert import HEAD_CLASSES
from bertkit.tasks import TASKS, TaskSettings, get_task
from bertkit.tasks.classification import ClassificationTask
from bertkit.tasks.evaluate import evaluate_folder
from bertkit.tasks.folder import folder_task
from bertkit.tasks.predict import load_predictor, predict_folder
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from tests.test_finetune import classification_records, tiny_model_folder, training, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def test_every_registered_task_is_consistent():
    fields = {f.name for f in dataclasses.fields(TaskSettings)}
    assert list(TASKS) == ["classification", "regression", "ner", "qa", "relation", "retrieval",
                           "rerank"]
    for name, task in TASKS.items():
        assert task.name == name and get_task(name) is task
        assert task.default_metric in task.metrics_names
        assert set(task.lower_is_better) <= set(task.metrics_names)
        if name in ("relation", "retrieval", "rerank"):
            # Their own heads (relation: bertkit's; retrieval, rerank: saved as BertModel /
            # BertForSequenceClassification folders).
            assert task.head.__name__ not in HEAD_CLASSES
        else:
            assert HEAD_CLASSES[task.head.__name__] is task.head
        assert "max_length" in task.setting_names and set(task.setting_names) <= fields


def test_unknown_task_names_the_choices():
    with pytest.raises(ValueError, match=r"^task must be one of classification, regression, "
                                         r"ner, qa, relation, retrieval, rerank, got 'summarise'$"):
        get_task("summarise")


def test_settings_round_trip_through_config_keys():
    config = BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=256,
                        extra={"bertkit_doc_stride": 99, "bertkit_stale": 1})
    qa = TaskSettings(max_length=200, doc_stride=8, max_query_length=16, max_answer_length=5,
                      n_best=3, version_2=True, null_threshold=1.5)
    qa.write_to(config, get_task("qa"))
    assert config.extra == {"bertkit_task": "qa", "bertkit_max_length": 200,
                            "bertkit_doc_stride": 8, "bertkit_max_query_length": 16,
                            "bertkit_max_answer_length": 5, "bertkit_n_best": 3,
                            "bertkit_version_2": True, "bertkit_null_threshold": 1.5}
    assert TaskSettings.from_config(config, get_task("qa")) == qa

    # Classification records max_length only; the QA keys of the earlier task are dropped.
    TaskSettings(max_length=64, doc_stride=8).write_to(config, get_task("classification"))
    assert config.extra == {"bertkit_task": "classification", "bertkit_max_length": 64}
    assert TaskSettings.from_config(config, get_task("classification")) == TaskSettings(64)

    # Nothing recorded: the task's default length, capped by the model's positions.
    config.extra = {}
    assert TaskSettings.from_config(config, get_task("qa")).max_length == 256
    assert TaskSettings.from_config(config, get_task("ner")).max_length == 128


@pytest.mark.parametrize("key, value, expected", [
    ("bertkit_doc_stride", "8", "bertkit_doc_stride must be an integer >= 0, got '8'"),
    ("bertkit_max_length", 0, "bertkit_max_length must be an integer >= 1, got 0"),
    ("bertkit_n_best", True, "bertkit_n_best must be an integer >= 1, got True"),
    ("bertkit_version_2", 1, "bertkit_version_2 must be true or false, got 1"),
    ("bertkit_null_threshold", "0", "bertkit_null_threshold must be a number, got '0'"),
])
def test_a_bad_recorded_setting_names_the_file_and_key(tmp_path, key, value, expected):
    folder = tmp_path / "clf"
    tiny_model_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["BertForQuestionAnswering"], bertkit_task="qa", **{key: value})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        predict_folder(str(folder), questions=["q"], contexts=["c"], device="cpu")
    assert str(error.value) == f"{folder / 'config.json'}: {expected}"


@pytest.mark.parametrize("architecture, labels, expected", [
    ("BertForSequenceClassification", {0: "a", 1: "b"}, "classification"),
    ("BertForSequenceClassification", {0: "LABEL_0"}, "regression"),
    ("BertForTokenClassification", {0: "O", 1: "B-X"}, "ner"),
    ("BertForQuestionAnswering", {0: "LABEL_0", 1: "LABEL_1"}, "qa"),
])
def test_the_task_of_a_transformers_folder_comes_from_its_architecture(architecture, labels,
                                                                         expected):
    config = BertConfig(vocab_size=30, architectures=[architecture], id2label=labels)
    assert folder_task("some/folder", config) == expected


def test_a_folder_without_a_task_head_is_refused():
    config = BertConfig(vocab_size=30, architectures=["BertForPreTraining"])
    with pytest.raises(ValueError, match=r"^some/folder is not a fine-tuned task model "
                                         r"\(architectures: BertForPreTraining\)"):
        folder_task("some/folder", config)


class KeywordTask(ClassificationTask):
    """A new task for the test: classification selected by macro F1, predictions that also
    give the winning probability. One class and one table entry are all it takes."""

    name = "keyword"
    default_metric = "macro_f1"

    def results(self, outputs, id2label):
        results = super().results(outputs, id2label)
        return [{**r, "confidence": max(r["probabilities"].values())} for r in results]


def test_a_new_task_is_one_class_and_one_table_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "keyword", KeywordTask())
    base = tiny_model_folder(tmp_path / "base")
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", classification_records(n, seed))
             for name, n, seed in (("train", 96, 0), ("dev", 32, 1))}
    cfg = FinetuneConfig(task="keyword", model=base, train=files["train"], dev=files["dev"])
    assert cfg.metric == "macro_f1"
    out = str(tmp_path / "out")
    result = run_finetuning(cfg, training(out, epochs=2))
    assert folder_task(out) == "keyword"
    assert set(result.metrics["dev"]) >= {"accuracy", "macro_f1", "eval_loss"}

    texts = ["the film was great", "a boring story", "it was okay then"]
    predictions = predict_folder(out, texts=texts, device="cpu")
    # The reference: the saved head run directly, without the task layer.
    model = BertForSequenceClassification.from_pretrained(out, verbose=False).eval()
    batch = Tokenizer.from_pretrained(out)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)                              # (3, C)
    names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    for prediction, row in zip(predictions, probs.tolist()):
        assert prediction["label"] == names[max(range(len(row)), key=row.__getitem__)]
        assert prediction["confidence"] == pytest.approx(max(row), abs=1e-5)

    assert load_predictor(out, device="cpu").task is TASKS["keyword"]
    metrics = evaluate_folder(out, files["dev"], device="cpu")
    assert metrics["macro_f1"] == pytest.approx(result.metrics["dev"]["macro_f1"])
