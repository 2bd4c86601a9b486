"""Fixed-noise sample grids: the same images' noise at every step, so grids show training progress.

Image i's randomness comes from its own generator seeded from (spec seed, i); labels cycle through
the classes (image i gets class i mod num_classes) for class-conditional models.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from madkit.engine import rng
from madkit.interfaces import Codec, GenerativeModel, Sampler


@torch.no_grad()
def sample_images(
    model: GenerativeModel,
    sampler: Sampler,
    codec: Codec,
    num: int,
    seed: int,
    num_classes: int,
    device: torch.device,
    batch: int,
    steps: int | None = None,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """[num, 3, H, W] images in [-1, 1] from fixed per-image noise, generated ``batch`` at a time."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, num, batch):
            idx = range(start, min(num, start + batch))
            generators = [rng.generator(seed, "sample", i, device=device) for i in idx]
            labels = torch.tensor([i % num_classes for i in idx], device=device) if num_classes else None
            with autocast():
                latents = model.generate(sampler, generators, labels=labels, steps=steps)
            chunks.append(codec.decode(latents.float()).float().clamp(-1, 1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def save_grid(images: torch.Tensor, path: Path) -> torch.Tensor:
    """Write images in [-1, 1] as one PNG grid (about square); returns the grid as uint8 [H, W, 3]."""
    nrow = max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
