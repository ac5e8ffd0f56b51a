"""The commands this project added that write (index, augment, monitor, finetune --seeds):
an --out equal to, inside, or a symlink to an input is refused in one line, and every input
file is left byte for byte as it was."""

import hashlib
import os

import pytest

from _serve_helpers import make_folder
from bertkit.cli import main
from bertkit.modeling.bert import BertModel
from test_finetune import classification_records, tiny_model_folder, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def tree_digest(*paths) -> dict:
    """sha256 of every file under ``paths`` (files or folders)."""
    digests = {}
    for path in paths:
        files = [path] if os.path.isfile(path) else [
            os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
        for name in files:
            digests[name] = hashlib.sha256(open(name, "rb").read()).hexdigest()
    return digests


def test_writing_commands_refuse_an_out_that_is_an_input(tmp_path, capsys):
    model = make_folder(tmp_path / "enc", BertModel)
    clf = tiny_model_folder(tmp_path / "clf")
    os.symlink(model, tmp_path / "link-to-enc")
    train = write_jsonl(tmp_path / "train.jsonl", classification_records(12, 0))
    corpus = tmp_path / "docs.txt"
    corpus.write_text("one document\nanother document\n")
    stream = write_jsonl(tmp_path / "stream.jsonl", [{"text": "a b"}])
    before = tree_digest(model, clf, train, str(corpus), stream)
    runs = {
        "index into the model": ["index", "--model", model, "--corpus", str(corpus),
                                 "--out", os.path.join(model, "idx")],
        "index onto the corpus": ["index", "--model", model, "--corpus", str(corpus),
                                  "--out", str(corpus), "--overwrite"],
        "index via a symlink": ["index", "--model", model, "--corpus", str(corpus),
                                "--out", str(tmp_path / "link-to-enc"), "--overwrite"],
        "augment onto its input": ["augment", "--in", train, "--out", train, "--method", "eda",
                                   "--overwrite"],
        "monitor into the model": ["monitor", "--model", clf, "--input", stream,
                                   "--out", os.path.join(clf, "mon")],
        "seeds into the model": ["finetune", "--task", "classification", "--model", clf,
                                 "--train", train, "--out", os.path.join(clf, "runs"),
                                 "--seeds", "0,1", "--max-steps", "1", "--no-progress"],
    }
    for name, argv in runs.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--out" in err, (name, err)
    assert tree_digest(model, clf, train, str(corpus), stream) == before
