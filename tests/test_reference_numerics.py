"""The released checkpoint's numerics as spec options (RoPE kind, q/k-norm eps, clean timestep, sampler
set-up): each one works in training, with and without the KV cache, and all three paths agree; the
options are live (they change what the model computes). Both attention backends: test_madformer.py."""

from __future__ import annotations

import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: tiny models, one thread)
from madkit_models.blockwise import cached_teacher_forced
from model_helpers import REFERENCE_NUMERICS, TINY_UNET, batch, build

from madkit.generation import generate_latents
from madkit.registry import Registry

# the released geometry in miniature (U-Net embedder) for the teacher-forced check; the cheaper patch
# embedder elsewhere (it embeds timesteps too, so a "twin" clean timestep is just as live there)
UNET = dict(embedder=TINY_UNET, latent_shape=(4, 8, 8))
VARIANTS = {
    "reference": dict(partitioner="tiles", **REFERENCE_NUMERICS),
    "reference+unet": dict(partitioner="tiles", **UNET, **REFERENCE_NUMERICS),
    "reference+class": dict(partitioner="tiles", **REFERENCE_NUMERICS, conditioning="class", num_classes=3),
    "reference+condition-only": dict(partitioner="tiles", context="condition", **REFERENCE_NUMERICS),
}
# the reference's two sampler set-ups: DPM-Solver++ from a default DDIM config ("linspace"), and DDIM
# with clip_sample; the last timestep of a loop is what a "twin" clean block is embedded with
REFERENCE_SAMPLERS = {
    "dpm-solver++-linspace": dict(kind="dpm-solver++", spacing="linspace"),
    "ddim-leading-clip": dict(kind="ddim", spacing="leading", clip_sample=True),
}


def _sampler(kind: str, steps: int = 4, **options):  # 4 linspace steps end at t = 250, not 0
    registry = Registry.load()
    schedule = registry.get("schedule", "ddpm-linear").config_cls().build()
    return registry.get("sampler", kind).config_cls(steps=steps, **options).build(schedule=schedule)


def _generate(model, sampler, use_cache: bool) -> torch.Tensor:
    guidance = 2.0 if model.class_embed is not None else None
    chunks = generate_latents(
        model, sampler, range(2), seed=3, num_classes=model.num_classes, batch=2, use_cache=use_cache, guidance=guidance
    )
    return torch.cat([lat for _, lat in chunks])


def _labels(model):
    return torch.tensor([2, 0]) if model.class_embed is not None else None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cached_predictions_equal_the_training_forward(name):
    model = build(**VARIANTS[name])
    x0, xt, mt = batch(model)
    with torch.no_grad():
        train, _, _ = model.forward_blocks(x0, xt, mt, _labels(model))
    cached = cached_teacher_forced(model, x0, xt, mt, _labels(model))
    assert (train - cached).abs().max().item() <= 1e-5


@pytest.mark.parametrize("sampler", list(REFERENCE_SAMPLERS))
def test_cached_and_uncached_generation_agree(sampler):
    model = build(**VARIANTS["reference+class"])  # with guidance: the cache also holds the unconditional half
    run = _sampler(steps=3, **REFERENCE_SAMPLERS[sampler])
    cached, uncached = _generate(model, run, True), _generate(model, run, False)
    scale = max(1.0, uncached.abs().max().item())
    assert (cached - uncached).abs().max().item() <= 1e-4 * scale


def test_training_reaches_every_parameter_with_the_reference_numerics():
    from madkit_diffusion.schedules.ddpm_linear import DDPMLinearConfig

    model = build(**VARIANTS["reference"]).train()
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    losses = model.loss(torch.randn(2, *model.latent_shape), None, DDPMLinearConfig().build(), gens)
    losses["loss"].backward()
    unused = {name for name, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert torch.isfinite(losses["loss"]) and not unused, unused


def test_twin_clean_timestep_carries_each_blocks_own_time_into_later_blocks():
    zero = build(**{**VARIANTS["reference"], "clean_timestep": "zero"})
    twin = build(**VARIANTS["reference"])
    x0, xt, mt = batch(twin)
    moved = mt.clone()
    moved[:, 0] += 100.0  # block 0 denoised at another time
    with torch.no_grad():
        for model, later_blocks_change in ((zero, False), (twin, True)):
            before, _, _ = model.forward_blocks(x0, xt, mt)
            after, _, _ = model.forward_blocks(x0, xt, moved)
            assert not torch.allclose(before[:, 0], after[:, 0])  # its own prediction always moves
            assert torch.allclose(before[:, 1:], after[:, 1:]) != later_blocks_change


def test_twin_sampling_embeds_clean_blocks_at_the_loops_last_timestep():
    run = _sampler(**REFERENCE_SAMPLERS["dpm-solver++-linspace"]).start()
    assert int(run.timesteps[-1]) == 250  # linspace(0, 999, 5) without its 0: the loop ends at t = 250
    twin = build(**VARIANTS["reference"])
    zero = build(**{**VARIANTS["reference"], "clean_timestep": "zero"})
    sampler = _sampler(**REFERENCE_SAMPLERS["dpm-solver++-linspace"])
    a, b = _generate(twin, sampler, True), _generate(zero, sampler, True)
    blocks_a, blocks_b = twin.to_blocks(a), zero.to_blocks(b)
    assert torch.allclose(blocks_a[:, 0], blocks_b[:, 0])  # block 0 has no clean predecessor
    assert not torch.allclose(blocks_a[:, 1:], blocks_b[:, 1:])


def test_qk_norm_eps_reaches_the_towers():
    model = build(**VARIANTS["reference"])
    for layer in model.layers:
        for tower in (layer.clean, layer.noised):
            assert tower.q_norm.eps == tower.k_norm.eps == 1e-6
            assert tower.attn_norm.eps == tower.mlp_norm.eps == 1e-5
