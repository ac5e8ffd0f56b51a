"""Explanations (issue 15): IG completeness on every head, model-randomisation sanity,
faithfulness (deletion curves), attention maps against transformers, the reports and the
bad-input messages."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from bertkit import BertConfig, Tokenizer
from bertkit.explain import (attention_maps, attention_rollout, deletion_curve, explain,
                             load_explainable, randomized_top_layers, run_explain_command)
from bertkit.explain.subject import encode_input
from bertkit.modeling.bert import (BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                                   BertForSequenceClassification, BertForTokenClassification,
                                   BertModel)
from bertkit.outputs import MARKER
from bertkit.tasks import TASKS
from bertkit.tasks.base import TaskSettings
from bertkit.training.finetune import FinetuneConfig, run_finetuning
from tests.test_finetune import (VOCAB, classification_records, tiny_model_folder, training,
                                 write_jsonl)

pytestmark = pytest.mark.usefixtures("one_thread")

# initializer_range 0.2 (not BERT's 0.02): a tiny model at 0.02 is nearly linear in its input,
# and IG is then exact at any step count, so the too-few-steps test could not fail.
HEADS = {
    "classification": (BertForSequenceClassification, {"id2label": {0: "neg", 1: "pos"}}),
    "regression": (BertForSequenceClassification, {"id2label": {0: "LABEL_0"},
                                                   "problem_type": "regression"}),
    "ner": (BertForTokenClassification, {"id2label": {0: "O", 1: "B-PER", 2: "I-PER"}}),
    "qa": (BertForQuestionAnswering, {}),
    "fill-mask": (BertForMaskedLM, {}),
    "pretraining": (BertForPreTraining, {}),
    "encoder": (BertModel, {}),
}
INPUTS = {
    "classification": ("the film was great and very boring", None),
    "pair": ("the film was great", "the story was awful"),
    "regression": ("the film was quite excellent", None),
    "ner": ("Alice met Bob in Paris, then Hohenzollern.", None),
    "qa": ("what follows key ?", "the film key red was great"),
    "fill-mask": ("the film was [MASK] and the plot [MASK]", None),
}
INPUTS["pretraining"] = INPUTS["fill-mask"]


def head_folder(path, kind):
    cls, extra = HEADS[kind]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=37, initializer_range=0.2,
                        **extra)
    model = cls(config)
    if kind == "ner":  # every word B-PER: the entities (and targets) do not depend on chance
        with torch.no_grad():
            model.classifier.bias[1] = 10.0
    if kind in TASKS:
        TaskSettings().write_to(model.config, TASKS[kind])
    model.save_pretrained(path)
    Tokenizer.from_vocab(VOCAB).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    return {kind: head_folder(root / kind, kind) for kind in HEADS}


def folder_and_input(heads, case):
    return heads["classification" if case == "pair" else case], INPUTS[case]


def relative_gaps(explanation):
    """Per target: |sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)|."""
    gaps = []
    for a in explanation.attributions:
        difference = a.score - a.baseline_score
        assert abs(difference) > 1e-3, "f(x) = f(baseline): completeness says nothing"
        gaps.append(abs(sum(a.tokens) - difference) / abs(difference))
    return gaps


# =========================================================================== completeness


@pytest.mark.parametrize("case", ["classification", "pair", "regression", "ner", "qa",
                                  "fill-mask"])
def test_ig_completeness_at_the_default_steps(heads, case):
    folder, (text, pair) = folder_and_input(heads, case)
    explanation = explain(folder, text, pair, method="ig")
    expected_targets = {"ner": 9, "qa": 2, "fill-mask": 2}.get(case, 1)
    assert len(explanation.attributions) == expected_targets
    assert max(relative_gaps(explanation)) < 0.02
    for a in explanation.attributions:  # words are the sums of their pieces
        assert sum(a.words) == pytest.approx(sum(a.tokens), abs=1e-5)
        assert a.delta == pytest.approx(sum(a.tokens) - (a.score - a.baseline_score), abs=1e-4)


def test_too_few_steps_break_completeness(heads):
    worst = max(max(relative_gaps(explain(*folder_and_input(heads, case)[:1],
                                          *INPUTS[case], method="ig", steps=2)))
                for case in ("classification", "pair", "ner", "qa", "fill-mask"))
    assert worst > 0.02


def test_words_slice_their_text_and_pieces_add_up(heads):
    text = "Hohenzollern went to Paris."
    explanation = explain(heads["classification"], text, method="gradxinput")
    assert [w.text for w in explanation.words] == ["Hohenzollern", "went", "to", "Paris", "."]
    for w in explanation.words:
        assert text[w.start:w.end] == w.text
    assert explanation.words[0].tokens == [1, 2, 3]  # hohen ##zoll ##ern
    (a,) = explanation.attributions
    assert a.words[0] == pytest.approx(sum(a.tokens[1:4]), abs=1e-6)
    qa = explain(heads["qa"], *INPUTS["qa"])
    context = INPUTS["qa"][1]
    assert context[qa.prediction["start"]:qa.prediction["end"]] == qa.prediction["answer"]
    assert {w.segment for w in qa.words} == {0, 1}


def test_occlusion_is_the_drop_when_a_word_becomes_pad(heads):
    subject = load_explainable(heads["classification"])
    text = INPUTS["classification"][0]
    (a,) = explain(subject, text, method="occlusion").attributions
    encoded = encode_input(subject, text, None)
    index = subject.model.config.label2id[a.target]
    ids = encoded.input_ids.clone()
    ids[0, encoded.words[3].tokens] = subject.tokenizer.pad_token_id
    with torch.no_grad():
        dropped = subject.model(ids).logits[0, index]
    assert a.words[3] == pytest.approx(a.score - float(dropped), abs=1e-5)


# =========================================================================== a trained model


@pytest.fixture(scope="module")
def keyword_model(tmp_path_factory):
    """The keyword task of test_finetune (label = which keyword group a sentence holds)."""
    root = tmp_path_factory.mktemp("keyword")
    files = {name: write_jsonl(root / f"{name}.jsonl", classification_records(n, seed))
             for name, n, seed in (("train", 240, 0), ("dev", 40, 1))}
    cfg = FinetuneConfig("classification", tiny_model_folder(root / "base"), files["train"],
                         files["dev"])
    result = run_finetuning(cfg, training(root / "out", epochs=10))
    assert result.metrics["dev"]["accuracy"] > 0.9
    return result.out_dir


KEYWORD_TEXTS = [r["text"] for r in classification_records(12, seed=7)]


def test_sanity_randomised_top_layers_change_the_attributions(keyword_model):
    trained = load_explainable(keyword_model)
    randomized = randomized_top_layers(trained, layers=1)
    correlations = []
    for text in KEYWORD_TEXTS:
        ours = explain(trained, text, method="ig").attributions[0].words
        other = explain(randomized, text, method="ig",
                        target=explain(trained, text).prediction["label"]).attributions[0].words
        correlations.append(spearmanr(ours, other).statistic)
    assert np.mean(correlations) < 0.5, correlations
    # and the original model was not touched by the randomisation
    again = explain(trained, KEYWORD_TEXTS[0], method="ig").attributions[0].words
    assert again == pytest.approx(explain(keyword_model, KEYWORD_TEXTS[0]).attributions[0].words)


@pytest.mark.parametrize("method", ["ig", "gradxinput", "occlusion"])
def test_deleting_top_words_hurts_more_than_random_words(keyword_model, method):
    curve = deletion_curve(keyword_model, KEYWORD_TEXTS, method=method, random_draws=5)
    assert curve.ks == [1, 2, 3, 4, 5] and curve.examples == len(KEYWORD_TEXTS)
    assert np.mean(curve.top) > np.mean(curve.random), curve
    assert curve.top[0] > curve.random[0], curve


def test_completeness_holds_on_a_trained_model_too(keyword_model):
    """A fine-tuned head bends along the IG path far more than a fresh one: a fixed 50 steps
    were 30% off here; the default chooses enough steps, and says how many."""
    checked = 0
    for text in KEYWORD_TEXTS:
        explanation = explain(keyword_model, text, method="ig")
        (a,) = explanation.attributions
        if abs(a.score - a.baseline_score) < 0.05:  # nothing to complete
            continue
        assert max(relative_gaps(explanation)) < 0.02, text
        assert explanation.steps >= 32
        checked += 1
    assert checked >= 4


def test_the_keyword_gets_the_largest_attribution(keyword_model):
    explanation = explain(keyword_model, "the film was very great and it was quite long")
    (a,) = explanation.attributions
    assert explanation.prediction["label"] == "pos"
    assert explanation.words[int(np.argmax(a.words))].text == "great"


# =========================================================================== attention


def test_attention_maps_equal_transformers_on_minilm(minilm_folder):
    transformers = pytest.importorskip("transformers")
    text = "attention maps are the probabilities of the explicit path"
    subject = load_explainable(minilm_folder, device="cpu")
    assert subject.kind == "encoder"
    encoded = encode_input(subject, text, None)
    maps = attention_maps(subject.model, encoded.inputs)                      # (L, N, T, T)
    hf = transformers.AutoModel.from_pretrained(minilm_folder, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = hf(**encoded.inputs, output_attentions=True).attentions
    expected = torch.stack([a[0] for a in expected]).numpy()
    assert maps.shape == expected.shape == (6, 12, encoded.input_ids.size(1),
                                            encoded.input_ids.size(1))
    assert np.abs(maps - expected).max() <= 1e-5
    explanation = explain(subject, text, method="attention")
    assert np.allclose(explanation.rollout, attention_rollout(expected)[0], atol=1e-5)


def test_rollout_follows_abnar_and_zuidema():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 2, 4, 4))
    maps /= maps.sum(-1, keepdims=True)
    expected = np.eye(4)
    for layer in maps.mean(1):
        expected = (0.5 * layer + 0.5 * np.eye(4)) @ expected
    assert np.allclose(attention_rollout(maps), expected)
    assert np.allclose(attention_rollout(maps).sum(-1), 1.0)


# =========================================================================== reports and CLI


def test_report_page_terminal_view_and_json(heads, tmp_path):
    out = tmp_path / "report.html"
    printed = run_explain_command(heads["classification"], "the film was great", out=str(out))
    assert printed.splitlines()[0].startswith("classification prediction: ")
    assert "for:" in printed and printed.endswith(f"wrote {out}")
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 3  # 2 layers + rollout
    assert "<link" not in page and "<script" not in page and "probability" in page
    assert "rgba(220,38,38" in page or "rgba(37,99,235" in page
    with pytest.raises(ValueError, match="already exists"):
        run_explain_command(heads["classification"], "the film", out=str(out))
    data = json.loads(run_explain_command(heads["qa"], INPUTS["qa"][0], pair=INPUTS["qa"][1],
                                          as_json=True))
    assert [a["target"] for a in data["attributions"]] == ["answer start", "answer end"]
    assert len(data["attention"]["layers_mean_over_heads"]) == 2


def test_batch_file_writes_a_page_per_example_and_an_index(heads, tmp_path):
    batch = tmp_path / "texts.txt"
    batch.write_text("the film was great\n\nawful boring movie\n", encoding="utf-8")
    out = tmp_path / "pages"
    printed = run_explain_command(heads["classification"], file=str(batch), out=str(out),
                                  method="occlusion")
    assert sorted(os.listdir(out)) == [MARKER, "example-001.html", "example-002.html",
                                       "index.html"]
    assert "example-002.html" in (out / "index.html").read_text()
    assert printed.endswith(f"wrote 2 pages and {out / 'index.html'}")


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_bad_input_is_one_line(heads, tmp_path):
    config = os.path.join(heads["classification"], "config.json")
    before = sha256(config)
    cases = [
        (lambda: explain(heads["classification"], "the film", target="happy"),
         "unknown target label 'happy'; the model's labels are neg, pos"),
        (lambda: explain(heads["encoder"], "the film", method="ig"),
         f"{heads['encoder']} has no task head (architectures: BertModel); attributions explain "
         "a prediction: fine-tune it first, or use the attention method"),
        (lambda: explain(heads["classification"], "the film", method="lime"),
         "method must be one of ig, gradxinput, occlusion, attention, got 'lime'"),
        (lambda: explain(heads["ner"], "Alice", target="LOC"),
         "unknown target entity type 'LOC'; the model's types are PER"),
        (lambda: explain(heads["qa"], "what follows key ?"),
         "a question-answering model needs a context: give the question as the text and the "
         "context as the pair (--pair)"),
        (lambda: explain(heads["fill-mask"], "no mask here"),
         "the text has no [MASK] token: a fill-mask model explains its guesses for the [MASK]s"),
        (lambda: explain(heads["classification"], "the film", steps=0),
         "steps must be an integer >= 1, got 0"),
        (lambda: run_explain_command(heads["classification"]),
         "give a TEXT to explain (or --file)"),
        (lambda: run_explain_command(heads["classification"], "x", out=config),
         f"--out {config} lies inside --model {heads['classification']}: bertkit never writes "
         "into its input; choose a folder outside it"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == message
        assert "\n" not in str(error.value)
    assert sha256(config) == before
    with pytest.raises(FileNotFoundError, match="does not exist"):
        explain(str(tmp_path / "missing"), "text")


def test_a_pretraining_folder_is_explained_through_its_mlm_head(heads):
    """`bertkit pretrain` writes BertForPreTraining folders: explained as fill-mask (its NSP
    head has nothing to say about a [MASK])."""
    explanation = explain(heads["pretraining"], INPUTS["fill-mask"][0])
    assert explanation.kind == "fill-mask" and len(explanation.attributions) == 2
    assert max(relative_gaps(explanation)) < 0.02


def test_attention_works_on_every_kind(heads):
    for kind in HEADS:
        text, pair = INPUTS.get(kind, ("the film was great", None))
        explanation = explain(heads[kind], text, pair, method="attention")
        (a,) = explanation.attributions
        assert len(a.words) == len(explanation.words)
        assert explanation.attention.shape[0] == 2
        assert explain(heads[kind], text, pair, method="attention").attributions[0].words == a.words
