"""Split-invariant training on the real quickstart MADFormer, noise and timestep sampling on.

Example i of a step's global batch draws its timesteps, noise and label dropout from a generator
seeded by (seed, step, i), so one global batch of 4 gives the same loss and gradient as 1 x 4, 2 x 2
or 4 x 1 micro-batches and on 2 gloo ranks, up to float summation order (<= 1e-5 relative). The
gradients are compared, not the weights after AdamW: its first step turns rounding into +-lr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture)
from quickstart_step import QUICKSTART, SMALL, first_step, relative_difference
from safetensors.torch import load_file

from madkit.engine.checkpoints.run_folder import read_metrics
from madkit.engine.training.loop import train
from madkit.experiment_spec import load_spec
from madkit.registry import Registry

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def whole_batch(tmp_path_factory):
    """Step 1 as one micro-batch of 4 (the reference every split must reproduce)."""
    return first_step(tmp_path_factory.mktemp("whole") / "run", 4)


def test_micro_batch_splits_give_the_same_loss_and_gradient(tmp_path, whole_batch):
    assert whole_batch["loss"] > 0 and sum(g.norm() for g in whole_batch["grads"].values()) > 0
    for micro in (2, 1):
        loss_diff, grad_diff = relative_difference(whole_batch, first_step(tmp_path / f"micro{micro}", micro))
        assert loss_diff <= TOLERANCE and grad_diff <= TOLERANCE, (micro, loss_diff, grad_diff)
    # the noise is really on: another seed draws other timesteps and noise for the same images
    _, other_seed = relative_difference(whole_batch, first_step(tmp_path / "seed1", 4, ["seed=1"]))
    assert other_seed > 0.01


def test_label_dropout_is_split_invariant_too(tmp_path):
    conditional = ["data.labels=true", "model.conditioning=class", "model.label_dropout=0.5"]
    whole = first_step(tmp_path / "whole", 4, conditional)
    loss_diff, grad_diff = relative_difference(whole, first_step(tmp_path / "micro1", 1, conditional))
    assert loss_diff <= TOLERANCE and grad_diff <= TOLERANCE, (loss_diff, grad_diff)
    # with dropout off the class tokens differ: the draws above really dropped some labels
    _, without = relative_difference(whole, first_step(tmp_path / "nodrop", 4, conditional[:2]))
    assert without > 1e-3


def test_two_gloo_ranks_give_the_same_loss_and_gradient(tmp_path, whole_batch):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("quickstart_step.py")), str(out), "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = torch.load(out / "step.pt", weights_only=True)  # 2 ranks x 2 micro-batches of 1
    loss_diff, grad_diff = relative_difference(whole_batch, ranks)
    assert loss_diff <= TOLERANCE and grad_diff <= TOLERANCE, (loss_diff, grad_diff)


def test_resume_of_the_quickstart_is_exact(tmp_path):
    """4 steps straight == 2 steps, stop, the same command again: bit-identical weights and metrics."""
    registry = Registry.load()
    loaded = load_spec(QUICKSTART, [*SMALL, "train.log_every=1", "train.ckpt_every=2"], registry)
    straight = train(loaded, registry, tmp_path / "straight")
    train(loaded, registry, tmp_path / "split", stop_after=2)
    resumed = train(loaded, registry, tmp_path / "split")
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(straight.checkpoint / name), load_file(resumed.checkpoint / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    loss = lambda r: [m["loss"] for m in read_metrics(r.run_dir / "metrics.jsonl")]
    assert loss(resumed) == loss(straight) and len(loss(straight)) == 4


def _photo_folder(folder: Path) -> Path:
    """Eight 48x40 photos of random colour noise: a random 32-pixel crop of each differs from the next."""
    from PIL import Image

    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        pixels = torch.randint(0, 256, (40, 48, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("augment", ["flips", "crops"])
def test_augmentation_is_split_invariant_too(tmp_path, augment):
    """Random flips (OpenMoji) and random crops (a folder of photos) draw from (seed, stream position),
    so micro-batch splits still give the same loss and gradient, and the draws really happen."""
    if augment == "flips":
        on, off = ["data.hflip=true"], ["data.hflip=false"]
    else:
        folder = _photo_folder(tmp_path / "photos")
        base = ["data.kind=folder", f"data.root={str(folder)!r}", "data.resolution=32"]
        on, off = [*base, "data.crop=random", "data.hflip=true"], [*base, "data.crop=center"]
    whole = first_step(tmp_path / "whole", 4, on)
    loss_diff, grad_diff = relative_difference(whole, first_step(tmp_path / "micro1", 1, on))
    assert loss_diff <= TOLERANCE and grad_diff <= TOLERANCE, (loss_diff, grad_diff)
    _, without = relative_difference(whole, first_step(tmp_path / "plain", 4, off))
    assert without > 1e-3  # the augmentation changed the images the step trained on


def test_flips_on_two_gloo_ranks_match_one_process(tmp_path):
    """Each rank draws from its own global generators; keyed by stream position, the flips still match."""
    flips = ["data.hflip=true"]
    whole = first_step(tmp_path / "whole", 4, flips)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("quickstart_step.py")), str(out), "1", "--set", flips[0]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    loss_diff, grad_diff = relative_difference(whole, torch.load(out / "step.pt", weights_only=True))
    assert loss_diff <= TOLERANCE and grad_diff <= TOLERANCE, (loss_diff, grad_diff)
