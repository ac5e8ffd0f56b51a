"""The command line end to end: finetune -> evaluate -> predict, translate, and the messages a
user sees for bad input. The library functions behind them are tested in their own files;
this checks the wiring (options reach the functions, results reach the screen and the disk)."""

from __future__ import annotations

import json
import random

import pytest

from bertkit.cli import main as cli
from tests.test_finetune import classification_records, tiny_model_folder, write_jsonl
from tests.test_translation import number_in_words


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def test_every_command_has_help(capsys):
    for command in ["embed", "fill-mask", "train-tokenizer", "prepare-corpus", "pretrain",
                    "finetune", "evaluate", "predict", "translate", "demo"]:
        with pytest.raises(SystemExit) as exit_info:
            cli([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: bertkit " + command in capsys.readouterr().out


def test_every_option_has_help_that_shows_its_default():
    """Each option of each command has a line of help, and its --help shows the default
    (argparse's own, or said in the help where it depends on other options)."""
    import argparse

    from bertkit.cli import build_parser
    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    assert {"finetune", "pretrain", "serve", "demo"} <= set(commands)
    for name, parser in commands.items():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            if action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings:
                shown = parser._get_formatter()._get_help_string(action) % {
                    "default": action.default}
                assert "default" in shown, (name, action.option_strings)
                assert " ".join(shown.split())[:40] in " ".join(text.split()), (name, shown)


def test_finetune_evaluate_predict(tmp_path, capsys):
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", classification_records(n, seed))
             for name, n, seed in (("train", 320, 0), ("dev", 60, 1), ("test", 60, 2))}
    base = tiny_model_folder(tmp_path / "base")
    out = tmp_path / "clf"
    assert cli(["finetune", "--task", "classification", "--model", base, "--train", files["train"],
                "--dev", files["dev"], "--test", files["test"], "--out", str(out), "--epochs", "20",
                "--lr", "2e-3", "--batch-size", "16", "--save-every", "0", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.8  # chance is 1/3
    assert "model folder" in capsys.readouterr().out

    assert cli(["evaluate", "--model", str(out), "--data", files["test"]]) == 0
    written = json.loads((out / "eval_test.json").read_text())
    assert written["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    record = classification_records(1, seed=7)[0]
    assert cli(["predict", "--model", str(out), record["text"]]) == 0
    prediction = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert prediction["label"] in {"pos", "neg", "neutral"}
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    report = tmp_path / "why.html"
    assert cli(["explain", "--model", str(out), record["text"], "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    assert prediction["label"] in printed and str(report) in printed
    assert "<html" in report.read_text().lower()
    assert cli(["explain", "--model", str(out), record["text"], "--out", str(report)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_translate_command(tmp_path, capsys):
    numbers = list(range(200))
    random.Random(0).shuffle(numbers)
    data = tmp_path / "train.tsv"
    data.write_text("".join(f"{' '.join(str(n))}\t{number_in_words(n)}\n" for n in numbers))
    out = tmp_path / "mt"
    assert cli(["finetune", "--task", "translation", "--train", str(data), "--dev", str(data),
                "--out", str(out), "--model-size", "tiny", "--vocab-size", "60", "--max-steps", "4",
                "--batch-size", "16", "--num-beams", "1", "--save-every", "0", "--no-progress"]) == 0
    assert set(json.loads((out / "metrics.json").read_text())["dev"]) >= {"bleu", "loss"}
    capsys.readouterr()
    assert cli(["translate", "--model", str(out), "--json", "--num-beams", "2", "--n-best", "2",
                "3 4 7", "1 2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in lines] == ["3 4 7", "1 2"]
    assert all(len(r["n_best"]) == 2 and r["n_best"][0]["score"] >= r["n_best"][1]["score"]
               for r in lines)


def test_bad_input_gets_one_clear_line(tmp_path, capsys):
    assert cli(["predict", "--model", str(tmp_path / "nowhere"), "text"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertkit predict: error:") and "nowhere" in err
    assert cli(["finetune", "--task", "ner", "--train", str(tmp_path / "x.conll"),
                "--out", str(tmp_path / "o")]) == 2
    assert "--task ner needs --model" in capsys.readouterr().err
    assert cli(["embed", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_lora_finetune_predict_and_merge(tmp_path, capsys):
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", classification_records(n, seed))
             for name, n, seed in (("train", 160, 0), ("dev", 40, 1))}
    base = tiny_model_folder(tmp_path / "base")
    out = tmp_path / "lora"
    assert cli(["finetune", "--task", "classification", "--model", base, "--train", files["train"],
                "--dev", files["dev"], "--out", str(out), "--epochs", "2", "--lr", "5e-3",
                "--batch-size", "16", "--save-every", "0", "--no-progress",
                "--peft", "lora", "--lora-r", "4"]) == 0
    assert "trainable" in capsys.readouterr().out.lower()
    # The folder holds the adapter and the head, not a second copy of the base.
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    # Without --lora-targets: every Linear layer of each block (the measured best), not q/v.
    # (peft's target_modules are HF leaf names: attention.output, intermediate and output are
    # all "dense")
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert set(targets) == {"query", "key", "value", "dense"}, targets
    text = classification_records(1, seed=9)[0]["text"]
    assert cli(["predict", "--model", str(out), text]) == 0
    adapter_prediction = json.loads(capsys.readouterr().out.splitlines()[-1])

    merged = tmp_path / "merged"
    assert cli(["merge-lora", "--adapter", str(out), "--out", str(merged)]) == 0
    assert (merged / "model.safetensors").is_file()
    capsys.readouterr()
    assert cli(["predict", "--model", str(merged), text]) == 0
    merged_prediction = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert merged_prediction["label"] == adapter_prediction["label"]
    for label, p in adapter_prediction["probabilities"].items():
        assert merged_prediction["probabilities"][label] == pytest.approx(p, abs=1e-5)

    assert cli(["finetune", "--task", "classification", "--model", base, "--train", files["train"],
                "--out", str(tmp_path / "x"), "--lora-r", "4"]) == 2
    assert "options need --peft" in capsys.readouterr().err
