"""Multi-seed fine-tuning: median and IQR equal a hand computation; one folder per seed."""

import json
import os

import pytest

from bertkit.training.finetune import FinetuneConfig
from bertkit.training.seeds import parse_seeds, run_seeds, spread, summarize_seeds

from test_finetune import classification_records, tiny_model_folder, training, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def test_spread_is_numpy_linear_percentiles_by_hand():
    # sorted 0.7 0.8 0.9 1.0: Q1 at position 0.75 -> 0.775, median 0.85, Q3 at 2.25 -> 0.925
    s = spread([0.8, 0.9, 0.7, 1.0])
    assert s["median"] == pytest.approx(0.85)
    assert s["q1"] == pytest.approx(0.775) and s["q3"] == pytest.approx(0.925)
    assert s["iqr"] == pytest.approx(0.15)
    assert (s["min"], s["max"]) == (0.7, 1.0)
    assert spread([3.0])["iqr"] == 0.0


def test_summary_keeps_numbers_every_seed_has():
    per_seed = {0: {"test": {"accuracy": 0.5, "eval_loss": 1.0, "report_text": "x"}},
                1: {"test": {"accuracy": 0.7, "eval_loss": 0.8}},
                2: {"test": {"accuracy": 0.6, "eval_loss": float("nan")}}}
    summary = summarize_seeds(per_seed)
    assert list(summary["test"]) == ["accuracy"]   # eval_loss: not finite in one seed
    assert summary["test"]["accuracy"]["median"] == pytest.approx(0.6)
    assert summary["test"]["accuracy"]["iqr"] == pytest.approx(0.1)


@pytest.mark.parametrize("text, error", [("0,a", "comma-separated integers"),
                                         ("1,1", "repeats a seed")])
def test_bad_seeds(text, error):
    with pytest.raises(ValueError, match=error):
        parse_seeds(text)


def test_run_seeds_writes_a_folder_per_seed_and_the_summary(tmp_path):
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", classification_records(n, seed))
             for name, n, seed in (("train", 64, 0), ("dev", 24, 1))}
    cfg = FinetuneConfig("classification", tiny_model_folder(tmp_path / "base"), files["train"],
                         files["dev"], baseline=False)
    out = tmp_path / "seeds"
    result = run_seeds(cfg, training(out, epochs=None, max_steps=4), [0, 1, 2])
    saved = json.load(open(out / "seeds.json"))
    accuracies = []
    for seed in (0, 1, 2):
        metrics = json.load(open(out / f"seed-{seed}" / "metrics.json"))
        accuracies.append(metrics["dev"]["accuracy"])
        assert saved["per_seed"][str(seed)]["dev"]["accuracy"] == metrics["dev"]["accuracy"]
        assert os.path.isfile(out / f"seed-{seed}" / "model.safetensors")
    assert saved["summary"]["dev"]["accuracy"]["median"] == pytest.approx(sorted(accuracies)[1])
    assert result.summary == saved["summary"]
    assert "median" in open(out / "seeds.txt").read()
    assert not os.path.exists(f"{out}.partial")
