"""Multi-turn conversations for a decoder-only LM: the file format, the one history template,
and the encoding with the loss on the answer tokens only.

File: JSON Lines, one conversation a line::

    {"turns": [{"role": "system", "content": "You answer questions about Python."},
               {"role": "user", "content": "What does len do?"},
               {"role": "assistant", "content": "It returns the number of items."}, ...]}

(``"messages"`` is accepted for ``"turns"``.) Roles: an optional ``system`` turn first, then
``user`` and ``assistant`` turns; a conversation needs at least one assistant turn.

The template (the same at training and at chat time, built segment by segment so the token
boundaries are the same)::

    System: {content}\\n
    User: {content}\\n
    Assistant: {content}<|endoftext|>\\n

The model learns the assistant segments' `` {content}<|endoftext|>``; everything else (the
role names, the user and system turns) has label -100: it is read, not predicted. At chat
time the prompt is the history followed by ``Assistant:`` and generation stops at the
end-of-text token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from bertkit.jsonfile import json_object_line, utf8_errors_named
from bertkit.modeling.bert import IGNORE_INDEX

ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
ANSWER_PREFIX = "Assistant:"


@dataclass(frozen=True)
class Turn:
    role: str      # system | user | assistant
    content: str


def check_turns(turns: object, where: str) -> list[Turn]:
    """A conversation's turns, checked: a ValueError ``WHERE: ...`` names what is wrong."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: the conversation has no turns (give \"turns\": [{{\"role\": "
                         "\"user\", \"content\": ...}, {\"role\": \"assistant\", ...}])")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            role = turn.get("role") if isinstance(turn, dict) else turn
            raise ValueError(f"{where}: turn {i + 1} needs a role of {', '.join(ROLES)}, got "
                             f"{str(role)[:40]!r}")
        content = turn.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{where}: turn {i + 1} ({turn['role']}) needs a non-empty "
                             "\"content\" string")
        if turn["role"] == "system" and i > 0:
            raise ValueError(f"{where}: turn {i + 1}: a system turn can only come first")
        out.append(Turn(turn["role"], " ".join(content.split())))
    if not any(t.role == "assistant" for t in out):
        raise ValueError(f"{where}: the conversation has no assistant turn: nothing to learn")
    return out


def load_conversations(path: str | os.PathLike) -> list[list[Turn]]:
    """Read a conversations file (module docstring); a bad line is a ValueError naming file
    and line, an empty file one naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"conversation file {path} does not exist")
    with utf8_errors_named(path), open(path, encoding="utf-8-sig") as f:
        lines = f.read().split("\n")
    conversations = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = json_object_line(line, path, number)
        turns = record.get("turns", record.get("messages"))
        conversations.append(check_turns(turns, f"{path}:{number}"))
    if not conversations:
        raise ValueError(f"{path} holds no conversation")
    return conversations


def turn_segments(turn: Turn, eos: str) -> list[tuple[str, bool]]:
    """The template's text of one turn as (text, learned) segments."""
    if turn.role == "assistant":
        return [(ANSWER_PREFIX, False), (" " + turn.content + eos, True), ("\n", False)]
    return [(f"{ROLES[turn.role]}: {turn.content}\n", False)]


def encode_segments(segments: Sequence[tuple[str, bool]], tokenizer) -> tuple[list[int], list[int]]:
    """(ids, labels) of template segments: labels are the ids on learned segments, -100
    elsewhere. Segments are tokenized one by one (chat builds its prompts the same way)."""
    ids: list[int] = []
    labels: list[int] = []
    for (text, learned), piece in zip(segments, tokenizer.encode_plain([s for s, _ in segments])):
        ids += piece
        labels += piece if learned else [IGNORE_INDEX] * len(piece)
    return ids, labels


def encode_conversation(turns: Sequence[Turn], tokenizer, max_length: int
                        ) -> tuple[list[int], list[int]] | None:
    """One conversation as a training example ``(ids, labels)``; longer than ``max_length``,
    its oldest tokens are dropped (the latest answers are kept). None when no answer token is
    left."""
    eos = tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id)
    segments = [s for turn in turns for s in turn_segments(turn, eos)]
    ids, labels = encode_segments(segments, tokenizer)
    ids, labels = ids[-max_length:], labels[-max_length:]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return ids, labels


def prompt_segments(history: Sequence[Turn], eos: str) -> list[tuple[str, bool]]:
    """The chat prompt's segments: the history (its answers ended by ``eos`` as in training),
    then ``Assistant:``."""
    return [s for turn in history for s in turn_segments(turn, eos)] + [(ANSWER_PREFIX, False)]


def chat_prompt_ids(history: Sequence[Turn], tokenizer, room: int) -> list[int]:
    """The prompt ids for the next answer after ``history``, at most ``room`` tokens: the
    oldest turns (after a system turn, which is kept) are dropped until it fits; a ValueError
    when even the last user turn does not fit."""
    eos = tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id)
    system = [t for t in history[:1] if t.role == "system"]
    turns = list(history[len(system):])
    while turns:
        ids, _ = encode_segments(prompt_segments(system + turns, eos), tokenizer)
        if len(ids) <= room:
            return ids
        turns = turns[1:]
    raise ValueError(f"the last message does not fit the model's context ({room} tokens for "
                     "the prompt); write a shorter one")


def docstring_conversations(documents: Sequence, limit: int | None = None) -> list[dict]:
    """Two-turn conversations made from documentation (``bertkit.data.corpus.Document`` s of
    at least two sentences): "What does NAME do?" -> the first sentence, "Tell me more." ->
    the second (which needs the history to know what "more" is about). For demos and smoke
    runs; the records are in the file format above."""
    conversations = []
    for doc in documents:
        sentences = doc.sentences()
        if len(sentences) < 2 or doc.kind == "topic":
            continue
        conversations.append({"turns": [
            {"role": "user", "content": f"What does {doc.name} do?"},
            {"role": "assistant", "content": sentences[0]},
            {"role": "user", "content": "Tell me more."},
            {"role": "assistant", "content": sentences[1]}]})
        if limit is not None and len(conversations) >= limit:
            break
    return conversations
