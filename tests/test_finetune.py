"""Fine-tuning end to end: tiny models learn small test-made tasks (classification, regression,
NER, QA) well above chance; the output folder loads in transformers' AutoModelFor... classes
with the same logits; predict returns spans that slice the original text; metrics.json,
early stopping and the best checkpoint; bad-input messages."""

import json
import os
import random

import pytest
import torch

from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.checkpoint import read_state_dict
from bertkit.data.tasks import TruncationWarning
from bertkit.modeling.bert import (BertForQuestionAnswering, BertForSequenceClassification,
                                   BertForTokenClassification)
from bertkit.tasks.evaluate import evaluate_folder
from bertkit.tasks.folder import folder_task
from bertkit.tasks.predict import predict_folder
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from bertkit.training.trainer import TrainingConfig

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FILLER = ("the a of to and in is was it this that on with for as at by from very quite then "
          "film movie story plot actor scene went saw met said lives near far").split()
POSITIVE, NEGATIVE, NEUTRAL = ["great", "excellent"], ["awful", "boring"], ["okay", "average"]
PEOPLE = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "berlin", "tokyo", "hohenzollern"]  # hohenzollern: three word pieces
COLORS = ["red", "green", "blue", "purple", "hohenzollern"]
PIECES = ["hohen", "##zoll", "##ern", "new", "york", "key", "what", "follows", "?", ",", "."]
VOCAB = list(dict.fromkeys(SPECIALS + FILLER + POSITIVE + NEGATIVE + NEUTRAL + PEOPLE
                           + PLACES[:3] + COLORS[:4] + PIECES))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def tiny_model_folder(path, vocab=VOCAB, vocab_size=None):
    """A randomly initialised tiny BertModel + tokenizer saved as an HF folder."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size or len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64)
    BertModel(config).save_pretrained(path)
    Tokenizer.from_vocab(vocab).save_pretrained(path)
    return str(path)


def training(out_dir, **kw):
    base = dict(out_dir=str(out_dir), lr=2e-3, batch_size=16, epochs=8, warmup_ratio=0.1,
                save_every=0, progress_bar=False, tensorboard=False, plot=False, seed=0)
    base.update(kw)
    return TrainingConfig(**base)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def classification_records(n, seed):
    """label = which keyword group appears in a sentence of filler words."""
    rng = random.Random(seed)
    groups = {"pos": POSITIVE, "neg": NEGATIVE, "neutral": NEUTRAL}
    records = []
    for _ in range(n):
        label = rng.choice(sorted(groups))
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 10))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(groups[label]))
        records.append({"text": " ".join(words), "label": label})
    return records


# =========================================================================== classification


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    files = {name: write_jsonl(root / f"{name}.jsonl", classification_records(n, seed))
             for name, n, seed in (("train", 320, 0), ("dev", 60, 1), ("test", 60, 2))}
    cfg = FinetuneConfig("classification", tiny_model_folder(root / "base"), files["train"],
                         files["dev"], files["test"], patience=2)
    result = run_finetuning(cfg, training(root / "out", epochs=25))
    return result, files


def test_classification_learns_the_keyword_task(cls_run):
    result, _ = cls_run
    assert result.labels == ["neg", "neutral", "pos"]
    assert result.metrics["test"]["accuracy"] > 0.9  # chance is 1/3
    assert result.metrics["dev"]["macro_f1"] > 0.9


def test_metrics_json_layout_and_folder(cls_run):
    result, files = cls_run
    out = result.out_dir
    with open(f"{out}/metrics.json", encoding="utf-8") as f:
        metrics = json.load(f)
    assert set(metrics) == {"dev", "test"}
    for split in metrics.values():
        assert {"accuracy", "macro_f1", "eval_loss", "report"} <= set(split)
        assert set(split["report"]) >= {"neg", "neutral", "pos", "macro avg"}
        assert split["report"]["pos"]["support"] > 0
    test_pos = sum(json.loads(line)["label"] == "pos" for line in open(files["test"]))
    assert metrics["test"]["report"]["pos"]["support"] == test_pos
    config = json.load(open(f"{out}/config.json"))
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}
    assert config["label2id"] == {"neg": 0, "neutral": 1, "pos": 2}
    assert config["bertkit_task"] == "classification" and config["bertkit_max_length"] == 128
    for name in ("model.safetensors", "vocab.txt", "tokenizer_config.json", "report.txt",
                 "finetune.json"):
        assert os.path.isfile(f"{out}/{name}"), name
    assert folder_task(out) == "classification"
    # evaluate on the test file gives what metrics.json says about it
    again = evaluate_folder(out, files["test"])
    assert again["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert again["eval_loss"] == pytest.approx(metrics["test"]["eval_loss"], rel=1e-5)


def test_tfidf_baseline_beside_the_model_equals_scikit_learn_on_the_same_files(cls_run):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    result, files = cls_run
    saved = json.load(open(f"{result.out_dir}/metrics.json"))
    train, test = ([json.loads(line) for line in open(files[n])] for n in ("train", "test"))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
                                 token_pattern=r"(?u)\b[\w:]+\b")
    model = LogisticRegression(max_iter=2000).fit(
        vectorizer.fit_transform([r["text"] for r in train]), [r["label"] for r in train])
    predicted = model.predict(vectorizer.transform([r["text"] for r in test]))
    accuracy = sum(p == r["label"] for p, r in zip(predicted, test)) / len(test)
    baseline = saved["test"]["baseline"]
    assert baseline["method"] == "tf-idf + logistic regression"
    assert baseline["accuracy"] == pytest.approx(accuracy)
    assert "baseline (tf-idf + logistic regression, same training file): accuracy" in \
        open(f"{result.out_dir}/report.txt").read()


def test_early_stopping_keeps_the_best_checkpoint(cls_run):
    result, _ = cls_run
    train = result.train
    assert train.stop_reason == "early_stopping"
    evals = [e for e in train.log_history if e["event"] == "eval"]
    accuracies = [e["accuracy"] for e in evals]
    best = max(accuracies)
    first_best = accuracies.index(best)
    # patience 2: exactly two evaluations after the (first) best one, none better
    assert len(evals) == first_best + 3
    assert evals[first_best]["step"] == train.best_step < train.steps
    assert train.best_metric == best
    # the output folder holds the best weights, not the last ones
    out = read_state_dict(result.out_dir)
    last_state = torch.load(f"{result.out_dir}/checkpoints/step-{train.steps}/trainer_state.pt",
                            weights_only=True)["model"]
    key = "classifier.weight"
    assert not torch.equal(out[key], last_state[key])
    assert not os.path.exists(f"{result.out_dir}/best")  # loaded into the model, then removed
    dev = json.load(open(f"{result.out_dir}/metrics.json"))["dev"]
    assert dev["accuracy"] == pytest.approx(best)


def test_classification_predict(cls_run):
    result, _ = cls_run
    out = predict_folder(result.out_dir, texts=["this film was excellent", "boring plot",
                                                "the story is average"])
    assert [p["label"] for p in out] == ["pos", "neg", "neutral"]
    for p in out:
        assert set(p["probabilities"]) == {"neg", "neutral", "pos"}
        assert sum(p["probabilities"].values()) == pytest.approx(1.0)
        assert p["probabilities"][p["label"]] == max(p["probabilities"].values())


def test_over_long_inputs_are_truncated_with_a_count(cls_run):
    result, _ = cls_run
    long_text = " ".join(["film"] * 300) + " great"
    with pytest.warns(TruncationWarning, match="1 of 2 examples were longer than max_length=128"):
        out = predict_folder(result.out_dir, texts=[long_text, "great film"])
    assert len(out) == 2


def test_classification_folder_matches_transformers(cls_run):
    transformers = pytest.importorskip("transformers")
    folder = cls_run[0].out_dir
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert hf.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    ours = BertForSequenceClassification.from_pretrained(folder, verbose=False).eval()
    batch = Tokenizer.from_pretrained(folder)(["great film", "the plot was awful and boring"])
    with torch.no_grad():
        expected = hf(**batch).logits
        got = ours(**batch).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


# =========================================================================== regression


def test_regression_learns_a_count(tmp_path):
    rng = random.Random(3)

    def records(n):
        out = []
        for _ in range(n):
            k = rng.randint(0, 3)
            words = [rng.choice(FILLER[:20]) for _ in range(rng.randint(2, 6))] + ["great"] * k
            rng.shuffle(words)
            out.append({"text": " ".join(words), "label": float(k)})
        return out

    train, dev = (write_jsonl(tmp_path / f"{n}.jsonl", records(k)) for n, k in
                  (("train", 240), ("dev", 60)))
    cfg = FinetuneConfig("regression", tiny_model_folder(tmp_path / "base"), train, dev, dev)
    assert cfg.metric == "pearson"
    result = run_finetuning(cfg, training(tmp_path / "out", epochs=15, lr=4e-3))
    assert result.metrics["test"]["pearson"] > 0.9
    assert result.metrics["test"]["mse"] < 0.2  # the label variance is 1.25
    assert {"pearson", "spearman", "mse"} <= set(result.metrics["dev"])
    config = json.load(open(tmp_path / "out" / "config.json"))
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    scores = [p["score"] for p in predict_folder(result.out_dir, texts=["film", "great great great film"])]
    assert scores[1] > scores[0] + 1.0


# =========================================================================== NER


def ner_sentences(n, seed):
    """Filler words with people (PER), places (LOC; "new york" is two words) in between."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(4, 9)):
            r = rng.random()
            if r < 0.2:
                words.append(rng.choice(PEOPLE).capitalize()), tags.append("B-PER")
            elif r < 0.3:
                words += ["New", "York"]
                tags += ["B-LOC", "I-LOC"]
            elif r < 0.45:
                words.append(rng.choice(PLACES).capitalize()), tags.append("B-LOC")
            else:
                words.append(rng.choice(FILLER)), tags.append("O")
        sentences.append(list(zip(words, tags)))
    return sentences


def write_conll(path, sentences):
    lines = ["-DOCSTART- -X- -X- O", ""]
    for sentence in sentences:
        lines += [f"{w} NN O {t}" for w, t in sentence] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    files = {name: write_conll(root / f"{name}.txt", ner_sentences(n, seed))
             for name, n, seed in (("train", 200, 0), ("dev", 40, 1), ("test", 40, 2))}
    cfg = FinetuneConfig("ner", tiny_model_folder(root / "base"), files["train"], files["dev"],
                         files["test"])
    assert cfg.metric == "f1"
    return run_finetuning(cfg, training(root / "out", epochs=8)), files


def test_ner_learns_entities(ner_run):
    result, _ = ner_run
    assert result.labels == ["B-LOC", "B-PER", "I-LOC", "O"]
    test = result.metrics["test"]
    assert test["f1"] > 0.9
    assert {"precision", "recall", "f1", "report"} <= set(test)
    assert set(test["report"]) >= {"LOC", "PER"}
    assert "LOC" in test["report_text"]
    saved = json.load(open(f"{result.out_dir}/metrics.json"))
    assert saved["test"]["f1"] == pytest.approx(test["f1"]) and "report_text" not in saved["test"]


def test_ner_predict_spans_slice_the_text(ner_run):
    folder = ner_run[0].out_dir
    text = "Yesterday  Alice met Bob in New York, then Hohenzollern."
    (out,) = predict_folder(folder, texts=[text])
    entities = out["entities"]
    for e in entities:
        assert text[e["start"]:e["end"]] == e["entity"]
    found = {(e["entity"], e["label"]) for e in entities}
    assert found == {("Alice", "PER"), ("Bob", "PER"), ("New York", "LOC"),
                     ("Hohenzollern", "LOC")}
    assert predict_folder(folder, texts=["   ", ""]) == [{"entities": []}, {"entities": []}]


def test_ner_folder_matches_transformers(ner_run):
    transformers = pytest.importorskip("transformers")
    folder = ner_run[0].out_dir
    hf = transformers.AutoModelForTokenClassification.from_pretrained(folder).eval()
    assert hf.config.id2label[1] == "B-PER"
    ours = BertForTokenClassification.from_pretrained(folder, verbose=False).eval()
    batch = Tokenizer.from_pretrained(folder)(["alice met bob", "the film in paris was great"])
    with torch.no_grad():
        expected, got = hf(**batch).logits, ours(**batch).logits
    real = batch["attention_mask"].bool()  # padding positions: zeros in, unused out (unpadded)
    assert torch.allclose(got[real], expected[real], atol=1e-5), (got - expected)[real].abs().max()


# =========================================================================== QA


def squad(n, seed, long_every=4, impossible_every=5):
    """SQuAD v2.0 data: contexts of filler words where the answer is the colour after the
    marker "key"; every ``long_every``-th context is long enough to need several windows, and
    every ``impossible_every``-th has no marker (no answer)."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        length = 40 if i % long_every == 0 else rng.randint(5, 12)
        words = [rng.choice(FILLER) for _ in range(length)]
        if i % impossible_every == impossible_every - 1:
            paragraphs.append({"context": " ".join(words), "qas": [{
                "id": f"q{seed}-{i}", "question": "what follows key ?", "answers": [],
                "is_impossible": True}]})
            continue
        at = rng.randrange(len(words))
        answer = rng.choice(COLORS)
        words[at:at] = ["key", answer]
        context = " ".join(words)
        start = len(" ".join(words[:at + 1])) + 1
        assert context[start:start + len(answer)] == answer
        paragraphs.append({"context": context, "qas": [{
            "id": f"q{seed}-{i}", "question": "what follows key ?",
            "answers": [{"text": answer, "answer_start": start}]}]})
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    files = {}
    for name, n, seed in (("train", 240, 0), ("dev", 40, 1), ("test", 40, 2)):
        files[name] = str(root / f"{name}.json")
        (root / f"{name}.json").write_text(json.dumps(squad(n, seed)), encoding="utf-8")
    # max_length 32 and stride 8: the long contexts are cut into several windows
    cfg = FinetuneConfig("qa", tiny_model_folder(root / "base"), files["train"], files["dev"],
                         files["test"], max_length=32, doc_stride=8)
    return run_finetuning(cfg, training(root / "out", epochs=10)), files


def test_qa_learns_the_marker_task(qa_run):
    result, _ = qa_run
    test = result.metrics["test"]
    assert test["exact_match"] > 80 and test["f1"] > 80  # chance is about 1 / context length
    config = json.load(open(f"{result.out_dir}/config.json"))
    assert config["architectures"] == ["BertForQuestionAnswering"]
    assert config["bertkit_task"] == "qa"
    assert config["bertkit_version_2"] is True  # detected: the data has unanswerable questions
    assert (config["bertkit_max_length"], config["bertkit_doc_stride"]) == (32, 8)


def test_qa_predict_spans_slice_the_context(qa_run):
    folder = qa_run[0].out_dir
    contexts = ["the film was key blue and quite far",
                " ".join(["the film"] * 20) + " key hohenzollern " + " ".join(["saw it"] * 10),
                "the film was very near"]
    out = predict_folder(folder, questions=["what follows key ?"] * 3, contexts=contexts)
    assert [p["answer"] for p in out] == ["blue", "hohenzollern", ""]
    for p, context in zip(out[:2], contexts):
        assert context[p["start"]:p["end"]] == p["answer"]
        assert isinstance(p["score"], float)
    assert out[2]["start"] is None and out[2]["end"] is None  # v2.0: no answer


def test_qa_folder_matches_transformers(qa_run):
    transformers = pytest.importorskip("transformers")
    folder = qa_run[0].out_dir
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    ours = BertForQuestionAnswering.from_pretrained(folder, verbose=False).eval()
    batch = Tokenizer.from_pretrained(folder)(["what follows key ?"] * 2,
                                              ["the key red", "a film key green was okay"])
    with torch.no_grad():
        expected, got = hf(**batch), ours(**batch)
    real = batch["attention_mask"].bool()  # padding positions: zeros in, unused out (unpadded)
    for name in ("start_logits", "end_logits"):
        assert torch.allclose(getattr(got, name)[real], getattr(expected, name)[real], atol=1e-5)


# =========================================================================== errors


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    train = write_jsonl(root / "train.jsonl", classification_records(20, 0))
    return root, train, tiny_model_folder(root / "base")


def test_dev_label_unseen_in_train_names_file_line_and_label(small_files, tmp_path):
    root, train, base = small_files
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "great", "label": "pos"},
                                               {"text": "so so", "label": "mixed"}])
    cfg = FinetuneConfig("classification", base, train, dev)
    with pytest.raises(ValueError, match=r"dev\.jsonl:2: label 'mixed' never appears in the "
                                         r"training data"):
        run_finetuning(cfg, training(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # failed before training started


def test_single_class_training_data_is_refused(small_files, tmp_path):
    _, _, base = small_files
    train = write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}] * 3)
    with pytest.raises(ValueError, match=r"one\.jsonl: every example has the label 'x'"):
        run_finetuning(FinetuneConfig("classification", base, train), training(tmp_path / "out"))


def test_vocab_that_does_not_fit_the_model(small_files, tmp_path):
    _, train, _ = small_files
    folder = tiny_model_folder(tmp_path / "small", vocab_size=20)  # vocab.txt is longer
    cfg = FinetuneConfig("classification", folder, train, train)
    with pytest.raises(ValueError, match=rf"vocab.txt has {len(VOCAB)} tokens but the model's "
                                         "vocab_size is 20"):
        run_finetuning(cfg, training(tmp_path / "out"))


def test_missing_files(small_files, tmp_path):
    _, train, base = small_files
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl does not exist"):
        run_finetuning(FinetuneConfig("classification", base, train, str(tmp_path / "nowhere.jsonl")),
                       training(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="model folder .*no-model does not exist"):
        run_finetuning(FinetuneConfig("classification", str(tmp_path / "no-model"), train),
                       training(tmp_path / "out"))


def test_bad_config_and_predict_inputs(small_files, cls_run):
    _, train, base = small_files
    with pytest.raises(ValueError, match="task must be one of classification, regression, ner, qa"):
        FinetuneConfig("translation", base, train)
    with pytest.raises(ValueError, match="metric 'pearson' is not a classification metric"):
        FinetuneConfig("classification", base, train, metric="pearson")
    with pytest.raises(ValueError, match="max_length 600 exceeds the model's "
                                         "max_position_embeddings 512"):
        run_finetuning(FinetuneConfig("classification", base, train, max_length=600),
                       training("unused"))
    folder = cls_run[0].out_dir
    with pytest.raises(ValueError, match="takes texts, not questions"):
        predict_folder(folder, questions=["q"], contexts=["c"])
    with pytest.raises(ValueError, match="is not a fine-tuned task model"):
        predict_folder(base, texts=["x"])


def test_evaluate_rejects_unknown_labels(cls_run, tmp_path):
    data = write_jsonl(tmp_path / "other.jsonl", [{"text": "great", "label": "pos"},
                                                  {"text": "x", "label": "sarcastic"}])
    with pytest.raises(ValueError, match=r"other\.jsonl:2: label 'sarcastic'"):
        evaluate_folder(cls_run[0].out_dir, data)
