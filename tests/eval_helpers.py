"""Shared by the end-to-end eval and sweep tests (import the fixture into the test module to use it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    """A private cache (proxy extractor, rendered emoji), offline hub, one thread (tiny models on a
    shared 2-core machine run several times faster without intra-op contention)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MADKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    patch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    patch.undo()


TINY = Path(__file__).resolve().parent.parent / "experiments" / "tiny" / "madformer.toml"


# a run of 2 steps with one 1-step sample at the end, on one thread (the completion, trace and demo tests)
TWO_STEPS = ("train.steps=2", "train.ckpt_every=2", "train.sample_num=1", "train.threads=1")


def train_tiny(out: Path, *sets: str) -> Path:
    """The tiny spec trained for 3 steps into ``out`` (no sinks, a 2-image grid at 1 step), ``sets`` on top."""
    from madkit.cli import main

    quiet = ["train.steps=3", "train.ckpt_every=3", "train.sample_num=2", "train.sample_steps=1", "log.sinks=[]"]
    assert main(["run", str(TINY), "--out", str(out), *(a for s in (*quiet, *sets) for a in ("--set", s))]) == 0
    return out
