"""Checkpoints: bertkit folders load in transformers and transformers folders load in bertkit,
for every head, with identical logits and losses; tied weights; legacy formats and names;
every way a load can go wrong, with the message that says so."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

import bertkit
from bertkit import BertConfig, BertForMaskedLM, BertForPreTraining, BertModel
from bertkit.checkpoint import (check_vocab_fits, from_hf_name, hf_state_dict, read_state_dict,
                                save_model, to_hf_name)

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402 (after the importorskip)


@pytest.fixture(autouse=True)
def padded_encoder(monkeypatch):
    """These tests compare every position, padding included, with transformers: they run the
    padded path (BertModel.unpad = False). The default unpadded path is compared at real
    positions, outputs and gradients, in tests/test_unpad.py."""
    monkeypatch.setattr(BertModel, "unpad", False)


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
HEADS = ["BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForSequenceClassification",
         "BertForTokenClassification", "BertForQuestionAnswering"]
B, T, V = 3, 10, 99


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def batch():
    ids = torch.randint(5, V, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=(torch.arange(T) >= 5).long()
                .expand(B, T).clone())


def main_outputs(out):
    """The tensors a head returns, in a fixed order, whichever library made them."""
    for names in (("last_hidden_state", "pooler_output"),
                  ("prediction_logits", "seq_relationship_logits"),
                  ("start_logits", "end_logits"), ("logits",)):
        if getattr(out, names[0], None) is not None:
            return [getattr(out, n) for n in names]
    raise AssertionError(f"no known output in {type(out).__name__}")


def assert_same_outputs(ours, theirs, atol=1e-5):
    x = batch()
    with torch.no_grad():
        mine, ref = main_outputs(ours(**x)), main_outputs(theirs(**x))
    assert len(mine) == len(ref)
    for a, b in zip(mine, ref):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= atol


def tiny_hf_config(**kwargs):
    return transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=37, **kwargs)


def randomise_norms_and_biases(model):
    # Fresh LayerNorms are exactly 1/0 and biases 0, which would hide a swapped or dropped one.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(std=0.1)
            if hasattr(module, "bias") and isinstance(module.bias, torch.nn.Parameter) \
                    and module.bias.dim() == 1 and module.bias.abs().sum() == 0:
                module.bias.normal_(std=0.1)  # zero-initialised biases too (the MLM bias)
    return model


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name, num_labels", [(n, None) for n in HEADS]
                         + [("BertForSequenceClassification", 1),
                            ("BertForTokenClassification", 5)])
def test_bertkit_folder_loads_in_transformers(tmp_path, tiny_config, name, num_labels):
    if num_labels is not None:
        tiny_config.num_labels = num_labels
    ours = randomise_norms_and_biases(getattr(bertkit, name)(tiny_config)).eval()
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [name]
    theirs, info = getattr(transformers, name).from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    if num_labels is not None:
        assert theirs.config.num_labels == num_labels
    assert_same_outputs(ours, theirs.eval())


@pytest.mark.parametrize("name", HEADS)
def test_transformers_folder_loads_in_bertkit(tmp_path, name):
    theirs = randomise_norms_and_biases(getattr(transformers, name)(tiny_hf_config())).eval()
    theirs.save_pretrained(tmp_path)
    ours = getattr(bertkit, name).from_pretrained(tmp_path)
    report = ours.load_report
    assert (report.initialized, report.unused, report.unknown, report.mismatched) == \
        ([], [], [], [])
    assert not ours.training
    assert_same_outputs(ours, theirs)


@pytest.mark.parametrize("name", ["BertForPreTraining", "BertForMaskedLM"])
def test_mlm_decoder_is_tied_to_the_word_embeddings_after_load(tmp_path, name):
    getattr(transformers, name)(tiny_hf_config()).save_pretrained(tmp_path)
    ours = getattr(bertkit, name).from_pretrained(tmp_path)
    embedding = ours.bert.embeddings.word_embeddings.weight
    decoder = ours.mlm.word_embeddings[0].weight
    assert decoder is embedding and decoder.data_ptr() == embedding.data_ptr()
    # A change to the embeddings (a training step) changes the MLM projection with it.
    x = batch()
    with torch.no_grad():
        before = ours(**x).prediction_logits if name == "BertForPreTraining" else ours(**x).logits
        embedding.mul_(2)
        after = ours(**x).prediction_logits if name == "BertForPreTraining" else ours(**x).logits
    assert not torch.allclose(before, after)
    # The tie survives the way back into transformers too.
    ours.save_pretrained(tmp_path / "again")
    keys = load_file(str(tmp_path / "again" / "model.safetensors")).keys()
    assert not any("decoder" in k for k in keys)  # one matrix on disk
    theirs = getattr(transformers, name).from_pretrained(tmp_path / "again")
    assert theirs.cls.predictions.decoder.weight.data_ptr() == \
        theirs.bert.embeddings.word_embeddings.weight.data_ptr()


def test_hf_names_map_both_ways(tiny_config):
    for cls in (BertModel, BertForPreTraining):
        ours_keys = list(cls(tiny_config).state_dict())
        theirs_keys = set(getattr(transformers, cls.__name__)(tiny_hf_config()).state_dict())
        theirs_keys.discard("cls.predictions.decoder.weight")  # tied: not a separate tensor
        theirs_keys.discard("cls.predictions.decoder.bias")
        assert {to_hf_name(k) for k in ours_keys} == theirs_keys
        assert [from_hf_name(to_hf_name(k)) for k in ours_keys] == ours_keys
    assert to_hf_name("bert.encoder.layers.11.attention.value.bias") == \
        "bert.encoder.layer.11.attention.self.value.bias"
    assert to_hf_name("encoder.layers.3.ffn.up.weight") == \
        "encoder.layer.3.intermediate.dense.weight"
    assert to_hf_name("mlm.norm.weight") == "cls.predictions.transform.LayerNorm.weight"


# ---------------------------------------------------------------------------- losses
def paired_models(tmp_path, name, **config):
    """A random bertkit model and the transformers model loaded from its folder."""
    tiny = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=37, **config)
    ours = randomise_norms_and_biases(getattr(bertkit, name)(tiny)).eval()
    ours.save_pretrained(tmp_path)
    return ours, getattr(transformers, name).from_pretrained(tmp_path).eval()


@pytest.mark.parametrize("labels, config", [
    (torch.tensor([0, 2, 1]), dict(id2label={0: "a", 1: "b", 2: "c"})),            # single-label
    (torch.tensor([0.5, -1.0, 2.0]), dict(id2label={0: "score"})),                  # regression
    (torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),             # multi-label
     dict(id2label={0: "a", 1: "b", 2: "c"}, problem_type="multi_label_classification")),
    (torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]),             # inferred
     dict(id2label={0: "a", 1: "b", 2: "c"})),
])
def test_sequence_classification_losses_match_transformers(tmp_path, labels, config):
    ours, theirs = paired_models(tmp_path, "BertForSequenceClassification", **config)
    x = batch()
    with torch.no_grad():
        mine, ref = ours(**x, labels=labels), theirs(**x, labels=labels)
    torch.testing.assert_close(mine.logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.loss, ref.loss, atol=1e-6, rtol=1e-5)


def test_sequence_classification_accepts_int32_labels(tmp_path):
    # The loss picks single-label classification for torch.int labels, so it must also
    # compute it for them (cross_entropy wants int64 targets).
    ours, _ = paired_models(tmp_path, "BertForSequenceClassification")
    x = batch()
    expected = ours(**x, labels=torch.tensor([0, 1, 1])).loss
    torch.testing.assert_close(ours(**x, labels=torch.tensor([0, 1, 1], dtype=torch.int32)).loss,
                               expected)


def test_token_classification_loss_matches_transformers(tmp_path):
    ours, theirs = paired_models(tmp_path, "BertForTokenClassification",
                                 id2label={i: f"L{i}" for i in range(5)})
    x = batch()
    labels = torch.randint(0, 5, (B, T))
    labels[:, 0] = -100
    labels[x["attention_mask"] == 0] = -100
    with torch.no_grad():
        mine, ref = ours(**x, labels=labels), theirs(**x, labels=labels)
    torch.testing.assert_close(mine.logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.loss, ref.loss, atol=1e-6, rtol=1e-5)
    # -100 positions take no part: the same loss by hand over the kept positions only.
    keep = labels != -100
    torch.testing.assert_close(mine.loss, F.cross_entropy(mine.logits[keep], labels[keep]))


def test_question_answering_loss_matches_transformers(tmp_path):
    ours, theirs = paired_models(tmp_path, "BertForQuestionAnswering")
    x = batch()
    # Positions inside, at 0 (no answer), and past the end (ignored by both).
    start, end = torch.tensor([3, 0, 42]), torch.tensor([5, 0, 43])
    with torch.no_grad():
        mine = ours(**x, start_positions=start, end_positions=end)
        ref = theirs(**x, start_positions=start, end_positions=end)
    torch.testing.assert_close(mine.start_logits, ref.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.end_logits, ref.end_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.loss, ref.loss, atol=1e-6, rtol=1e-5)
    by_hand = (F.cross_entropy(mine.start_logits[:2], start[:2])
               + F.cross_entropy(mine.end_logits[:2], end[:2])) / 2
    torch.testing.assert_close(mine.loss, by_hand)


def mlm_labels(ids):
    labels = torch.full_like(ids, -100)
    for b, t in [(0, 1), (0, 4), (1, 2), (2, 9), (2, 3)]:
        labels[b, t] = ids[b, t] if t % 2 else (ids[b, t] + 1) % V
    return labels


@pytest.mark.parametrize("name", ["BertForMaskedLM", "BertForPreTraining"])
def test_mlm_logits_at_masked_positions_and_losses_match_transformers(tmp_path, name):
    ours, theirs = paired_models(tmp_path, name)
    x = batch()
    labels = mlm_labels(x["input_ids"])
    extra = {}
    if name == "BertForPreTraining":
        extra = dict(next_sentence_label=torch.tensor([0, 1, 1]))
    with torch.no_grad():
        mine = ours(**x, labels=labels, **extra)
        ref = theirs(**x, labels=labels, **extra)
        unlabelled = ours(**x)
    full = ref.prediction_logits if name == "BertForPreTraining" else ref.logits   # (B, T, V)
    got = mine.prediction_logits if name == "BertForPreTraining" else mine.logits  # (M, V)
    assert got.shape == (5, V)
    torch.testing.assert_close(got, full[labels != -100], atol=1e-5, rtol=0)
    # Without labels the logits cover every position, as transformers' do.
    got_all = unlabelled.prediction_logits if name == "BertForPreTraining" else unlabelled.logits
    torch.testing.assert_close(got_all, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.loss, ref.loss, atol=1e-6, rtol=1e-5)
    if name == "BertForPreTraining":
        torch.testing.assert_close(mine.seq_relationship_logits, ref.seq_relationship_logits,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(mine.nsp_loss, F.cross_entropy(ref.seq_relationship_logits,
                                                                  extra["next_sentence_label"]))


# ---------------------------------------------------------------------------- other formats
def test_pytorch_model_bin_with_tf_names_and_position_ids_loads(tmp_path):
    theirs = randomise_norms_and_biases(transformers.BertForPreTraining(tiny_hf_config())).eval()
    theirs.config.save_pretrained(tmp_path)
    state = dict(theirs.state_dict())
    # As in checkpoints converted from the original TensorFlow BERT: LayerNorm gamma/beta, the
    # position_ids buffer, and an explicit (tied) decoder matrix.
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma")
             .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in state.items()}
    state["bert.embeddings.position_ids"] = torch.arange(512)[None]
    state["cls.predictions.decoder.weight"] = theirs.bert.embeddings.word_embeddings.weight
    assert sum("gamma" in k for k in state) == 2 * 2 + 2  # 2 per layer, embeddings, MLM head
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = BertForPreTraining.from_pretrained(tmp_path)
    assert ours.load_report.initialized == [] and ours.load_report.unknown == []
    assert_same_outputs(ours, theirs)


def test_sharded_safetensors_folder_loads(tmp_path):
    theirs = randomise_norms_and_biases(transformers.BertModel(tiny_hf_config())).eval()
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    assert_same_outputs(BertModel.from_pretrained(tmp_path), theirs)


def test_weights_only_loading_refuses_code_in_one_plain_line(tmp_path, tiny_config):
    tiny_config.save_pretrained(tmp_path)
    # A pickle that names a function: torch.load would call it on a full unpickle.
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(V, 32), "x": os.getcwd},
               tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError) as error:
        BertModel.from_pretrained(tmp_path)
    # torch's own message is 6 lines with terminal colour codes: one plain line instead.
    assert str(error.value) == (
        f"{tmp_path / 'pytorch_model.bin'} is not a plain tensor checkpoint (it refers to "
        f"{os.getcwd.__module__}.getcwd) and bertkit never runs code from a checkpoint; if you "
        "trust the file, load it yourself with torch.load(path, weights_only=False) and save the "
        "model as safetensors (model.save_pretrained(folder) or safetensors.torch.save_file)")


@pytest.mark.parametrize("content, message", [
    ([torch.zeros(2)], "it holds a list, not tensors by name"),
    ({"state_dict": {"a": torch.zeros(2)}}, "'state_dict' holds a dict, not a tensor"),
])
def test_pytorch_model_bin_must_hold_tensors_by_name(tmp_path, tiny_config, content, message):
    tiny_config.save_pretrained(tmp_path)
    torch.save(content, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError) as error:
        BertModel.from_pretrained(tmp_path)
    assert str(error.value) == (f"{tmp_path / 'pytorch_model.bin'} is not a plain tensor "
                                f"checkpoint: {message}")


def test_truncated_pytorch_model_bin_is_one_line(tmp_path, tiny_config):
    tiny_config.save_pretrained(tmp_path)
    torch.save({"a": torch.zeros(100)}, tmp_path / "pytorch_model.bin")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"^cannot read .*pytorch_model\.bin as a weights-only "
                                         r"checkpoint: [^\n]+$"):
        BertModel.from_pretrained(tmp_path)


def sharded_folder(folder):
    """A tiny model saved by transformers in shards: (the folder's index path, its JSON)."""
    theirs = transformers.BertModel(tiny_hf_config())
    theirs.save_pretrained(folder, max_shard_size="20KB")
    index = folder / "model.safetensors.index.json"
    return index, json.loads(index.read_text(encoding="utf-8"))


@pytest.mark.parametrize("shard", ["../other/model.safetensors", "/etc/passwd", "..",
                                   "sub/model.safetensors", "outside.safetensors"])
def test_shard_index_may_not_point_outside_the_folder(tmp_path, shard):
    index, data = sharded_folder(tmp_path / "m")
    # A complete, valid checkpoint outside the folder: following the index would load it.
    transformers.BertModel(tiny_hf_config()).save_pretrained(tmp_path / "other")
    (tmp_path / "m" / "sub").mkdir()
    os.symlink(tmp_path / "other" / "model.safetensors", tmp_path / "m" / "outside.safetensors")
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = shard
    index.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError) as error:
        BertModel.from_pretrained(tmp_path / "m")
    assert str(error.value) == (f"{index}: weight_map names {shard!r}, which is not a file in "
                                f"{tmp_path / 'm'}; shards must be plain file names inside the "
                                "model folder")


@pytest.mark.parametrize("weight_map", [["model-00001-of-00002.safetensors"], {"a": 1}, {}, None])
def test_shard_index_weight_map_must_map_names_to_files(tmp_path, weight_map):
    index, data = sharded_folder(tmp_path)
    data["weight_map"] = weight_map
    index.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError) as error:
        BertModel.from_pretrained(tmp_path)
    assert str(error.value) == (f"{index}: weight_map must be a non-empty object mapping tensor "
                                "names to shard file names")
    index.write_text("[1]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json must hold a JSON "
                                         "object"):
        BertModel.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------- vocab vs model
class FakeTokenizer:
    def __init__(self, vocab_size):
        self.vocab_size = vocab_size


@pytest.mark.parametrize("tokens, rows, problem", [
    (100, 99, "the vocab does not belong to this model (token ids past the embedding table)"),
    (99, 256, "the vocab does not belong to this model (157 embedding rows no token uses)"),
    # Few spare rows but vocab_size not a multiple of 8, or a multiple of 8 but 128 spare rows:
    # neither is rounding-up padding.
    (90, 98, "the vocab does not belong to this model (8 embedding rows no token uses)"),
    (30000, 30128, "the vocab does not belong to this model (128 embedding rows no token uses)"),
])
def test_check_vocab_fits_refuses_a_vocab_of_another_model(tmp_path, tokens, rows, problem):
    (tmp_path / "vocab.txt").write_text("x\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        check_vocab_fits(FakeTokenizer(tokens), BertConfig(**{**TINY, "vocab_size": rows}),
                         tmp_path)
    assert str(error.value) == (f"{tmp_path}: vocab.txt has {tokens} tokens but the model's "
                                f"vocab_size is {rows} (config.json): {problem}")


def test_check_vocab_fits_warns_once_on_padding_rows(tmp_path):
    config = BertConfig(**{**TINY, "vocab_size": 30528})  # 30522 rounded up to a multiple of 64
    with pytest.warns(UserWarning) as caught:
        check_vocab_fits(FakeTokenizer(30522), config, tmp_path)
    assert len(caught) == 1 and str(caught[0].message) == (
        f"{tmp_path}: tokenizer.json has 30522 tokens but the model's vocab_size is 30528 "
        "(config.json): taking the 6 spare embedding rows for padding (a vocab size rounded up "
        "to a multiple of 8); if predictions look wrong, check that the vocab belongs to this "
        "model")


def test_check_vocab_fits_is_silent_for_real_minilm(minilm_folder, recwarn):
    tokenizer = bertkit.Tokenizer.from_pretrained(minilm_folder)
    config = BertConfig.from_pretrained(minilm_folder)
    assert tokenizer.vocab_size == config.vocab_size == 30522
    check_vocab_fits(tokenizer, config, minilm_folder)
    assert len(recwarn) == 0


def test_wrapped_model_saves_plain_names(tmp_path, tiny_config):
    model = BertForMaskedLM(tiny_config)
    save_model(torch.nn.DataParallel(model), tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys)
    assert set(keys) == set(hf_state_dict(model))
    assert torch.equal(BertForMaskedLM.from_pretrained(tmp_path).bert.embeddings.word_embeddings
                       .weight, model.bert.embeddings.word_embeddings.weight)


# ---------------------------------------------------------------------------- partial loads
def test_base_checkpoint_into_head_reports_the_new_keys(minilm_folder, capsys):
    model = BertForPreTraining.from_pretrained(minilm_folder)
    report = model.load_report
    assert report.initialized == sorted(["mlm.bias", "mlm.dense.bias", "mlm.dense.weight",
                                         "mlm.norm.bias", "mlm.norm.weight", "nsp.bias",
                                         "nsp.weight"])
    assert report.unknown == [] and report.mismatched == []
    printed = capsys.readouterr().out
    assert "BertForPreTraining: initialised 7 new tensor(s)" in printed
    assert "mlm.dense.weight" in printed
    # The encoder is MiniLM's, untouched.
    base = read_state_dict(minilm_folder)
    assert torch.equal(model.bert.encoder.layers[5].ffn.down.weight,
                       base["encoder.layer.5.output.dense.weight"])
    quiet = bertkit.BertForQuestionAnswering.from_pretrained(minilm_folder, verbose=False)
    assert capsys.readouterr().out == ""
    assert quiet.load_report.initialized == ["qa_outputs.bias", "qa_outputs.weight"]
    assert quiet.load_report.unused == ["pooler.dense.bias", "pooler.dense.weight"]


def test_head_checkpoint_into_base_model_lists_the_unused_head(tmp_path):
    transformers.BertForSequenceClassification(tiny_hf_config()).save_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path)
    assert sorted(model.load_report.unused) == ["classifier.bias", "classifier.weight"]
    assert model.load_report.initialized == []


def test_config_overrides_on_load(tmp_path):
    transformers.BertForSequenceClassification(tiny_hf_config()).save_pretrained(tmp_path)
    # A different label count needs a new classifier: refused while it would be silently dropped.
    with pytest.raises(ValueError, match=r"shape mismatch for .*classifier\.weight: checkpoint "
                                         r"\(2, 32\) vs model \(3, 32\)"):
        bertkit.BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    # From the encoder alone (a base checkpoint), the new head is built with the given labels.
    BertModel.from_pretrained(tmp_path, verbose=False).save_pretrained(tmp_path / "base")
    model = bertkit.BertForTokenClassification.from_pretrained(
        tmp_path / "base", id2label={0: "O", 1: "B-X", 2: "I-X"}, hidden_dropout_prob=0.0,
        verbose=False)
    assert model.classifier.weight.shape == (3, 32)
    assert model.config.label2id == {"O": 0, "B-X": 1, "I-X": 2}
    assert model.config.hidden_dropout_prob == 0.0
    assert model.load_report.initialized == ["classifier.bias", "classifier.weight"]
    with pytest.raises(ValueError, match="unknown config field 'num_layers'"):
        BertModel.from_pretrained(tmp_path, num_layers=3)


def test_shape_mismatch_names_the_key(tmp_path, tiny_config):
    BertModel(tiny_config).save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(36, 32)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"shape mismatch for encoder\.layer\.1\.intermediate\."
                                         r"dense\.weight: checkpoint \(36, 32\) vs model "
                                         r"\(37, 32\)"):
        BertModel.from_pretrained(tmp_path)


def test_unknown_key_names_the_key_and_strict_false_loads_the_rest(tmp_path, tiny_config):
    original = BertModel(tiny_config)
    original.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) encoder\.layer\.0\.attention\.self\."
                                         r"rotary\.weight"):
        BertModel.from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"rotary\.weight.*skipped because strict=False"):
        loaded = BertModel.from_pretrained(tmp_path, strict=False)
    assert loaded.load_report.unknown == ["encoder.layer.0.attention.self.rotary.weight"]
    assert loaded.load_report.initialized == []
    for (name, a), b in zip(original.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_missing_folder_and_missing_weights(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match=r"model folder .*absent does not exist"):
        BertModel.from_pretrained(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no config.json found"):
        BertModel.from_pretrained(tmp_path)
    tiny_config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no model.safetensors or pytorch_model.bin"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"cannot read .*model\.safetensors"):
        BertModel.from_pretrained(tmp_path)
