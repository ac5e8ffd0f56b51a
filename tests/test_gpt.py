"""The decoder-only LM (bertkit.modeling.gpt) against transformers' GPT2LMHeadModel.

References: transformers' GPT-2 (logits, loss, the folder it writes and reads), the model's own
full-prefix recomputation (the key/value cache), files written by hand (bad folders).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bertkit.config import GPT2Config
from bertkit.modeling.generation import KVCache
from bertkit.modeling.gpt import GPT2LMHeadModel

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

# Odd sizes (vocab 99, inner 37) catch shape bugs; a wide init makes the logits distinct
# enough that greedy decoding does not repeat one token.
TINY_GPT = dict(vocab_size=99, n_positions=40, n_embd=32, n_layer=2, n_head=4, n_inner=37,
                bos_token_id=98, eos_token_id=98, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0, initializer_range=0.3)


def hf_tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY_GPT)).eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("hf_gpt2")
    hf_tiny_gpt2().save_pretrained(folder)
    return str(folder)


def test_transformers_folder_loads_with_the_same_logits_and_loss(hf_folder):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    ours = GPT2LMHeadModel.from_pretrained(hf_folder)
    ids = torch.randint(0, 99, (3, 17), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :5] = -100
    expected = hf(ids, labels=labels)
    got = ours(ids, labels=labels)
    assert (got.logits - expected.logits).abs().max() <= 1e-5
    assert got.loss.item() == pytest.approx(expected.loss.item(), abs=1e-5)


def test_bertkit_folder_loads_in_transformers_with_no_missing_keys(tmp_path):
    torch.manual_seed(3)
    ours = GPT2LMHeadModel(GPT2Config(**TINY_GPT)).eval()
    ours.save_pretrained(tmp_path)
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = torch.randint(0, 99, (2, 23), generator=torch.Generator().manual_seed(2))
    assert (hf.eval()(ids).logits - ours(ids).logits).abs().max() <= 1e-5
    # Conv1D weights are stored (in, out), as transformers stores them.
    state = load_file(tmp_path / "model.safetensors")
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)
    assert state["transformer.h.0.mlp.c_fc.weight"].shape == (32, 37)
    # And the folder loads back into bertkit unchanged.
    again = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert torch.equal(again(ids).logits, ours(ids).logits)


def test_training_gradients_match_transformers(hf_folder):
    """The loss's gradient on the fused attention weight equals transformers' (transposed)."""
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_folder)
    ours = GPT2LMHeadModel.from_pretrained(hf_folder)
    ids = torch.randint(0, 99, (2, 11), generator=torch.Generator().manual_seed(4))
    hf(ids, labels=ids).loss.backward()
    ours(ids, labels=ids).loss.backward()
    fused = hf.transformer.h[1].attn.c_attn.weight.grad.t()                  # (3H, H)
    assert torch.allclose(fused[:32], ours.layers[1].attention.query.weight.grad, atol=1e-5)
    assert torch.allclose(fused[64:], ours.layers[1].attention.value.weight.grad, atol=1e-5)


def test_cached_logits_equal_full_recomputation(hf_folder):
    model = GPT2LMHeadModel.from_pretrained(hf_folder)
    ids = torch.randint(0, 99, (2, 12), generator=torch.Generator().manual_seed(5))
    full = model(ids).logits
    cache = KVCache(model.config.n_layer)
    parts = [model(ids[:, :7], cache=cache).logits]                          # a prompt of 7
    for t in range(7, 12):
        parts.append(model(ids[:, t:t + 1], cache=cache).logits)            # then one at a time
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_padding_after_a_sequence_and_left_padding_masks(hf_folder):
    model = GPT2LMHeadModel.from_pretrained(hf_folder)
    ids = torch.randint(0, 98, (1, 9), generator=torch.Generator().manual_seed(6))
    alone = model(ids).logits
    padded = torch.cat([ids, torch.full((1, 4), 98)], dim=1)
    assert torch.allclose(model(padded).logits[:, :9], alone, atol=1e-6)
    # A masked position at the front is invisible to the others (positions aside).
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    mask = torch.ones(1, 9, dtype=torch.long)
    mask[0, :2] = 0
    expected = hf(ids, attention_mask=mask, position_ids=torch.arange(9)[None]).logits
    assert (model(ids, attention_mask=mask).logits - expected)[:, 2:].abs().max() <= 1e-5


def test_config_round_trip_and_refusals(tmp_path, hf_folder):
    config = GPT2Config.from_pretrained(hf_folder)
    assert (config.n_embd, config.n_inner, config.eos_token_id) == (32, 37, 98)
    config.save_pretrained(tmp_path)
    assert GPT2Config.from_pretrained(tmp_path).to_dict() == config.to_dict()
    data = json.loads((tmp_path / "config.json").read_text())
    for key, value, message in (("scale_attn_by_inverse_layer_idx", True, "not implemented"),
                                ("n_head", 5, "divisible by n_head"),
                                ("eos_token_id", 99, "token id below vocab_size"),
                                ("model_type", "bert", "not a GPT-2 model")):
        (tmp_path / "config.json").write_text(json.dumps({**data, key: value}))
        with pytest.raises(ValueError, match=message) as error:
            GPT2Config.from_pretrained(tmp_path)
        assert "config.json" in str(error.value)


def test_weights_that_do_not_fit_are_named(tmp_path, hf_folder):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_folder)
    hf.config.n_layer = 1  # the folder says one layer, its weights have two
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_layer"] == 1
    with pytest.raises(ValueError, match=r"transformer\.h\.1\..* is not a weight of a 1-layer"):
        GPT2LMHeadModel.from_pretrained(tmp_path)
