"""Dialogue: the conversation file, the template with the loss on answers only, fine-tuning a
GPT-2 folder, and `chat` driven by a scripted stdin in a real subprocess.

References: the template written out by hand and tokenized whole (segment encoding), decoded
labels (which tokens are learned), the model's own greedy continuation of the hand-written
history (chat keeps the history), files written by hand (bad input).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bertkit.config import GPT2Config
from bertkit.data.corpus import Document
from bertkit.data.dialogue import (Turn, chat_prompt_ids, docstring_conversations,
                                   encode_conversation, load_conversations)
from bertkit.modeling.bert import IGNORE_INDEX
from bertkit.modeling.gpt import GPT2LMHeadModel, prompt_tensor
from bertkit.tokenizer import BPETokenizer
from bertkit.training.dialogue import DialogueConfig, run_dialogue
from bertkit.training.generate import load_language_model
from bertkit.training.trainer import TrainingConfig

from _serve_helpers import REPO

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

EOS = "<|endoftext|>"
COLORS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red"}


def conversation(thing: str) -> dict:
    return {"turns": [{"role": "user", "content": f"what color is {thing}?"},
                      {"role": "assistant", "content": COLORS[thing]},
                      {"role": "user", "content": "thanks"},
                      {"role": "assistant", "content": "you are welcome"}]}


@pytest.fixture(scope="module")
def gpt_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("dialogue_gpt2")
    texts = [f"User: what color is {t}?\nAssistant: {c}{EOS}\nUser: thanks\nAssistant: you are "
             f"welcome" for t, c in COLORS.items()] * 5
    tokenizer = BPETokenizer.train(texts, vocab_size=320, kind="gpt2", show_progress=False)
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=48,
                               n_layer=2, n_head=4, bos_token_id=eos, eos_token_id=eos,
                               initializer_range=0.2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_template_and_loss_on_answer_tokens_only(gpt_folder):
    tokenizer = BPETokenizer.from_pretrained(gpt_folder)
    turns = [Turn("system", "Be brief."), Turn("user", "what color is sky?"),
             Turn("assistant", "blue"), Turn("user", "thanks"),
             Turn("assistant", "you are welcome")]
    ids, labels = encode_conversation(turns, tokenizer, 64)
    written = (f"System: Be brief.\nUser: what color is sky?\nAssistant: blue{EOS}\n"
               f"User: thanks\nAssistant: you are welcome{EOS}\n")
    assert ids == tokenizer.encode_plain([written])[0]  # segments tokenize as the whole text
    learned = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert [label for label in labels if label != IGNORE_INDEX] == learned
    eos = tokenizer.eos_token_id
    assert tokenizer.decode(learned, skip_special_tokens=False) == \
        f" blue{EOS} you are welcome{EOS}"
    assert learned.count(eos) == 2
    # Too long: the oldest tokens go, the last answer stays.
    short_ids, short_labels = encode_conversation(turns, tokenizer, 12)
    assert short_ids == ids[-12:] and short_labels == labels[-12:]
    # The chat prompt is the history and "Assistant:", answers ended by eos as in training.
    prompt = chat_prompt_ids(turns[:4], tokenizer, 64)
    assert tokenizer.decode(prompt, skip_special_tokens=False) == written.split(" you are")[0]


@pytest.mark.parametrize("line, message", [
    ('{"turns": []}', r"bad.jsonl:2: the conversation has no turns"),
    ('{"turns": [{"role": "bot", "content": "hi"}]}', r"bad.jsonl:2: turn 1 needs a role"),
    ('{"turns": [{"role": "user", "content": "hi"}]}', r"bad.jsonl:2: .*no assistant turn"),
    ('{"turns": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]}',
     r"bad.jsonl:2: turn 1 \(user\) needs a non-empty"),
    ('[1]', r"bad.jsonl:2: expected a JSON object"),
])
def test_bad_conversations_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(conversation("sky")) + "\n" + line + "\n")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        load_conversations(path)
    assert path.read_bytes() == before
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl holds no conversation"):
        load_conversations(tmp_path / "empty.jsonl")


def write_conversations(path, things) -> str:
    path.write_text("".join(json.dumps(conversation(t)) + "\n" for t in things))
    return str(path)


def test_finetune_lowers_the_dev_answer_loss(tmp_path, gpt_folder):
    train = write_conversations(tmp_path / "train.jsonl", list(COLORS) * 8)
    dev = write_conversations(tmp_path / "dev.jsonl", list(COLORS))
    out = tmp_path / "chat-model"
    training = TrainingConfig(out_dir=str(out), lr=3e-3, batch_size=8, max_steps=60,
                              eval_every=30, weight_decay=0.0, progress_bar=False,
                              tensorboard=False, plot=False, save_every=0)
    before = run_dialogue(DialogueConfig(train, gpt_folder, dev),
                          TrainingConfig(**{**training.to_dict(), "out_dir": str(tmp_path / "b"),
                                            "max_steps": 1, "lr": 1e-12}))
    result = run_dialogue(DialogueConfig(train, gpt_folder, dev), training)
    assert result.metrics["eval_loss"] < 0.5 * before.metrics["eval_loss"], (before.metrics,
                                                                              result.metrics)
    config = json.loads((out / "config.json").read_text())
    assert config["bertkit_task"] == "dialogue" and config["model_type"] == "gpt2"
    lm = load_language_model(out)
    history = [Turn("user", "what color is snow?")]
    ids = prompt_tensor(chat_prompt_ids(history, lm.tokenizer, 48))
    reply = lm.model.generate(ids, max_new_tokens=4).sequences[0].tolist()
    assert lm.decode(reply).strip().startswith("white")


def test_chat_keeps_the_history_under_scripted_input(gpt_folder):
    script = "what color is sky?\nthanks\n/exit\n"
    command = [sys.executable, "-m", "bertkit", "chat", "--model", gpt_folder,
               "--max-new-tokens", "6"]
    run = subprocess.run(command, input=script, capture_output=True,
                         text=True, cwd=REPO, timeout=120, env={"PYTHONPATH": REPO,
                                                                 "OMP_NUM_THREADS": "1",
                                                                 "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    replies = [line.split("bot> ", 1)[1] for line in run.stdout.splitlines() if "bot> " in line]
    assert len(replies) == 2
    # The second answer is the model's greedy continuation of the whole written history.
    lm = load_language_model(gpt_folder)
    tokenizer = lm.tokenizer
    written = (f"User: what color is sky?\nAssistant: {replies[0]}{EOS}\nUser: thanks\n"
               "Assistant:")
    out = lm.model.generate(prompt_tensor(tokenizer.encode_plain([written])[0]),
                            max_new_tokens=6).sequences[0].tolist()
    expected = lm.decode([t for t in out[:out.index(lm.model.config.eos_token_id)]]
                         if lm.model.config.eos_token_id in out else out)
    assert replies[1] == expected.split("\nUser:")[0].strip()


def test_docstring_conversations_are_valid_two_turn_files(tmp_path):
    docs = [Document("Return x. Then y. And z.", "m", "m.f", "function"),
            Document("Only one sentence here.", "m", "m.g", "function")]
    [record] = docstring_conversations(docs)
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(record) + "\n")
    [turns] = load_conversations(path)
    assert [t.content for t in turns] == ["What does m.f do?", "Return x.", "Tell me more.",
                                          "Then y."]
