"""Regional compilation of the real model: each layer compiled on its own, equal to eager, reused."""

from __future__ import annotations

import copy

import pytest
import torch
from model_helpers import batch, build

from madkit.engine.training.model_setup import compile_blocks


def _loss_and_grads(model, latents, labels):
    from madkit_diffusion.schedules.ddpm_linear import DDPMLinearConfig

    gens = [torch.Generator().manual_seed(i) for i in range(len(latents))]  # one per example, label dropout too
    loss = model.loss(latents, labels, DDPMLinearConfig().build(), gens)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["block-sparse", "sdpa"])
def test_compiled_layers_train_like_eager_and_compile_once(backend):
    from torch._dynamo.utils import counters

    eager = build("tiles", conditioning="class", num_classes=3, attention=backend).train()
    compiled = copy.deepcopy(eager)
    assert compile_blocks(compiled) == len(compiled.layers)
    x0, _, _ = batch(eager)
    latents, labels = eager.from_blocks(x0), torch.tensor([0, 2])
    want_loss, want = _loss_and_grads(eager, latents, labels)
    counters.clear()
    for _ in range(2):  # the second step reuses the graphs of the first
        loss, grads = _loss_and_grads(compiled, latents, labels)
        if not counters["stats"]:
            continue
        graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs
    # identical layers share one graph: one for the layers that run both towers, one for the last
    # clean-reading layer (keys/values only), one for the layers without clean tokens
    assert graphs <= 3
    assert not counters["graph_break"]
    assert torch.allclose(loss, want_loss, atol=1e-6)
    assert grads.keys() == want.keys()
    assert all(torch.allclose(grads[n], want[n], atol=1e-5) for n in want)
