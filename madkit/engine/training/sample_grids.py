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

from madkit.atomic_files import writing_atomically
from madkit.generation import generate_images
from madkit.interfaces import Codec, GenerativeModel, Sampler

MIN_IMAGE_SIDE = 128  # pixels per image in a saved grid, at least


def sample_images(
    model: GenerativeModel,
    sampler: Sampler,
    codec: Codec,
    num: int,
    seed: int,
    num_classes: int,
    batch: int,
    steps: int | None = None,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """[num, 3, H, W] images in [-1, 1] from fixed per-image noise, generated ``batch`` at a time.

    The images ``madkit sample --seed SEED`` makes for indices 0..num-1 from the same weights.
    """
    chunks = generate_images(
        model, sampler, codec, range(num), seed, num_classes=num_classes, batch=batch, steps=steps, autocast=autocast
    )
    return torch.cat([images for _, images in chunks])


def save_grid(images: torch.Tensor, path: Path) -> torch.Tensor:
    """Write images in [-1, 1] as one PNG grid (about square); returns the grid as uint8 [H, W, 3].

    Images smaller than ``MIN_IMAGE_SIDE`` are enlarged by a whole factor with nearest-neighbour
    pixels (crisp, nothing invented), so a grid of 32x32 emoji is a file one can look at."""
    nrow = max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    scale = max(1, math.ceil(MIN_IMAGE_SIDE / max(images.shape[-2:])))
    grid = grid.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    # written aside and renamed: a kill mid-write never leaves a torn grid under the final name
    # (a resumed run redraws a missing grid, but would trust a torn one)
    with writing_atomically(path) as tmp:
        save_image(grid, tmp, format="png")
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
