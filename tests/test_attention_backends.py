"""Every attention backend equals one dense-mask SDPA call over the concatenated sequence (the plain
definition of the rule), outputs and gradients, for every pattern and layout the model produces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from madkit_layers import block_sparse, masks
from madkit_layers.attention import FullPlan
from madkit_models.cost import attention_pairs
from model_helpers import batch, build

HEADS, HEAD_DIM = 2, 8


def _layouts(model, pattern: str, noised_ids: list[int] | None = None):
    """(clean layout, noised layout) of a training pass, or of uncached generation's pass for block j
    when ``noised_ids`` is [j] (clean blocks < j), as the model builds them."""
    ids = list(range(model.T)) if noised_ids is None else noised_ids
    tc = 0 if pattern == "causal" else (model.T - 1 if noised_ids is None else ids[0])
    plan = model._full_plan(ids, model.has_context, tc)
    return plan.clean, plan.noised


def _qkv(length: int, gen: torch.Generator, grad: bool = True):
    # [n, L, h, e] memory seen as [n, h, L, e], as the towers produce them
    return tuple(
        torch.randn(2, length, HEADS, HEAD_DIM, generator=gen, device=gen.device).transpose(1, 2).requires_grad_(grad)
        for _ in range(3)
    )


def _reference(pattern, clean_layout, noised_layout, clean, noised):
    """One SDPA call over [clean ; noised] under the dense mask, split back."""
    streams = torch.cat([clean_layout.streams, noised_layout.streams])
    blocks = torch.cat([clean_layout.blocks, noised_layout.blocks])
    mask = masks.dense_mask(pattern, streams, blocks)
    q, k, v = (torch.cat([c, n], dim=2) for c, n in zip(clean, noised))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    lc = clean_layout.length
    return out[:, :, :lc], out[:, :, lc:]


def _grads(outputs, inputs, gen):
    weights = [torch.randn(o.shape, generator=gen) for o in outputs]
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, inputs)


def _check(backend: str, model, pattern: str, noised_ids=None, gradients: bool = True):
    clean_layout, noised_layout = _layouts(model, pattern, noised_ids)
    gen = torch.Generator().manual_seed(0)
    clean, noised = _qkv(clean_layout.length, gen, gradients), _qkv(noised_layout.length, gen, gradients)
    plan = FullPlan(clean_layout, noised_layout, backend)
    with torch.set_grad_enabled(gradients):  # eager flex traces a backward graph unless grad is off
        out_c, out_n = plan.attend(pattern, clean if clean_layout.length else None, noised)
    ref_c, ref_n = _reference(pattern, clean_layout, noised_layout, clean, noised)
    assert torch.allclose(out_n, ref_n, atol=1e-5)
    outputs, refs = [out_n], [ref_n]
    if clean_layout.length:
        assert torch.allclose(out_c, ref_c, atol=1e-5)
        outputs.append(out_c)
        refs.append(ref_c)
    if gradients:
        inputs = [*noised, *clean] if clean_layout.length else list(noised)
        for got, want in zip(
            _grads(outputs, inputs, torch.Generator().manual_seed(1)),
            _grads(refs, inputs, torch.Generator().manual_seed(1)),
        ):
            assert torch.allclose(got, want, atol=1e-5)
    return plan


# (pattern, partitioner, class context, single stream, noised ids)
CASES = [
    ("skip-causal", "tiles", False, False, None),
    ("skip-causal", "raster", True, False, None),
    ("skip-causal", "tiles", True, False, [2]),  # uncached generation of block 2
    ("intra-block", "raster", False, False, None),
    ("intra-block", "tiles", True, False, None),
    ("causal", "tiles", True, True, None),
    ("causal", "raster", False, True, None),
]


def _model(partitioner, context, single, **extra):
    overrides = {"conditioning": "class", "num_classes": 3} if context else {}
    if single:
        overrides["context"] = "condition"
    return build(partitioner, width=HEADS * HEAD_DIM, heads=HEADS, **overrides, **extra)


@pytest.mark.parametrize("min_tokens", [1, 8, 10_000])  # one block per group, mixed groups, one group
@pytest.mark.parametrize("pattern, partitioner, context, single, noised_ids", CASES)
def test_block_sparse_equals_the_dense_mask(monkeypatch, min_tokens, pattern, partitioner, context, single, noised_ids):
    monkeypatch.setattr(block_sparse, "MIN_GROUP_TOKENS", min_tokens)
    _check("block-sparse", _model(partitioner, context, single), pattern, noised_ids)


@pytest.mark.parametrize("pattern, partitioner, context, single, noised_ids", CASES)
def test_two_call_sdpa_equals_the_dense_mask(pattern, partitioner, context, single, noised_ids):
    _check("sdpa", _model(partitioner, context, single), pattern, noised_ids)


# eager FlexAttention on the CPU traces anew for every shape (seconds each): by default one case (a
# context token, raster blocks) beside test_madformer's model-level flex checks
FLEX_CASES = [pytest.param(*case, marks=pytest.mark.slow) for case in CASES[:1] + CASES[2:]] + CASES[1:2]


@pytest.mark.parametrize("pattern, partitioner, context, single, noised_ids", FLEX_CASES)
def test_flex_forward_equals_the_dense_mask_on_cpu(pattern, partitioner, context, single, noised_ids):
    # FlexAttention has no backward on the CPU; the gradients are checked on CUDA below
    _check("flex", _model(partitioner, context, single), pattern, noised_ids, gradients=False)


@pytest.mark.parametrize("backend", ["block-sparse", "sdpa"])
@pytest.mark.parametrize("context", [False, True])
def test_a_single_block_t1(backend, context):
    model = _model({"kind": "tiles", "tile": [4, 4]}, context, False, diffusion_depth=4)
    assert model.T == 1
    _check(backend, model, "skip-causal")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pattern, partitioner, context, single, noised_ids", CASES)
def test_flex_equals_the_dense_mask_with_gradients_on_cuda(pattern, partitioner, context, single, noised_ids):
    with torch.device("cuda"):
        model = _model(partitioner, context, single).cuda()
        clean_layout, noised_layout = _layouts(model, pattern, noised_ids)
        gen = torch.Generator("cuda").manual_seed(0)
        clean, noised = _qkv(clean_layout.length, gen), _qkv(noised_layout.length, gen)
        plan = FullPlan(clean_layout, noised_layout, "flex")
        _, out_n = plan.attend(pattern, clean if clean_layout.length else None, noised)
        _, ref_n = _reference(pattern, clean_layout, noised_layout, clean, noised)
        assert torch.allclose(out_n, ref_n, atol=1e-4)
        got = torch.autograd.grad(out_n.square().sum(), noised)
        want = torch.autograd.grad(ref_n.square().sum(), noised)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(got, want))


@pytest.mark.parametrize("pattern, partitioner, context, single, noised_ids", CASES)
def test_one_block_groups_execute_exactly_the_allowed_pairs(
    monkeypatch, pattern, partitioner, context, single, noised_ids
):
    monkeypatch.setattr(block_sparse, "MIN_GROUP_TOKENS", 1)
    model = _model(partitioner, context, single)
    clean_layout, noised_layout = _layouts(model, pattern, noised_ids)
    attention = FullPlan(clean_layout, noised_layout, "block-sparse").prepare(pattern, "cpu", clean_layout.length > 0)
    ids = noised_ids or list(range(model.T))
    tc = 0 if pattern == "causal" else (model.T - 1 if noised_ids is None else ids[0])
    c = int(model.has_context)
    expected = attention_pairs(pattern, model.B, c, tc, ids[0], ids[-1] + 1, True)
    assert attention.pairs() == expected


def test_models_train_alike_on_every_cpu_backend():
    """The real model's loss and gradients with block-sparse groups and with dense masks."""
    from madkit_diffusion.schedules.ddpm_linear import DDPMLinearConfig

    results = {}
    for backend in ("sdpa", "block-sparse"):
        model = build("tiles", conditioning="class", num_classes=3, attention=backend).train()
        x0, _, _ = batch(model)
        latents = model.from_blocks(x0)
        schedule, gens = DDPMLinearConfig().build(), [torch.Generator().manual_seed(i) for i in range(len(latents))]
        loss = model.loss(latents, torch.tensor([0, 2]), schedule, gens)["loss"]
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (loss_a, grads_a), (loss_b, grads_b) = results.values()
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    assert all(torch.allclose(grads_a[n], grads_b[n], atol=1e-6) for n in grads_a)
