"""The image pipeline every file-backed source shares: resize the shorter side, crop square, flip.

The paper trains on FFHQ with a center crop and no flip; both are the defaults. Output is float32
[3, r, r] in [-1, 1]. Random crop and flip draw from torch's global generator, which the
``DataLoader`` seeds per worker, so runs with a fixed seed are repeatable.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from PIL import Image

from madkit.validators import positive

CROPS = ("center", "random")


def resolution_field(default: int):
    """Side of the square output images, in pixels."""
    return attrs.field(default=default, validator=positive)


def crop_field():
    """``center`` (deterministic, the paper's) or ``random`` (a fresh square each time)."""
    return attrs.field(default="center", validator=attrs.validators.in_(CROPS))


def hflip_field():
    """Random horizontal flips with probability 1/2; off by default as in the paper."""
    return attrs.field(default=False)


@attrs.frozen
class ImageTransform:
    """PIL image of any size and mode -> float32 [3, resolution, resolution] in [-1, 1]."""

    resolution: int
    crop: str = "center"
    hflip: bool = False
    background: tuple[int, int, int] = (255, 255, 255)  # what transparent pixels become

    def __call__(self, image: Image.Image, augment: bool = True) -> torch.Tensor:
        """``augment=False`` gives the deterministic view: center crop, never flipped."""
        image = to_rgb(image, self.background)
        image = resize_shorter_side(image, self.resolution)
        random_crop = augment and self.crop == "random"
        image = crop_square(image, self.resolution, random_crop)
        x = to_tensor(image)
        if augment and self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB, with any transparency composited over ``background`` (dropping alpha would expose
    whatever colour the encoder left under transparent pixels, often black)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Scale so that the shorter side is exactly ``size``; Pillow's bicubic filter widens with the
    scale factor, so downscaling is antialiased."""
    w, h = image.size
    if min(w, h) == size:
        return image
    scale = size / min(w, h)
    new = (size, max(size, round(h * scale))) if w <= h else (max(size, round(w * scale)), size)
    return image.resize(new, Image.Resampling.BICUBIC)


def crop_square(image: Image.Image, size: int, random: bool = False) -> Image.Image:
    """A size x size window: centered, or at a uniformly random offset."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"cannot crop {size}x{size} from a {w}x{h} image; resize it first")
    if random:
        left = int(torch.randint(0, w - size + 1, ()))
        top = int(torch.randint(0, h - size + 1, ()))
    else:
        left, top = (w - size) // 2, (h - size) // 2
    if (left, top, w, h) == (0, 0, size, size):
        return image
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3, H, W] in [-1, 1]."""
    return uint8_to_unit(torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1))


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    return x.float().div_(127.5).sub_(1.0)
