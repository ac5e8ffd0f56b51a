"""Adversarial training on the word embeddings: FGM and PGD, folded into the training step.

A small perturbation ``r`` of the word-embedding vectors, chosen to raise the loss the most,
is a cheap and strong regulariser for fine-tuning (Miyato et al., 2017, "Adversarial Training
Methods for Semi-Supervised Text Classification"; Madry et al., 2018 for the projected
multi-step attack). Each update trains on the clean loss *and* the loss under attack: their
gradients add up in the parameters' ``.grad``.

- **FGM** (fast gradient method): one step, ``r = epsilon * g / ||g||``, where ``g`` is the
  gradient of the clean loss with respect to the embedding output. Cost: 2 forward+backward.
- **PGD** (projected gradient descent): ``steps`` ascent steps of size ``alpha`` along the
  normalised gradient, each projected back into the ball ``||r|| <= epsilon``; only the last
  attacked pass trains the parameters. Cost: ``steps + 1`` forward passes and backward passes.

Norms are per example, over all its positions and hidden units: ``r`` has shape (B, T, H) and
``||r[b]|| = epsilon`` (FGM) or ``<= epsilon`` (PGD) for every example ``b``. The perturbation
is added to the output of the model's ``word_embeddings`` layer (before positions, token types
and LayerNorm, as Miyato et al. perturb the word vectors), so frozen embeddings (PEFT) work
too: the gradient is taken with respect to an added zero tensor, not the embedding table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

ADVERSARIAL_METHODS = ("fgm", "pgd")


def word_embedding_layer(model: nn.Module) -> nn.Embedding:
    """The model's input word-embedding table: the first ``nn.Embedding`` named
    ``word_embeddings``; a ValueError for a model without one."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "word_embeddings" and isinstance(module, nn.Embedding):
            return module
    raise ValueError(f"adversarial training perturbs the word embeddings, but "
                     f"{type(model).__name__} has no nn.Embedding named word_embeddings")


def unit_per_example(grad: torch.Tensor) -> torch.Tensor:
    """``grad`` (B, ...) divided by each example's L2 norm (an all-zero example stays zero)."""
    norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12)                     # (B,)
    return grad / norms.view(-1, *[1] * (grad.dim() - 1))


def project_per_example(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``delta`` (B, ...) with each example scaled back into the L2 ball of radius epsilon."""
    norms = delta.flatten(1).norm(dim=1)                                     # (B,)
    scale = (epsilon / norms.clamp(min=1e-12)).clamp(max=1.0)
    return delta * scale.view(-1, *[1] * (delta.dim() - 1))


class EmbeddingPerturbation:
    """Adds a tensor to the output of ``model``'s word-embedding layer while active.

    :meth:`probing` adds a zero tensor that requires grad (kept in :attr:`probe`), so one
    backward pass also gives the gradient of the loss with respect to the embedding output;
    :meth:`adding` adds a given perturbation. Outside both, the model runs unchanged.
    """

    def __init__(self, model: nn.Module):
        self.layer = word_embedding_layer(model)
        self.delta: torch.Tensor | None = None
        self.probe: torch.Tensor | None = None
        self._probing = False
        self._hook = self.layer.register_forward_hook(self._add)

    def _add(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if self._probing:
            self.probe = torch.zeros_like(output, requires_grad=True)        # (B, T, H)
            return output + self.probe
        if self.delta is not None:
            if self.delta.shape != output.shape:
                raise RuntimeError(f"the perturbation has shape {tuple(self.delta.shape)} but "
                                   f"the embeddings {tuple(output.shape)}")
            return output + self.delta.to(output.dtype)
        return output

    @contextlib.contextmanager
    def probing(self) -> Iterator[None]:
        self._probing = True
        try:
            yield
        finally:
            self._probing = False

    @contextlib.contextmanager
    def adding(self, delta: torch.Tensor) -> Iterator[None]:
        self.delta = delta
        try:
            yield
        finally:
            self.delta = None

    def remove(self) -> None:
        """Detach the hook: the model runs as if never perturbed."""
        self._hook.remove()


class Adversary:
    """FGM or PGD on one micro-batch (module docstring). ``alpha`` (PGD's step size) defaults
    to ``2.5 * epsilon / steps``, Madry et al.'s choice, so the attack can reach the ball's
    surface from any point in it."""

    def __init__(self, model: nn.Module, method: str, epsilon: float = 1.0, steps: int = 3,
                 alpha: float | None = None):
        if method not in ADVERSARIAL_METHODS:
            raise ValueError(f"adversarial method must be one of {ADVERSARIAL_METHODS}, "
                             f"got {method!r}")
        if not epsilon > 0:
            raise ValueError(f"adversarial epsilon must be positive, got {epsilon!r}")
        if method == "pgd" and (isinstance(steps, bool) or not isinstance(steps, int)
                                or steps < 1):
            raise ValueError(f"adversarial steps must be an integer >= 1, got {steps!r}")
        self.method, self.epsilon, self.steps = method, float(epsilon), steps
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.epsilon / steps
        self.perturbation = EmbeddingPerturbation(model)
        self.last_delta: torch.Tensor | None = None  # the attack of the last call (tests)

    def backward(self, forward_backward: Callable[[bool], torch.Tensor],
                 attack_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Accumulate the clean and the adversarial gradients of one micro-batch.

        ``forward_backward(final)`` runs the model, calls backward on its loss and returns the
        loss (``final`` marks the last backward of the micro-batch: the one a distributed run
        synchronises); ``attack_loss()`` only runs the model and returns the loss (PGD's inner
        steps, which must not touch the parameters' gradients). Returns the clean loss.
        """
        with self.perturbation.probing():
            clean_loss = forward_backward(False)
        probe = self.perturbation.probe
        if probe is None or probe.grad is None:
            raise RuntimeError("the loss does not depend on the word embeddings' output")
        direction = unit_per_example(probe.grad.detach().float())
        if self.method == "fgm":
            delta = self.epsilon * direction
        else:
            delta = project_per_example(self.alpha * direction, self.epsilon)
            for _ in range(self.steps - 1):
                delta.requires_grad_(True)
                with self.perturbation.adding(delta):
                    (grad,) = torch.autograd.grad(attack_loss(), delta)
                delta = project_per_example(
                    delta.detach() + self.alpha * unit_per_example(grad.float()), self.epsilon)
        self.last_delta = delta.detach()
        with self.perturbation.adding(self.last_delta):
            forward_backward(True)
        return clean_loss
