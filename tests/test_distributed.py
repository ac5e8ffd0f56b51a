"""DDP on CPU (gloo): 2 processes launched with torchrun running tests/_ddp_worker.py.

Checks that the ranks stay identical, that training progresses, that 2 micro-batches x 2 ranks
equal one process training on batches of the combined size (gradients, parameters, losses), that
checkpoints carry no ``module.`` prefix, and that a crashed DDP run resumes exactly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import _ddp_worker as worker

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}"
               f"{os.environ.get('PYTHONPATH', '')}")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
           str(REPO / "tests" / "_ddp_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return out, ranks


def test_ranks_stay_identical_and_training_progresses(ddp_results):
    out, (r0, r1) = ddp_results
    assert r0["world_size"] == 2
    for part in ("accum", "straight", "resumed"):
        for name, value in r0[part]["final"].items():
            assert torch.equal(value, r1[part]["final"][name]), (part, name)
        assert r0[part]["losses"] == r1[part]["losses"]  # logged loss = mean over ranks
    losses = r0["accum"]["losses"]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0]
    # Only rank 0 writes checkpoints, and their keys carry no DDP "module." prefix.
    assert r1["accum"]["checkpoint_dir"] is None
    folder = Path(r0["accum"]["checkpoint_dir"])
    assert folder == out / "accum" / "checkpoints" / "step-12"
    assert set(load_file(folder / "model.safetensors")) == set(worker.TinyModel().state_dict())
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"])
    assert len(state["rng"]) == 2  # every rank's random streams, for resume


def test_two_ranks_with_accumulation_equal_one_big_batch(ddp_results, tmp_path):
    """batch 2 x 2 micro-batches x 2 ranks == batch 8 in one process."""
    _, (r0, _) = ddp_results
    ref = worker.run_accum(str(tmp_path / "single"), batch_size=8, accum=1)
    for name, grad in ref["grads1"].items():
        torch.testing.assert_close(r0["accum"]["grads1"][name], grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(r0["accum"]["params1"][name], ref["params1"][name],
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(r0["accum"]["final"][name], ref["final"][name],
                                   rtol=0, atol=1e-5)
    assert r0["accum"]["losses"] == pytest.approx(ref["losses"], abs=1e-5)


def test_ddp_resume_after_crash_is_exact(ddp_results):
    out, ranks = ddp_results
    assert (out / "resumed" / "checkpoints" / "latest").read_text().strip() == "step-6"
    for r in ranks:
        assert r["resumed"]["losses"] == r["straight"]["losses"]
        assert r["resumed"]["evals"] == r["straight"]["evals"]
        for name, value in r["straight"]["final"].items():
            assert torch.equal(r["resumed"]["final"][name], value), name
