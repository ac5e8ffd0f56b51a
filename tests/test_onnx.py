"""ONNX export and the onnxruntime path: every head's exported graph matches PyTorch on batch
sizes, lengths and padding the export never saw, and gives the same losses; `predict` and
`evaluate --runtime onnx` match the torch runtime on a classifier folder; a graph that
disagrees is refused and leaves no file; a missing or stale model.onnx is a clear error;
all-MiniLM-L6-v2's real weights export within 1e-4."""

import json
import os
import shutil

import pytest
import torch

from bertkit import (BertConfig, BertForMaskedLM, BertForQuestionAnswering,
                     BertForSequenceClassification, BertForTokenClassification, BertModel,
                     Tokenizer)
from bertkit.cli import main
from bertkit.compress.onnx import export_folder, export_model
from bertkit.modeling.bert import padded_path
from bertkit.runtime.onnx import OUTPUTS, OnnxModel
from bertkit.tasks.evaluate import evaluate_folder
from bertkit.tasks.predict import predict_folder

from conftest import TINY, TINY_VOCAB

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# (BertForPreTraining exports too; left out to keep this file fast: each export takes seconds.)
HEADS = [BertModel, BertForSequenceClassification, BertForTokenClassification,
         BertForQuestionAnswering, BertForMaskedLM]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def tiny_config(**kw) -> BertConfig:
    # A larger init spread than BERT's 0.02 so classes' logits differ clearly (stable argmax).
    return BertConfig(**{**TINY, "max_position_embeddings": 64, "initializer_range": 0.2,
                         "id2label": {0: "neg", 1: "neutral", 2: "pos"}, **kw})


def padded_batch(lengths, seed, vocab_size=99):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(5, vocab_size, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()   # (B, T)
    types = torch.zeros_like(ids)
    types[:, width // 2:] = 1
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask,
            "token_type_ids": types * mask}


def real_tokens(x, batch):
    """The real-token rows of a per-token output (B, T, ...); other outputs unchanged. What a
    padding position holds is used by nothing, and the runtimes' rounding differs most there."""
    mask = batch["attention_mask"].bool()
    return x[mask] if x.dim() >= 2 and x.shape[:2] == mask.shape else x


def task_labels(cls, batch):
    """Labels of the head's task for ``batch`` (none for the encoder and pretraining heads)."""
    b, t = batch["input_ids"].shape
    g = torch.Generator().manual_seed(b * t)
    if cls is BertForSequenceClassification:
        return {"labels": torch.randint(0, 3, (b,), generator=g)}
    if cls is BertForTokenClassification:
        labels = torch.randint(0, 3, (b, t), generator=g)
        return {"labels": labels.masked_fill(batch["attention_mask"] == 0, -100)}
    if cls is BertForQuestionAnswering:  # t + 5: past the end, ignored as in transformers
        return {"start_positions": torch.tensor([0] + [t + 5] * (b - 1)),
                "end_positions": torch.randint(0, t, (b,), generator=g)}
    return {}


@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_every_head_matches_pytorch_on_unseen_shapes(cls, tmp_path):
    torch.manual_seed(0)
    model = cls(tiny_config()).eval()
    result = export_model(model, tmp_path / "m.onnx")
    assert result.max_abs_diff <= 1e-4 and result.outputs == OUTPUTS[cls.__name__]
    assert os.listdir(tmp_path) == ["m.onnx"]  # no partial file left behind
    session = OnnxModel(tmp_path / "m.onnx", model.config)
    # The export traced (2, 8); these differ in batch size and length, padded and not.
    for lengths in ([23, 17, 4, 1, 23], [40], [2, 3]):
        batch = padded_batch(lengths, seed=len(lengths))
        with torch.inference_mode():
            want = model(**batch)
        got = session(**batch)
        assert type(got) is type(want)
        for name in result.outputs:
            w, g = getattr(want, name), getattr(got, name)
            assert g.shape == w.shape, name
            assert real_tokens(g - w, batch).abs().max() < 1e-5, name
        # With labels the loss is computed beside the graph, as the PyTorch head does.
        labels = task_labels(cls, batch)
        if labels:
            # the exported graph is the padded path, whose pad logits enter QA's softmax (as
            # in transformers); the unpadded path's pad logits are the bias alone
            with torch.inference_mode(), padded_path(model):
                want_loss = model(**batch, **labels).loss
            assert abs(float(session(**batch, **labels).loss) - float(want_loss)) < 1e-5


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    """An (untrained) tiny classifier folder with a tokenizer, texts and a labelled file;
    test_cli_export_then_predict_and_evaluate_with_onnx exports it to MODEL/model.onnx."""
    root = tmp_path_factory.mktemp("onnx_cls")
    folder = root / "model"
    torch.manual_seed(1)
    BertForSequenceClassification(tiny_config(vocab_size=len(TINY_VOCAB))).save_pretrained(folder)
    Tokenizer.from_vocab(TINY_VOCAB).save_pretrained(folder)
    texts = ["the cafe", "Hello world, the naive café!", "un", "THE World is ending (again)",
             "日本 hello", "a b c d e f g h i j k l m n o p q r s t u v w x y z"]
    data = root / "dev.jsonl"
    labels = ["neg", "neutral", "pos"]
    data.write_text("".join(json.dumps({"text": t, "label": labels[i % 3]}) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    return str(folder), texts, str(data)


def test_cli_export_then_predict_and_evaluate_with_onnx(classifier_folder, capsys):
    folder, texts, data = classifier_folder
    assert main(["export", "--model", folder, "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {os.path.join(folder, 'model.onnx')}" in out and "max abs diff" in out
    assert "MB" in out and "BertForSequenceClassification" in out

    torch_preds = predict_folder(folder, texts, batch_size=4)
    onnx_preds = predict_folder(folder, texts, batch_size=4, runtime="onnx")
    assert [p["label"] for p in onnx_preds] == [p["label"] for p in torch_preds]
    for a, b in zip(onnx_preds, torch_preds):
        for label, p in a["probabilities"].items():
            assert abs(p - b["probabilities"][label]) < 1e-5

    assert main(["predict", "--model", folder, "--runtime", "onnx", texts[1]]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["label"] == torch_preds[1]["label"]

    want = evaluate_folder(folder, data, batch_size=4)
    got = evaluate_folder(folder, data, batch_size=4, runtime="onnx")
    assert got["accuracy"] == want["accuracy"]
    assert abs(got["eval_loss"] - want["eval_loss"]) < 1e-5


def test_missing_or_stale_onnx_file_is_a_clear_error(classifier_folder, tmp_path, capsys):
    folder, texts, _ = classifier_folder
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns("model.onnx"))
    with pytest.raises(FileNotFoundError, match="run `bertkit export --model .* --format onnx` first"):
        predict_folder(str(bare), texts, runtime="onnx")
    assert main(["predict", "--model", str(bare), "--runtime", "onnx", "hello"]) == 2
    assert "bertkit export" in capsys.readouterr().err

    if not os.path.isfile(os.path.join(folder, "model.onnx")):
        pytest.skip("needs the export of test_cli_export_then_predict_and_evaluate_with_onnx")
    stale = tmp_path / "stale"
    shutil.copytree(folder, stale)
    torch.manual_seed(2)  # weights trained again after the export
    BertForSequenceClassification(tiny_config(vocab_size=len(TINY_VOCAB))).save_pretrained(stale)
    with pytest.raises(ValueError, match="other weights"):
        predict_folder(str(stale), texts, runtime="onnx")
    with pytest.raises(ValueError, match="runtime must be one of"):
        predict_folder(folder, texts, runtime="tensorrt")


def test_a_disagreeing_export_is_refused_and_leaves_no_file(classifier_folder, tmp_path,
                                                            monkeypatch, capsys):
    folder, _, _ = classifier_folder
    real_run = OnnxModel.run_arrays

    def off_by_a_bit(self, feeds):  # as if the graph computed something slightly different
        return [a + 1e-3 for a in real_run(self, feeds)]

    monkeypatch.setattr(OnnxModel, "run_arrays", off_by_a_bit)
    out = tmp_path / "sub" / "refused.onnx"
    assert main(["export", "--model", folder, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "onnxruntime disagrees with PyTorch" in err and "> atol 0.0001" in err
    assert len(err.splitlines()) == 1
    assert os.listdir(out.parent) == []  # neither the file nor a partial one


def test_bad_export_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_folder(tmp_path / "nope")
    model = BertModel(tiny_config())
    with pytest.raises(ValueError, match="opset"):
        export_model(model, tmp_path / "m.onnx", opset=99)
    with pytest.raises(ValueError, match="cannot export a Linear"):
        export_model(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)


def test_minilm_real_weights_export_within_1e_4(minilm_folder, tmp_path):
    result = export_folder(minilm_folder, tmp_path / "minilm.onnx")
    assert result.architecture == "BertModel" and result.max_abs_diff < 1e-4
    model = BertModel.from_pretrained(minilm_folder, verbose=False).eval()
    tokenizer = Tokenizer.from_pretrained(minilm_folder)
    batch = tokenizer(["A short one.", "A much longer sentence about exporting BERT to ONNX, "
                       "with padding in the batch and a length the export never traced."],
                      ["a pair", "and another second segment"])
    with torch.inference_mode():
        want = model(**batch)
    got = OnnxModel(result.path, model.config, threads=1)(**batch)
    assert real_tokens(got.last_hidden_state - want.last_hidden_state, batch).abs().max() < 1e-4
    assert (got.pooler_output - want.pooler_output).abs().max() < 1e-4
