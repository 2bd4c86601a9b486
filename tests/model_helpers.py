"""Tiny MADFormer builders shared by the model and generation tests."""

from __future__ import annotations

import torch

from madkit.registry import Registry
from madkit.spec import make_converter

PARTITIONS = {
    "tiles": {"kind": "tiles", "tile": [2, 2]},
    "raster": {"kind": "raster", "block_len": 4},
}
TINY_UNET = {"kind": "unet", "channels": [16, 32], "groups": 8, "attention_head_dim": 16, "temb": 16}
# the released checkpoint's numerics (experiments/madformer_ffhq_reference.toml) as model overrides
REFERENCE_NUMERICS = {
    "rope": {"kind": "madformer-reference"},
    "clean_timestep": "twin",
    "ar_layer": {"kind": "ar", "qk_norm_eps": 1e-6},
    "diffusion_layer": {"kind": "diffusion", "qk_norm_eps": 1e-6},
}
_REGISTRY: Registry | None = None


def registry() -> Registry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry.load()
    return _REGISTRY


def config(partitioner="tiles", embedder=None, **overrides):
    from madkit_models.madformer_config import MadformerConfig

    part = PARTITIONS[partitioner] if isinstance(partitioner, str) else partitioner
    raw = dict(
        partitioner=part,
        embedder=embedder or {"kind": "patch", "patch": 2},
        width=32,
        heads=4,
        mlp_hidden=64,
        depth=4,
        diffusion_depth=2,
    )
    raw.update(overrides)
    return make_converter(registry()).structure(raw, MadformerConfig)


def build(partitioner="tiles", embedder=None, latent_shape=(3, 8, 8), num_classes=0, seed=0, perturb=True, **overrides):
    """A tiny model in eval mode. ``perturb`` jitters every parameter so zero-initialised parts (the
    adaLN gates of mlp layers) do not hide bugs behind exact zeros."""
    torch.manual_seed(seed)
    cfg = config(partitioner, embedder, **overrides)
    model = cfg.build(latent_shape=latent_shape, num_classes=num_classes, registry=registry())
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def batch(model, n=2, seed=1, dtype=torch.float32):
    """(x0 blocks, x_t blocks, model time [n, t]) with an independent timestep per block."""
    g = torch.Generator().manual_seed(seed)
    x0 = model.to_blocks(torch.randn(n, *model.latent_shape, generator=g, dtype=dtype))
    xt = torch.randn(x0.shape, generator=g, dtype=dtype)
    mt = torch.rand(n, model.T, generator=g, dtype=dtype) * 999
    return x0, xt, mt
