"""The README's code runs as printed (issue 20).

- "## Python API": every fenced python block of the section is executed, in order, in one
  namespace, with only the line ``base = "path/to/a/BERT/folder"`` pointed at a tiny BERT folder;
  a broken snippet fails here, and the results it prints are checked.
- "## Your own data": every example block is parsed by the reader bertkit uses for that format,
  so an example that drifts from the readers fails here.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch

from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.data.parallel import load_parallel
from bertkit.data.tasks import load_classification, load_conll, load_squad
from bertkit.tasks import get_task

README = Path(__file__).resolve().parent.parent / "README.md"
BASE_LINE = 'base = "path/to/a/BERT/folder"'
WORDS = ("a great film boring plot actors an awful story fun and what the was slow , but "
         "to of it").split()

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def section(title: str) -> str:
    """The README text under ``## title``, up to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, content) of every fenced code block in ``text``."""
    return [(m.group(1).strip(), m.group(2))
            for m in re.finditer(r"^```([^\n]*)\n(.*?)^```\s*$", text, re.S | re.M)]


# ============================================================================ Python API


def test_the_python_api_section_runs_as_printed(tmp_path, monkeypatch):
    blocks = [code for info, code in fenced_blocks(section("Python API")) if info == "python"]
    assert len(blocks) >= 2, "the Python API section lost its code"
    assert blocks[0].count(BASE_LINE) == 1, f"the first block must define {BASE_LINE}"
    torch.manual_seed(0)
    base = tmp_path / "base"
    BertModel(BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=37)).save_pretrained(base)
    Tokenizer.from_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) \
        .save_pretrained(base)
    monkeypatch.chdir(tmp_path)  # the snippets write clf/, clf-copy/, run/ where they run
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for code in blocks:
            code = code.replace(BASE_LINE, f"base = {str(base)!r}")
            exec(compile(code, str(README), "exec"), namespace)

    result, clf = namespace["result"], namespace["clf"]
    assert result.labels == ["neg", "pos"] and (tmp_path / "clf" / "metrics.json").is_file()
    assert 0.0 <= result.metrics["dev"]["accuracy"] <= 1.0
    (prediction,) = clf.predict(["what a great film"])
    assert prediction["label"] in ("neg", "pos")
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
    # The API's evaluation of the dev records is the one the run wrote for dev.
    assert clf.evaluate(namespace["dev"])["accuracy"] == pytest.approx(
        result.metrics["dev"]["accuracy"])
    copy = (tmp_path / "clf-copy")
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in copy.iterdir()}
    assert namespace["app"].title == "bertkit serve"
    trainer, items = namespace["trainer"], namespace["items"]
    out = trainer.predict(items)
    assert out.predictions.shape == (4, 2) and out.label_ids.tolist() == [1, 0, 1, 0]
    assert "'accuracy'" in printed.getvalue() and "(4, 2)" in printed.getvalue()


def test_the_api_snippet_defines_what_it_uses():
    """Issue 20 point 6: no name such as ``folder`` is used without being defined."""
    code = "\n".join(c for info, c in fenced_blocks(section("Python API")) if info == "python")
    assert "folder)" not in code.replace("BERT/folder", "")


# ============================================================================ Your own data


def data_blocks() -> dict[str, str]:
    blocks = dict(fenced_blocks(section("Your own data")))
    expected = {"jsonl classification", "csv classification", "jsonl pairs", "tsv regression",
                "conll ner", "json qa", "tsv translation"}
    assert set(blocks) == expected, f"README 'Your own data' blocks: {sorted(blocks)}"
    return blocks


def write(tmp_path: Path, info: str, text: str) -> str:
    suffix = {"jsonl": ".jsonl", "csv": ".csv", "tsv": ".tsv", "json": ".json",
              "conll": ".txt"}[info.split()[0]]
    path = tmp_path / (info.replace(" ", "-") + suffix)
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_every_data_example_is_read_by_its_reader(tmp_path):
    blocks = data_blocks()
    path = lambda info: write(tmp_path, info, blocks[info])  # noqa: E731

    (jsonl,) = load_classification(path("jsonl classification"))
    assert (jsonl.text, jsonl.text_pair, jsonl.label) == ("the plot was great", None, "pos")
    (csv,) = load_classification(path("csv classification"))
    assert (csv.text, csv.label) == ("slow, but the plot was great", "pos")
    (pair,) = load_classification(path("jsonl pairs"))
    assert pair.text_pair == "someone makes music" and pair.label == "entailment"
    (score,) = load_classification(path("tsv regression"), regression=True)
    assert (score.text_pair, score.label) == ("a man plays music", 4.2)

    first, second = load_conll(path("conll ner"))
    assert first.tags == ["B-PER", "I-PER", "O", "O", "B-LOC"] and second.tokens == ["She", "wrote"]
    (question,) = load_squad(path("json qa"))
    assert question.answers == [{"text": "Ada Lovelace", "answer_start": 0}]
    (translation,) = load_parallel(path("tsv translation"))
    assert (translation.source, translation.target) == ("the cat sleeps", "die Katze schläft")


def test_the_python_records_described_are_accepted():
    """The record shapes the section names in its last paragraph, through the task layer."""
    text = section("Your own data")
    assert '{"tokens": [...], "tags": [...]}' in text and '"answers": [{"text"' in text
    (ner,) = get_task("ner").examples_from_records([{"tokens": ["Ada"], "tags": ["B-PER"]}])
    assert ner.tags == ["B-PER"]
    (qa,) = get_task("qa").examples_from_records([{
        "question": "Who?", "context": "Ada wrote.",
        "answers": [{"text": "Ada", "answer_start": 0}]}])
    assert qa.answers[0]["text"] == "Ada"


@pytest.mark.parametrize("info, broken, reader", [
    ("conll ner", "Ada B-PER\nLovelace\n", load_conll),           # a word without its tag
    ("json qa", json.dumps({"data": [{"paragraphs": [{"context": "Ada.", "qas": [
        {"id": "1", "question": "Who?", "answers": [{"text": "Ada", "answer_start": 1}]}]}]}]}),
     load_squad),                                                 # answer not at its start
])
def test_a_drifted_example_would_fail(tmp_path, info, broken, reader):
    """The readers used above reject malformed data: the checks are not vacuous."""
    with pytest.raises(ValueError):
        reader(write(tmp_path, info, broken))
