"""BertConfig: HF config.json round trips (both ways, unknown keys kept) and validation messages."""

import json

import pytest

from bertkit import BertConfig

transformers = pytest.importorskip("transformers")


def write_json(folder, data):
    path = folder / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_defaults_are_bert_base_and_match_transformers():
    ours, theirs = BertConfig(), transformers.BertConfig()
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "hidden_act", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
                 "layer_norm_eps", "initializer_range", "pad_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.head_dim == 64 and ours.num_labels == 2


def test_unknown_keys_are_kept_and_written_back(tmp_path, minilm_folder):
    with open(f"{minilm_folder}/config.json", encoding="utf-8") as f:
        original = json.load(f)
    config = BertConfig.from_pretrained(minilm_folder)
    # MiniLM's config.json carries keys bertkit has no field for.
    assert config.extra["gradient_checkpointing"] is False
    assert config.extra["_name_or_path"] == "nreimers/MiniLM-L6-H384-uncased"
    assert config.extra["use_cache"] is True
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert written == original
    assert BertConfig.from_pretrained(tmp_path) == config


def test_transformers_saved_config_loads_and_bertkit_config_loads_in_transformers(tmp_path):
    theirs = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37,
                                     hidden_act="gelu_new", id2label={0: "neg", 1: "pos", 2: "mid"},
                                     label2id={"neg": 0, "pos": 1, "mid": 2},
                                     classifier_dropout=0.3,
                                     problem_type="single_label_classification")
    theirs.save_pretrained(tmp_path / "hf")
    ours = BertConfig.from_pretrained(tmp_path / "hf")
    assert (ours.vocab_size, ours.hidden_size, ours.intermediate_size, ours.hidden_act) == \
        (99, 32, 37, "gelu_new")
    assert ours.id2label == {0: "neg", 1: "pos", 2: "mid"}
    assert ours.label2id == {"neg": 0, "pos": 1, "mid": 2}
    assert ours.num_labels == 3 and ours.classifier_dropout == 0.3
    assert ours.extra["transformers_version"] == transformers.__version__

    ours.save_pretrained(tmp_path / "ours")
    back = transformers.BertConfig.from_pretrained(tmp_path / "ours")
    assert back.to_dict() == theirs.to_dict()


def test_num_labels_key_without_id2label(tmp_path):
    write_json(tmp_path, {"model_type": "bert", "num_labels": 5, "hidden_size": 64,
                          "num_attention_heads": 4})
    config = BertConfig.from_pretrained(tmp_path)
    assert config.num_labels == 5 and "num_labels" not in config.extra
    assert config.id2label[4] == "LABEL_4" and config.label2id["LABEL_4"] == 4


def test_num_labels_setter_and_from_size():
    config = BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=37)
    config.num_labels = 1
    assert config.id2label == {0: "LABEL_0"} and config.num_labels == 1
    with pytest.raises(ValueError, match="num_labels must be positive"):
        config.num_labels = 0
    mini = BertConfig.from_size("mini", vocab_size=1000)
    assert (mini.num_hidden_layers, mini.hidden_size, mini.intermediate_size, mini.vocab_size) == \
        (4, 256, 1024, 1000)
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        BertConfig.from_size("huge")


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden_size=30, num_attention_heads=4), r"hidden_size \(30\) must be divisible by "
                                                  r"num_attention_heads \(4\)"),
    (dict(hidden_size=0), r"BertConfig.hidden_size must be a positive integer, got 0"),
    (dict(num_hidden_layers=-1), r"num_hidden_layers must be a positive integer, got -1"),
    (dict(vocab_size=0), r"vocab_size must be a positive integer"),
    (dict(intermediate_size=2.5), r"intermediate_size must be a positive integer, got 2.5"),
    (dict(num_attention_heads=True), r"num_attention_heads must be a positive integer, got True"),
    (dict(hidden_act="gelu_fast"), r"hidden_act 'gelu_fast' is not supported"),
    (dict(hidden_dropout_prob=1.0), r"hidden_dropout_prob must be in \[0, 1\)"),
    (dict(classifier_dropout=-0.1), r"classifier_dropout must be in \[0, 1\)"),
    (dict(layer_norm_eps=0.0), r"layer_norm_eps must be positive"),
    (dict(pad_token_id=99, vocab_size=99), r"pad_token_id \(99\) must be a token id below "
                                            r"vocab_size \(99\)"),
    (dict(extra={"position_embedding_type": "relative_key"}),
     r"position_embedding_type 'relative_key' is not supported"),
])
def test_invalid_config_is_rejected_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BertConfig(**kwargs)


def test_invalid_problem_type_is_rejected():
    # A misspelt problem_type would silently fall through to the multi-label (BCE) loss of
    # BertForSequenceClassification (transformers 4 rejected it at config time).
    with pytest.raises(ValueError, match="problem_type"):
        BertConfig(problem_type="multilabel")


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 32,', encoding="utf-8")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        BertConfig.from_pretrained(tmp_path)


def test_model_type_must_be_bert(tmp_path):
    write_json(tmp_path, {"model_type": "gpt2", "hidden_size": 32, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="model_type 'gpt2' is not a BERT model"):
        BertConfig.from_pretrained(tmp_path)


def test_invalid_value_in_file_is_reported(tmp_path):
    write_json(tmp_path, {"model_type": "bert", "hidden_size": 30, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="must be divisible"):
        BertConfig.from_pretrained(tmp_path)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json found"):
        BertConfig.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json found"):
        BertConfig.from_pretrained(tmp_path / "absent")
