"""No user data lost: every command that writes refuses to write over its input, refuses an
existing folder unless it resumes or --overwrite replaces it, and leaves every existing file as
it was when it fails (issue 11, points 1-3). Each test first runs the command that destroyed
data before the fix, then checks the one-line error, exit code 2 and the sha256 of every file
the user had."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from bertkit.cli import main as cli
from bertkit.modeling.bert import BertForSequenceClassification
from bertkit.outputs import MARKER, check_not_input, output_folder
from bertkit.peft import apply_peft, save_adapter
from tests.test_finetune import classification_records, tiny_model_folder, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

FAST = ["--max-steps", "2", "--batch-size", "8", "--save-every", "0", "--no-progress"]


def tree_hashes(root) -> dict[str, str]:
    """sha256 of every file under ``root`` (by relative path)."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bertkit {command}: error:"), err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    data = {name: write_jsonl(root / f"{name}.jsonl", classification_records(n, seed))
            for name, n, seed in (("train", 48, 0), ("dev", 16, 1))}
    base = tiny_model_folder(root / "base")
    assert cli(["finetune", "--task", "classification", "--model", base, "--train",
                data["train"], "--dev", data["dev"], "--out", str(root / "clf"), *FAST]) == 0
    return {"root": root, "base": base, "clf": str(root / "clf"), **data}


def test_no_command_writes_over_its_input(folders, tmp_path, capsys):
    base, clf, train = folders["base"], folders["clf"], folders["train"]
    link = tmp_path / "link-to-clf"
    link.symlink_to(clf, target_is_directory=True)
    adapter = tmp_path / "adapter"
    model = BertForSequenceClassification.from_pretrained(
        clf, verbose=False)
    save_adapter(apply_peft(model, "lora", base_model_folder=clf, r=2), adapter)
    before = {path: tree_hashes(path) for path in (base, clf, adapter)}
    attempts = [
        ("finetune", ["finetune", "--task", "classification", "--model", base, "--train", train,
                      "--out", base, *FAST], "is --model"),
        ("distill", ["distill", "--teacher", clf, "--train", train, "--dev", folders["dev"],
                     "--out", clf, *FAST], "is --teacher"),
        ("export", ["export", "--model", clf, "--out", os.path.join(clf, "model.safetensors")],
         "must be a .onnx file"),
        ("prune", ["prune", "--model", clf, "--out", str(link), "--sparsity", "0.5"],
         "is --model"),
        ("quantize", ["quantize", "--model", clf, "--out", str(link)], "is --model"),
        ("merge-lora", ["merge-lora", "--adapter", str(adapter), "--out", str(adapter)],
         "is --adapter"),
        ("finetune", ["finetune", "--task", "classification", "--model", base, "--train", train,
                      "--out", os.path.join(base, "inner"), *FAST], "lies inside --model"),
        ("finetune", ["finetune", "--task", "classification", "--model", base, "--train", train,
                      "--out", str(folders["root"]), "--overwrite", *FAST],
         "lies inside --out"),
    ]
    for command, argv, expected in attempts:
        assert cli(argv) == 2, argv
        assert expected in one_error_line(capsys, command), argv
    assert {path: tree_hashes(path) for path in (base, clf, adapter)} == before


def test_a_failed_run_leaves_an_existing_folder_as_it_was(folders, tmp_path, capsys):
    existing = tmp_path / "existing"
    tiny_model_folder(existing)
    (existing / MARKER).write_text("")  # as if bertkit wrote it: --overwrite may replace it
    before = tree_hashes(existing)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one sentence here.\nanother one there.\n\nsecond document.\n")
    # Reproduces the report: this replaced existing/vocab.txt by a vocab of 88 lines.
    assert cli(["pretrain", "--corpus", str(corpus), "--tokenizer", folders["base"],
                "--out", str(existing), "--mask-prob", "2", "--no-progress"]) == 2
    assert "mask_prob must be in (0, 1)" in one_error_line(capsys, "pretrain")
    assert cli(["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "new"),
                "--mask-prob", "2", "--no-progress"]) == 2
    one_error_line(capsys, "pretrain")
    # An existing folder is refused without --resume / --overwrite (no silent vocab reuse) ...
    assert cli(["pretrain", "--corpus", str(corpus), "--out", str(existing),
                "--max-steps", "1", "--no-progress"]) == 2
    assert "already holds files" in one_error_line(capsys, "pretrain")
    # ... and with --overwrite a run that fails half-way still leaves it as it was.
    bad_dev = write_jsonl(tmp_path / "bad-dev.jsonl", [{"text": "a great film", "label": "??"}])
    assert cli(["finetune", "--task", "classification", "--model", folders["base"], "--train",
                folders["train"], "--dev", bad_dev, "--out", str(existing), "--overwrite",
                *FAST]) == 2
    assert "??" in one_error_line(capsys, "finetune")
    assert tree_hashes(existing) == before
    assert sorted(os.listdir(tmp_path)) == ["bad-dev.jsonl", "corpus.txt", "existing"]


def test_a_finished_folder_holds_only_its_own_files(folders, tmp_path, capsys):
    out = tmp_path / "model"
    common = ["finetune", "--task", "classification", "--model", folders["base"],
              "--out", str(out), *FAST]
    ab = write_jsonl(tmp_path / "ab.jsonl", [{"text": f"{w} film", "label": "ab"[i % 2]}
                                             for i, w in enumerate(["great", "awful"] * 8)])
    assert cli([*common, "--train", ab, "--peft", "lora"]) == 0
    assert (out / "adapter_config.json").is_file()
    xy = write_jsonl(tmp_path / "xy.jsonl", [{"text": f"{w} film", "label": "xy"[i % 2]}
                                             for i, w in enumerate(["great", "awful"] * 8)])
    assert cli([*common, "--train", xy]) == 2  # the folder exists: refused
    assert "--overwrite" in one_error_line(capsys, "finetune")
    assert cli([*common, "--train", xy, "--overwrite"]) == 0
    assert not any(name.startswith("adapter_") for name in os.listdir(out))
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600
    capsys.readouterr()
    assert cli(["predict", "--model", str(out), "great film"]) == 0
    prediction = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(prediction["probabilities"]) == {"x", "y"}


def test_an_interrupted_run_is_kept_for_resume(folders, tmp_path, capsys):
    """A killed run leaves OUT.partial with its checkpoints: a new run into OUT is refused
    (it would delete them), and --resume OUT.partial finishes the run into OUT."""
    out, partial = tmp_path / "run", tmp_path / "run.partial"
    common = ["finetune", "--task", "classification", "--model", folders["base"],
              "--train", folders["train"], "--out", str(out), "--batch-size", "8",
              "--save-every", "1", "--no-progress"]
    assert cli([*common, "--max-steps", "2"]) == 0
    out.rename(partial)  # what `kill -9` during the run leaves behind
    assert cli([*common, "--max-steps", "3"]) == 2
    assert f"--resume {partial}" in one_error_line(capsys, "finetune")
    assert cli([*common, "--max-steps", "3", "--resume", str(partial)]) == 0
    assert not partial.exists()
    assert json.loads((out / "finetune.json").read_text())["steps"] == 3


def test_overwrite_replaces_only_folders_bertkit_wrote(folders, tmp_path, capsys):
    """`--out ~ --overwrite` must not replace a home directory: --overwrite replaces a folder
    only when bertkit wrote it (its marker file is there)."""
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    before = tree_hashes(home)
    assert cli(["finetune", "--task", "classification", "--model", folders["base"], "--train",
                folders["train"], "--out", str(home), "--overwrite", *FAST]) == 2
    assert "--overwrite replaces only folders bertkit wrote" in one_error_line(capsys, "finetune")
    assert tree_hashes(home) == before and not (tmp_path / "home.partial").exists()
    assert (Path(folders["clf"]) / MARKER).is_file()  # what bertkit writes carries the marker


def test_guard_resolves_links_and_nesting(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (tmp_path / "alias").symlink_to(model, target_is_directory=True)
    for out, message in ((tmp_path / "alias", "is --model"),
                         (tmp_path / "alias" / "x", "lies inside --model"),
                         (tmp_path, "lies inside --out")):
        with pytest.raises(ValueError, match=message):
            check_not_input(out, {"--model": str(model)})
    check_not_input(tmp_path / "other", {"--model": str(model), "--dev": None})


def test_output_folder_replaces_as_a_whole_and_only_at_the_end(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / MARKER).write_text("")
    with pytest.raises(RuntimeError):
        with output_folder(out, inputs={}, overwrite=True) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("the run failed")
    assert tree_hashes(out) == {"old.txt": hashlib.sha256(b"old").hexdigest(),
                                MARKER: hashlib.sha256(b"").hexdigest()}
    assert sorted(os.listdir(tmp_path)) == ["out"]
    with output_folder(out, inputs={}, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # still there while the run works
    assert sorted(os.listdir(out)) == sorted(["new.txt", MARKER])
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_reading_commands_name_a_bad_file(tmp_path, folders, capsys):
    assert cli(["embed", "--model", folders["base"], "--file", str(tmp_path)]) == 2
    assert "is not a file" in one_error_line(capsys, "embed")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    assert cli(["embed", "--model", folders["base"], "--file", str(latin1)]) == 2
    assert f"{latin1} is not UTF-8" in one_error_line(capsys, "embed")
