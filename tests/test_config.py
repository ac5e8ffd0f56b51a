"""BertConfig: HF config.json round trips (both ways, unknown keys kept) and validation messages."""

import hashlib
import json

import pytest

from bertkit import BertConfig, BertModel
from bertkit.cli import main
from bertkit.modeling.seq2seq import Seq2SeqConfig

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
    with pytest.raises(ValueError, match=r"num_labels must be a positive integer <= 65536, got 0"):
        config.num_labels = 0
    mini = BertConfig.from_size("mini", vocab_size=1000)
    assert (mini.num_hidden_layers, mini.hidden_size, mini.intermediate_size, mini.vocab_size) == \
        (4, 256, 1024, 1000)
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        BertConfig.from_size("huge")


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden_size=30, num_attention_heads=4), r"hidden_size \(30\) must be divisible by "
                                                  r"num_attention_heads \(4\)"),
    (dict(hidden_size=0), r"BertConfig.hidden_size must be a positive integer <= 65536, got 0$"),
    (dict(num_hidden_layers=-1), r"num_hidden_layers must be a positive integer <= 256, got -1$"),
    (dict(vocab_size=0), r"vocab_size must be a positive integer <= 4194304, got 0$"),
    (dict(intermediate_size=2.5), r"intermediate_size must be a positive integer <= 262144, "
                                  r"got 2.5$"),
    (dict(num_attention_heads=True), r"num_attention_heads must be a positive integer <= 1024, "
                                     r"got True \(a boolean\)$"),
    (dict(hidden_act="gelu_fast"), r"hidden_act 'gelu_fast' is not supported"),
    (dict(hidden_dropout_prob=1.0), r"hidden_dropout_prob must be in \[0, 1\)"),
    (dict(classifier_dropout=-0.1), r"classifier_dropout must be in \[0, 1\)"),
    (dict(layer_norm_eps=0.0), r"layer_norm_eps must be a positive number, got 0.0$"),
    (dict(layer_norm_eps=float("inf")), r"layer_norm_eps must be a positive number, got inf$"),
    (dict(initializer_range=float("nan")), r"initializer_range must be a number >= 0, got nan$"),
    (dict(pad_token_id=99, vocab_size=99), r"pad_token_id must be a token id below "
                                            r"vocab_size \(99\), got 99$"),
    (dict(num_hidden_layers=3, pruned_heads={5: [0]}),
     r"BertConfig.pruned_heads names layer 5, but the model has 3 layers$"),
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


# ---------------------------------------------------------------------------- hostile config.json
TINY_JSON = {"model_type": "bert", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 37}


@pytest.mark.parametrize("change, message", [
    ({"id2label": ["neg", "pos"]}, 'id2label must be an object mapping label ids to names, like '
                                   '{"0": "neg", "1": "pos"}, got [\'neg\', \'pos\'] (a list)'),
    ({"id2label": {"0": "a", "2": "b"}}, "id2label keys must be the ids 0..1, got [0, 2]"),
    ({"id2label": {"0": 7}}, "id2label['0'] must be a label name (a string), got 7"),
    ({"label2id": {"a": "0"}}, "label2id['a'] must be a label id (an integer), got '0' (a string)"),
    ({"hidden_dropout_prob": "0.1"}, "hidden_dropout_prob must be in [0, 1), got '0.1' (a string)"),
    ({"layer_norm_eps": "x"}, "layer_norm_eps must be a positive number, got 'x' (a string)"),
    ({"layer_norm_eps": float("nan")}, "layer_norm_eps must be a positive number, got nan"),
    ({"max_position_embeddings": 10**12},
     "max_position_embeddings must be a positive integer <= 1048576, got 1000000000000"),
    ({"num_hidden_layers": 10**9}, "num_hidden_layers must be a positive integer <= 256, "
                                   "got 1000000000"),
    ({"num_labels": 10**9}, "num_labels must be a positive integer <= 65536, got 1000000000"),
    ({"architectures": "BertModel"},
     "architectures must be a list of names (strings), got 'BertModel' (a string)"),
    ({"pruned_heads": {"x": [1]}}, "pruned_heads keys must be layer numbers, got 'x' (a string)"),
    ({"pruned_heads": {"0": 1}}, "pruned_heads['0'] must be a list of head numbers, got 1"),
    ({"pad_token_id": "0"}, "pad_token_id must be a token id below vocab_size (99), got '0' "
                            "(a string)"),
    ({"hidden_act": ["gelu"]}, "hidden_act ['gelu'] is not supported; choose one of gelu, "
                               "gelu_new, gelu_pytorch_tanh, relu, silu, swish"),
    # Each size within its bound, together 103 billion parameters: refused before allocating.
    ({"hidden_size": 65536, "num_attention_heads": 1, "max_position_embeddings": 1 << 20},
     "the sizes (vocab_size 99, hidden_size 65536, num_hidden_layers 2, intermediate_size 37, "
     "max_position_embeddings 1048576) make a model of about 103 billion parameters; bertkit "
     "builds at most 8.6 billion"),
])
def test_hostile_config_file_gives_one_line_naming_file_and_field(tmp_path, change, message):
    path = write_json(tmp_path, {**TINY_JSON, **change})
    with pytest.raises(ValueError) as error:
        BertConfig.from_pretrained(tmp_path)
    assert str(error.value) == f"{path}: {message}"


def test_config_bounds_fail_fast_and_keep_unknown_keys(tmp_path):
    # 10**9 layers used to hang in the build loop: now the config itself is refused at once.
    write_json(tmp_path, {**TINY_JSON, "num_hidden_layers": 10**9})
    with pytest.raises(ValueError, match="num_hidden_layers must be a positive integer <= 256"):
        BertModel.from_pretrained(tmp_path)
    # At the bounds a config is accepted, and keys bertkit has no field for are kept.
    write_json(tmp_path, {**TINY_JSON, "num_hidden_layers": 256, "my_key": [1, {"a": None}],
                          "pruned_heads": {"0": [], "1": [3, 1, 3]}, "num_labels": 65536})
    config = BertConfig.from_pretrained(tmp_path)
    assert config.num_hidden_layers == 256 and config.extra["my_key"] == [1, {"a": None}]
    assert config.pruned_heads == {1: [1, 3]} and config.num_labels == 65536


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    path = write_json(tmp_path, {**TINY_JSON, "architectures": "BertModel"})
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert main(["fill-mask", "--model", str(tmp_path), "a [MASK]"]) == 2
    err = capsys.readouterr().err
    assert err == (f"bertkit fill-mask: error: {path}: architectures must be a list of names "
                   "(strings), got 'BertModel' (a string)\n")
    # the trial's other hostile values, through commands that read and commands that write
    for change, field in (({"hidden_dropout_prob": "0.1"}, "hidden_dropout_prob"),
                          ({"num_hidden_layers": 10**9}, "num_hidden_layers"),
                          ({"id2label": ["a", "b"]}, "id2label")):
        path = write_json(tmp_path, {**TINY_JSON, **change})
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        for argv in (["embed", "--model", str(tmp_path), "text"],
                     ["quantize", "--model", str(tmp_path), "--out", str(tmp_path.parent / "q")]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert len(err.splitlines()) == 1 and f"{path}: {field}" in err, err
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
        assert not (tmp_path.parent / "q").exists()


def test_non_utf8_config_names_the_file_and_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"model_type": "bert",\n "_name_or_path": "caf\xe9"}')
    with pytest.raises(ValueError) as error:
        BertConfig.from_pretrained(tmp_path)
    assert str(error.value) == f"{path}:2: not UTF-8 text (byte 0xe9); save the file as UTF-8"


@pytest.mark.parametrize("change, message", [
    ({"encoder_layers": 10**9}, "encoder_layers must be a positive integer <= 256, got 1000000000"),
    ({"dropout": "0.1"}, "dropout must be in [0, 1), got '0.1' (a string)"),
    ({"share_embeddings": "no"}, "share_embeddings must be true or false, got 'no'"),
    ({"max_position_embeddings": 1 << 20, "d_model": 65536, "num_heads": 1},
     "the sizes (vocab_size 100, d_model 65536, encoder_layers 2, decoder_layers 2, ffn_dim 256, "
     "max_position_embeddings 1048576) make a model of about 172 billion parameters; bertkit "
     "builds at most 8.6 billion"),
])
def test_hostile_seq2seq_config_file_gives_one_line(tmp_path, change, message):
    data = Seq2SeqConfig.from_size("tiny", vocab_size=100).to_dict()
    path = write_json(tmp_path, {**data, **change})
    with pytest.raises(ValueError) as error:
        Seq2SeqConfig.from_pretrained(tmp_path)
    assert str(error.value) == f"{path}: {message}"
