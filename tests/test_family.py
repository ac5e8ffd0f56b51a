"""The BERT family (issue 18): RoBERTa, DistilBERT and ALBERT at parity with transformers.

For each family and head: a tiny random-weight model saved by transformers loads in bertkit
(through the BERT class: the folder chooses the family) with outputs equal to <= 1e-5 at every
real position, on the unpadded and the padded path; bertkit's saved folder loads in
transformers with no missing or unexpected keys and gives the same outputs."""

from __future__ import annotations

import json

import pytest
import torch

from bertkit.cli import main
from bertkit.compress.distill import DistillConfig, make_distilbert_student, run_distillation
from bertkit.config import AlbertConfig, BertConfig, DistilBertConfig, RobertaConfig
from bertkit.modeling.bert import (HEAD_CLASSES, BertForPreTraining,
                                   BertForSequenceClassification, padded_path)
from bertkit.modeling.layers import WindowMask, sliding_window_attention
from bertkit.modeling.longformer import longformer_from_model
from bertkit.modeling.roberta import RobertaModel
from bertkit.tokenizer import BPETokenizer, Tokenizer
from bertkit.training.pretrain import PretrainConfig, run_pretraining
from bertkit.training.trainer import TrainingConfig

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(vocab_size=99, max_position_embeddings=40)
FAMILIES = {
    "Roberta": lambda: transformers.RobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        type_vocab_size=1, **TINY),
    "DistilBert": lambda: transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4,
                                                        hidden_dim=37, **TINY),
    # 3 layer applications over 2 groups of 2 layers: sharing and group order are exercised.
    "Albert": lambda: transformers.AlbertConfig(
        embedding_size=16, hidden_size=32, num_hidden_layers=3, num_hidden_groups=2,
        inner_group_num=2, num_attention_heads=4, intermediate_size=37, **TINY),
}
HEADS = ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
         "ForQuestionAnswering", "ForPreTraining"]
CASES = [(family, head) for family in FAMILIES for head in HEADS
         if f"{family}{head}" in HEAD_CLASSES]
OUTPUTS = {"last_hidden_state": "last_hidden_state", "pooler_output": "pooler_output",
           "logits": "logits", "start_logits": "start_logits", "end_logits": "end_logits",
           "prediction_logits": "prediction_logits", "sop_logits": "seq_relationship_logits"}


def batch(pad_token_id):
    """Three rows of 9, 6 and 3 real tokens (right padding)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, pad_token_id), mask


def max_difference(theirs, ours, mask):
    """The largest |difference| over every output both give, at real positions only."""
    worst = 0.0
    for hf_name, our_name in OUTPUTS.items():
        if theirs.get(hf_name) is None:
            continue
        x, y = theirs[hf_name], getattr(ours, our_name)
        if x.dim() >= 2 and x.shape[:2] == mask.shape:
            x, y = x[mask.bool()], y[mask.bool()]
        worst = max(worst, (x - y).abs().max().item())
    return worst


@pytest.mark.parametrize("family, head", CASES)
def test_transformers_folder_loads_and_saves_back(tmp_path, family, head):
    torch.manual_seed(0)
    hf_config = FAMILIES[family]()
    hf_config.num_labels = 2 if head == "ForQuestionAnswering" else 3
    hf_class = getattr(transformers, family + head)
    hf_model = hf_class(hf_config).eval()
    hf_model.save_pretrained(str(tmp_path / "hf"))
    # Through the BERT class: the folder's model_type picks the family's class.
    ours = HEAD_CLASSES["Bert" + head].from_pretrained(tmp_path / "hf", verbose=False)
    assert type(ours).__name__ == family + head
    assert ours.load_report.initialized == [] and ours.load_report.unknown == []
    ids, mask = batch(hf_config.pad_token_id)
    types = {} if family == "DistilBert" else {"token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        theirs = hf_model(input_ids=ids, attention_mask=mask, **types)
        assert max_difference(theirs, ours(ids, mask), mask) <= 1e-5  # unpadded path
        with padded_path(ours):
            assert max_difference(theirs, ours(ids, mask), mask) <= 1e-5

    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_type"] == hf_config.model_type
    assert saved["architectures"] == [family + head]
    again, info = hf_class.from_pretrained(str(tmp_path / "ours"), output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    with torch.no_grad():
        back = again.eval()(input_ids=ids, attention_mask=mask, **types)
    for name in OUTPUTS:
        if theirs.get(name) is not None:
            assert torch.equal(back[name], theirs[name]), name


def test_family_configs_round_trip_with_their_own_keys(tmp_path):
    for config in (RobertaConfig(hidden_size=32, num_attention_heads=4, vocab_size=99),
                   DistilBertConfig(hidden_size=32, num_attention_heads=4, vocab_size=99),
                   AlbertConfig(hidden_size=32, num_attention_heads=4, vocab_size=99,
                                embedding_size=16, intermediate_size=37)):
        folder = tmp_path / config.model_type
        config.save_pretrained(folder)
        loaded = BertConfig.from_pretrained(folder)  # the folder chooses the class
        assert type(loaded) is type(config) and loaded.to_dict() == config.to_dict()
        hf = transformers.AutoConfig.from_pretrained(str(folder))
        assert hf.model_type == config.model_type and hf.hidden_size == 32
    written = json.loads((tmp_path / "distilbert" / "config.json").read_text())
    assert written["dim"] == 32 and written["n_heads"] == 4 and "hidden_size" not in written
    assert "type_vocab_size" not in written  # DistilBERT has no token types
    assert RobertaConfig().max_tokens == 512  # 514 positions, counted from pad_token_id + 1


def test_config_errors_name_the_file_key(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "distilbert", "dim": 30,
                                                      "n_heads": 4}))
    with pytest.raises(ValueError, match=r"config\.json: dim \(30\) must be divisible"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ValueError, match="model_type 'roberta' is not a BERT model "
                                         r"\(the family bertkit reads: 'albert'\)"):
        AlbertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match="model_type 't5' is not a BERT model"):
        BertConfig.from_pretrained(tmp_path)


def test_roberta_positions_skip_padding_and_long_inputs_are_refused(tmp_path):
    # Left padding moves no real token's position (transformers' rule): the same text gives
    # the same vectors whatever padding stands before it.
    config = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, vocab_size=99, max_position_embeddings=12)
    model = HEAD_CLASSES["RobertaModel"](config).eval()
    ids = torch.tensor([[0, 7, 8, 9, 2], [1, 1, 0, 7, 8]])
    positions = model.embeddings.position_ids(ids)
    assert positions.tolist() == [[2, 3, 4, 5, 6], [1, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match="input has 11 tokens but the model takes at most 10"):
        model(torch.full((1, 11), 5))


def test_bert_pretraining_refuses_a_roberta_folder(tmp_path):
    config = RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=37, vocab_size=99)
    HEAD_CLASSES["RobertaForMaskedLM"](config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a roberta model, and bertkit has no roberta "
                                         "version of BertForPreTraining"):
        BertForPreTraining.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------- fine-tuning
def test_cli_finetunes_a_roberta_folder_that_transformers_then_reads(tmp_path, capsys):
    """`bertkit finetune` on a tiny RoBERTa folder with a byte-level BPE tokenizer: the run
    learns, and its folder is a RoBERTa classifier transformers reads with the same outputs."""
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "boring", "dull", "poor"]
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(64):
        words = good if i % 2 else bad
        pick = torch.randint(0, 4, (2,), generator=generator).tolist()
        rows.append({"text": f"a {words[pick[0]]} film, {words[pick[1]]} plot",
                     "label": "pos" if i % 2 else "neg"})
    files = {}
    for name, part in (("train", rows[:48]), ("dev", rows[48:])):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    tokenizer = BPETokenizer.train([r["text"] for r in rows], vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    base = tmp_path / "base"
    RobertaModel(RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                               max_position_embeddings=34)).save_pretrained(base)
    tokenizer.save_pretrained(base)

    out = tmp_path / "clf"
    assert main(["finetune", "--task", "classification", "--model", str(base), "--train",
                 str(files["train"]), "--dev", str(files["dev"]), "--out", str(out),
                 "--epochs", "6", "--lr", "3e-3", "--batch-size", "8", "--save-every", "0",
                 "--no-progress", "--no-baseline"]) == 0
    assert json.loads((out / "metrics.json").read_text())["dev"]["accuracy"] >= 0.9
    assert json.loads((out / "config.json").read_text())["architectures"] == \
        ["RobertaForSequenceClassification"]
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "a superb film"]) == 0
    prediction = json.loads(capsys.readouterr().out.splitlines()[-1])

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert type(hf_model).__name__ == "RobertaForSequenceClassification"
    with torch.no_grad():
        logits = hf_model(**hf_tokenizer(["a superb film"], return_tensors="pt")).logits
    probabilities = logits.softmax(-1)[0].tolist()
    labels = [hf_model.config.id2label[i] for i in range(2)]
    assert prediction["label"] == labels[int(logits.argmax())] == "pos"
    assert [prediction["probabilities"][name] for name in labels] == \
        pytest.approx(probabilities, abs=1e-5)


# ---------------------------------------------------------------------------- distillation
def test_distilbert_student_from_every_other_teacher_layer(tmp_path, tiny_vocab):
    """`distill --student distilbert`: a DistilBERT folder (transformers reads it with the same
    logits) whose layers start as teacher layers 1 and 3 and whose embeddings equal the
    teacher's for single texts (token type 0 folded into the positions)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tiny_vocab), hidden_size=32, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=37,
                        id2label={0: "greeting", 1: "place"})
    teacher = BertForSequenceClassification(config).eval()
    student, layer_map = make_distilbert_student(teacher)
    student.eval()
    assert layer_map == [1, 3] and student.config.num_hidden_layers == 2
    ids = torch.randint(5, len(tiny_vocab), (2, 7))
    with torch.no_grad():
        assert torch.allclose(student.bert.embeddings(ids, None),
                              teacher.bert.embeddings(ids, torch.zeros_like(ids)), atol=1e-6)
    assert torch.equal(student.bert.encoder.layers[1].ffn.up.weight,
                       teacher.bert.encoder.layers[3].ffn.up.weight)

    teacher.save_pretrained(tmp_path / "teacher")
    Tokenizer(tiny_vocab).save_pretrained(tmp_path / "teacher")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in
                            [("hello world", "greeting"), ("the cafe", "place")] * 4))
    training = TrainingConfig(out_dir=str(tmp_path / "student"), epochs=1, batch_size=4,
                              progress_bar=False, tensorboard=False, plot=False, save_every=0,
                              seed=0)
    report = run_distillation(DistillConfig(str(tmp_path / "teacher"), str(data), str(data),
                                            student_family="distilbert"), training)
    assert report["student_layers_from_teacher"] == [1, 3]
    written = json.loads((tmp_path / "student" / "config.json").read_text())
    assert written["model_type"] == "distilbert" and written["n_layers"] == 2
    theirs, info = transformers.DistilBertForSequenceClassification.from_pretrained(
        str(tmp_path / "student"), output_loading_info=True)
    assert not any(info.values()), info
    ours = HEAD_CLASSES["BertForSequenceClassification"].from_pretrained(tmp_path / "student",
                                                                         verbose=False)
    batch = Tokenizer.from_pretrained(tmp_path / "student")(["hello world", "the cafe x"])
    with torch.no_grad():
        expected = theirs.eval()(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).logits
        assert torch.allclose(ours(**batch).logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"give --student-layers \(or nothing\)"):
        DistillConfig("t", "a", "b", student_family="distilbert", student_size="mini")


# ---------------------------------------------------------------------------- Longformer
LONGFORMER_HEADS = ["Model", "ForMaskedLM", "ForSequenceClassification",
                    "ForTokenClassification", "ForQuestionAnswering"]


@pytest.mark.parametrize("head", LONGFORMER_HEADS)
def test_longformer_folder_parity_with_global_tokens(tmp_path, head):
    """Windows of 4 and 6 tokens (one per layer) over 23 tokens, padding, global tokens given
    and each head's default ones: bertkit's attention mode equals LongformerModel's."""
    torch.manual_seed(0)
    hf_config = transformers.LongformerConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=80, attention_window=[4, 6],
        type_vocab_size=1, num_labels=2 if head == "ForQuestionAnswering" else 3)
    hf_class = getattr(transformers, "Longformer" + head)
    hf_model = hf_class(hf_config).eval()
    hf_model.save_pretrained(str(tmp_path / "hf"))
    ours = HEAD_CLASSES["Bert" + head].from_pretrained(tmp_path / "hf", verbose=False)
    assert type(ours).__name__ == "Longformer" + head and not ours.load_report.initialized
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 99, (3, 23), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, 1)
    ids[:, 2:5] = hf_config.sep_token_id  # QA's default global tokens: the 2 before them
    given = torch.zeros_like(ids)
    given[:, 0], given[0, 9], given[1, 3] = 1, 1, 1
    with torch.no_grad():
        for global_mask in (given, None):
            theirs = hf_model(input_ids=ids, attention_mask=mask,
                              global_attention_mask=global_mask)
            ours_out = ours(ids, mask, global_attention_mask=global_mask)
            assert max_difference(theirs, ours_out, mask) <= 1e-4
    ours.save_pretrained(tmp_path / "ours")
    _, info = hf_class.from_pretrained(str(tmp_path / "ours"), output_loading_info=True)
    assert not any(info.values()), info


@pytest.mark.parametrize("source", ["bert", "roberta"])
def test_window_covering_the_input_equals_full_attention(source):
    """A BERT / RoBERTa encoder made a Longformer (global projections copied, positions
    extended by repetition): with a window covering the input it computes what the full
    attention encoder does, with or without global tokens; past the original positions it
    runs on 3x longer inputs."""
    torch.manual_seed(0)
    config_class = RobertaConfig if source == "roberta" else BertConfig
    pad = 1 if source == "roberta" else 0
    model = HEAD_CLASSES["RobertaModel" if source == "roberta" else "BertModel"](config_class(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=40 + 2 * pad)).eval()
    longformer = longformer_from_model(model, attention_window=64)
    ids = torch.randint(5, 99, (3, 23))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, pad)
    first = torch.zeros_like(ids)
    first[:, 0] = 1
    real = mask.bool()
    with torch.no_grad():
        full = model(ids, mask).last_hidden_state[real]
        for global_mask in (None, first):
            windowed = longformer(ids, mask, global_attention_mask=global_mask)
            assert (windowed.last_hidden_state[real] - full).abs().max() <= 1e-5
        longer = longformer_from_model(model, attention_window=8, max_positions=120)
        assert longer(torch.randint(5, 99, (1, 120))).last_hidden_state.shape == (1, 120, 32)


def test_sliding_window_attention_equals_a_dense_band_mask():
    """The blocked computation against the dense definition: query i sees keys j with
    |i - j| <= window, plus the global keys; padding keys never (T a multiple of the window
    and not)."""
    torch.manual_seed(0)
    for length in (24, 23):
        q, k, v = (torch.randn(2, 3, length, 8) for _ in range(3))
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, 17:] = 0
        global_mask = torch.zeros_like(mask)
        global_mask[:, 0], global_mask[0, 12] = 1, 1
        out = sliding_window_attention(q, k, v, 4, WindowMask.build(mask, global_mask))
        i = torch.arange(length)
        band = (i[:, None] - i[None, :]).abs() <= 4                            # (T, T)
        allowed = band[None] | global_mask.bool()[:, None, :]                  # (B, T, T)
        allowed &= mask.bool()[:, None, :]
        scores = (q @ k.transpose(-1, -2)).masked_fill(~allowed[:, None], float("-inf"))
        expected = scores.softmax(-1) @ v
        real = mask.bool()
        assert (out.transpose(1, 2)[real] - expected.transpose(1, 2)[real]).abs().max() < 1e-5


# ---------------------------------------------------------------------------- pretraining
def test_roberta_pretraining_writes_a_roberta_mlm_folder(tmp_path):
    """MLM-only pretraining with a byte-level BPE vocab: the folder is a RobertaForMaskedLM
    folder transformers loads with the same logits; NSP is refused for RoBERTa."""
    sentences = [f"The {a} {b} sat on the {c} near the {d}." for a in ("cat", "dog", "fox")
                 for b in ("quietly", "slowly") for c in ("mat", "log", "rug")
                 for d in ("door", "window")]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(sentences[i:i + 3])
                                  for i in range(0, len(sentences), 3)), encoding="utf-8")
    with pytest.raises(ValueError, match="RoBERTa pretrains with MLM only"):
        PretrainConfig(corpus=[str(corpus)], model_type="roberta")
    RobertaConfig(vocab_size=320, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=66).save_pretrained(tmp_path)
    out = tmp_path / "run"
    result = run_pretraining(
        PretrainConfig(corpus=[str(corpus)], model_type="roberta", nsp=False, vocab_size=320,
                       model_config=str(tmp_path / "config.json"), max_seq_length=32,
                       cache_dir=str(tmp_path / "cache")),
        TrainingConfig(out_dir=str(out), batch_size=4, max_steps=3, eval_every=3,
                       save_every=0, progress_bar=False, tensorboard=False, plot=False, seed=0))
    assert "mlm_accuracy" in result.metrics and "nsp_accuracy" not in result.metrics
    assert isinstance(Tokenizer.from_pretrained(out), BPETokenizer)
    theirs, info = transformers.RobertaForMaskedLM.from_pretrained(str(out),
                                                                   output_loading_info=True)
    assert not any(info.values()), info
    ours = HEAD_CLASSES["BertForMaskedLM"].from_pretrained(out, verbose=False)
    batch = Tokenizer.from_pretrained(out)(["The cat sat on the mat.", "A dog"])
    with torch.no_grad():
        expected = theirs.eval()(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).logits
        got = ours(batch["input_ids"], batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-5
