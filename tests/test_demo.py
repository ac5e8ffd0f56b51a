"""`bertkit demo --quick`: the whole path (task, tokenizer, pretraining, fine-tuning, a second
model side by side, search before and after retrieval fine-tuning, fill-mask, predict) runs and its accuracy beats the majority baseline; run
in a clone of the repository with the default --out, it leaves `git status` as it was, writes
under 150 MB without optimizer state, and prints a few counted lines, not reports and raw
warnings (issue 20)."""

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import torch

from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.data.tasks import TruncationWarning
from bertkit.demo import MAX_LENGTH, run_demo
from bertkit.search import SearchIndex

REPO = Path(__file__).resolve().parent.parent
MAX_DEMO_BYTES = 150 * 10**6


def git(folder, *args) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout


def clone_of_the_repo(tmp_path) -> Path | None:
    """A clone of the repository's HEAD carrying the working tree's .gitignore (the rules under
    test; a local change to it shows in `git status`, before and after alike), or None when
    the tests do not run from a git checkout."""
    if shutil.which("git") is None:
        return None
    try:
        git(REPO, "rev-parse", "--is-inside-work-tree")
    except subprocess.CalledProcessError:
        return None
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    shutil.copyfile(REPO / ".gitignore", clone / ".gitignore")
    return clone


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def read_labels(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["label"] for line in f if line.strip()]


def test_quick_demo_beats_the_majority_baseline(tmp_path, capsys, monkeypatch, recwarn):
    # A tiny random model stands in for all-MiniLM-L6-v2, so the side-by-side stage runs in
    # seconds whether or not the package is installed.
    other = tmp_path / "other-bert"
    tokenizer = Tokenizer.train(["return the socket address", "read the file data"] * 10,
                                vocab_size=60, show_progress=False)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(other)
    tokenizer.save_pretrained(other)

    clone = clone_of_the_repo(tmp_path)
    workdir = clone or tmp_path / "workdir"
    workdir.mkdir(exist_ok=True)
    status_before = git(clone, "status", "--porcelain", "--untracked-files=all") if clone else ""
    monkeypatch.chdir(workdir)
    result = run_demo(quick=True, minilm=str(other), progress=False)  # out: ./bertkit-demo
    printed = capsys.readouterr().out
    out = workdir / "bertkit-demo"

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

    for stage in ("[1/7]", "[3/7]", "[5/7]", "[6/7] search", "[7/7] results"):
        assert stage in printed
    # the search stage: its index moved with the demo folder and still finds its bi-encoder
    search = result["search"]
    assert search["question"] in printed and len(search["top3_after"]) == 3
    hits = SearchIndex.load(str(out / "index-after")).search([search["question"]], top_k=3)[0]
    assert [h["id"] for h in hits] == search["top3_after"]
    assert 0 < search["mrr@10_before"] <= 1 and 0 < search["mrr@10_after"] <= 1
    assert f"{result['test_accuracy']:.3f}" in printed
    assert f"{result['majority_baseline']:.3f}" in printed
    assert "other-bert, fine-tuned here" in printed
    # the predict example, explained: its page in the folder, the words for and against printed
    assert "<html" in (out / "explain.html").read_text().lower()
    assert "explain (bertkit-demo/finetuned)" in printed and "  for:" in printed
    check_lean_output(out, clone, status_before)
    check_short_output(out, result, printed, recwarn)


def check_lean_output(out: Path, clone: Path | None, status_before: str) -> None:
    """Each model once, no optimizer state, under 150 MB, and nothing new for git to show."""
    assert not [str(p) for p in out.rglob("*") if p.name in ("checkpoints", "best",
                                                             "trainer_state.pt")]
    assert folder_bytes(out) < MAX_DEMO_BYTES
    assert not out.with_name("bertkit-demo.partial").exists()
    if clone is not None:
        assert git(clone, "status", "--porcelain", "--untracked-files=all") == status_before
        assert git(clone, "check-ignore", "bertkit-demo/", "bertkit-demo.partial/").split() == [
            "bertkit-demo/", "bertkit-demo.partial/"]


def check_short_output(out: Path, result: dict, printed: str, recwarn) -> None:
    """One headline per split and model (the per-class tables stay in report.txt), truncation
    counted in one line per fine-tuning, a fill-mask line that separates its candidates with
    " | ", and a word on NSP at chance; no TruncationWarning reaches Python's warnings."""
    assert "precision" not in printed and "macro avg" not in printed
    assert "precision" in (out / "finetuned" / "report.txt").read_text()
    lines = printed.splitlines()
    assert sum(line.startswith("  test  accuracy ") for line in lines) == 2
    for folder in ("finetuned", "finetuned-minilm"):
        cut = json.loads((out / folder / "finetune.json").read_text())["num_truncated"]
        counted = [line for line in lines if line.startswith(f"  {cut['train']} of ")
                   and line.endswith(f"truncated to {MAX_LENGTH} tokens")]
        if any(cut.values()):
            assert len(counted) >= 1
            assert f"{cut['test']} of {result['counts']['test']} test" in counted[0]
    assert not [w for w in recwarn if issubclass(w.category, TruncationWarning)]
    assert "TruncationWarning" not in printed

    candidates = result["fill_mask"]["candidates"]
    expected = " | ".join(f"{c['token']!r} {c['score']:.2f}" for c in candidates)
    assert f"  {expected}" in lines
    at_chance = result["pretraining"]["nsp_accuracy"] < 0.55
    assert ("NSP is still at chance" in printed) == at_chance
