"""A scheduler's warning (SIGUSR2 before a time limit or a preemption) in a launched training job:
the run ends after the step in progress with a checkpoint of that step, the replaced handler
(submitit's requeue) is called once, and the resumed run ends with the uninterrupted run's weights."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from eval_helpers import TINY, environment  # noqa: F401 (environment: autouse fixture for this module)
from safetensors.torch import load_file

from madkit.engine.checkpoints import latest_checkpoint
from madkit.engine.training import stopping
from madkit.engine.training.loop import train
from madkit.engine.training.reporting import Reporter
from madkit.experiment_spec import load_spec
from madkit.registry import Registry

SETS = ["train.steps=5", "train.ckpt_every=5", "train.sample_every=5", "train.sample_num=2", "train.sample_steps=1",
        "train.log_every=1", "log.sinks=[]", "train.threads=1", "log.progress=false"]


def run(out: Path):
    registry = Registry.load()
    return train(load_spec(TINY, SETS, registry), registry, out)


def test_a_warned_run_saves_the_step_in_progress_hands_over_and_resumes_exactly(tmp_path, monkeypatch):
    calls = []
    log = Reporter.log

    def warn_at_step_2(self, step, record):
        log(self, step, record)
        if step == 2:
            os.kill(os.getpid(), signal.SIGUSR2)  # as SLURM does, 90 s before the limit

    monkeypatch.setattr(Reporter, "log", warn_at_step_2)
    original = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # stands in for submitit
    try:
        stopping.watch(signal.SIGUSR2)
        stopped = run(tmp_path / "warned")
        assert stopping.requested() and stopped.step == 2
        stopping.hand_over()
        assert calls == [signal.SIGUSR2] and not stopping.requested() and not stopping.watching()
    finally:
        signal.signal(signal.SIGUSR2, original)
    assert latest_checkpoint(tmp_path / "warned").name == "00000002"  # the step in progress, saved
    assert not list((tmp_path / "warned" / "samples").glob("*.png"))  # no time is spent on a grid

    monkeypatch.setattr(Reporter, "log", log)
    resumed = run(tmp_path / "warned")  # the requeued job
    whole = run(tmp_path / "whole")
    assert resumed.step == whole.step == 5
    a = load_file(resumed.checkpoint / "model.safetensors")
    b = load_file(whole.checkpoint / "model.safetensors")
    for key in b:
        assert torch.equal(a[key], b[key]), key


def test_an_ordinary_run_is_not_watched(tmp_path):
    assert not stopping.watching()
    assert run(tmp_path / "plain").step == 5


@pytest.fixture(autouse=True)
def clean_state():
    yield
    stopping.release()
