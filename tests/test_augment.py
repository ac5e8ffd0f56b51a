"""Data augmentation: EDA operations, WordNet synonyms, MLM replacement, the file command and
finetune --augment (labels kept, dev and test untouched, inputs unchanged on failure)."""

import hashlib
import json
import os
import random
from collections import Counter

import pytest
import torch

from bertkit import BertConfig, BertForMaskedLM, BertModel, Tokenizer
from bertkit.cli import main
from bertkit.data.tasks import ClassificationExample
from bertkit.training.augment import (WORDNET_DIR, AugmentConfig, WordNet, augment_examples,
                                      mlm_replacement, random_deletion, random_swap)
from bertkit.training.finetune import FinetuneConfig, run_finetuning

from test_finetune import (VOCAB, classification_records, tiny_model_folder, training,
                           write_jsonl)

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_WORDNET = os.path.isfile(os.path.join(WORDNET_DIR, "index.noun"))
needs_wordnet = pytest.mark.skipif(not HAS_WORDNET and not os.environ.get("CI"),
                                   reason="Debian's wordnet-base is not installed")


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_swap_keeps_the_words_and_deletion_keeps_order_and_one_word():
    rng = random.Random(0)
    words = "the film was great fun to watch".split()
    swapped = random_swap(words, 1, rng)
    assert Counter(swapped) == Counter(words) and swapped != words
    kept = random_deletion(words, 0.5, rng)
    assert kept == [w for w in words if w in kept] and 1 <= len(kept) <= len(words)
    assert random_deletion(words, 0.0, rng) == words
    assert len(random_deletion(["one"], 1.0, rng)) == 1


@needs_wordnet
def test_wordnet_synonyms_are_wordnets():
    wordnet = WordNet()
    # WordNet 3.0: happy (adj) -> glad, felicitous, well-chosen (hyphenated: left out)
    assert {"glad", "felicitous"} <= set(wordnet.synonyms("happy"))
    assert "happy" not in wordnet.synonyms("happy")
    assert wordnet.synonyms("qwxzy") == []


def test_missing_wordnet_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="no WordNet database in .*wordnet-base"):
        augment_examples([ClassificationExample("a b c", None, "x", 1)],
                         AugmentConfig(("synonym",), wordnet=str(tmp_path)))


def test_augmented_examples_keep_labels_and_pairs_are_refused():
    examples = [ClassificationExample(r["text"], None, r["label"], i + 1)
                for i, r in enumerate(classification_records(20, 0))]
    made = augment_examples(examples, AugmentConfig(("eda",), n=2, alpha=0.2, seed=1))
    by_line = {ex.line: ex for ex in examples}
    assert 0 < len(made) <= 40
    for new in made:
        assert new.label == by_line[new.line].label and new.text != by_line[new.line].text
    again = augment_examples(examples, AugmentConfig(("eda",), n=2, alpha=0.2, seed=1))
    assert [e.text for e in again] == [e.text for e in made]   # seeded
    with pytest.raises(ValueError, match="pairs are refused"):
        augment_examples([ClassificationExample("a", "b", "x", 1)], AugmentConfig(("eda",)))
    with pytest.raises(ValueError, match="methods are eda, synonym, mlm, backtranslate"):
        AugmentConfig(("shuffle",))
    with pytest.raises(ValueError, match="needs --mlm-model"):
        AugmentConfig(("mlm",))


def test_mlm_replacement_draws_whole_words_from_the_model(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=4, intermediate_size=37)
    BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    Tokenizer.from_vocab(VOCAB).save_pretrained(tmp_path / "mlm")
    texts = ["the film was great", "a plot of awful scene"]
    new = mlm_replacement(texts, str(tmp_path / "mlm"), 0.5, 5, random.Random(0))
    for old, text in zip(texts, new):
        changed = [(a, b) for a, b in zip(old.split(), text.split()) if a != b]
        assert len(text.split()) == len(old.split()) and changed
        assert all(b in VOCAB and not b.startswith("##") for _, b in changed)
    BertModel(config).save_pretrained(tmp_path / "plain")
    Tokenizer.from_vocab(VOCAB).save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="has no masked-language-model head"):
        mlm_replacement(texts, str(tmp_path / "plain"), 0.5, 5, random.Random(0))


def test_augment_command_writes_originals_then_copies_and_guards_its_files(tmp_path, capsys):
    source = write_jsonl(tmp_path / "train.jsonl", classification_records(10, 0))
    before = digest(source)
    out = tmp_path / "aug.jsonl"
    assert main(["augment", "--in", source, "--out", str(out), "--method", "eda",
                 "--n", "2"]) == 0
    rows = [json.loads(line) for line in open(out)]
    originals = [json.loads(line) for line in open(source)]
    assert rows[:10] == originals and 10 < len(rows) <= 30
    assert "new (eda, 2 per example)" in capsys.readouterr().out
    assert digest(source) == before
    kept = digest(out)
    assert main(["augment", "--in", source, "--out", str(out), "--method", "eda"]) == 2
    assert "already exists" in capsys.readouterr().err and digest(out) == kept
    assert main(["augment", "--in", source, "--out", source, "--method", "eda",
                 "--overwrite"]) == 2
    assert digest(source) == before


def test_finetune_augments_the_training_split_only(tmp_path, capsys):
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", classification_records(n, seed))
             for name, n, seed in (("train", 40, 0), ("dev", 16, 1))}
    cfg = FinetuneConfig("classification", tiny_model_folder(tmp_path / "base"), files["train"],
                         files["dev"], baseline=False, augment={"methods": ("eda",), "n": 1})
    result = run_finetuning(cfg, training(tmp_path / "out", epochs=None, max_steps=2))
    printed = capsys.readouterr().out
    assert "new training examples beside the 40 of" in printed
    assert sum(result.metrics["dev"]["report"][k]["support"]
               for k in result.labels) == 16   # dev as written
