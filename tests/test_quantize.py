"""Dynamic int8 quantization: the int8 folder reloads as int8 with the same outputs, layers are
chosen by measurement, the accuracy gate refuses, bad input gets a clear message."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bertkit import (BertConfig, BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                     BertForSequenceClassification, BertForTokenClassification, BertModel,
                     Tokenizer)
from bertkit.cli import main as cli
from bertkit.compress.quantize import probe_batch, quantize_model
from bertkit.modeling.int8 import QuantizedEmbedding, QuantizedLinear
from bertkit.tasks.predict import predict_folder
from tests.conftest import TINY

HARD = "bert.encoder.layer.0.output.dense"  # the layer _make_hard_to_quantize sabotages


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def _batch(seed: int = 0, batch: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY["vocab_size"], (batch, length), generator=g)   # (B, T)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _tiny(cls, **config):
    torch.manual_seed(0)
    return cls(BertConfig(**{**TINY, **config})).eval()


def _make_hard_to_quantize(model) -> None:
    """Give layer 0's FFN an activation outlier, as real BERTs have: intermediate feature 0 is
    always ~1000, and the down projection ignores it (zero column). Quantizing the down
    projection's input per tensor then spends the whole 7-bit range on that one value and rounds
    every other feature to ~0. (Its weights are scaled up so that the FFN matters: at the
    initial std of 0.02 the residual stream hides any FFN error.)"""
    ffn = model.bert.encoder.layers[0].ffn
    with torch.no_grad():
        ffn.up.weight[0].zero_()
        ffn.up.bias[0] = 1000.0
        ffn.down.weight.mul_(30)
        ffn.down.weight[:, 0].zero_()


def _logits(model, batch):
    with torch.inference_mode():
        return model(**batch).logits


@pytest.mark.parametrize("cls", [BertModel, BertForMaskedLM, BertForPreTraining,
                                 BertForSequenceClassification, BertForTokenClassification,
                                 BertForQuestionAnswering])
def test_every_head_reloads_as_int8_with_identical_outputs(cls, tmp_path):
    model = _tiny(cls)
    batch = _batch()
    quantized, report = quantize_model(model, batch, max_layer_error=1.0)
    assert not report.fp32_modules and report.quantized_modules
    quantized.save_pretrained(tmp_path)
    reloaded = cls.from_pretrained(tmp_path, verbose=False)

    kinds = {type(m) for m in reloaded.modules()}
    assert QuantizedLinear in kinds and torch.nn.Linear not in kinds  # the trap: no fp32 restore
    assert not reloaded.load_report.initialized  # every tensor came from the folder
    with torch.inference_mode():
        fp32, ours, again = model(**batch), quantized(**batch), reloaded(**batch)
    for name in ("last_hidden_state", "logits", "prediction_logits", "start_logits"):
        if hasattr(ours, name):
            assert torch.equal(getattr(again, name), getattr(ours, name)), name
            # int8 is near fp32: measured max relative error on these tiny models is ~2%
            ref = getattr(fp32, name)
            assert (getattr(ours, name) - ref).norm() / ref.norm() < 0.1, name
            break
    # The MLM vocabulary projection is the word embedding matrix: that table stays fp32.
    tied = hasattr(model, "mlm")
    assert isinstance(reloaded.bert.embeddings.word_embeddings if hasattr(reloaded, "bert")
                      else reloaded.embeddings.word_embeddings,
                      torch.nn.Embedding if tied else QuantizedEmbedding)


def test_folder_format_and_size(tmp_path):
    model = _tiny(BertForSequenceClassification)
    quantized, _ = quantize_model(model)  # no probe: everything quantizable is int8
    model.save_pretrained(tmp_path / "fp32")
    quantized.save_pretrained(tmp_path / "int8")
    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == "bertkit_dynamic_int8" and q["bits"] == 8 and q["per_channel"]
    assert q["fp32_modules"] == [] and q["quantized_modules"] == 16  # 14 Linears, word + position tables
    from safetensors.torch import load_file
    tensors = load_file(tmp_path / "int8" / "model.safetensors")
    name = "bert.encoder.layer.1.intermediate.dense"
    assert tensors[name + ".weight"].dtype == torch.int8
    assert tensors[name + ".weight"].shape == (37, 32) and tensors[name + ".weight_scale"].shape == (37,)
    assert tensors[name + ".bias"].dtype == torch.float32
    # The stored numbers are the fp32 weights to within half a quantization step per channel.
    w = model.bert.encoder.layers[1].ffn.up.weight.detach()
    deq = tensors[name + ".weight"].float() * tensors[name + ".weight_scale"][:, None]
    assert ((deq - w).abs() <= tensors[name + ".weight_scale"][:, None] / 2 + 1e-7).all()
    size = lambda f: os.path.getsize(tmp_path / f / "model.safetensors")  # noqa: E731
    assert size("fp32") / size("int8") > 3.0


def test_hard_layer_is_kept_fp32_by_measurement():
    model = _tiny(BertForSequenceClassification)
    _make_hard_to_quantize(model)
    batch = _batch()
    quantized, report = quantize_model(model, batch)  # default threshold
    errors = report.layer_errors
    # measured: 0.18 for the hard layer, at most 0.011 for any other
    assert errors[HARD] > 0.1 and max(v for k, v in errors.items() if k != HARD) < 0.05
    assert report.fp32_modules == [HARD]
    assert type(quantized.bert.encoder.layers[0].ffn.down) is torch.nn.Linear
    assert report.output_error < 0.05
    # Quantizing it anyway is what the measurement avoided.
    forced, forced_report = quantize_model(model, batch, max_layer_error=float("inf"))
    assert forced_report.output_error > 0.1
    # keep_fp32 forces a layer (HF or bertkit name) to stay fp32 without measuring.
    _, kept = quantize_model(_tiny(BertModel), None, keep_fp32=["encoder.layers.1.ffn.up"])
    assert kept.fp32_modules == ["encoder.layer.1.intermediate.dense"]


def test_loading_refuses_damaged_or_foreign_folders(tmp_path):
    quantized, _ = quantize_model(_tiny(BertForSequenceClassification))
    quantized.save_pretrained(tmp_path)
    # Another class loads the layers it has, as int8 ...
    encoder = BertModel.from_pretrained(tmp_path, verbose=False)
    assert type(encoder.encoder.layers[0].ffn.up) is QuantizedLinear
    # ... but an MLM head cannot tie its output to an int8 word-embedding table.
    with pytest.raises(ValueError, match="word_embeddings as int8, which BertForMaskedLM cannot"):
        BertForMaskedLM.from_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"]["quant_method"] = "gptq"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quant_method 'gptq'; bertkit loads only"):
        BertModel.from_pretrained(tmp_path)
    # An fp32 folder whose config claims int8 must not load as fp32.
    _tiny(BertModel).save_pretrained(tmp_path)
    config["quantization_config"]["quant_method"] = "bertkit_dynamic_int8"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="the folder is damaged"):
        BertModel.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny fine-tuned classifier folder (the keyword task of test_finetune.py, ~5 s) given a
    hard-to-quantize layer, and a dev file labelled with that fp32 model's own predictions: fp32
    scores 100 and every prediction int8 changes is a point lost."""
    from bertkit.training.finetune import FinetuneConfig, run_finetuning
    from tests.test_finetune import classification_records, tiny_model_folder, training, write_jsonl
    root = tmp_path_factory.mktemp("quantize")
    files = {name: write_jsonl(root / f"{name}.jsonl", classification_records(n, seed))
             for name, n, seed in (("train", 200, 0), ("dev", 60, 1))}
    cfg = FinetuneConfig("classification", tiny_model_folder(root / "base"), files["train"],
                         files["dev"])
    folder = run_finetuning(cfg, training(root / "run", epochs=6)).out_dir
    model = BertForSequenceClassification.from_pretrained(folder, verbose=False)
    _make_hard_to_quantize(model)
    model.save_pretrained(folder)
    records = [json.loads(line) for line in open(files["dev"], encoding="utf-8")]
    predictions = predict_folder(folder, texts=[r["text"] for r in records], device="cpu")
    data = write_jsonl(root / "dev_fp32.jsonl", [{"text": r["text"], "label": p["label"]}
                                                 for r, p in zip(records, predictions)])
    return folder, data


def test_cli_quantize_scores_both_and_gate_refuses(classifier, tmp_path, capsys):
    folder, data = classifier
    out = tmp_path / "int8"
    assert cli(["quantize", "--model", folder, "--out", str(out), "--data", data,
                "--max-drop", "5"]) == 0
    printed = capsys.readouterr().out
    assert f"kept fp32 (output error > 0.05 alone, or asked): {HARD}" in printed
    assert f"largest errors of one layer alone: {HARD} (" in printed
    assert "accuracy on" in printed and "fp32 100.00, int8" in printed
    report = json.loads((out / "quantize.json").read_text())
    assert report["scores"]["fp32"] == 100.0 and report["scores"]["drop"] <= 5
    # predict and evaluate load the folder through from_pretrained: as int8.
    assert cli(["evaluate", "--model", str(out), "--data", data]) == 0
    assert cli(["predict", "--model", str(out), "a fine day"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["label"] in {"neg", "neutral", "pos"}

    # Quantizing the hard layer too loses accuracy; the gate refuses and writes nothing.
    refused = tmp_path / "refused"
    assert cli(["quantize", "--model", folder, "--out", str(refused), "--data", data,
                "--max-layer-error", "1e9", "--max-drop", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "bertkit quantize: error: int8 accuracy" in err
    assert "more than --max-drop 0.5; nothing written" in err
    assert not refused.exists()

    # Bad input: one line each.
    for argv, message in [
        (["--model", str(tmp_path / "missing"), "--out", str(refused)], "does not exist"),
        (["--model", str(out), "--out", str(refused)], "is already quantized"),
        (["--model", folder, "--out", folder], "bertkit never writes over its input"),
        (["--model", folder, "--out", str(refused), "--max-drop", "1"], "--max-drop needs --data"),
        (["--model", folder, "--out", str(refused), "--data", data, "--max-drop", "-1"],
         "--max-drop must be >= 0"),
    ]:
        assert cli(["quantize", *argv]) == 2
        assert message in capsys.readouterr().err
    assert not refused.exists()


def test_real_minilm_int8_folder(minilm_folder, tmp_path):
    """all-MiniLM-L6-v2: the int8 folder is ~4x smaller, reloads as int8, and its sentence
    embeddings stay close to fp32 (measured cosine >= 0.97 on these texts)."""
    from bertkit.inference import embed
    model = BertModel.from_pretrained(minilm_folder, verbose=False)
    tokenizer = Tokenizer.from_pretrained(minilm_folder)
    quantized, _ = quantize_model(model)
    quantized.save_pretrained(tmp_path)
    reloaded = BertModel.from_pretrained(tmp_path, verbose=False)
    ratio = (os.path.getsize(os.path.join(minilm_folder, "model.safetensors"))
             / os.path.getsize(tmp_path / "model.safetensors"))
    assert 3.5 < ratio < 4.1
    texts = ["A quick test of int8 sentence embeddings.", "Quantization trades bits for speed.",
             "The cat sat on the mat."]
    batch = probe_batch(tokenizer, texts)
    with torch.inference_mode():
        assert torch.equal(reloaded(**batch).last_hidden_state, quantized(**batch).last_hidden_state)
    cosine = (embed(model, tokenizer, texts, normalize=True)
              * embed(reloaded, tokenizer, texts, normalize=True)).sum(-1)
    assert cosine.min() > 0.95
