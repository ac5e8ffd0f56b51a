"""Batched inference: embed() against mean pooling done by hand on transformers' outputs (real
MiniLM weights), order kept despite length sorting; fill_mask against transformers' fill-mask
pipeline; the folder loader's checks."""

import pytest
import torch

from bertkit import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel, Tokenizer
from bertkit.cli import main
from bertkit.inference import (embed, fill_mask, length_sorted_batches, load_for_inference,
                               mean_pool, run_batched)

transformers = pytest.importorskip("transformers")

# Deliberately not in length order, so that length sorting must be undone.
TEXTS = [
    "A man is eating food.",
    "hi",
    "The quick brown fox jumps over the lazy dog, then runs into the forest and hides.",
    "A man is eating a piece of bread.",
    "",
    "A monkey is playing drums.",
    "Naïve café owners serve crème brûlée every single day of the week!",
    "Someone is playing a guitar.",
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def minilm(minilm_folder):
    return (BertModel.from_pretrained(minilm_folder, verbose=False),
            Tokenizer.from_pretrained(minilm_folder))


@pytest.fixture(scope="module")
def reference_embeddings(minilm_folder):
    """Mean pooling by hand over transformers' BertModel, one text at a time (no padding)."""
    model = transformers.BertModel.from_pretrained(minilm_folder).eval()
    tok = transformers.BertTokenizerFast.from_pretrained(minilm_folder)
    vectors = []
    with torch.no_grad():
        for text in TEXTS:
            hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]  # (T, H)
            vectors.append(hidden.mean(0))
    return torch.stack(vectors)                                               # (len(TEXTS), H)


@pytest.mark.parametrize("batch_size", [3, 32])
def test_embed_equals_mean_pooling_of_transformers(minilm, reference_embeddings, batch_size):
    model, tok = minilm
    vectors = embed(model, tok, TEXTS, batch_size=batch_size)
    assert vectors.shape == (len(TEXTS), 384)
    assert (vectors - reference_embeddings).abs().max().item() <= 1e-4


def test_embed_normalize_and_meaning(minilm, reference_embeddings):
    model, tok = minilm
    unit = embed(model, tok, TEXTS, batch_size=3, normalize=True)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(unit, torch.nn.functional.normalize(reference_embeddings, dim=-1),
                               atol=1e-5, rtol=0)
    # all-MiniLM-L6-v2 is a sentence-similarity model: eating is closer to eating than to drums.
    similarity = unit @ unit.T
    assert similarity[0, 3] > 0.5 > similarity[0, 5]


def test_embed_uses_the_encoder_of_a_head(minilm_folder, minilm):
    model, tok = minilm
    head = BertForSequenceClassification.from_pretrained(minilm_folder, verbose=False)
    torch.testing.assert_close(embed(head, tok, TEXTS[:3]), embed(model, tok, TEXTS[:3]))


def test_embed_truncates_long_texts(minilm):
    model, tok = minilm
    long = "word " * 1000
    vectors = embed(model, tok, [long, "short"], max_length=16)
    assert vectors.shape == (2, 384)
    torch.testing.assert_close(vectors[0], embed(model, tok, ["word " * 14])[0], atol=1e-5, rtol=0)


def test_embed_of_no_texts_has_the_hidden_size(minilm):
    model, tok = minilm
    assert embed(model, tok, []).shape == (0, 384)


def test_length_sorted_batches_cover_every_index_once():
    lengths = [5, 1, 9, 3, 9, 0, 7]
    batches = list(length_sorted_batches(lengths, 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        list(length_sorted_batches(lengths, 0))


def test_mean_pool_by_hand():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], (hidden[0, 0] + hidden[0, 1]) / 2)
    assert torch.equal(pooled[1], torch.zeros(2))  # no real token: zero, not NaN


def test_run_batched_pairs_keep_order(tiny_vocab, tiny_config):
    tok = Tokenizer(tiny_vocab)
    tiny_config.vocab_size = len(tiny_vocab)
    model = BertForSequenceClassification(tiny_config).eval()
    first = ["the cafe", "hello world the the the", "x", "naive"]
    second = ["a", "b c d e f", "", "the World"]
    logits = run_batched(model, tok, first, lambda out, batch: out.logits, text_pairs=second,
                         batch_size=2)
    with torch.no_grad():
        for i in range(4):
            alone = model(**tok([first[i]], [second[i]])).logits[0]
            torch.testing.assert_close(logits[i], alone, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="same length, got 4 and 3"):
        run_batched(model, tok, first, lambda out, batch: out.logits, text_pairs=second[:3])


# ---------------------------------------------------------------------------- fill-mask, loading
@pytest.fixture
def mlm_folder(tmp_path, tiny_vocab):
    """A folder with a random tiny BertForMaskedLM and its tokenizer."""
    config = BertConfig(vocab_size=len(tiny_vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        model.mlm.bias.normal_(std=2.0)  # make the predictions differ clearly
    model.save_pretrained(tmp_path)
    Tokenizer(tiny_vocab, do_lower_case=False, model_max_length=512).save_pretrained(tmp_path)
    return tmp_path


def test_fill_mask_matches_transformers_pipeline(mlm_folder):
    model, tok = load_for_inference(str(mlm_folder), device="cpu")
    assert isinstance(model, BertForMaskedLM) and not model.training
    assert tok.model_max_length == 64  # clamped to the model's positions
    text = "The [MASK] and the World [MASK]"
    ours = fill_mask(model, tok, text, top_k=4)
    pipe = transformers.pipeline(
        "fill-mask", model=transformers.BertForMaskedLM.from_pretrained(mlm_folder),
        tokenizer=transformers.BertTokenizerFast.from_pretrained(str(mlm_folder)), device="cpu")
    theirs = pipe(text, top_k=4)
    assert len(ours) == len(theirs) == 2
    for mine, ref in zip(ours, theirs):
        assert [c["token"] for c in mine] == [r["token_str"] for r in ref]
        for c, r in zip(mine, ref):
            assert abs(c["score"] - r["score"]) <= 1e-5
    # With one mask the pipeline's filled-in sequence is the decoded text without specials.
    single = "The [MASK] and the World!"
    for c, r in zip(fill_mask(model, tok, single, top_k=4)[0], pipe(single, top_k=4)):
        assert (c["token"], c["sequence"]) == (r["token_str"], r["sequence"])
        assert abs(c["score"] - r["score"]) <= 1e-5
    with pytest.raises(ValueError, match="has no \\[MASK\\] token"):
        fill_mask(model, tok, "no mask here")
    with pytest.raises(ValueError, match="BertModel has no masked-language-model head"):
        fill_mask(BertModel(model.config), tok, "the [MASK]")


def test_load_for_inference_checks_the_folder(mlm_folder, tiny_vocab):
    model, _ = load_for_inference(str(mlm_folder), model_class=BertModel, device="cpu")
    assert type(model) is BertModel
    (mlm_folder / "vocab.txt").write_text("\n".join(tiny_vocab + ["extra"]) + "\n",
                                          encoding="utf-8")
    with pytest.raises(ValueError, match=f"vocab.txt has {len(tiny_vocab) + 1} tokens but the "
                                         f"model's vocab_size is {len(tiny_vocab)}"):
        load_for_inference(str(mlm_folder), device="cpu")
    (mlm_folder / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="has no vocab.txt"):
        load_for_inference(str(mlm_folder), device="cpu")


def test_load_for_inference_refuses_a_smaller_vocab_and_warns_on_padding(mlm_folder, tiny_vocab):
    # 168 rows (a multiple of 8): 40 tokens leave 128 rows no token uses, too many for padding.
    (mlm_folder / "vocab.txt").write_text("\n".join(tiny_vocab[:40]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_for_inference(str(mlm_folder), device="cpu")
    assert str(error.value) == (f"{mlm_folder}: vocab.txt has 40 tokens but the model's "
                                "vocab_size is 168 (config.json): the vocab does not belong to "
                                "this model (128 embedding rows no token uses)")
    # Two spare rows in a table of a multiple of 8: plausibly padding, loaded with one warning.
    (mlm_folder / "vocab.txt").write_text("\n".join(tiny_vocab[:-2]) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"vocab.txt has 166 tokens but the model's vocab_size "
                                         r"is 168 \(config.json\): taking the 2 spare embedding "
                                         r"rows for padding") as caught:
        _, tok = load_for_inference(str(mlm_folder), device="cpu")
    assert len(caught) == 1 and tok.vocab_size == 166


@pytest.mark.parametrize("top_k", [-1, 0, 2.5, True])
def test_fill_mask_top_k_must_be_at_least_one(mlm_folder, top_k):
    model, tok = load_for_inference(str(mlm_folder), device="cpu")
    with pytest.raises(ValueError) as error:
        fill_mask(model, tok, "The [MASK]", top_k=top_k)
    assert str(error.value) == f"top_k must be an integer >= 1, got {top_k!r}"


@pytest.mark.parametrize("top_k", ["-1", "0"])
def test_cli_fill_mask_bad_top_k_is_one_line_and_exit_2(mlm_folder, capsys, top_k):
    assert main(["fill-mask", "--model", str(mlm_folder), "--top-k", top_k, "The [MASK]"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"bertkit fill-mask: error: top_k must be an integer >= 1, got {top_k}\n"
    assert main(["fill-mask", "--model", str(mlm_folder), "--top-k", "1", "The [MASK]"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # the text, then its one candidate
