"""Translation training (run_translation) and the folder it writes (translate_folder).

References: sacrebleu recomputed on the outputs (BLEU), the model's own teacher-forced
log-probs and the GNMT formula computed by hand (n-best scores), the in-memory model's
generate (the saved folder), the Trainer's eval log (the best checkpoint), a BERT model
(encoder initialisation), and files written by hand (errors).
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.data.parallel import load_tokenizers
from bertkit.data.tasks import TruncationWarning
from bertkit.modeling.seq2seq import Seq2SeqConfig, TransformerSeq2Seq
from bertkit.training.trainer import TrainingConfig
from bertkit.training.translation import (TranslationConfig, corpus_bleu,
                                          default_training_config, evaluate_translation,
                                          load_parallel_spec, run_translation, translate_folder)

sacrebleu = pytest.importorskip("sacrebleu")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
WORDS = sorted(set(ONES + TENS[2:] + ["hundred"]))
DEVICE = "cpu"  # the thresholds and exact comparisons below were measured in fp32 on a CPU


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def number_in_words(n: int) -> str:
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_in_words(n % 100))


def write_tsv(path, numbers, target=number_in_words):
    path.write_text("".join(f"{' '.join(str(n))}\t{target(n)}\n" for n in numbers),
                    encoding="utf-8")
    return str(path)


def quiet_training(out_dir, **overrides) -> TrainingConfig:
    values = dict(out_dir=str(out_dir), lr=3e-3, schedule="inverse_sqrt", warmup_steps=50,
                  batch_size=32, weight_decay=0.0, progress_bar=False, tensorboard=False,
                  plot=False, save_every=0, log_every=100, device=DEVICE)
    values.update(overrides)
    return TrainingConfig(**values)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Digits -> English words ("3 4 7" -> "three hundred forty seven"), numbers 0-999
    shuffled: 800 train, 100 dev, 100 test; a whole-word vocabulary written out (WordPiece
    training orders tied merges differently from run to run) and a tiny model config."""
    root = tmp_path_factory.mktemp("digits")
    numbers = list(range(1000))
    random.Random(0).shuffle(numbers)
    Tokenizer.from_vocab(SPECIALS + list("0123456789") + WORDS).save_pretrained(root / "vocab")
    (root / "model.json").write_text(json.dumps(dict(
        d_model=64, num_heads=4, encoder_layers=2, decoder_layers=2, ffn_dim=128, dropout=0.1,
        max_position_embeddings=32)))
    return dict(root=root, numbers=numbers, train=write_tsv(root / "train.tsv", numbers[:800]),
                dev=write_tsv(root / "dev.tsv", numbers[800:900]),
                test=write_tsv(root / "test.tsv", numbers[900:]),
                tokenizer=str(root / "vocab"), model_config=str(root / "model.json"))


@pytest.fixture(scope="module")
def trained(task):
    """The task trained through run_translation: 300 steps of the paper's inverse-sqrt
    schedule, dev BLEU every 100 steps with 4 beams. Over seeds 0, 1, 2, 42 the dev BLEU was
    98.5-99.9 and 300 steps take ~15 s on one core."""
    cfg = TranslationConfig(train=task["train"], dev=task["dev"], test=task["test"],
                            tokenizer=task["tokenizer"], model_config=task["model_config"],
                            max_source_length=16, max_target_length=16)
    result = run_translation(cfg, quiet_training(task["root"] / "run", max_steps=300,
                                                 eval_every=100))
    return result


# ============================================================================ learning, folder


def test_learns_digits_to_words_and_writes_the_folder(trained, task):
    out = trained.out_dir
    metrics = json.loads(open(f"{out}/metrics.json", encoding="utf-8").read())
    for split in ("dev", "test"):
        m = metrics[split]
        assert set(m) == {"bleu", "loss", "nll", "signature", "bleu_detail"}
        assert m["bleu"] >= 90, m
        # The whole-word vocab lowercases, so BLEU is computed case-insensitively and says so.
        assert m["signature"].startswith("nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|version:")
        assert 0 < m["nll"] < m["loss"]  # label smoothing adds to the plain NLL
    assert metrics["training_config"]["schedule"] == "inverse_sqrt"
    assert metrics["translation_config"]["num_beams"] == 4
    assert metrics["run"]["steps"] == 300 and metrics["run"]["best_metric"] == "bleu"
    config = json.loads(open(f"{out}/config.json", encoding="utf-8").read())
    assert config["model_type"] == "bertkit-seq2seq" and config["bertkit_task"] == "translation"
    assert (config["bertkit_num_beams"], config["bertkit_length_penalty"]) == (4, 0.6)
    assert config["d_model"] == 64 and config["label_smoothing"] == 0.1
    src, tgt = load_tokenizers(out)
    assert src is tgt and src.vocab == Tokenizer.from_pretrained(task["tokenizer"]).vocab
    evals = [e for e in trained.train.log_history if e.get("event") == "eval"]
    assert [e["step"] for e in evals] == [100, 200, 300]
    best = max(evals, key=lambda e: e["bleu"])
    assert metrics["run"]["best_step"] == best["step"]
    assert metrics["dev"]["bleu"] == pytest.approx(best["bleu"], abs=1e-6)


def test_translate_folder_matches_the_in_memory_model_and_metrics(trained, task):
    lines = open(task["test"], encoding="utf-8").read().splitlines()
    sources, references = zip(*(line.split("\t") for line in lines))
    outputs = translate_folder(trained.out_dir, list(sources), batch_size=7, device=DEVICE)
    assert [o["source"] for o in outputs] == list(sources)

    model, tokenizer = trained.model, Tokenizer.from_pretrained(trained.out_dir)
    expected = []
    for i in range(0, len(sources), 16):  # other batches than translate_folder's
        batch = tokenizer(list(sources[i:i + 16]))
        out = model.generate(batch["input_ids"], batch["attention_mask"], num_beams=4,
                             length_penalty=0.6, max_length=16)
        expected += [tokenizer.decode(seq) for seq in out.sequences]
    assert [o["translation"] for o in outputs] == expected
    bleu = sacrebleu.corpus_bleu([o["translation"] for o in outputs], [list(references)],
                                 lowercase=True)
    saved = json.loads(open(f"{trained.out_dir}/metrics.json", encoding="utf-8").read())
    assert bleu.score == pytest.approx(saved["test"]["bleu"], abs=1e-9)
    again = evaluate_translation(trained.out_dir, task["test"], device=DEVICE)
    assert again["bleu"] == pytest.approx(saved["test"]["bleu"], abs=1e-9)
    assert again["loss"] == pytest.approx(saved["test"]["loss"], rel=1e-5)


def test_n_best_lists_are_ranked_and_scored_as_the_model_says(trained):
    texts = ["3 4 7", "1 1", "9 0 5", "4 0"]
    one = translate_folder(trained.out_dir, texts, num_beams=4, device=DEVICE)
    many = translate_folder(trained.out_dir, texts, num_beams=4, n_best=3, device=DEVICE)
    model = TransformerSeq2Seq.from_pretrained(trained.out_dir)
    tokenizer = Tokenizer.from_pretrained(trained.out_dir)
    eos, bos = model.config.eos_token_id, model.config.bos_token_id
    assert one[0]["translation"] == "three hundred forty seven"
    for single, entry in zip(one, many):
        hypotheses = entry["n_best"]
        assert len(hypotheses) == 3 and "n_best" not in single
        assert hypotheses[0]["translation"] == entry["translation"] == single["translation"]
        scores = [h["score"] for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        for h in hypotheses:  # teacher-forced re-scoring and the GNMT penalty by hand
            target = tokenizer.encode_plain([h["translation"]])[0] + [eos]
            ids = torch.tensor([[2] + tokenizer.encode_plain([entry["source"]])[0] + [3]])
            with torch.no_grad():
                logits = model(ids, decoder_input_ids=torch.tensor([[bos] + target[:-1]])).logits
            log_prob = logits[0].log_softmax(-1)[range(len(target)), target].sum().item()
            assert h["log_prob"] == pytest.approx(log_prob, abs=1e-4)
            assert h["score"] == pytest.approx(log_prob / ((5 + len(target)) / 6) ** 0.6,
                                               abs=1e-4)
    with pytest.raises(ValueError, match=r"n_best must be between 1 and num_beams \(2\), got 3"):
        translate_folder(trained.out_dir, texts, num_beams=2, n_best=3)
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        translate_folder(trained.out_dir, ["1 2", "  "])
    assert translate_folder(trained.out_dir, []) == []
    with pytest.warns(TruncationWarning, match=r"1 of 2 texts were longer than the model's "
                                               r"max_source_length=16"):
        long = translate_folder(trained.out_dir, ["1 2", " ".join("7" * 20)], device=DEVICE)
    cut = translate_folder(trained.out_dir, [" ".join("7" * 14)], device=DEVICE)  # 14 + 2 = 16
    assert long[1]["source"] == " ".join("7" * 20)
    assert long[1]["translation"] == cut[0]["translation"]


def test_the_best_checkpoint_by_bleu_is_kept(trained, task):
    """Continue the trained folder on *wrong* targets (the words reversed): dev BLEU (right
    targets) falls from the first evaluation on, so the last model is not the best one and
    the folder must hold the first evaluation's weights."""
    root = task["root"]
    wrong = write_tsv(root / "wrong.tsv", task["numbers"][:800],
                      lambda n: " ".join(reversed(number_in_words(n).split())))
    cfg = TranslationConfig(train=wrong, dev=task["dev"], model=trained.out_dir, num_beams=1,
                            max_source_length=16, max_target_length=16)
    out = root / "continued"
    result = run_translation(cfg, quiet_training(out, lr=3e-4, schedule="constant",
                                                 warmup_steps=0, max_steps=8, eval_every=2))
    evals = [e for e in result.train.log_history if e.get("event") == "eval"]
    assert [e["step"] for e in evals] == [2, 4, 6, 8]
    assert evals[0]["bleu"] > 90 and evals[-1]["bleu"] < evals[0]["bleu"] - 5, evals
    assert result.train.best_step == 2
    assert result.metrics["dev"]["bleu"] == pytest.approx(evals[0]["bleu"], abs=1e-6)
    saved = load_file(str(out / "model.safetensors"))
    last = torch.load(out / "checkpoints" / "step-8" / "trainer_state.pt",
                      weights_only=True)["model"]
    assert not (out / "best").exists()  # loaded into the model, then removed
    assert not all(torch.equal(tensor, last[key]) for key, tensor in saved.items())
    # Continuing keeps the folder's tokenizer and architecture.
    assert Tokenizer.from_pretrained(out).vocab == Tokenizer.from_pretrained(trained.out_dir).vocab
    assert TransformerSeq2Seq.from_pretrained(out).config.d_model == 64


# ============================================================================ other model sources


def test_encoder_initialised_from_a_bert_folder(tmp_path, task):
    """A tiny BERT with the task's vocabulary; one step at a negligible lr keeps the weights,
    so the saved encoder must still compute BERT's hidden states. The target side gets its
    own vocabulary, trained on the targets."""
    torch.manual_seed(0)
    bert_dir = tmp_path / "bert"
    vocab = SPECIALS + list("0123456789") + WORDS
    bert = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=37)).eval()
    bert.save_pretrained(bert_dir)
    Tokenizer.from_vocab(vocab).save_pretrained(bert_dir)
    cfg = TranslationConfig(train=task["dev"], model=str(bert_dir), shared_vocab=False,
                            vocab_size=60, decoder_layers=1, dropout=0.0)
    out = tmp_path / "out"
    result = run_translation(cfg, quiet_training(out, lr=1e-12, schedule="constant",
                                                 warmup_steps=0, max_steps=1))
    config = Seq2SeqConfig.from_pretrained(out)
    assert (config.encoder_layers, config.decoder_layers, config.d_model) == (2, 1, 32)
    assert config.position_encoding == "learned" and config.layernorm_embedding
    assert config.vocab_size == len(vocab) and not config.share_embeddings
    source, target = load_tokenizers(out)
    assert source.vocab == Tokenizer.from_pretrained(bert_dir).vocab
    assert "hundred" in target.vocab and "7" not in target.vocab  # trained on the targets only
    assert config.tgt_vocab_size == target.vocab_size
    model = TransformerSeq2Seq.from_pretrained(out)
    ids = torch.tensor([[2, 8, 9, 12, 3], [2, 6, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = bert(ids, attention_mask=mask).last_hidden_state
        got = model.encode(ids, mask)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=1e-4)
    assert result.metrics == {}  # no dev or test given
    assert len(translate_folder(str(out), ["3 4", "5"], num_beams=2)) == 2


def test_vocab_trained_on_the_data_and_resume_reuses_it(tmp_path, task):
    out = tmp_path / "run"
    cfg = TranslationConfig(train=task["dev"], model_size="tiny", vocab_size=60,
                            max_source_length=16, max_target_length=16)
    run_translation(cfg, quiet_training(out, max_steps=2))
    vocab = (out / "vocab.txt").read_text(encoding="utf-8")
    assert "hundred" in vocab.split() and len(vocab.split()) <= 60
    assert Seq2SeqConfig.from_pretrained(out).vocab_size == len(vocab.split())
    # The resumed run must load the checkpoint's vocab: a new one of 90 would not fit the
    # checkpoint's embeddings.
    cfg = TranslationConfig(train=task["dev"], model_size="tiny", vocab_size=90,
                            max_source_length=16, max_target_length=16)
    result = run_translation(cfg, quiet_training(out, max_steps=4), resume_from=str(out))
    assert result.train.steps == 4
    assert (out / "vocab.txt").read_text(encoding="utf-8") == vocab


def test_default_training_config_is_the_papers():
    training = default_training_config("runs/x", max_steps=10)
    assert training.schedule == "inverse_sqrt" and training.warmup_steps == 4000
    assert training.adam_betas == (0.9, 0.98) and training.adam_eps == 1e-9
    assert training.max_steps == 10 and training.weight_decay == 0.0
    assert default_training_config("runs/x", warmup_ratio=0.1).warmup_steps == 0


# ============================================================================ data and errors


def test_data_arguments_name_a_file_or_two_aligned_files(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("eins\nzwei\n", encoding="utf-8")
    for spec in (f"source={tmp_path}/a.en,target={tmp_path}/a.de",
                 f"target={tmp_path}/a.de,source={tmp_path}/a.en"):
        assert [(e.source, e.target) for e in load_parallel_spec(spec)] == [("one", "eins"),
                                                                           ("two", "zwei")]
    with pytest.raises(ValueError, match=r"names only the source file"):
        load_parallel_spec(f"source={tmp_path}/a.en")
    with pytest.raises(ValueError, match=r"write two aligned files as source=FILE,target=FILE"):
        load_parallel_spec(f"source={tmp_path}/a.en,tgt={tmp_path}/a.de")


def test_corpus_bleu_is_sacrebleus():
    hyps, refs = ["the cat sat on the mat", "a dog"], ["the cat sat on a mat", "a big dog"]
    got = corpus_bleu(hyps, refs)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert "case:mixed" in got["signature"] and got["bleu_detail"].startswith("BLEU = ")
    assert corpus_bleu(["The Cat"], ["the cat"], lowercase=True)["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(["the cat"], [["the cat"]]).score)


@pytest.mark.parametrize("field, value, message", [
    ("metric", "accuracy", r"TranslationConfig.metric must be one of bleu, loss"),
    ("model_size", "huge", r"TranslationConfig.model_size must be one of tiny"),
    ("num_beams", 0, r"TranslationConfig.num_beams must be an integer >= 1"),
    ("label_smoothing", 1.0, r"TranslationConfig.label_smoothing must be in \[0, 1\)"),
    ("train", "", r"TranslationConfig.train must name the training data"),
])
def test_config_errors_name_the_field(field, value, message):
    values = dict(train="train.tsv")
    values[field] = value
    with pytest.raises(ValueError, match=message):
        TranslationConfig(**values)
    with pytest.raises(ValueError, match=r"the model folder m brings its own tokenizer"):
        TranslationConfig(train="t.tsv", model="m", tokenizer="tok")


def test_run_errors_name_the_file(tmp_path, task):
    training = quiet_training(tmp_path / "out", max_steps=1)
    (tmp_path / "src.txt").write_text("1 2\n3\n4\n", encoding="utf-8")
    (tmp_path / "tgt.txt").write_text("twelve\nthree\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"misaligned parallel files: .*src.txt has 3 lines but "
                                         r".*tgt.txt has 2"):
        run_translation(TranslationConfig(
            train=f"source={tmp_path}/src.txt,target={tmp_path}/tgt.txt"), training)
    (tmp_path / "empty.tsv").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty.tsv holds no examples"):
        run_translation(TranslationConfig(train=task["train"], dev=str(tmp_path / "empty.tsv")),
                        training)
    with pytest.raises(FileNotFoundError, match=r"model folder .*nowhere does not exist"):
        run_translation(TranslationConfig(train=task["train"], model=str(tmp_path / "nowhere")),
                        training)
    other = tmp_path / "gpt"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "gpt2"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"gpt is neither a bertkit seq2seq folder nor a BERT "
                                         r"folder .*model_type 'gpt2'"):
        run_translation(TranslationConfig(train=task["train"], model=str(other)), training)
    with pytest.raises(FileNotFoundError, match=r"has no config.json"):
        run_translation(TranslationConfig(train=task["train"], model=task["tokenizer"]),
                        training)
    with pytest.raises(ValueError, match=r"TranslationConfig.max_source_length 64 exceeds the "
                                         r"model's max_position_embeddings 32"):
        run_translation(TranslationConfig(train=task["train"], tokenizer=task["tokenizer"],
                                          model_config=task["model_config"],
                                          max_source_length=64, max_target_length=16), training)
    with pytest.raises(ValueError, match=r"is a BERT folder, not a translation model"):
        bert_dir = tmp_path / "bert"
        BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                   intermediate_size=37).save_pretrained(bert_dir)
        translate_folder(str(bert_dir), ["1 2"])
