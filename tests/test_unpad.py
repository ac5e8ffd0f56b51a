"""The unpadded encoder (issue 13): a padded batch's real tokens are packed into one (N, H)
tensor after the embeddings and only they go through the layers.

What holds it: at real positions, outputs and gradients equal the padded path (``padded_path``)
and transformers within 1e-4, on MiniLM and on tiny configs with varied lengths (a batch with
a fully padded row, one without padding, a batch of one, a mask with holes); every head; the
PEFT methods; padding positions of ``last_hidden_state`` are exactly zero; the switch, and the
cases that keep the padded path (attention maps). Shapes: B batch, T length, H hidden.
"""

import pytest
import torch
import torch.nn.functional as F

from bertkit import (BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                     BertForSequenceClassification, BertForTokenClassification, BertModel,
                     Tokenizer)
from bertkit.checkpoint import to_hf_name
from bertkit.modeling.bert import IGNORE_INDEX, padded_path
from bertkit.modeling.layers import GROUP_MIN_FILL, length_buckets, pack_batch
from bertkit.peft import apply_peft

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
TEXTS = ["A man is eating food.", "hi", "", "The quick brown fox jumps over the lazy dog. " * 4,
         "Naïve café owners in Zürich serve crème brûlée every day!!!", "x y z",
         "A man is riding a white horse on an enclosed ground.", "Short.",
         "Someone in a gorilla costume is playing a set of drums."]
# Rows of real-token counts (0 = a fully padded row); None = every row full (no padding).
LENGTH_CASES = {"varied": [7, 3, 9, 9, 1, 5, 0, 8, 6, 2], "no_padding": None, "one_row": [4],
                "holes": "holes", "every_row_real": [7, 3, 9, 9, 1, 5, 8, 6, 2]}


@pytest.fixture(autouse=True)
def _seed(one_thread):
    torch.manual_seed(0)


def make_batch(case, vocab: int = 99, width: int = 9) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, token_type_ids (B, T) for one of :data:`LENGTH_CASES`."""
    lengths = LENGTH_CASES[case]
    if lengths is None:
        mask = torch.ones(4, width, dtype=torch.long)
    elif lengths == "holes":  # real tokens need not be a prefix: positions stay the grid's
        mask = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0, 0, 0]])
    else:
        mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, vocab, mask.shape).masked_fill(mask == 0, 0)      # (B, T)
    types = (torch.arange(mask.size(1)) >= 4).long().expand_as(mask).clone()  # (B, T)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def real_loss(hidden: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A loss that reads every real position (B, T, H) in a way no symmetry hides."""
    return (hidden * weights)[mask.bool()].pow(2).sum()


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(mine: dict, other: dict) -> None:
    """Every gradient of ``mine`` equals ``other``'s within ATOL of the largest gradient (some,
    like a key bias's, are zero in exact arithmetic: only rounding is left of them)."""
    assert mine and mine.keys() <= other.keys()
    scale = max(g.abs().max().item() for g in mine.values())
    for name, grad in mine.items():
        assert max_diff(grad, other[name]) <= ATOL * scale, name


def unpadded_and_padded(model, batch, **extra):
    """(unpadded output, padded output) of ``model`` on ``batch``."""
    unpadded = model(**batch, **extra)
    with padded_path(model):
        padded = model(**batch, **extra)
    return unpadded, padded


# ---------------------------------------------------------------------------- the layout
def test_pack_batch_groups_by_length_and_round_trips():
    mask = make_batch("varied")["attention_mask"]                             # (10, 9)
    packed = pack_batch(mask, torch.float32)
    assert packed.token_index.numel() == int(mask.sum())
    # Longest first; lengths in a group are within GROUP_MIN_FILL of its longest.
    assert [(g.count, g.length) for g in packed.groups] == [(4, 9), (2, 6), (1, 3), (1, 2), (1, 1)]
    assert [g.bias is None for g in packed.groups] == [False, False, True, True, True]
    # Every real token has one slot, and the slot holds that token.
    tokens = torch.arange(packed.token_index.numel())[:, None].float()       # (N, 1)
    assert torch.equal(packed.from_slots(packed.to_slots(tokens)), tokens)
    x = torch.randn(*mask.shape, 5)                                           # (B, T, 5)
    back = packed.unpack(packed.pack(x))                                      # (B, T, 5)
    assert torch.equal(back[mask.bool()], x[mask.bool()])
    assert not back[~mask.bool()].any()


def test_length_buckets_make_few_groups_for_many_lengths():
    # 32 distinct lengths: a handful of attention calls per layer, not one per sequence.
    buckets = length_buckets(list(range(128, 0, -4)))
    assert sum(map(len, buckets)) == 32 and len(buckets) <= 12
    assert all(b[-1] >= GROUP_MIN_FILL * b[0] for b in buckets)
    assert length_buckets([5, 5, 5]) == [[5, 5, 5]]


# ---------------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="module")
def minilm(minilm_folder):
    ours = BertModel.from_pretrained(minilm_folder, verbose=False).eval()
    theirs = transformers.BertModel.from_pretrained(minilm_folder, attn_implementation="sdpa").eval()
    return ours, theirs, Tokenizer.from_pretrained(minilm_folder)


def test_minilm_outputs_and_gradients_match_padded_path_and_transformers(minilm):
    ours, theirs, tok = minilm
    batch = tok(TEXTS, TEXTS[::-1], max_length=32)
    mask = batch["attention_mask"]
    real = mask.bool()                                                        # (B, T)
    assert not bool(real.all())
    weights = torch.randn(batch["input_ids"].shape + (ours.config.hidden_size,))  # (B, T, H)
    outs, gradients = [], []
    for model, padded in ((ours, False), (ours, True), (theirs, False)):
        model.zero_grad()
        with padded_path(model) if padded else torch.enable_grad():
            out = model(**batch)
        real_loss(out.last_hidden_state, mask, weights).backward()
        outs.append(out)
        gradients.append({to_hf_name(n) if model is ours else n: g
                          for n, g in grads(model).items()})
    unpadded, padded, ref = outs
    assert not unpadded.last_hidden_state[~real].any()    # padding positions: exact zeros
    assert padded.last_hidden_state[~real].abs().max() > 0.1
    for other in (padded, ref):
        assert max_diff(unpadded.last_hidden_state[real], other.last_hidden_state[real]) <= ATOL
        assert max_diff(unpadded.pooler_output, other.pooler_output) <= ATOL
    assert gradients[0].keys() == gradients[1].keys() and len(gradients[0]) == 101
    assert_grads_close(gradients[0], gradients[1])
    assert_grads_close(gradients[0], gradients[2])


def test_minilm_hidden_states_on_the_unpadded_path(minilm):
    ours, theirs, tok = minilm
    batch = tok(TEXTS, max_length=32)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        mine = ours(**batch, output_hidden_states=True)
        ref = theirs(**batch, output_hidden_states=True)
    assert len(mine.hidden_states) == 7 and mine.attentions is None
    for a, b in zip(mine.hidden_states, ref.hidden_states):
        assert max_diff(a[real], b[real]) <= ATOL and not a[~real].any()
    assert torch.equal(mine.hidden_states[-1], mine.last_hidden_state)


def test_attention_maps_keep_the_padded_path(minilm):
    ours, _, tok = minilm
    batch = tok(TEXTS[:4], max_length=32)
    with torch.no_grad():
        mine = ours(**batch, output_attentions=True)
        plain = ours(**batch)
    real = batch["attention_mask"].bool()
    assert len(mine.attentions) == 6
    assert mine.last_hidden_state[~real].abs().max() > 0.1   # pads computed: padded path
    assert max_diff(mine.last_hidden_state[real], plain.last_hidden_state[real]) <= 1e-5


# ---------------------------------------------------------------------------- tiny configs
def hf_twin(model, tmp_path, cls_name):
    model.save_pretrained(tmp_path)
    return getattr(transformers, cls_name).from_pretrained(tmp_path, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("case", list(LENGTH_CASES))
def test_tiny_encoder_matches_padded_path_and_transformers(tiny_config, tmp_path, case):
    ours = BertModel(tiny_config).eval()
    theirs = hf_twin(ours, tmp_path, "BertModel")
    batch = make_batch(case)
    mask = batch["attention_mask"]
    real = mask.bool()
    weights = torch.randn(mask.shape + (32,))                                 # (B, T, H)
    results = []
    for model, padded in ((ours, False), (ours, True), (theirs, False)):
        model.zero_grad()
        with padded_path(model) if padded else torch.enable_grad():
            out = model(**batch)
        real_loss(out.last_hidden_state, mask, weights).backward()
        results.append((out, {to_hf_name(n) if model is ours else n: g
                              for n, g in grads(model).items()}))
    (unpadded, g0), (padded, g1), (ref, g2) = results
    assert not unpadded.last_hidden_state[~real].any()
    for other, g in ((padded, g1), (ref, g2)):
        assert max_diff(unpadded.last_hidden_state[real], other.last_hidden_state[real]) <= ATOL
        rows = real[:, 0]  # the pooler reads position 0: meaningful where it is real
        assert max_diff(unpadded.pooler_output[rows], other.pooler_output[rows]) <= ATOL
        assert_grads_close(g0, g)


def heads_and_labels(config, batch):
    """(model class, label kwargs, transformers class) for every head."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    token_labels = torch.randint(0, 2, ids.shape).masked_fill(mask == 0, IGNORE_INDEX)
    mlm = torch.full_like(ids, IGNORE_INDEX)
    mlm[0, [1, 4]], mlm[2, 0], mlm[3, 1] = ids[0, [1, 4]], ids[2, 0], 7
    return [
        (BertForSequenceClassification, dict(labels=torch.tensor([0, 1, 1, 0])),
         "BertForSequenceClassification"),
        (BertForTokenClassification, dict(labels=token_labels), "BertForTokenClassification"),
        (BertForQuestionAnswering, dict(start_positions=torch.tensor([1, 0, 2, 3]),
                                        end_positions=torch.tensor([2, 0, 2, 5])),
         "BertForQuestionAnswering"),
        (BertForMaskedLM, dict(labels=mlm), "BertForMaskedLM"),
        (BertForPreTraining, dict(labels=mlm, next_sentence_label=torch.tensor([0, 1, 1, 0])),
         "BertForPreTraining"),
    ]


def head_batch() -> dict[str, torch.Tensor]:
    lengths = torch.tensor([9, 4, 6, 2])
    mask = (torch.arange(9)[None, :] < lengths[:, None]).long()              # (4, 9)
    ids = torch.randint(5, 99, mask.shape).masked_fill(mask == 0, 0)          # (4, 9)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))


@pytest.mark.parametrize("index", range(5), ids=["seq", "token", "qa", "mlm", "pretraining"])
def test_every_head_loss_logits_and_gradients(tiny_config, tmp_path, index):
    batch = head_batch()
    cls, labels, hf_name = heads_and_labels(tiny_config, batch)[index]
    ours = cls(tiny_config).eval()
    theirs = hf_twin(ours, tmp_path, hf_name)
    real = batch["attention_mask"].bool()
    results = []
    for model, padded in ((ours, False), (ours, True), (theirs, False)):
        model.zero_grad()
        with padded_path(model) if padded else torch.enable_grad():
            out = model(**batch, **labels)
        logits = [out.start_logits[real], out.end_logits[real]] if cls is BertForQuestionAnswering \
            else [getattr(out, "logits", getattr(out, "prediction_logits", None))]
        if cls in (BertForMaskedLM, BertForPreTraining) and model is theirs:
            logits = [logits[0][labels["labels"] != IGNORE_INDEX]]         # (M, V): ours are sparse
        if cls is BertForTokenClassification:
            logits = [logits[0][real]]
        # QA: transformers' loss reads padding positions too (see BertModel); train on real ones.
        loss = (sum(l.logsumexp(-1).sum() for l in logits) if cls is BertForQuestionAnswering
                else out.loss)
        loss.backward()
        results.append((out.loss.detach(), logits, {to_hf_name(n) if model is ours else n: g
                                                    for n, g in grads(model).items()}))
    for loss, logits, g in results[1:]:
        if cls is not BertForQuestionAnswering:
            assert max_diff(results[0][0], loss) <= ATOL
        for a, b in zip(results[0][1], logits):
            assert a.shape == b.shape and max_diff(a, b) <= ATOL
        assert_grads_close(results[0][2], g)


def test_qa_loss_reads_padding_logits_as_documented(tiny_config):
    # Padding positions hold zero vectors, so their start/end logits are the head's bias; the
    # loss (transformers' rule, a softmax over all T) is the cross-entropy over those logits.
    batch = head_batch()
    model = BertForQuestionAnswering(tiny_config).eval()
    start, end = torch.tensor([1, 0, 2, 1]), torch.tensor([2, 0, 5, 1])
    with torch.no_grad():
        out = model(**batch, start_positions=start, end_positions=end)
    pads = ~batch["attention_mask"].bool()
    bias = model.qa_outputs.bias
    assert torch.equal(out.start_logits[pads], bias[0].expand(int(pads.sum())))
    expected = (F.cross_entropy(out.start_logits, start) + F.cross_entropy(out.end_logits, end)) / 2
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------------------- PEFT
@pytest.mark.parametrize("method", ["lora", "adapter", "bitfit", "adalora", "prefix"])
def test_peft_methods_match_the_padded_path(tiny_config, method):
    base = BertForSequenceClassification(tiny_config).eval()
    options = {"prefix": {"length": 3, "mlp_hidden_size": 8},
               "adalora": {"total_steps": 10}}.get(method, {})
    peft = apply_peft(base, method, **options).eval()
    with torch.no_grad():  # move every trainable tensor off its identity initialisation
        for p in peft.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    # A fully padded row's pooled vector differs between the paths (see BertModel): none here.
    batch = make_batch("every_row_real")
    labels = torch.randint(0, 2, (batch["input_ids"].size(0),))
    results = []
    for padded in (False, True):
        peft.zero_grad()
        with padded_path(peft) if padded else torch.enable_grad():
            out = peft(**batch, labels=labels)
        out.loss.backward()
        results.append((out.logits.detach(), grads(peft)))
    (logits, g0), (padded_logits, g1) = results
    assert max_diff(logits, padded_logits) <= ATOL
    assert g0.keys() == g1.keys() and len(g0) > 2
    assert_grads_close(g0, g1)


# ---------------------------------------------------------------------------- switch, training
def test_switch_selects_the_path_and_is_restored(tiny_config):
    model = BertForSequenceClassification(tiny_config).eval()
    batch = make_batch("varied")
    pads = ~batch["attention_mask"].bool()
    with torch.no_grad():
        assert not model.bert(**batch).last_hidden_state[pads].any()
        with padded_path(model) as same:
            assert same is model and model.bert.unpad is False
            assert model.bert(**batch).last_hidden_state[pads].abs().max() > 0.1
        assert model.bert.unpad is True
        model.bert.unpad = False  # the switch itself
        assert model.bert(**batch).last_hidden_state[pads].abs().max() > 0.1


def test_dropout_acts_and_training_steps_lower_the_loss(tiny_config):
    model = BertForSequenceClassification(tiny_config).train()
    batch = make_batch("every_row_real")
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 1, 1, 0])
    real = batch["attention_mask"].bool()
    first = model.bert(**batch).last_hidden_state
    second = model.bert(**batch).last_hidden_state
    assert max_diff(first[real], second[real]) > 1e-3     # dropout draws differ
    assert not first[~real].any()                          # on the unpadded path
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
