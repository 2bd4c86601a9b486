"""DDP on CPU: ``torchrun --standalone --nproc_per_node=2 -m madkit run`` (gloo), launched as
``python -m torch.distributed.run`` (the same program; a venv does not always put torchrun on PATH).

Each example's loss randomness is keyed by its place in the global batch, so two ranks x two
micro-batches of one image must update the weights like one process with the whole batch of four,
noise on: that checks the rank split, the loss scaling, no_sync accumulation and DDP's averaging
together. Each checkpoint also records every rank's weight fingerprint, which must agree. (The real
MADFormer's gradients on two ranks: tests/test_split_invariance.py.)
"""

from __future__ import annotations

import subprocess
import sys

import engine_fakes as fakes
import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture)
from safetensors.torch import load_file

from madkit.engine.checkpoints.run_folder import read_metrics
from madkit.engine.training.loop import train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_two_cpu_ranks_match_one_process_and_each_other(tmp_path):
    steps = 3
    common = {"log": {"sinks": []}}
    ddp_spec = fakes.write_spec(
        tmp_path, "ddp.toml", train={"steps": steps, "batch": 4, "micro_batch": 1, "ckpt_every": 2}, **common
    )
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [*TORCHRUN, "-m", "madkit", "run", str(ddp_spec), "--out", str(out)],
        env=fakes.cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports

    state = torch.load(out / "checkpoints" / f"{steps:08d}" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    first, second = state["rank_fingerprints"]
    assert torch.equal(first, second)  # both ranks hold bit-identical weights
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]  # written once, by rank 0
    assert (out / ".lock").read_text() == ""  # rank 0 held the run folder's lock, and released it at the end

    registry = fakes.make_registry()
    single_spec = fakes.write_spec(
        tmp_path, "single.toml", train={"steps": steps, "batch": 4, "micro_batch": 4}, **common
    )
    single = train(fakes.load(single_spec, registry), registry, tmp_path / "single")
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(out / "checkpoints" / f"{steps:08d}" / name), load_file(single.checkpoint / name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=f"{name}: {k}")


@pytest.mark.slow
def test_ddp_resume_is_exact(tmp_path):
    """Two ranks: 4 steps straight == 2 steps, then the same command again."""
    spec = fakes.write_spec(tmp_path, train={"steps": 4, "batch": 4, "micro_batch": 1}, log={"sinks": []})
    env = fakes.cli_env(tmp_path)

    def torchrun(out, *extra):
        cmd = [*TORCHRUN, "-m", "madkit", "run", str(spec), "--out", str(out)]
        proc = subprocess.run([*cmd, *extra], env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun(tmp_path / "straight")
    torchrun(tmp_path / "split", "--stop-after", "2")
    torchrun(tmp_path / "split")
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "straight" / "checkpoints" / "00000004" / name)
        b = load_file(tmp_path / "split" / "checkpoints" / "00000004" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
