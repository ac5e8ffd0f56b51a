"""Generation shared by the decoder-only LM and the encoder-decoder (bertkit.modeling.generation).

References: transformers' generate on the same tiny GPT-2 (greedy, repetition penalty), the
definitions of top-k and top-p on a distribution written by hand, the model's own decoding
without the cache, and seeded torch generators.
"""

from __future__ import annotations

import math

import pytest
import torch

from bertkit.modeling.generation import (GenerationSettings, StopStrings, filter_top_k_top_p,
                                         sample_next_tokens)
from bertkit.modeling.gpt import GPT2LMHeadModel, prompt_tensor

from test_gpt import hf_tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers model, bertkit model) with the same weights."""
    folder = tmp_path_factory.mktemp("gen_gpt2")
    hf = hf_tiny_gpt2(seed=7)
    hf.save_pretrained(folder)
    return hf, GPT2LMHeadModel.from_pretrained(folder)


PROMPTS = torch.tensor([[5, 17, 42, 3], [60, 2, 2, 91]])


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_greedy_equals_transformers_generate(pair, penalty):
    hf, ours = pair
    for prompt in PROMPTS:
        prompt = prompt[None]
        expected = hf.generate(prompt, max_new_tokens=20, do_sample=False, num_beams=1,
                               repetition_penalty=penalty, pad_token_id=98)[0, 4:]
        got = ours.generate(prompt, max_new_tokens=20, repetition_penalty=penalty).sequences[0]
        assert got.tolist()[:len(expected)] == expected.tolist()
        assert len(set(got.tolist())) > 3  # a real continuation, not one token repeated


@pytest.mark.parametrize("options", [dict(), dict(num_beams=3, num_return_sequences=2),
                                     dict(do_sample=True, top_k=10, num_return_sequences=3),
                                     dict(repetition_penalty=1.3, min_new_tokens=5)])
def test_with_and_without_cache_the_same_tokens(pair, options):
    _, model = pair
    runs = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(11)
        runs.append(model.generate(PROMPTS, max_new_tokens=15, use_cache=use_cache,
                                   generator=generator, **options))
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    torch.testing.assert_close(runs[0].scores, runs[1].scores, atol=1e-4, rtol=1e-4)


def test_sampling_is_reproducible_with_a_seed(pair):
    _, model = pair

    def sample(seed):
        return model.generate(PROMPTS, max_new_tokens=12, do_sample=True, temperature=1.5,
                              top_p=0.95, generator=torch.Generator().manual_seed(seed)).sequences

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_top_k_and_top_p_keep_exactly_the_defined_tokens():
    # A hand-made distribution: p = 0.05, 0.5, 0.1, 0.2, 0.15 over five tokens.
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.2, 0.15]])
    logits = probs.log()

    def kept(**options):
        return set(torch.isfinite(filter_top_k_top_p(logits, **options))[0].nonzero()
                   .flatten().tolist())

    assert kept(top_k=1) == {1}
    assert kept(top_k=3) == {1, 3, 4}
    assert kept(top_k=0) == {0, 1, 2, 3, 4}
    # Nucleus: the most likely tokens until their sum reaches top_p (0.5, 0.7, 0.85, 0.95, 1).
    assert kept(top_p=0.3) == {1}
    assert kept(top_p=0.5) == {1}
    assert kept(top_p=0.6) == {1, 3}
    assert kept(top_p=0.86) == {1, 3, 4, 2}
    assert kept(top_p=1.0) == {0, 1, 2, 3, 4}
    assert kept(top_k=2, top_p=0.9) == {1, 3}
    # Sampling draws only kept tokens, in the renormalised proportions.
    draws = sample_next_tokens(logits.expand(20000, 5), top_p=0.6,
                               generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3}
    assert (draws == 1).float().mean().item() == pytest.approx(0.5 / 0.7, abs=0.015)


def test_temperature_sharpens_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(20000, 3)
    draws = sample_next_tokens(logits, temperature=0.5, generator=torch.Generator().manual_seed(0))
    expected = math.exp(4) / (math.exp(4) + math.exp(2) + 1)
    assert (draws == 0).float().mean().item() == pytest.approx(expected, abs=0.015)


def test_stop_strings_end_the_row_and_are_cut(pair):
    _, model = pair
    prompt = PROMPTS[:1]
    free = model.generate(prompt, max_new_tokens=20).sequences[0].tolist()
    decode = lambda ids: " ".join(f"t{i}" for i in ids)  # noqa: E731 (a toy detokeniser)
    stop_at = free[4]
    stop = StopStrings([f"t{stop_at}"], decode)
    out = model.generate(prompt, max_new_tokens=20, stop=stop).sequences[0].tolist()
    first = free.index(stop_at)
    assert out[:first + 1] == free[:first + 1]
    assert set(out[first + 1:]) <= {model.config.eos_token_id}  # pad after the stop
    assert stop.cut(decode(free)) == decode(free[:first]) + " "


def test_streaming_yields_the_generated_tokens_one_by_one(pair):
    _, model = pair
    settings = GenerationSettings(max_new_tokens=10)
    stream = model.stream(PROMPTS[:1], settings)
    model.train()
    first = next(stream)  # available before the rest is computed
    assert torch.is_grad_enabled() and not model.training  # no grad mode leaks to the caller
    rest = list(stream)
    assert model.training  # restored when the stream ends
    model.eval()
    generated = model.generate(PROMPTS[:1], settings).sequences[0].tolist()
    assert [first] + rest == generated[:1 + len(rest)]


def test_prompts_and_lengths_that_do_not_fit_are_one_line(pair):
    _, model = pair
    with pytest.raises(ValueError, match=r"the prompt has 40 tokens but the model's context is "
                                         r"40 \(n_positions\)"):
        model.generate(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match=r"max_new_tokens must be in \[1, 36\] \(the context of "
                                         r"40 tokens minus the prompt's 4\), got 37"):
        model.generate(PROMPTS, max_new_tokens=37)
    with pytest.raises(ValueError, match="top_p must be in"):
        model.generate(PROMPTS, do_sample=True, top_p=0.0)
    assert prompt_tensor([1, 2]).shape == (1, 2)


# ============================================================================ POST /v1/generate
@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory) -> str:
    """A random GPT-2 folder with a small byte-level BPE trained here; wide enough (4 layers of
    256) that each token takes measurable time on a CPU."""
    from bertkit.config import GPT2Config
    from bertkit.tokenizer import BPETokenizer
    folder = tmp_path_factory.mktemp("served_gpt2")
    text = ["the module returns a list of strings", "open the file and read it"] * 20
    tokenizer = BPETokenizer.train(text, vocab_size=300, kind="gpt2", show_progress=False)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=512, n_embd=256, n_layer=4,
                        n_head=4, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, initializer_range=0.1)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def read_events(response) -> list[tuple[str, dict, float]]:
    """(event, data, arrival time.time()) of each server-sent event, as they arrive."""
    import json
    import time
    events, kind = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: "):]), time.time()))
    return events


def test_generate_route_streams_tokens_over_a_real_server(tmp_path, lm_folder):
    httpx = pytest.importorskip("httpx")
    from _serve_helpers import ServerProcess
    from bertkit.training.generate import generate_text

    keys = tmp_path / "keys.txt"
    keys.write_text("generate-key-0123456789\n")
    auth = {"Authorization": "Bearer generate-key-0123456789"}
    server = ServerProcess.from_config(tmp_path / "log", model=lm_folder,
                                       api_keys_file=str(keys),
                                       generate_max_new_tokens=150).start()
    try:
        server.wait_ready()
        body = {"prompt": "the module", "max_new_tokens": 150}
        with httpx.stream("POST", server.url + "/v1/generate", json=body, headers=auth,
                          timeout=120) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = read_events(r)
        tokens = [e for e in events if e[0] == "token"]
        kind, done, _ = events[-1]
        assert kind == "done" and done["tokens"] == len(tokens)
        # The first token reached the client before the server had chosen the last one.
        assert tokens[0][2] < done["last_token_at"], (tokens[0][2], done["last_token_at"])
        assert done["text"] == "".join(e[1]["text"] for e in tokens)
        assert done["text"] == generate_text(lm_folder, "the module",
                                             max_new_tokens=150)  # greedy, as the library
        plain = httpx.post(server.url + "/v1/generate", json={**body, "stream": False,
                                                              "max_new_tokens": 5},
                           headers=auth, timeout=60)
        assert plain.status_code == 200 and plain.json()["tokens"] <= 5

        def status(payload, headers=auth):
            answer = httpx.post(server.url + "/v1/generate", json=payload, headers=headers,
                                timeout=60)
            return answer.status_code, answer.json()["error"]["message"]

        assert status(body, headers={})[0] == 401  # the same API keys as every /v1 route
        code, message = status({"prompt": "the", "max_new_tokens": 151})
        assert code == 422 and "'max_new_tokens' must be between 1 and 150" in message
        code, message = status({"prompt": "the module " * 300})
        assert code == 422 and "context is 512" in message
        assert status({"prompt": ""})[0] == 422
        assert status({"prompt": "x", "top_p": 2})[0] == 422
        assert status({"prompt": "x", "temperture": 1})[0] == 422  # a typo is not ignored
        assert status({"texts": ["x"]})[0] == 422
        assert httpx.post(server.url + "/v1/predict", json={"texts": ["x"]},
                          headers=auth).status_code == 404
    finally:
        server.stop()


def test_pretrain_gpt_then_generate_through_the_command_line(tmp_path, capsys):
    """`bertkit pretrain --model-type gpt` writes a GPT-2 folder transformers loads, and
    `bertkit generate` prints its greedy continuation (transformers' greedy generate)."""
    import inspect
    import json as json_module

    from transformers import GPT2LMHeadModel as HFGPT2LMHeadModel

    from bertkit.cli import main
    from bertkit.tokenizer import Tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(inspect.getdoc(m) or "" for m in (json_module, inspect)) * 2)
    out = tmp_path / "gpt"
    assert main(["pretrain", "--model-type", "gpt", "--corpus", str(corpus), "--out", str(out),
                 "--vocab-size", "300", "--max-seq-length", "32", "--max-steps", "2",
                 "--batch-size", "4", "--save-every", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "Return the", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    tokenizer = Tokenizer.from_pretrained(str(out))
    prompt = tokenizer.encode_plain(["Return the"])[0]
    hf = HFGPT2LMHeadModel.from_pretrained(str(out)).eval()
    ids = hf.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False,
                      pad_token_id=0)[0, len(prompt):].tolist()
    assert printed == tokenizer.decode(ids)
