"""Head pruning (importance, selection, surgery, the folder format) and magnitude pruning."""

from __future__ import annotations

import json
import os
import random
import re

import pytest
import torch

from bertkit import BertConfig, BertForSequenceClassification, Tokenizer
from bertkit.checkpoint import hf_state_dict, load_state_dict_into, read_state_dict, to_hf_name
from bertkit.cli import main
from bertkit.compress.prune import (head_importance, magnitude_prune, prune_heads, select_heads,
                                    sparsity_report)
from bertkit.data.tasks import PaddingCollator, TaskDataset

from conftest import TINY, TINY_VOCAB

LABELS = {0: "hello", 1: "world", 2: "cafe"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def tiny_classifier() -> BertForSequenceClassification:
    config = BertConfig(**{**TINY, "vocab_size": len(TINY_VOCAB)}, id2label=LABELS,
                        extra={"bertkit_task": "classification", "bertkit_max_length": 32})
    return BertForSequenceClassification(config).eval()


def inputs() -> dict:
    ids = torch.randint(5, len(TINY_VOCAB), (3, 11))                           # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_head_pruned_folder_loads_in_transformers_with_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_classifier()
    x = inputs()
    before = model(**x).logits
    params = model.num_parameters()
    prune_heads(model, {0: [1, 3], 1: [0]})
    assert model.config.pruned_heads == {0: [1, 3], 1: [0]}
    assert model.bert.encoder.layers[0].attention.num_heads == 2
    assert model.bert.encoder.layers[0].attention.query.weight.shape == (2 * 8, 32)
    assert model.bert.encoder.layers[0].attention_output.weight.shape == (32, 2 * 8)
    ours = model(**x).logits
    assert not torch.allclose(ours, before)  # the heads did something before they went
    model.save_pretrained(tmp_path)

    # The folder: pruned_heads in transformers' format, full-size tensors, zeros for the heads.
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pruned_heads"] == {"0": [1, 3], "1": [0]}
    state = read_state_dict(tmp_path)
    query = state["bert.encoder.layer.0.attention.self.query.weight"]
    assert query.shape == (32, 32)
    assert query[8:16].abs().sum() == 0 and query[24:32].abs().sum() == 0
    assert query[0:8].abs().sum() > 0
    assert state["bert.encoder.layer.1.attention.output.dense.weight"][:, 0:8].abs().sum() == 0

    theirs = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        reference = theirs(**x).logits
    torch.testing.assert_close(reference, ours, atol=1e-5, rtol=0)

    # bertkit loads it without the pruned heads, with the same logits; saving round-trips.
    again = BertForSequenceClassification.from_pretrained(tmp_path)
    assert again.num_parameters() < params
    assert again.num_parameters() == model.num_parameters()
    torch.testing.assert_close(again(**x).logits, ours, atol=1e-6, rtol=0)
    again.save_pretrained(tmp_path / "again")
    resaved = read_state_dict(tmp_path / "again")
    assert resaved.keys() == state.keys()
    assert all(torch.equal(resaved[k], state[k]) for k in state)


def test_pruning_a_pruned_model_uses_original_head_numbers(tmp_path):
    model = tiny_classifier()
    prune_heads(model, {0: [1]})
    prune_heads(model, {0: [1, 2]})  # head 1 is already gone; 2 is new
    assert model.config.pruned_heads == {0: [1, 2]}
    assert model.config.kept_heads(0) == [0, 3]
    with pytest.raises(ValueError, match="without attention heads"):
        prune_heads(model, {0: [0, 3]})
    with pytest.raises(ValueError, match="every head of layer 1"):
        BertConfig(**TINY, pruned_heads={"1": [0, 1, 2, 3]})


def test_a_folder_with_physically_pruned_tensors_loads_too():
    # transformers 4 wrote the kept heads only; the loader takes those shapes as they are.
    model = tiny_classifier()
    prune_heads(model, {1: [2]})
    compact = {to_hf_name(k): v for k, v in model.state_dict().items()}     # no zero padding
    assert compact["bert.encoder.layer.1.attention.self.key.weight"].shape == (24, 32)
    fresh = BertForSequenceClassification(model.config)
    load_state_dict_into(fresh, compact)
    x = inputs()
    torch.testing.assert_close(fresh.eval()(**x).logits, model(**x).logits)
    assert hf_state_dict(fresh)["bert.encoder.layer.1.attention.self.key.weight"].shape == (32, 32)


def _dataset(n: int = 24) -> TaskDataset:
    items = [{"input_ids": [2] + [random.randrange(5, len(TINY_VOCAB)) for _ in range(6 + i % 5)]
              + [3], "labels": i % 3} for i in range(n)]
    for item in items:
        item["token_type_ids"] = [0] * len(item["input_ids"])
    return TaskDataset(items)


def test_head_importance_and_selection_never_empty_a_layer():
    random.seed(0)
    model = tiny_classifier()
    importance = head_importance(model, _dataset(), PaddingCollator(0), batch_size=8)
    assert [imp.shape for imp in importance] == [(4,), (4,)]
    assert all(torch.isclose(imp.norm(), torch.tensor(1.0)) for imp in importance)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    # 30% of 8 heads = 2, the two lowest scores.
    chosen = select_heads(importance, 0.3, model.config)
    flat = sorted((float(importance[l][h]), l, h) for l in range(2) for h in range(4))
    assert chosen == {l: sorted(h for _, ll, h in flat[:2] if ll == l)
                      for l in sorted({l for _, l, _ in flat[:2]})}
    # 90% would be 7 heads, but every layer keeps one: 6.
    most = select_heads(importance, 0.9, model.config)
    assert [len(most[l]) for l in (0, 1)] == [3, 3]
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"in \(0, 1\)"):
            select_heads(importance, bad, model.config)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_zeroes_the_smallest_encoder_weights(scope):
    model = tiny_classifier()
    embeddings = model.bert.embeddings.word_embeddings.weight.clone()
    classifier = model.classifier.weight.clone()
    kept = model.bert.encoder.layers[0].ffn.up.weight.detach().abs()          # (I, H)
    report = magnitude_prune(model, 0.5, scope)
    assert report["encoder_sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert report == sparsity_report(model)
    if scope == "layer":
        assert all(e["sparsity"] == pytest.approx(0.5, abs=1e-3) for e in report["layers"].values())
    assert 0 < report["model_sparsity"] < 0.5
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, embeddings)
    assert torch.equal(model.classifier.weight, classifier)
    # What survives in a matrix is its largest weights: none of them is below a pruned one.
    up = model.bert.encoder.layers[0].ffn.up.weight.detach()
    assert kept[up == 0].max() <= kept[up != 0].min()


def _task_folder(tmp_path, tiny_vocab_folder) -> tuple[str, str]:
    folder = str(tmp_path / "model")
    tiny_classifier().save_pretrained(folder)
    Tokenizer.from_pretrained(tiny_vocab_folder).save_pretrained(folder)
    data = tmp_path / "dev.jsonl"
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choice(["a", "b", "the", "cafe", "hello", "world"])
                              for _ in range(6)), "label": LABELS[i % 3]} for i in range(30)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, str(data)


def test_cli_prune_heads_and_sparsity(tmp_path, tiny_vocab_folder, capsys):
    folder, data = _task_folder(tmp_path, tiny_vocab_folder)
    out = tmp_path / "heads"
    assert main(["prune", "--model", folder, "--out", str(out), "--heads", "0.3",
                 "--data", data]) == 0
    printed = capsys.readouterr().out
    assert "pruned 2 of 8 attention heads" in printed
    assert "dev.jsonl before: accuracy" in printed and "dev.jsonl after:  accuracy" in printed
    assert "tokens/s" in printed
    report = json.loads((out / "prune.json").read_text())
    assert report["parameters"]["after"] < report["parameters"]["before"]
    assert {"accuracy", "eval_loss"} <= set(report["after"])
    assert json.loads((out / "config.json").read_text())["pruned_heads"]
    assert (out / "vocab.txt").is_file()
    assert main(["evaluate", "--model", str(out), "--data", data]) == 0  # an ordinary folder

    out = tmp_path / "sparse"
    assert main(["prune", "--model", folder, "--out", str(out), "--sparsity", "0.5",
                 "--data", data]) == 0
    printed = capsys.readouterr().out
    assert "total" in printed and "0.500" in printed and "after:  accuracy" in printed
    assert json.loads((out / "prune.json").read_text())["magnitude"]["encoder_sparsity"] == \
        pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--heads", "1.0", "--data", "D"], r"--heads is the fraction .* \(0, 1\), got 1.0"),
    (["--sparsity", "1.5"], r"--sparsity is the fraction .* \(0, 1\), got 1.5"),
    (["--heads", "0.3"], "needs|give --data"),
])
def test_cli_prune_bad_input(tmp_path, tiny_vocab_folder, capsys, args, message):
    folder, data = _task_folder(tmp_path, tiny_vocab_folder)
    args = [data if a == "D" else a for a in args]
    assert main(["prune", "--model", folder, "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertkit prune: error:")
    assert re.search(message, err), err
    assert not os.path.exists(tmp_path / "o")
    with pytest.raises(SystemExit):  # one mode at a time
        main(["prune", "--model", folder, "--out", "x", "--heads", "0.3", "--sparsity", "0.5"])
