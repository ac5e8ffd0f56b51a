"""What the Trainer keeps on disk, and resuming when that is damaged.

Checked against independent references:
- a LoRA run's whole folder (checkpoints, final adapter) against the base model's file size;
  its checkpoints hold exactly the trainable tensors (the names come from requires_grad, not
  from the code under test);
- resume with the base reloaded from its folder continues bit-exactly (LoRA, and AdaLoRA whose
  rank masks and importance averages are buffers), against a run that never stopped;
- a changed base, a truncated newest checkpoint and a malicious trainer_state.pt give one-line
  errors or a warning, and the run folder is left byte for byte as it was when refused;
- a full fine-tune with load_best_at_end keeps no best/ folder, exactly keep_last checkpoints,
  and the weights of the best evaluation (a snapshot taken by eval_fn).
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from bertkit import BertConfig, BertForSequenceClassification, BertModel
from bertkit.peft import apply_peft, on_step
from bertkit.training import Trainer, TrainingConfig
from bertkit.training.trainer import STATE_FILE

# BERT's vocabulary on a narrow encoder: 4.5M parameters (18 MB), so that the fixed cost of a
# checkpoint (RNG states ~20 kB, zip headers, adapter_config.json) is small next to 3% of it,
# while the encoder stays cheap to run. LoRA r=2 trains 0.1% of it (MiniLM, r=8: 0.3%).
BASE = dict(vocab_size=30522, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=256, max_position_embeddings=32)
LABELS = {0: "a", 1: "b", 2: "c"}
PEFT = {"lora": dict(r=2, alpha=4, dropout=0.1),
        "adalora": dict(init_r=3, target_r=2, total_steps=8, t_init=1, t_final=2, dropout=0.1)}
T = 8


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> str:
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("base")
    BertModel(BertConfig(**BASE)).save_pretrained(folder)
    return str(folder)


def bert_data(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, BASE["vocab_size"], (n, T), generator=g)
    return [{"input_ids": ids[i], "labels": int(ids[i, 0]) % 3} for i in range(n)]


def bert_collate(items: list[dict]) -> dict:
    ids = torch.stack([item["input_ids"] for item in items])                 # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.tensor([item["labels"] for item in items])}


def peft_model(base_folder: str, method: str, seed: int) -> nn.Module:
    """The base reloaded from its folder, the method's weights drawn from ``seed``."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(base_folder, verbose=False,
                                                          id2label=dict(LABELS))
    return apply_peft(model, method, base_model_folder=base_folder, **PEFT[method])


def peft_run(tmp_path: Path, name: str, base_folder: str, method: str = "lora", *, seed=0,
             crash_at=None, resume=False, **overrides):
    """8 updates of 2 micro-batches, checkpoint every 2 keeping 2, eval every 2, best loaded
    at the end; ``crash_at`` raises in the hook after that update."""
    eval_batch = bert_collate(bert_data(6, seed=1))
    model = peft_model(base_folder, method, seed)

    def hook(m, step):
        on_step(m, step)  # AdaLoRA's rank allocation
        if step == crash_at:
            raise Crash

    def eval_fn(m):
        return {"eval_loss": m(**eval_batch).loss}

    settings = dict(out_dir=str(tmp_path / name), lr=5e-3, batch_size=4, grad_accum_steps=2,
                    max_steps=8, save_every=2, eval_every=2, keep_last=2, log_every=1,
                    load_best_at_end=True, progress_bar=False, tensorboard=False, plot=False,
                    device="cpu")
    settings.update(overrides)
    trainer = Trainer(model, TrainingConfig(**settings), bert_data(24), bert_collate,
                      eval_fn=eval_fn, on_step=hook)
    result = trainer.train(resume_from=tmp_path / name if resume else None)
    return result, model


def losses(result) -> list[float]:
    return [e["loss"] for e in result.log_history if e["event"] == "train"]


def folder_bytes(folder: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and error.value.__cause__ is None, message
    return message


# ============================================================================ PEFT runs


@pytest.fixture(scope="module")
def lora_runs(base_folder, tmp_path_factory):
    """A run that never stopped, and one that crashed after update 5 and was resumed (from
    the checkpoint of update 4) with a model rebuilt from the base folder, other LoRA init."""
    tmp = tmp_path_factory.mktemp("lora")
    straight = peft_run(tmp, "straight", base_folder)
    with pytest.raises(Crash):
        peft_run(tmp, "resumed", base_folder, crash_at=5)
    resumed = peft_run(tmp, "resumed", base_folder, seed=123, resume=True)
    return tmp, straight, resumed


def test_peft_run_folder_is_a_few_percent_of_the_base(lora_runs, base_folder):
    tmp, (result, model), _ = lora_runs
    out = tmp / "straight"
    model.save_pretrained(out)  # the final adapter folder, as finetune writes it
    base_size = os.path.getsize(Path(base_folder) / "model.safetensors")
    assert folder_bytes(out) < 0.03 * base_size, (folder_bytes(out), base_size)
    assert not (out / "best").exists() and result.best_dir is None  # loaded, then removed
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        ["latest", "step-6", "step-8"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".lora_" in n for n in trainable) and any("classifier" in n for n in trainable)
    state = torch.load(out / "checkpoints" / "step-8" / STATE_FILE, weights_only=True)
    assert set(state["model"]) == trainable  # LoRA and the head only; no buffers in BERT
    assert len(state["frozen_sha256"]) == 64


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_peft_resume_with_the_base_reloaded_is_bit_exact(method, lora_runs, base_folder,
                                                         tmp_path):
    if method == "lora":
        _, (straight, straight_model), (resumed, resumed_model) = lora_runs
    else:  # AdaLoRA reallocates ranks every update from importance buffers kept in checkpoints
        straight, straight_model = peft_run(tmp_path, "straight", base_folder, method)
        with pytest.raises(Crash):
            peft_run(tmp_path, "resumed", base_folder, method, crash_at=5)
        resumed, resumed_model = peft_run(tmp_path, "resumed", base_folder, method, seed=9,
                                          resume=True)
        masks = {n: b for n, b in resumed_model.named_buffers() if n.endswith("rank_mask")}
        assert masks and not all(bool(m.all()) for m in masks.values())  # ranks were cut
    assert resumed.steps == 8
    start = [e for e in resumed.log_history if e["event"] == "start"][-1]
    assert Path(start["resumed_from"]).name == "step-4"
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 8
    assert resumed.best_step == straight.best_step
    expected = straight_model.state_dict()
    for name, value in resumed_model.state_dict().items():  # parameters and buffers
        assert torch.equal(value, expected[name]), name


def test_resume_with_a_changed_base_is_refused(base_folder, tmp_path):
    with pytest.raises(Crash):
        peft_run(tmp_path, "run", base_folder, crash_at=3)
    other = tmp_path / "other-base"
    base = BertModel.from_pretrained(base_folder)
    with torch.no_grad():
        base.encoder.layers[1].attention.query.weight[0, 0] += 1e-3
    base.save_pretrained(other)
    before = file_hashes(tmp_path / "run")
    with pytest.raises(ValueError) as error:
        peft_run(tmp_path, "run", str(other), resume=True)
    message = one_line(error)
    assert message.startswith("the base model of this run changed: ")
    assert f"{tmp_path / 'run' / 'checkpoints' / 'step-2' / STATE_FILE}" in message
    assert file_hashes(tmp_path / "run") == before


# ============================================================================ damaged checkpoints


@dataclass
class TinyOutput:
    loss: torch.Tensor


class TinyClassifier(nn.Module):
    """Embedding -> dropout -> mean over T -> Linear; cross-entropy loss."""

    def __init__(self, vocab: int = 32, dim: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, labels, attention_mask=None):
        logits = self.head(self.drop(self.emb(input_ids)).mean(1))            # (B, C)
        return TinyOutput(F.cross_entropy(logits, labels))


def tiny_data(n: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (n, 5), generator=g)
    return [{"input_ids": ids[i], "labels": int(ids[i, 0]) % 3} for i in range(n)]


def tiny_run(tmp_path: Path, resume: bool = False, **overrides):
    torch.manual_seed(0)
    model = TinyClassifier()
    settings = dict(out_dir=str(tmp_path / "run"), lr=1e-2, batch_size=4, max_steps=6,
                    save_every=2, keep_last=None, progress_bar=False, tensorboard=False,
                    plot=False, device="cpu")
    settings.update(overrides)
    trainer = Trainer(model, TrainingConfig(**settings), tiny_data(), bert_collate)
    return trainer.train(resume_from=tmp_path / "run" if resume else None), model


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:len(data) // 2])


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    _, straight = tiny_run(tmp_path)
    weights = copy.deepcopy(straight.state_dict())
    root = tmp_path / "run" / "checkpoints"
    truncate(root / "step-6" / STATE_FILE)
    with pytest.warns(UserWarning) as caught:
        result, resumed = tiny_run(tmp_path, resume=True)
    skipped = [str(w.message) for w in caught if "skipping checkpoint" in str(w.message)]
    assert len(skipped) == 1 and "\n" not in skipped[0], skipped
    assert skipped[0].startswith(f"skipping checkpoint step-6: {root / 'step-6' / STATE_FILE} "
                                 "is truncated or corrupt (")
    start = [e for e in result.log_history if e["event"] == "start"][-1]
    assert start["resumed_from"] == str(root / "step-4")
    assert result.steps == 6  # updates 5 and 6 again, from step 4: the same weights
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert torch.load(root / "step-6" / STATE_FILE, weights_only=True)["state"]["step"] == 6


def test_no_intact_checkpoint_is_one_line(tmp_path):
    tiny_run(tmp_path, max_steps=4)
    root = tmp_path / "run" / "checkpoints"
    for step in (2, 4):
        truncate(root / f"step-{step}" / STATE_FILE)
    with pytest.warns(UserWarning, match="skipping checkpoint"), \
            pytest.raises(ValueError) as error:
        tiny_run(tmp_path, resume=True)
    message = one_line(error)
    assert message.startswith(f"cannot resume from {tmp_path / 'run'}: no intact checkpoint")
    assert str(root / "step-2" / STATE_FILE) in message
    # An explicit checkpoint folder has no fallback.
    with pytest.warns(UserWarning, match="skipping checkpoint step-4"), \
            pytest.raises(ValueError, match="no intact checkpoint"):
        Trainer(TinyClassifier(), TrainingConfig(out_dir=str(tmp_path / "x"), max_steps=1,
                                                 progress_bar=False, device="cpu"),
                tiny_data(), bert_collate).train(resume_from=root / "step-4")


class Payload:
    """Unpickling this would run a shell command (it never is: weights_only refuses)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_trainer_state_is_refused_in_one_line(tmp_path):
    tiny_run(tmp_path, max_steps=4)
    marker = tmp_path / "pwned"
    newest = tmp_path / "run" / "checkpoints" / "step-4" / STATE_FILE
    torch.save({"state": {}, "model": Payload(marker)}, newest)
    before = file_hashes(tmp_path / "run")
    with pytest.raises(ValueError) as error:  # not an UnpicklingError, and no fallback
        tiny_run(tmp_path, resume=True)
    assert error.type is ValueError
    message = one_line(error)
    assert message == (f"{newest} was refused and not loaded: not a plain tensor checkpoint "
                       "(its pickle asks for posix.system); delete it, or its step folder, to "
                       "resume from an earlier checkpoint")
    assert not marker.exists()
    assert file_hashes(tmp_path / "run") == before


# ============================================================================ full fine-tuning


def test_full_finetune_keeps_one_copy_of_the_best_weights(tmp_path):
    scores = iter([0.2, 0.7, 0.4, 0.5, 0.6, 0.3])
    snapshots, trainer = {}, None

    def eval_fn(model):
        snapshots[trainer.state.step] = copy.deepcopy(model.state_dict())
        return {"accuracy": next(scores)}

    torch.manual_seed(0)
    model = TinyClassifier()
    cfg = TrainingConfig(out_dir=str(tmp_path / "run"), lr=1e-2, batch_size=4, max_steps=6,
                         save_every=1, eval_every=1, keep_last=2, metric_for_best="accuracy",
                         load_best_at_end=True, progress_bar=False, tensorboard=False,
                         plot=False, device="cpu")
    trainer = Trainer(model, cfg, tiny_data(), bert_collate, eval_fn=eval_fn)
    result = trainer.train()
    out = tmp_path / "run"
    assert result.best_step == 2 and result.best_dir is None
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "metrics.jsonl",
                                                     "training_config.json"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        ["latest", "step-5", "step-6"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[2][name]), name
    # Nothing frozen: the checkpoint holds the whole model, as before.
    state = torch.load(out / "checkpoints" / "step-6" / STATE_FILE, weights_only=True)
    assert set(state["model"]) == set(model.state_dict()) and state["frozen_sha256"] is None
    assert not torch.equal(state["model"]["head.weight"], snapshots[2]["head.weight"])


def test_kept_best_state_is_safetensors_of_the_trainable_part(tmp_path):
    """A frozen embedding (a base) and a trainable head; the best/ folder is kept."""
    scores = iter([0.5, 0.9, 0.1])
    snapshots, trainer = {}, None

    def eval_fn(model):
        snapshots[trainer.state.step] = copy.deepcopy(model.state_dict())
        return {"accuracy": next(scores)}

    def frozen_model(seed: int, emb: torch.Tensor | None = None) -> TinyClassifier:
        torch.manual_seed(seed)
        model = TinyClassifier()
        if emb is not None:
            model.emb.weight.data.copy_(emb)
        model.emb.weight.requires_grad_(False)
        return model

    model = frozen_model(0)
    cfg = TrainingConfig(out_dir=str(tmp_path / "run"), lr=1e-2, batch_size=4, max_steps=3,
                         eval_every=1, metric_for_best="accuracy", progress_bar=False,
                         tensorboard=False, plot=False, device="cpu")
    trainer = Trainer(model, cfg, tiny_data(), bert_collate, eval_fn=eval_fn)
    result = trainer.train()
    best = tmp_path / "run" / "best"
    assert result.best_dir == str(best) and result.best_step == 2
    assert sorted(p.name for p in best.iterdir()) == ["best.json", "model.safetensors",
                                                      "model_state.safetensors"]
    with safe_open(str(best / "model_state.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {"head.weight", "head.bias"}
        assert len(f.metadata()["frozen_sha256"]) == 64
    # Another session loads it into a model rebuilt with the same frozen part ...
    rebuilt = frozen_model(5, emb=model.emb.weight)
    Trainer(rebuilt, cfg, tiny_data(), bert_collate).load_best()
    for name, value in rebuilt.state_dict().items():
        assert torch.equal(value, snapshots[2][name]), name
    # ... and refuses one whose frozen part differs.
    with pytest.raises(ValueError) as error:
        Trainer(frozen_model(5), cfg, tiny_data(), bert_collate).load_best()
    assert one_line(error).startswith("the base model of this run changed: ")


def test_resuming_a_run_whose_best_was_loaded_tracks_the_best_afresh(tmp_path):
    """The first session ends with load_best_at_end (best/ removed); a second one continues to
    more steps: its final weights are its own best, and it says so (not the gone step 2)."""
    scores = iter([0.2, 0.9, 0.4, 0.5, 0.3, 0.6, 0.1])
    snapshots = {}

    def session(max_steps: int, resume: bool):
        torch.manual_seed(0)
        model = TinyClassifier()
        cfg = TrainingConfig(out_dir=str(tmp_path / "run"), lr=1e-2, batch_size=4,
                             max_steps=max_steps, eval_every=1, save_every=1, keep_last=1,
                             metric_for_best="accuracy", load_best_at_end=True,
                             progress_bar=False, tensorboard=False, plot=False, device="cpu")
        trainer = None

        def eval_fn(m):
            snapshots[trainer.state.step] = copy.deepcopy(m.state_dict())
            return {"accuracy": next(scores)}

        trainer = Trainer(model, cfg, tiny_data(), bert_collate, eval_fn=eval_fn)
        return trainer.train(resume_from=tmp_path / "run" if resume else None), model

    first, _ = session(4, resume=False)
    assert first.best_step == 2 and not (tmp_path / "run" / "best").exists()
    with pytest.warns(UserWarning, match=r"the best model of step 2 is not in .*; the best "
                                         r"model is tracked afresh from step 4"):
        second, model = session(7, resume=True)
    assert (second.best_step, second.best_metric) == (6, 0.6)
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[6][name]), name
    assert not (tmp_path / "run" / "best").exists()
