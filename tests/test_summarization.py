"""Summarization: the docstring set, ROUGE, BERT2BERT warm start, the run and `summarize`.

References: rouge-score's own scorer and hand-counted n-gram overlaps (ROUGE), the BERT
folder's tensors (warm start), the lead-sentence baseline on the same split (learning), files
written by hand (bad input).
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.cli import main
from bertkit.data.corpus import Document
from bertkit.data.summarization import docstring_summaries, lead_sentence, summary_pair
from bertkit.modeling.seq2seq import Seq2SeqConfig, TransformerSeq2Seq
from bertkit.training.summarization import (lead_baseline, run_summarization, summarization_config,
                                            summarize, summarize_command)
from bertkit.training.trainer import TrainingConfig
from bertkit.training.translation import corpus_rouge

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["red", "green", "blue", "cat", "dog", "bird", "runs", "sits", "flies", "big", "small",
         "old", "new", "tree", "house", "car", "sun", "moon", "star", "sea"]


def doc(text: str, name: str = "m.f") -> Document:
    return Document(text=text, module="m", name=name, kind="function")


def test_docstring_pairs_hold_the_first_sentence_out_of_the_document():
    source, target = summary_pair(doc("Return the sum of x. It adds. Then it returns."))
    assert target == "Return the sum of x."
    assert source == "It adds. Then it returns." and target not in source
    assert summary_pair(doc("Too short. Only two.")) is None
    docs = [doc(f"Opening number {i}. Body one of {i}. Body two of {i}.", f"m.f{i}")
            for i in range(200)]
    train, dev, test = docstring_summaries(docs, seed=0)
    assert (len(train), len(dev), len(test)) == (160, 20, 20)
    summaries = [set(t for _, t in split) for split in (train, dev, test)]
    assert not (summaries[0] & summaries[1]) and not (summaries[0] & summaries[2])
    assert docstring_summaries(docs, seed=0) == (train, dev, test)  # deterministic
    assert lead_sentence("First one here. Second one.") == "First one here."


def test_rouge_is_rouge_scores_and_hand_counts():
    scores = corpus_rouge(["the cat sat on the mat"], ["the cat lay on the mat"])
    # unigrams: 5 of 6 shared each way -> F1 5/6; bigrams: (the cat), (on the), (the mat) of 5.
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6)
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)
    assert scores["rougeL"] == pytest.approx(100 * 5 / 6)  # LCS: the cat on the mat
    assert corpus_rouge(["a b", "c d"], ["a b", "x y"])["rouge1"] == pytest.approx(50.0)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    vocab = SPECIALS + ["."] + WORDS
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=128,
                         max_position_embeddings=64)).save_pretrained(folder)
    Tokenizer.from_vocab(vocab).save_pretrained(folder)
    return str(folder)


def test_bert2bert_warm_starts_both_stacks_but_cross_attention(bert_folder):
    model = TransformerSeq2Seq(Seq2SeqConfig.from_bert(bert_folder))
    fresh = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    model.init_encoder_from_bert(bert_folder)
    model.init_decoder_from_bert(bert_folder)
    bert = BertModel.from_pretrained(bert_folder, verbose=False)
    for i in range(2):
        layer, theirs = model.decoder.layers[i], bert.encoder.layers[i]
        assert torch.equal(layer.self_attention.query.weight, theirs.attention.query.weight)
        assert torch.equal(layer.self_attention_output.bias, theirs.attention_output.bias)
        assert torch.equal(layer.ffn.down.weight, theirs.ffn.down.weight)
        assert torch.equal(layer.ffn_norm.weight, theirs.ffn_norm.weight)
        assert torch.equal(layer.cross_attention.key.weight,
                           fresh[f"layers.{i}.cross_attention.key.weight"])  # new
    embeddings = bert.embeddings
    positions = embeddings.position_embeddings.weight + embeddings.token_type_embeddings.weight[0]
    assert torch.equal(model.decoder.embeddings.position_embeddings.weight, positions)


def write_jsonl(path, pairs):
    path.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs))
    return str(path)


def sentence(rng) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(3)) + " ."


def test_summarizer_beats_the_lead_baseline_and_summarizes(tmp_path, bert_folder, capsys):
    """Documents of two three-word sentences whose summary is the second: the lead sentence
    shares little with it; a BERT2BERT trained 250 steps learns to pick the second."""
    rng = random.Random(0)

    def pairs(n):
        out = []
        for _ in range(n):
            first, second = sentence(rng), sentence(rng)
            out.append((f"{first} {second}", second))
        return out

    train = write_jsonl(tmp_path / "train.jsonl", pairs(600))
    dev = write_jsonl(tmp_path / "dev.jsonl", pairs(40))
    cfg = summarization_config(train, dev, dev, model=bert_folder, max_source_length=16,
                               max_target_length=8, num_beams=2, dropout=0.0)
    out = tmp_path / "run"
    training = TrainingConfig(out_dir=str(out), lr=2e-3, batch_size=32, max_steps=250,
                              eval_every=125, warmup_ratio=0.1, weight_decay=0.0,
                              progress_bar=False, tensorboard=False, plot=False, save_every=0)
    result = run_summarization(cfg, training)
    dev_metrics = result.metrics["dev"]
    baseline = dev_metrics["lead_baseline"]
    assert baseline == pytest.approx(lead_baseline(dev))
    assert dev_metrics["rougeL"] > baseline["rougeL"] + 20, dev_metrics
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["lead_baseline"]["rouge2"] == pytest.approx(baseline["rouge2"])
    assert "lead-sentence baseline ROUGE-1" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["bertkit_task"] == "summarization"
    document = "red cat runs . small moon flies ."
    [answer] = summarize(str(out), [document], num_beams=2)
    assert set(answer) == {"source", "summary", "score"}
    (tmp_path / "doc.txt").write_text(document)
    capsys.readouterr()
    assert main(["summarize", "--model", str(out), str(tmp_path / "doc.txt"), "--num-beams", "2",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"] == answer["summary"] and printed["file"].endswith("doc.txt")


def test_bad_input_is_one_line_naming_the_file(tmp_path, bert_folder):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        summarize_command(bert_folder, [str(tmp_path / "empty.txt")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a b ."}\n')
    with pytest.raises(ValueError, match="bad.jsonl"):
        lead_baseline(str(bad))
    with pytest.raises(ValueError, match="metric must be one of rougeL"):
        summarization_config(str(bad), metric="bleu")
