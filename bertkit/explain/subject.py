"""What is explained: a model folder opened for explanation, one encoded input cut into
words, and the *targets* -- the scalar outputs whose attributions are asked for.

A target is one number of the model's output for the input, chosen by the task:

=================  ========================================================================
classification     the logit of the predicted (or ``target``) label
regression         the single output
ner                per predicted entity: the sum over its words' first tokens of the logit
                   of the tag predicted there
qa                 the start logit and the end logit of the best answer span (two targets)
fill-mask          per [MASK]: the logit of its top candidate (or of the ``target`` token)
=================  ========================================================================

Logits rather than probabilities: attributions of a logit add up (completeness) without the
softmax's saturation, and the report shows the probabilities beside them.

Shapes: T tokens of the one input, C classes / tags, V vocabulary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from bertkit.config import BertConfig
from bertkit.data.tasks import bio_entities, split_words
from bertkit.inference import load_for_inference
from bertkit.modeling.bert import HEAD_CLASSES, BertModel
from bertkit.modeling.layers import BertEmbeddings
from bertkit.peft import is_adapter_folder
from bertkit.tasks.base import Task, TaskSettings
from bertkit.tasks.folder import TaskFolder, folder_task, open_task_folder
from bertkit.tokenizer import Tokenizer

FILL_MASK, ENCODER = "fill-mask", "encoder"     # the kinds of folders that are not tasks
MLM_HEADS = ("BertForMaskedLM", "BertForPreTraining")


@dataclass
class Explainable:
    """A model opened for explanation: a task folder, an MLM folder (``kind="fill-mask"``) or
    a bare encoder (``kind="encoder"``: attention views only)."""

    path: str
    model: nn.Module
    tokenizer: Tokenizer
    kind: str                                   # a task name, "fill-mask" or "encoder"
    task: Task | None = None
    settings: TaskSettings | None = None
    id2label: dict[int, str] | None = None

    @property
    def max_length(self) -> int:
        if self.settings is not None:
            return self.settings.max_length
        return min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)


def load_explainable(folder_or_loaded: Any, device: str | None = None) -> Explainable:
    """Open a model folder (path), or wrap an opened :class:`TaskFolder` or
    :class:`Explainable`, for explanation. Explanations need gradients, so the model must be
    a torch model (not an onnx session)."""
    if isinstance(folder_or_loaded, Explainable):
        return folder_or_loaded
    if isinstance(folder_or_loaded, TaskFolder):
        return _from_task_folder(folder_or_loaded)
    if not isinstance(folder_or_loaded, (str, os.PathLike)):
        raise TypeError("explain takes a model folder path, a TaskFolder or an Explainable, got "
                        f"{type(folder_or_loaded).__name__}")
    folder = os.fspath(folder_or_loaded)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if is_adapter_folder(folder):
        return _from_task_folder(open_task_folder(folder, device=device))
    config = BertConfig.from_pretrained(folder)
    mlm = [a for a in (config.architectures or []) if a in MLM_HEADS]
    if mlm and "bertkit_task" not in config.extra:
        # A pretraining folder's MLM head alone (as `fill-mask` loads it): its NSP head has
        # nothing to say about a [MASK].
        model, tokenizer = load_for_inference(folder, HEAD_CLASSES["BertForMaskedLM"],
                                              device=device)
        return Explainable(folder, model, tokenizer, FILL_MASK)
    try:
        folder_task(folder, config)
    except ValueError:  # no task head: the encoder alone still has attention to show
        model, tokenizer = load_for_inference(folder, BertModel, device=device)
        return Explainable(folder, model, tokenizer, ENCODER)
    return _from_task_folder(open_task_folder(folder, device=device))


def _from_task_folder(folder: TaskFolder) -> Explainable:
    if not isinstance(folder.model, nn.Module):
        raise ValueError(f"{folder.path} is opened with the onnx runtime; explanations need "
                         "gradients: open it with the torch runtime")
    return Explainable(folder.path, folder.model, folder.tokenizer, folder.task.name,
                       folder.task, folder.settings, folder.id2label)


def word_embeddings(model: nn.Module) -> nn.Embedding:
    """The word-embedding table of any bertkit model (a head, a PEFT wrapper): where
    attributions are taken (its output is the per-token input vector)."""
    for module in model.modules():
        if isinstance(module, BertEmbeddings):
            return module.word_embeddings
    raise ValueError(f"{type(model).__name__} has no BERT embeddings to attribute to")


# ============================================================================ the input


@dataclass
class Word:
    """A word of the input: ``source[start:end] == text`` where source is the text
    (``segment`` 0) or the pair text / QA context (``segment`` 1)."""

    text: str
    start: int
    end: int
    segment: int = 0
    tokens: list[int] = field(default_factory=list)   # its word pieces' positions


@dataclass
class EncodedInput:
    """One input encoded as a batch of one, with its tokens grouped into words."""

    inputs: dict[str, torch.Tensor]             # input_ids, attention_mask, token_type_ids (1, T)
    tokens: list[str]
    words: list[Word]
    sources: tuple[str, str]                    # the text and the pair text ("" if none)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def frame(self, special_ids: set[int]) -> torch.Tensor:
        """(T,) True at the tokens every variant of the input keeps ([CLS], [SEP])."""
        return torch.tensor([int(i) in special_ids for i in self.input_ids[0]])


def encode_input(subject: Explainable, text: str, text_pair: str | None) -> EncodedInput:
    """Tokenize ``text`` (+ ``text_pair``: the QA context) as the task does, and group the
    tokens into words with character spans in their own text."""
    _check_pair(subject, text_pair)
    tokenizer, device = subject.tokenizer, next(subject.model.parameters()).device
    if subject.kind == "ner":  # NER tags words split the task's way (split_words)
        split = split_words(text)
        batch = tokenizer([[w for w, _, _ in split]], is_split_into_words=True,
                          max_length=subject.max_length, truncation=True)
        spans = {(0, i): (w, s, e, 0) for i, (w, s, e) in enumerate(split)}
        keys = [None if w is None else (0, w) for w in batch.word_ids(0)]
    else:
        truncation = "only_second" if subject.kind == "qa" else True
        batch = tokenizer([text], [text_pair] if text_pair is not None else None,
                          max_length=subject.max_length, truncation=truncation,
                          return_offsets_mapping=True)
        keys = [None if w is None else (s, w)
                for w, s in zip(batch.word_ids(0), batch.sequence_ids(0))]
        spans = _spans_from_offsets(keys, batch["offset_mapping"][0].tolist(),
                                    (text, text_pair or ""))
    order = {key: i for i, key in enumerate(dict.fromkeys(k for k in keys if k is not None))}
    words = [Word(*spans[key]) for key in order]
    for position, key in enumerate(keys):
        if key is not None:
            words[order[key]].tokens.append(position)
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
    return EncodedInput(inputs, batch.tokens(0), words, (text, text_pair or ""))


def _spans_from_offsets(keys: list, offsets: list, sources: tuple[str, str]) -> dict:
    """(segment, word id) -> (text, start, end, segment) over the word's pieces."""
    bounds: dict = {}
    for key, (start, end) in zip(keys, offsets):
        if key is not None:
            low, high = bounds.get(key, (start, end))
            bounds[key] = (min(low, start), max(high, end))
    return {key: (sources[key[0]][s:e], s, e, key[0]) for key, (s, e) in bounds.items()}


# ============================================================================ the targets


@dataclass
class Target:
    """One scalar to explain: ``score(output)`` -> (B,) from the model's output."""

    name: str
    score: Callable[[Any], torch.Tensor]


def _check_pair(subject: Explainable, text_pair: str | None) -> None:
    if subject.kind == "qa" and text_pair is None:
        raise ValueError("a question-answering model needs a context: give the question as "
                         "the text and the context as the pair (--pair)")
    if subject.kind in ("ner", FILL_MASK) and text_pair is not None:
        raise ValueError(f"a {subject.kind} model takes a single text, not a pair")


@torch.no_grad()
def predict_targets(subject: Explainable, encoded: EncodedInput,
                    target: str | None) -> tuple[dict, list[Target]]:
    """The model's prediction for ``encoded`` and the targets that explain it (``target``:
    a label name, an entity type or a vocabulary token, per the task)."""
    output = subject.model(**encoded.inputs)
    if subject.kind in ("classification", "regression"):
        return _sequence_targets(subject, output, target)
    if subject.kind == "ner":
        return _ner_targets(subject, encoded, output, target)
    if subject.kind == "qa":
        return _qa_targets(subject, encoded, output, target)
    if subject.kind == FILL_MASK:
        return _mask_targets(subject, encoded, output, target)
    raise ValueError(f"{subject.path} has no task head (architectures: "
                     f"{', '.join(subject.model.config.architectures or []) or 'none'}); "
                     "attributions explain a prediction: fine-tune it first, or use the "
                     "attention method")


def _sequence_targets(subject: Explainable, output, target: str | None):
    logits = output.logits[0].float()                                         # (C,)
    if subject.kind == "regression":
        if target is not None:
            raise ValueError(f"a regression model has one output: there is no target label "
                             f"to choose (got {target!r})")
        return {"score": float(logits[0])}, [Target("score", lambda out: out.logits[:, 0])]
    names = [subject.id2label[i] for i in range(len(subject.id2label))]
    probs = logits.softmax(-1).tolist()
    predicted = names[int(logits.argmax())]
    label = predicted if target is None else target
    if label not in names:
        raise ValueError(f"unknown target label {target!r}; the model's labels are "
                         f"{', '.join(names)}")
    index = names.index(label)
    prediction = {"label": predicted, "probabilities": dict(zip(names, probs))}
    return prediction, [Target(label, lambda out: out.logits[:, index])]


def _ner_targets(subject: Explainable, encoded: EncodedInput, output, target: str | None):
    tags = output.logits[0].argmax(-1).tolist()                               # (T,)
    firsts = [word.tokens[0] for word in encoded.words]
    word_tags = [subject.id2label[tags[t]] for t in firsts]
    kinds = sorted({name.partition("-")[2] or name for name in subject.id2label.values()} - {"O"})
    if target is not None and target not in kinds:
        raise ValueError(f"unknown target entity type {target!r}; the model's types are "
                         f"{', '.join(kinds)}")
    entities, targets = [], []
    for label, first, last in bio_entities(word_tags):
        words = encoded.words[first:last + 1]
        entity = {"entity": encoded.sources[0][words[0].start:words[-1].end], "label": label,
                  "start": words[0].start, "end": words[-1].end}
        entities.append(entity)
        if target is None or label == target:
            positions = [w.tokens[0] for w in words]
            tag_ids = [tags[p] for p in positions]
            targets.append(Target(f"{entity['entity']} ({label})",
                                  lambda out, p=positions, c=tag_ids: out.logits[:, p, c].sum(-1)))
    return {"entities": entities}, targets


def _qa_targets(subject: Explainable, encoded: EncodedInput, output, target: str | None):
    if target is not None:
        raise ValueError(f"a question-answering model explains its answer span; there is no "
                         f"target label to choose (got {target!r})")
    context = [w for w in encoded.words if w.segment == 1]
    if not context:
        raise ValueError("the context is empty after truncation: nothing to answer from")
    start_logits, end_logits = output.start_logits[0], output.end_logits[0]   # (T,)
    positions = [t for w in context for t in w.tokens]
    longest = subject.settings.max_answer_length if subject.settings else 30
    best = max(((s, e) for i, s in enumerate(positions) for e in positions[i:i + longest]),
               key=lambda se: float(start_logits[se[0]] + end_logits[se[1]]))
    owner = {t: w for w in context for t in w.tokens}
    first, last = owner[best[0]], owner[best[1]]
    source_start, source_end = first.start, last.end
    prediction = {"answer": encoded.sources[1][source_start:source_end],
                  "start": source_start, "end": source_end,
                  "score": float(start_logits[best[0]] + end_logits[best[1]])}
    return prediction, [Target("answer start", lambda out: out.start_logits[:, best[0]]),
                        Target("answer end", lambda out: out.end_logits[:, best[1]])]


def _mask_targets(subject: Explainable, encoded: EncodedInput, output, target: str | None):
    tokenizer = subject.tokenizer
    positions = (encoded.input_ids[0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
    if not positions:
        raise ValueError(f"the text has no {tokenizer.mask_token} token: a fill-mask model "
                         "explains its guesses for the [MASK]s")
    if target is not None and tokenizer.convert_tokens_to_ids(target) == tokenizer.unk_token_id:
        raise ValueError(f"unknown target token {target!r}: it is not in the model's vocabulary")
    probs = output.logits[0, positions].float().softmax(-1)                   # (masks, V)
    masks, targets = [], []
    for row, position in enumerate(positions):
        top_p, top_ids = probs[row].topk(min(5, probs.size(-1)))
        candidates = [{"token": tokenizer.convert_ids_to_tokens(i), "score": p}
                      for p, i in zip(top_p.tolist(), top_ids.tolist())]
        masks.append({"position": position, "candidates": candidates})
        token = target if target is not None else candidates[0]["token"]
        token_id = tokenizer.convert_tokens_to_ids(token)
        targets.append(Target(f"[MASK] {row + 1} = {token}",
                              lambda out, p=position, v=token_id: out.logits[:, p, v]))
    return {"masks": masks}, targets
