"""Relation extraction (issue 17): entity-marker tokens that are never split (checked against
transformers' BertTokenizerFast), the embedding table grown to match (checked by
transformers loading the grown folder), the data formats and their bad-input lines, the
micro F1 without "no relation" (a hand computation), and a tiny model that learns the
standard-library relation set well above chance, its predictions, evaluation and a folder whose
encoder transformers loads, from which the head's logits are recomputed by hand."""

import hashlib
import json
from collections import defaultdict

import pytest
import torch

from bertkit import BertConfig, BertForMaskedLM, BertModel, Tokenizer
from bertkit.data.relation import (MARKER_TOKENS, RelationExample, encode_relation,
                                   load_relation, marked_text, stdlib_relation_splits,
                                   write_relation)
from bertkit.data.tasks import TruncationWarning
from bertkit.tasks.evaluate import evaluate_folder
from bertkit.tasks.predict import predict_folder
from bertkit.tasks.relation import micro_f1_without, no_relation_ids
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from tests.test_finetune import training, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "json", "module", "defines",
         "dumps", "loads", "[", "]", "/", "e", "1", "2", "##1", "##2", "a", "b", "c"]
TEXTS = ["the [E1]json[/E1] module defines [E2]dumps[/E2]", "[E2]Dumps[/E2][E1]JSON[/E1]",
         "the[E1]json", "[e1] json [/E2]", "a [E1] [/E1] b [E2][E2]"]


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# =========================================================================== tokenizer, embeddings


def test_added_tokens_are_never_split_round_trip_and_read_the_same_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.from_vocab(VOCAB)
    assert tok.tokenize("[E1]json") == ["[", "e", "##1", "]", "json"]  # before: split
    assert tok.add_tokens(MARKER_TOKENS) == 4 and len(tok) == len(VOCAB) + 4
    assert tok.add_tokens(["[E1]"]) == 0  # already there: same id
    assert tok.convert_tokens_to_ids(list(MARKER_TOKENS)) == list(range(len(VOCAB), len(VOCAB) + 4))
    # never split nor lowercased, glued to a word or not; "[e1]" is not the marker
    assert tok.tokenize("the[E1]json[/E1]") == ["the", "[E1]", "json", "[/E1]"]
    assert tok.tokenize("[e1]") == ["[", "e", "##1", "]"]
    tok.save_pretrained(tmp_path / "ours")
    again = Tokenizer.from_pretrained(tmp_path / "ours")
    hf = transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "ours"))
    ours = tok(TEXTS, return_tensors=None, padding=False)["input_ids"]
    assert again(TEXTS, return_tensors=None, padding=False)["input_ids"] == ours
    assert hf(TEXTS)["input_ids"] == ours
    # and back: the folder transformers writes (tokenizer.json in transformers 5) loads the same
    hf.save_pretrained(str(tmp_path / "hf"))
    assert Tokenizer.from_pretrained(tmp_path / "hf")(TEXTS, return_tensors=None,
                                                      padding=False)["input_ids"] == ours
    with pytest.raises(ValueError, match="non-empty string without surrounding spaces"):
        tok.add_tokens([" [E3]"])


def test_grown_embedding_table_keeps_old_rows_and_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=37)
    model = BertForMaskedLM(config).eval()
    old = model.bert.embeddings.word_embeddings.weight.detach().clone()
    model.resize_token_embeddings(len(VOCAB) + 4)
    table = model.bert.embeddings.word_embeddings.weight
    assert table.shape == (len(VOCAB) + 4, 32) and model.config.vocab_size == len(VOCAB) + 4
    assert torch.equal(table[:len(VOCAB)], old)
    new_std = float(table[len(VOCAB):].detach().std())
    assert 0.2 * config.initializer_range < new_std < 5 * config.initializer_range
    with pytest.raises(ValueError, match="cannot shrink"):
        model.resize_token_embeddings(3)
    model.save_pretrained(tmp_path)
    hf = transformers.BertForMaskedLM.from_pretrained(str(tmp_path)).eval()
    ids = torch.tensor([[2, 5, len(VOCAB), 6, len(VOCAB) + 1, 3]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, hf(ids).logits, atol=1e-5)


# =========================================================================== data


def test_inline_markers_and_character_spans_read_the_same(tmp_path):
    inline = write_jsonl(tmp_path / "inline.jsonl", [
        {"text": "<e2>dumps</e2> is in the <e1>json</e1> module", "label": "r"}])
    spans = write_jsonl(tmp_path / "spans.jsonl", [
        {"text": "dumps is in the json module", "e1": [16, 20], "e2": [0, 5], "label": "r"}])
    (tmp_path / "table.tsv").write_text("text\tlabel\n<e2>dumps</e2> is in the <e1>json</e1> "
                                        "module\tr\n", encoding="utf-8")
    expected = RelationExample("dumps is in the json module", (16, 20), (0, 5), "r", 1)
    assert load_relation(inline) == [expected] == load_relation(spans)
    assert load_relation(tmp_path / "table.tsv")[0].e1 == (16, 20)
    assert marked_text(expected) == "[E2]dumps[/E2] is in the [E1]json[/E1] module"
    write_relation([expected], str(tmp_path / "again.jsonl"))
    assert load_relation(tmp_path / "again.jsonl") == [expected]


@pytest.mark.parametrize("record, message", [
    ({"text": "<e1>json</e1> defines dumps", "label": "r"}, r"bad.jsonl:2: an example needs "
     r"both entities marked .*; e2 missing"),
    ({"text": "json defines dumps", "e1": [0, 4], "label": "r"}, r"bad.jsonl:2: .*e2 missing"),
    ({"text": "<e1>json <e2>defines</e2></e1> dumps", "label": "r"},
     r"bad.jsonl:2: the entities overlap"),
    ({"text": "json defines dumps", "e1": [0, 4], "e2": [5, 99], "label": "r"},
     r"bad.jsonl:2: field 'e2' must be \[start, end\]"),
    ({"text": "<e1></e1> defines <e2>dumps</e2>", "label": "r"},
     r"bad.jsonl:2: entity e1 is empty"),
])
def test_bad_examples_name_file_and_line_and_leave_the_file(tmp_path, record, message):
    good = {"text": "<e1>json</e1> defines <e2>dumps</e2>", "label": "r"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    before = sha(path)
    with pytest.raises(ValueError, match=message):
        load_relation(path)
    assert sha(path) == before


def test_long_sentences_keep_both_start_markers():
    tok = Tokenizer.from_vocab(VOCAB)
    tok.add_tokens(MARKER_TOKENS)
    filler = " ".join(["the"] * 40)
    near = RelationExample(f"{filler} json dumps {filler}", (85, 89), (90, 95), None, 1)
    far = RelationExample(f"json {filler} {filler} dumps", (0, 4), (168, 173), None, 2)
    with pytest.warns(TruncationWarning, match="2 of 2 examples were longer than max_length=12"):
        dataset = encode_relation([near, far], tok, None, max_length=12)
    e1, e2 = tok.convert_tokens_to_ids(["[E1]", "[E2]"])
    for item in dataset.items:
        assert len(item["input_ids"]) == 12 and e1 in item["input_ids"] and e2 in item["input_ids"]


def test_micro_f1_without_no_relation_by_hand():
    names = ["Other", "a", "b"]
    assert no_relation_ids(names) == [0]
    y_true = [0, 1, 1, 2, 2, 0]
    y_pred = [1, 1, 0, 2, 1, 0]
    # predicted non-Other: 4 (ids 1, 1, 2, 1), correct among them 2; gold non-Other: 4
    precision, recall = 2 / 4, 2 / 4
    assert micro_f1_without(y_true, y_pred, [0]) == pytest.approx(
        2 * precision * recall / (precision + recall))
    assert micro_f1_without(y_true, y_pred, []) == pytest.approx(3 / 6)  # = accuracy


# =========================================================================== fine-tuning


@pytest.fixture(scope="module")
def relation_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("relation")
    splits = stdlib_relation_splits({"train": 240, "dev": 60, "test": 100})
    files = {}
    for name, examples in splits.items():
        files[name] = str(root / f"{name}.jsonl")
        write_relation(examples, files[name])
    tok = Tokenizer.train([ex.text for exs in splits.values() for ex in exs], vocab_size=300,
                          min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64)
    BertModel(config).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    cfg = FinetuneConfig("relation", str(root / "base"), files["train"], files["dev"],
                         files["test"])
    result = run_finetuning(cfg, training(root / "out", epochs=8, lr=3e-3))
    return result, files, splits


def test_relation_learns_the_stdlib_set_from_the_markers(relation_run):
    result, _, splits = relation_run
    test = result.metrics["test"]
    assert result.labels == ["Other", "class-in-module", "function-in-module", "method-of-class"]
    assert test["accuracy"] > 0.7 and test["macro_f1"] > 0.65  # chance: 0.25
    assert {"accuracy", "macro_f1", "micro_f1", "baseline"} <= set(test)
    # one sentence, two marked pairs, two labels: the model reads the markers
    by_text = defaultdict(list)
    for ex in splits["test"]:
        by_text[ex.text].append(ex)
    pairs = [exs for exs in by_text.values() if len({ex.label for ex in exs}) == 2]
    texts = [marked_text(ex, ("<e1>", "</e1>", "<e2>", "</e2>")) for exs in pairs for ex in exs]
    labels = [p["label"] for p in predict_folder(result.out_dir, texts=texts)]
    assert sum(a != b for a, b in zip(labels[::2], labels[1::2])) > 0.7 * len(pairs)


def test_relation_folder_layout_predict_and_evaluate(relation_run):
    result, files, _ = relation_run
    config = json.load(open(f"{result.out_dir}/config.json"))
    assert config["architectures"] == ["BertForRelationClassification"]
    assert config["bertkit_task"] == "relation"
    tok = Tokenizer.from_pretrained(result.out_dir)
    assert config["entity_start_token_ids"] == tok.convert_tokens_to_ids(["[E1]", "[E2]"])
    assert config["vocab_size"] == len(tok) and tok.added_tokens == MARKER_TOKENS
    again = evaluate_folder(result.out_dir, files["test"])
    saved = json.load(open(f"{result.out_dir}/metrics.json"))["test"]
    assert again["accuracy"] == pytest.approx(saved["accuracy"])
    assert again["micro_f1"] == pytest.approx(saved["micro_f1"])
    text = "the <e2>zipfile</e2> module defines the class <e1>ZipFile</e1> , and ..."
    (out,) = predict_folder(result.out_dir, texts=[text])
    assert out["e1"] == "ZipFile" and out["e2"] == "zipfile"
    assert sum(out["probabilities"].values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"texts\[0\]: an example needs both entities .*e2 "):
        predict_folder(result.out_dir, texts=["<e1>json</e1> has no second entity"])


def test_transformers_loads_the_encoder_and_the_head_is_recomputed_by_hand(relation_run):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    folder = relation_run[0].out_dir
    hf = transformers.BertModel.from_pretrained(folder).eval()
    weights = load_file(f"{folder}/model.safetensors")
    for name, tensor in hf.state_dict().items():
        if f"bert.{name}" in weights:
            assert torch.equal(tensor, weights[f"bert.{name}"]), name
    assert "bert.embeddings.word_embeddings.weight" in weights  # the grown table, not fresh
    text = "call <e1>dumps</e1> from json first , then loads from <e2>pickle</e2> ."
    (ours,) = predict_folder(folder, texts=[text])
    tok = transformers.BertTokenizerFast.from_pretrained(folder)
    ids = tok([text.replace("<e1>", "[E1]").replace("</e1>", "[/E1]")
               .replace("<e2>", "[E2]").replace("</e2>", "[/E2]")], return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**ids).last_hidden_state[0]                                  # (T, H)
    row = ids["input_ids"][0].tolist()
    pair = torch.cat([hidden[row.index(tok.convert_tokens_to_ids("[E1]"))],
                      hidden[row.index(tok.convert_tokens_to_ids("[E2]"))]])     # (2H,)
    logits = pair @ weights["classifier.weight"].T + weights["classifier.bias"]  # (C,)
    probabilities = torch.softmax(logits.double(), -1).tolist()
    assert probabilities == pytest.approx(list(ours["probabilities"].values()), abs=1e-5)


def test_relation_with_peft_is_refused():
    with pytest.raises(ValueError, match="--peft does not work with the relation task"):
        FinetuneConfig("relation", "m", "t.jsonl", peft="lora")


def test_served_relation_model_predicts_and_names_a_bad_text(relation_run):
    from fastapi.testclient import TestClient

    from bertkit.api import serving_app

    folder = relation_run[0].out_dir
    text = "the <e2>zipfile</e2> module defines the class <e1>ZipFile</e1> , and ..."
    (expected,) = predict_folder(folder, texts=[text])
    with TestClient(serving_app(folder), base_url="http://localhost") as client:
        good = client.post("/v1/predict", json={"texts": [text]})
        bad = client.post("/v1/predict", json={"texts": ["<e1>json</e1> alone"]})
    assert good.status_code == 200
    (served,) = good.json()["predictions"]
    assert served["label"] == expected["label"] and served["e1"] == "ZipFile"
    assert served["probabilities"] == pytest.approx(expected["probabilities"])
    assert bad.status_code == 422 and "texts[0]: an example needs both entities" in \
        bad.json()["error"]["message"]
