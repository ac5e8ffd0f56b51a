"""Checks of explanations, as library functions so the docs can print their numbers.

- :func:`deletion_curve` (faithfulness): delete the k words an explanation ranks highest for
  the predicted class and measure how much that class's probability drops; compare with
  deleting k random words. A faithful method's curve lies above the random one.
- :func:`randomized_top_layers` (sanity, Adebayo et al. 2018): the same model with its top
  layers and head re-initialised. Attributions that barely change under it explain the input,
  not the model.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from bertkit.explain.attributions import DEFAULT_STEPS, explain
from bertkit.explain.subject import Explainable, Word, load_explainable
from bertkit.modeling.layers import EncoderLayer, init_transformer_weights


@dataclass
class DeletionCurve:
    """Mean drop of the predicted class's probability after deleting k words (per ``ks``):
    the top-k attributed words (``top``) and k random words (``random``, averaged over draws)."""

    method: str
    ks: list[int]
    top: list[float]
    random: list[float]
    examples: int


def deletion_curve(folder_or_loaded, texts: Sequence[str], method: str = "ig",
                   ks: Sequence[int] = (1, 2, 3, 4, 5), steps: int = DEFAULT_STEPS,
                   random_draws: int = 5, seed: int = 0) -> DeletionCurve:
    """The deletion curve of ``method`` over ``texts`` on a classification model.

    Deleting a word removes its characters from the text (the rest is joined with spaces) and
    the text is encoded again, so no [PAD] or [MASK] the model never saw in training is
    involved. A text with fewer than k words loses all of them at k.
    """
    subject = load_explainable(folder_or_loaded)
    if subject.kind != "classification":
        raise ValueError(f"the deletion curve needs a classification model, not {subject.kind}")
    rng = random.Random(seed)
    top = np.zeros(len(ks))
    rand = np.zeros(len(ks))
    for text in texts:
        explanation = explain(subject, text, method=method, steps=steps)
        label = explanation.prediction["label"]
        scores = explanation.attributions[0].words
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
        variants = [_without(text, explanation.words, ranked[:k]) for k in ks]
        for k in ks:
            variants += [_without(text, explanation.words,
                                  rng.sample(range(len(scores)), min(k, len(scores))))
                         for _ in range(random_draws)]
        probabilities = class_probabilities(subject, [text] + variants, label)
        drops = probabilities[0] - probabilities[1:]
        top += drops[:len(ks)]
        rand += drops[len(ks):].reshape(len(ks), random_draws).mean(1)
    n = max(len(texts), 1)
    return DeletionCurve(method, list(ks), (top / n).tolist(), (rand / n).tolist(), len(texts))


def _without(text: str, words: list[Word], deleted: Sequence[int]) -> str:
    gone = set(deleted)
    return " ".join(w.text for i, w in enumerate(words) if i not in gone and w.segment == 0)


@torch.no_grad()
def class_probabilities(subject: Explainable, texts: list[str], label: str) -> np.ndarray:
    """The probability of ``label`` for each text: (len(texts),)."""
    index = {name: i for i, name in subject.id2label.items()}[label]
    device = next(subject.model.parameters()).device
    batch = subject.tokenizer(texts, max_length=subject.max_length, truncation=True)
    logits = subject.model(**{k: v.to(device) for k, v in batch.items()}).logits
    return logits.float().softmax(-1)[:, index].cpu().numpy()


def randomized_top_layers(folder_or_loaded, layers: int = 1, seed: int = 0) -> Explainable:
    """A copy of the model with its top ``layers`` encoder layers, pooler and task head
    re-initialised (cascading model randomisation); the original is not touched."""
    subject = load_explainable(folder_or_loaded)
    model = copy.deepcopy(subject.model)
    std = model.config.initializer_range
    torch.manual_seed(seed)
    encoder_layers = [m for m in model.modules() if isinstance(m, EncoderLayer)]
    heads = [module for name, module in model.named_children() if name != "bert"]
    pooler = getattr(getattr(model, "bert", None), "pooler", None)
    for module in encoder_layers[len(encoder_layers) - layers:] + heads + [pooler]:
        if isinstance(module, nn.Module):
            init_transformer_weights(module, lambda w: nn.init.normal_(w, std=std), std)
    return Explainable(subject.path, model.eval(), subject.tokenizer, subject.kind,
                       subject.task, subject.settings, subject.id2label)


def plot_deletion_curves(curves: Sequence[DeletionCurve], path: str, title: str = "") -> str:
    """One PNG: per method the top-k curve (solid) and its random-k curve (dashed)."""
    # matplotlib only when a figure is drawn: importing it costs a second.
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")  # files only, no display

    fig, ax = plt.subplots(figsize=(6, 4))
    for number, curve in enumerate(curves):
        color = f"C{number}"
        ax.plot(curve.ks, curve.top, "o-", color=color, label=f"{curve.method}: top-k words")
        ax.plot(curve.ks, curve.random, "x--", color=color, label=f"{curve.method}: random k")
    ax.set_xlabel("words deleted (k)")
    ax.set_ylabel("drop of the predicted class's probability")
    ax.set_title(title or f"deletion curves ({curves[0].examples} texts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
