"""The model: parity with transformers' BertModel on the real MiniLM weights (every position,
every layer's attention probabilities and hidden states), the attention function and its masks,
and a tiny-config test for every head (shapes, loss iff labels, backward)."""

import math

import pytest
import torch
import torch.nn.functional as F

from bertkit import (BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                     BertForSequenceClassification, BertForTokenClassification, BertModel,
                     Tokenizer)
from bertkit.modeling.layers import attention, causal_mask_bias, padding_mask_bias


@pytest.fixture(autouse=True)
def padded_encoder(monkeypatch):
    """These tests compare every position, padding included, with transformers: they run the
    padded path (BertModel.unpad = False). The default unpadded path is compared at real
    positions, outputs and gradients, in tests/test_unpad.py."""
    monkeypatch.setattr(BertModel, "unpad", False)


transformers = pytest.importorskip("transformers")

ATOL = 1e-4  # fp32, 6 layers
MAX_LENGTH = 40  # long enough for varied lengths, short enough to stay fast

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "hi",
    "",
    "Naïve café owners in Zürich serve crème brûlée — and 日本茶 — every day!!!",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "A cheetah is running behind its prey.",
    "x y z",
    "An unusually long sentence, with commas, semicolons; and (parentheses), that keeps going "
    "for quite a while so that the batch has one example much longer than the rest of them.",
    "Short.",
]
PAIRS = ["What is eaten?"] * 5 + ["", "Where?", "Drums or violin?", "no"] + TEXTS[:8]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # random inputs and inits are the same whatever the test order


@pytest.fixture(scope="module")
def minilm(minilm_folder):
    """(bertkit model, transformers eager model, tokenizer), loaded once for this module."""
    ours = BertModel.from_pretrained(minilm_folder, verbose=False).eval()
    theirs = transformers.BertModel.from_pretrained(minilm_folder,
                                                    attn_implementation="eager").eval()
    return ours, theirs, Tokenizer.from_pretrained(minilm_folder)


def max_diff(a, b):
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------- MiniLM parity
def test_minilm_matches_transformers_at_every_position(minilm):
    ours, theirs, tok = minilm
    batch = tok(TEXTS, max_length=MAX_LENGTH)
    assert batch["input_ids"].shape[0] == 17 and not bool(batch["attention_mask"].all())
    without_types = {k: v for k, v in batch.items() if k != "token_type_ids"}
    with torch.no_grad():
        ref = theirs(**batch)
        for inputs in (batch, without_types):
            mine = ours(**inputs)
            # Every position, padding included: the pads' vectors must agree too.
            assert max_diff(mine.last_hidden_state, ref.last_hidden_state) <= ATOL
            assert max_diff(mine.pooler_output, ref.pooler_output) <= ATOL
            assert mine.hidden_states is None and mine.attentions is None


def test_minilm_pairs_attentions_and_hidden_states_match_transformers(minilm):
    ours, theirs, tok = minilm
    batch = tok(TEXTS, PAIRS, max_length=MAX_LENGTH)
    assert bool((batch["token_type_ids"] == 1).any()) and not bool(batch["attention_mask"].all())
    with torch.no_grad():
        mine = ours(**batch, output_attentions=True, output_hidden_states=True)
        ref = theirs(**batch, output_attentions=True, output_hidden_states=True)
        plain = ours(**batch)
    for out in (mine, plain):
        assert max_diff(out.last_hidden_state, ref.last_hidden_state) <= ATOL
        assert max_diff(out.pooler_output, ref.pooler_output) <= ATOL
    assert len(mine.hidden_states) == len(ref.hidden_states) == 7  # embeddings + 6 layers
    real = batch["attention_mask"].bool()                                      # (B, T)
    for layer, (a, b) in enumerate(zip(mine.hidden_states, ref.hidden_states)):
        assert max_diff(a[real], b[real]) <= ATOL, f"hidden state {layer}"
        # The pads' vectors carry no information and drift more in the middle layers (1.7e-4
        # measured against transformers 5.24); they must still agree closely.
        assert max_diff(a, b) <= 5 * ATOL, f"hidden state {layer} (padding included)"
    assert torch.equal(mine.hidden_states[-1], mine.last_hidden_state)
    assert len(mine.attentions) == len(ref.attentions) == 6
    pad_keys = batch["attention_mask"][:, None, None, :] == 0                 # (B, 1, 1, T)
    for layer, (a, b) in enumerate(zip(mine.attentions, ref.attentions)):
        assert a.shape == b.shape == (17, 12, MAX_LENGTH, MAX_LENGTH)
        real_rows = real[:, None, :, None].expand_as(a)                        # (B, N, T, T)
        assert max_diff(a[real_rows], b[real_rows]) <= 1e-5, f"attention of layer {layer}"
        assert max_diff(a, b) <= 5e-5, f"attention of layer {layer} (pad queries included)"
        # Padding keys get no probability; every row sums to one.
        assert a.masked_select(pad_keys.expand_as(a)).abs().max().item() < 1e-30
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))


def test_minilm_unpadded_batch_matches_padded(minilm):
    # Without padding the model passes no mask at all (the fast SDPA path); a text must get
    # the same vectors alone as inside a padded batch.
    ours, _, tok = minilm
    with torch.no_grad():
        batch = tok(TEXTS[:4])
        together = ours(**batch).last_hidden_state
        for i, text in enumerate(TEXTS[:4]):
            alone = ours(**tok([text])).last_hidden_state[0]
            length = int(batch["attention_mask"][i].sum())
            assert max_diff(alone, together[i, :length]) <= 1e-5


def test_input_longer_than_max_positions_is_a_clear_error(minilm):
    ours, _, _ = minilm
    with pytest.raises(ValueError, match=r"input has 513 tokens but the model takes at most 512 "
                                         r"\(max_position_embeddings\)"):
        ours(torch.ones(1, 513, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, length\)"):
        ours(torch.ones(8, dtype=torch.long))


# ---------------------------------------------------------------------------- attention
def test_attention_matches_the_formula():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    bias = padding_mask_bias(mask, torch.float32)
    # The formula, written out position by position with a plain softmax over kept keys.
    expected = torch.empty(2, 3, 5, 8)
    for b in range(2):
        keep = mask[b].bool()
        scores = q[b] @ k[b][:, keep].transpose(-1, -2) / math.sqrt(8)      # (N, T, S_kept)
        expected[b] = scores.softmax(-1) @ v[b][:, keep]
    for need_weights in (False, True):
        context, probs = attention(q, k, v, bias, need_weights=need_weights)
        torch.testing.assert_close(context, expected, atol=1e-6, rtol=1e-5)
        assert (probs is None) is (not need_weights)


def test_sdpa_and_explicit_paths_agree_in_train_mode(tiny_config):
    tiny_config.hidden_dropout_prob = tiny_config.attention_probs_dropout_prob = 0.0
    model = BertModel(tiny_config).train()
    ids = torch.randint(5, 99, (4, 11))
    mask = torch.ones(4, 11, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 1:] = 0
    types = torch.randint(0, 2, (4, 11))
    fast = model(ids, mask, types)
    explicit = model(ids, mask, types, output_attentions=True)
    assert max_diff(fast.last_hidden_state, explicit.last_hidden_state) <= 1e-6
    assert max_diff(fast.pooler_output, explicit.pooler_output) <= 1e-6
    # The gradients agree too: the explicit path is a drop-in replacement for training.
    grads = []
    for out in (fast, explicit):
        model.zero_grad()
        out.last_hidden_state.pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]))
    assert max_diff(*grads) <= 1e-6 * grads[0].abs().max().item()  # fp32 summation order


def test_fully_masked_example_gives_no_nan(tiny_config):
    model = BertForSequenceClassification(tiny_config).train()
    ids = torch.randint(5, 99, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1] = 0  # an example with no real token at all
    for need_weights in (False, True):
        out = model(ids, mask, labels=torch.tensor([0, 1, 1]), output_attentions=need_weights,
                    output_hidden_states=True)
        tensors = [out.loss, out.logits, *out.hidden_states] + list(out.attentions or ())
        assert all(torch.isfinite(t).all() for t in tensors)
        model.zero_grad()
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        if need_weights:
            # Its softmax is uniform over the masked keys instead of 0/0.
            torch.testing.assert_close(out.attentions[0][1], torch.full((4, 6, 6), 1 / 6))
    # The other examples are unaffected by the masked one.
    model.eval()
    with torch.no_grad():
        together = model(ids, mask).logits
        alone = model(ids[[0, 2]], mask[[0, 2]]).logits
    assert max_diff(together[[0, 2]], alone) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fully_masked_row_with_very_negative_scores_gives_no_nan(dtype):
    # Scores of -100 plus finfo(fp16).min overflow to -inf in fp16; a row of -inf has a NaN
    # softmax. The mask convention promises a finite result for every dtype on both paths.
    q = torch.full((1, 2, 3, 4), 10.0).to(dtype)
    k = torch.full((1, 2, 5, 4), -10.0).to(dtype)
    v = torch.randn(1, 2, 5, 4).to(dtype)
    bias = padding_mask_bias(torch.zeros(1, 5), dtype)
    for need_weights in (False, True):
        context, probs = attention(q, k, v, bias, need_weights=need_weights)
        assert torch.isfinite(context).all(), (dtype, need_weights)
        if probs is not None:
            assert torch.isfinite(probs).all(), dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_padding_mask_bias_uses_finfo_min(dtype):
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    bias = padding_mask_bias(mask, dtype)
    assert bias.shape == (2, 1, 1, 3) and bias.dtype == dtype
    low = torch.finfo(dtype).min
    expected = torch.tensor([[0, 0, low], [low, low, low]], dtype=dtype)
    assert torch.equal(bias[:, 0, 0], expected)
    assert torch.isfinite(bias).all()
    # A bool mask means the same thing as a 0/1 mask.
    assert torch.equal(padding_mask_bias(mask.bool(), dtype), bias)


@pytest.mark.parametrize("past", [0, 3])
def test_causal_mask_bias_lets_position_i_see_only_up_to_i(past):
    bias = causal_mask_bias(4, torch.float32, past_length=past)
    assert bias.shape == (4, past + 4)
    for i in range(4):
        for j in range(past + 4):
            assert bias[i, j].item() == (0.0 if j <= past + i else torch.finfo(torch.float32).min)
    # Causal attention over a sequence equals attention over each prefix separately.
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    causal, _ = attention(q, k, v, causal_mask_bias(4, torch.float32))
    for i in range(4):
        prefix, _ = attention(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1])
        torch.testing.assert_close(causal[:, :, i:i + 1], prefix, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------- tiny heads
B, T = 3, 9


def inputs():
    ids = torch.randint(5, 99, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 6:] = 0
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.randint(0, 2, (B, T)))


def mlm_labels(ids):
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[1, 3], labels[2, 2], labels[2, 5] = ids[0, 1], ids[1, 3], 7, 8
    return labels  # M = 4


HEADS = {
    "BertModel": (BertModel, {}, lambda o: {"last_hidden_state": (B, T, 32),
                                            "pooler_output": (B, 32)}),
    "BertForPreTraining": (
        BertForPreTraining,
        lambda x: dict(labels=mlm_labels(x["input_ids"]),
                       next_sentence_label=torch.tensor([0, 1, 0])),
        lambda o: {"prediction_logits": (B, T, 99), "seq_relationship_logits": (B, 2)}),
    "BertForMaskedLM": (BertForMaskedLM, lambda x: dict(labels=mlm_labels(x["input_ids"])),
                        lambda o: {"logits": (B, T, 99)}),
    "BertForSequenceClassification": (
        BertForSequenceClassification, lambda x: dict(labels=torch.tensor([0, 1, 1])),
        lambda o: {"logits": (B, 2)}),
    "BertForTokenClassification": (
        BertForTokenClassification,
        lambda x: dict(labels=torch.randint(0, 2, (B, T)).masked_fill(x["attention_mask"] == 0,
                                                                      -100)),
        lambda o: {"logits": (B, T, 2)}),
    "BertForQuestionAnswering": (
        BertForQuestionAnswering,
        lambda x: dict(start_positions=torch.tensor([1, 0, 4]),
                       end_positions=torch.tensor([2, 0, 7])),
        lambda o: {"start_logits": (B, T), "end_logits": (B, T)}),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_tiny_head_shapes_loss_and_backward(tiny_config, name):
    cls, make_labels, shapes = HEADS[name]
    model = cls(tiny_config).train()
    x = inputs()
    out = model(**x)
    for field, shape in shapes(out).items():
        assert tuple(getattr(out, field).shape) == shape, field
    if cls is BertModel:
        return
    assert out.loss is None  # no labels, no loss
    labelled = model(**x, **make_labels(x), output_hidden_states=True, output_attentions=True)
    assert labelled.loss.dim() == 0 and torch.isfinite(labelled.loss)
    assert len(labelled.hidden_states) == 3 and len(labelled.attentions) == 2
    assert labelled.attentions[0].shape == (B, 4, T, T)
    if cls in (BertForPreTraining, BertForMaskedLM):
        logits = labelled.prediction_logits if cls is BertForPreTraining else labelled.logits
        assert logits.shape == (4, 99)  # only the M masked positions
    labelled.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # Every parameter learns something (the pad row of the word embeddings excepted), except
    # the QA bias: it shifts every position's score alike, which a softmax over positions
    # ignores, so its gradient is zero up to rounding (as in transformers).
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n != "qa_outputs.bias")
    if "qa_outputs.bias" in grads:
        assert grads["qa_outputs.bias"].abs().max() < 1e-6


def test_tiny_mlm_loss_is_cross_entropy_at_masked_positions(tiny_config):
    model = BertForMaskedLM(tiny_config).eval()
    x = inputs()
    labels = mlm_labels(x["input_ids"])
    full = model(**x).logits                                                  # (B, T, V)
    out = model(**x, labels=labels)
    selected = labels != -100
    torch.testing.assert_close(out.logits, full[selected])
    torch.testing.assert_close(out.loss, F.cross_entropy(full.view(-1, 99), labels.view(-1)))
    # No masked token: zero loss that still backpropagates (DDP needs a graph).
    none = model(**x, labels=torch.full_like(labels, -100))
    assert none.logits.shape == (0, 99) and none.loss.item() == 0.0 and none.loss.requires_grad


def test_pretraining_loss_is_mlm_plus_nsp(tiny_config):
    model = BertForPreTraining(tiny_config).eval()
    x = inputs()
    labels, nsp = mlm_labels(x["input_ids"]), torch.tensor([1, 0, 1])
    out = model(**x, labels=labels, next_sentence_label=nsp)
    torch.testing.assert_close(out.nsp_loss, F.cross_entropy(out.seq_relationship_logits, nsp))
    torch.testing.assert_close(out.loss, out.mlm_loss + out.nsp_loss)


def test_weights_are_initialised_as_bert(tiny_config):
    tiny_config.initializer_range = 0.05
    model = BertForPreTraining(tiny_config)
    words = model.bert.embeddings.word_embeddings.weight
    assert torch.equal(words[0], torch.zeros(32))  # the [PAD] row
    assert abs(words[1:].std().item() - 0.05) < 0.005
    assert torch.equal(model.mlm.bias, torch.zeros(99))
    norm = model.bert.encoder.layers[0].attention_norm
    assert torch.equal(norm.weight, torch.ones(32)) and torch.equal(norm.bias, torch.zeros(32))
    # The MLM decoder is the word embedding matrix itself.
    assert model.mlm.word_embeddings[0].weight is words
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_eval_is_deterministic_and_dropout_acts_in_train(tiny_config):
    model = BertModel(tiny_config)
    x = inputs()
    model.eval()
    with torch.no_grad():
        a, b = model(**x).last_hidden_state, model(**x).last_hidden_state
        assert torch.equal(a, b)
        model.train()
        assert not torch.allclose(model(**x).last_hidden_state, a)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "silu"])
def test_activations_match_transformers(tiny_config, act):
    tiny_config.hidden_act = act
    # Wide weights put the pre-activations where gelu, its tanh form and silu really differ
    # (with std 0.02 they would all be near-linear and agree to 1e-5).
    tiny_config.initializer_range = 0.5
    ours = BertForMaskedLM(tiny_config).eval()
    theirs = transformers.BertForMaskedLM(transformers.BertConfig(
        **{k: v for k, v in tiny_config.to_dict().items() if k != "model_type"})).eval()
    from bertkit.checkpoint import hf_state_dict
    theirs.load_state_dict(hf_state_dict(ours), strict=False)
    theirs.tie_weights()
    x = inputs()
    with torch.no_grad():
        mine, ref = ours(**x).logits, theirs(**x).logits
    assert max_diff(mine, ref) <= 1e-5 * ref.abs().max().item()
