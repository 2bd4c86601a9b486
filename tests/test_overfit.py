"""The tiny MADFormer, pure-diffusion and pure-AR specs learn: loss falls on a fixed batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from madkit.build import build_experiment
from madkit.experiment_spec import load_spec
from madkit.registry import Registry

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny"


@pytest.mark.parametrize("name", ["madformer", "diffusion", "ar"])
def test_tiny_spec_overfits_a_fixed_batch(name):
    torch.manual_seed(0)
    registry = Registry.load()
    spec = load_spec(TINY / f"{name}.toml", registry=registry).spec
    experiment = build_experiment(spec, registry)
    model = experiment.model.train()
    data = experiment.data.dataset(augment=False)
    images = torch.stack([data[i][0] for i in range(8)])
    latents = experiment.codec.encode(images)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):
        # the same noise and timesteps every step: only fitting can lower the loss
        out = model.loss(latents, None, experiment.schedule, [torch.Generator().manual_seed(i) for i in range(8)])
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
