"""Adversarial training (FGM / PGD) and layer-wise learning-rate decay in the Trainer.

References: a hand-built FGM step (the embedding output's gradient taken with retain_grad, the
perturbation added by a hook of the test's own, both losses backpropagated) and hand-computed
learning rates per layer.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bertkit import BertConfig, BertForSequenceClassification
from bertkit.training import Trainer, TrainingConfig
from bertkit.training.adversarial import Adversary, project_per_example, unit_per_example

from conftest import TINY

B, T = 4, 7


def tiny_classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(**{**TINY, "hidden_dropout_prob": 0.0,
                           "attention_probs_dropout_prob": 0.0})
    config.num_labels = 3
    return BertForSequenceClassification(config)


def make_data(n: int = B) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, TINY["vocab_size"], (n, T), generator=g)
    lengths = [T, T - 2, T - 3, T]   # padding, so the unpadded path runs too
    items = []
    for i in range(n):
        mask = torch.zeros(T, dtype=torch.long)
        mask[:lengths[i % 4]] = 1
        items.append({"input_ids": ids[i] * mask, "attention_mask": mask, "labels": i % 3})
    return items


def collate(items: list[dict]) -> dict:
    return {"input_ids": torch.stack([x["input_ids"] for x in items]),
            "attention_mask": torch.stack([x["attention_mask"] for x in items]),
            "labels": torch.tensor([x["labels"] for x in items])}


def hand_fgm_grads(model, batch, epsilon: float) -> dict[str, torch.Tensor]:
    """FGM by hand: clean backward with the embedding output's grad kept, r = eps * g/||g||
    per example, a second backward with r added; the parameters' summed gradients."""
    layer = model.bert.embeddings.word_embeddings
    kept = {}

    def keep(module, inputs, output):
        output.retain_grad()
        kept["out"] = output

    handle = layer.register_forward_hook(keep)
    model(**batch).loss.backward()
    handle.remove()
    grad = kept["out"].grad                                                  # (B, T, H)
    r = epsilon * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1)
    handle = layer.register_forward_hook(lambda module, inputs, output: output + r)
    model(**batch).loss.backward()
    handle.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def trainer_grads(tmp_path, model, data, name, **options) -> dict[str, torch.Tensor]:
    seen = {}

    def record(m, step):
        seen.update({n: p.grad.clone() for n, p in m.named_parameters()})

    config = TrainingConfig(out_dir=str(tmp_path / name), max_steps=1, batch_size=len(data),
                            max_grad_norm=1e6, progress_bar=False, tensorboard=False,
                            plot=False, save_every=0, **options)
    Trainer(model, config, data, collate, on_step=record).train()
    return seen


def test_fgm_in_the_trainer_equals_a_hand_built_step(tmp_path):
    init, data = tiny_classifier(), make_data()
    expected = hand_fgm_grads(copy.deepcopy(init), collate(data), epsilon=0.5)
    got = trainer_grads(tmp_path, copy.deepcopy(init), data, "fgm", adversarial="fgm",
                        adversarial_epsilon=0.5)
    plain = trainer_grads(tmp_path, copy.deepcopy(init), data, "plain")
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6)
    # the attack changed the update: the gradient is not the clean one
    assert not torch.allclose(got["classifier.weight"], plain["classifier.weight"], atol=1e-6)


def test_pgd_with_one_step_of_size_epsilon_is_fgm(tmp_path):
    init, data = tiny_classifier(), make_data()
    fgm = trainer_grads(tmp_path, copy.deepcopy(init), data, "fgm", adversarial="fgm",
                        adversarial_epsilon=0.3)
    pgd = trainer_grads(tmp_path, copy.deepcopy(init), data, "pgd", adversarial="pgd",
                        adversarial_epsilon=0.3, adversarial_steps=1, adversarial_alpha=0.3)
    for name, grad in fgm.items():
        torch.testing.assert_close(pgd[name], grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_perturbation_norm_is_epsilon_and_the_attack_raises_the_loss(method):
    model, batch = tiny_classifier().eval(), collate(make_data())
    epsilon = 0.05
    adversary = Adversary(model, method, epsilon=epsilon, steps=4)
    losses = {}

    def forward_backward(final: bool) -> torch.Tensor:
        loss = model(**batch).loss
        loss.backward()
        losses["attacked" if final else "clean"] = float(loss.detach())
        return loss.detach()

    adversary.backward(forward_backward, lambda: model(**batch).loss)
    norms = adversary.last_delta.flatten(1).norm(dim=1)                      # (B,)
    if method == "fgm":
        torch.testing.assert_close(norms, torch.full((B,), epsilon), rtol=1e-5, atol=0)
    else:
        assert (norms <= epsilon * (1 + 1e-5)).all() and (norms > 0.8 * epsilon).all()
    assert losses["attacked"] > losses["clean"]
    adversary.perturbation.remove()
    assert float(model(**batch).loss.detach()) == pytest.approx(losses["clean"], abs=1e-6)


def test_projection_and_unit_helpers():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    torch.testing.assert_close(unit_per_example(x)[:2], torch.tensor([[0.6, 0.8]] * 2))
    assert unit_per_example(x)[2].abs().sum() == 0
    torch.testing.assert_close(project_per_example(x, 1.0)[:2],
                               torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


def test_bad_adversarial_options_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="adversarial must be one of"):
        TrainingConfig(out_dir=str(tmp_path), max_steps=1, adversarial="fgsm")
    with pytest.raises(ValueError, match="adversarial_epsilon must be positive"):
        TrainingConfig(out_dir=str(tmp_path), max_steps=1, adversarial_epsilon=0)
    with pytest.raises(ValueError, match="layer_lr_decay must be in"):
        TrainingConfig(out_dir=str(tmp_path), max_steps=1, layer_lr_decay=1.5)
    with pytest.raises(ValueError, match="no nn.Embedding named word_embeddings"):
        Adversary(torch.nn.Linear(2, 2), "fgm")


def test_layer_lr_decay_gives_each_depth_its_rate(tmp_path):
    model, lr, decay = tiny_classifier(), 1e-3, 0.5
    assert TINY["num_hidden_layers"] == 2
    config = TrainingConfig(out_dir=str(tmp_path / "run"), max_steps=1, lr=lr,
                            layer_lr_decay=decay, progress_bar=False, tensorboard=False,
                            plot=False)
    trainer = Trainer(model, config, make_data(), collate)
    rate, decayed = {}, {}
    for group in trainer.optimizer.param_groups:
        for name in group["param_names"]:
            rate[name], decayed[name] = group["lr"], group["weight_decay"]
    assert len(rate) == sum(1 for _ in model.parameters())
    expected = {"classifier.weight": lr, "bert.pooler.dense.weight": lr,
                "bert.encoder.layers.1.ffn.up.weight": lr * decay,
                "bert.encoder.layers.0.attention.query.bias": lr * decay ** 2,
                "bert.embeddings.word_embeddings.weight": lr * decay ** 3}
    for name, value in expected.items():
        assert rate[name] == pytest.approx(value), name
    assert decayed["bert.encoder.layers.0.attention_norm.weight"] == 0.0
    assert decayed["bert.encoder.layers.0.ffn.up.weight"] == config.weight_decay
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
