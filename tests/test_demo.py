"""`bertkit demo --quick`: the whole path (task, tokenizer, pretraining, fine-tuning, a second
model side by side, fill-mask, predict) runs and its accuracy beats the majority baseline."""

import json
import os
from collections import Counter

import torch

from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.demo import run_demo


def read_labels(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["label"] for line in f if line.strip()]


def test_quick_demo_beats_the_majority_baseline(tmp_path, capsys):
    # A tiny random model stands in for all-MiniLM-L6-v2, so the side-by-side stage runs in
    # seconds whether or not the package is installed.
    other = tmp_path / "other-bert"
    tokenizer = Tokenizer.train(["return the socket address", "read the file data"] * 10,
                                vocab_size=60, show_progress=False)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(other)
    tokenizer.save_pretrained(other)

    out = tmp_path / "demo"
    result = run_demo(str(out), quick=True, minilm=str(other), progress=False)
    printed = capsys.readouterr().out

    # the majority baseline, recomputed from the task files
    train, test = read_labels(out / "task" / "train.jsonl"), read_labels(out / "task" / "test.jsonl")
    majority = Counter(train).most_common(1)[0][0]
    assert result["majority_label"] == majority
    assert result["majority_baseline"] == sum(t == majority for t in test) / len(test)
    assert result["test_accuracy"] > result["majority_baseline"] + 0.05
    assert len(result["labels"]) >= 5

    with open(out / "demo.json", encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(result))
    assert result["minilm"]["model"] == str(other)
    assert 0 <= result["minilm"]["test_accuracy"] <= 1
    assert result["predict"]["label"] in result["labels"]
    assert len(result["fill_mask"]["candidates"]) == 5

    for folder in ("pretrained", "finetuned", "finetuned-minilm"):
        for name in ("config.json", "model.safetensors", "vocab.txt", "curves.png"):
            assert os.path.isfile(out / folder / name), f"{folder}/{name}"
    assert os.path.isfile(out / "finetuned" / "metrics.json")
    config = json.loads((out / "finetuned" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]

    for stage in ("[1/6]", "[3/6]", "[5/6]", "[6/6] results"):
        assert stage in printed
    assert f"{result['test_accuracy']:.3f}" in printed
    assert f"{result['majority_baseline']:.3f}" in printed
    assert "other-bert, fine-tuned here" in printed
