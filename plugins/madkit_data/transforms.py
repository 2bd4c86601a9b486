"""The image pipeline every file-backed source shares: resize the shorter side, crop square, flip
(torchvision transforms v2 on the decoded PIL image, after compositing transparency over a background).

The paper trains on FFHQ with a center crop and no flip; both are the defaults. Output is float32
[3, r, r] in [-1, 1]. Random crop and flip draw from torch's global generator, which the
``DataLoader`` seeds per worker, so runs with a fixed seed are repeatable.
"""

from __future__ import annotations

import functools

import attrs
import torch
from PIL import Image

from madkit.image_depth import to_8bit
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
        pipeline = _pipeline(self.resolution, augment and self.crop == "random", augment and self.hflip)
        return uint8_to_unit(pipeline(to_rgb(image, self.background)))


@functools.lru_cache(maxsize=64)
def _pipeline(resolution: int, random_crop: bool, flip: bool):
    """Resize the shorter side (bicubic; Pillow widens the filter when shrinking, so it antialiases),
    crop a square, uint8 tensor, optional flip. Random choices draw from torch's global generator."""
    from torchvision.transforms import v2  # here: every madkit command loads this plugin, few decode images

    steps = [
        v2.Resize(resolution, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomCrop(resolution) if random_crop else v2.CenterCrop(resolution),
        v2.PILToTensor(),
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    return v2.Compose(steps)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB, with any transparency composited over ``background`` (dropping alpha would expose
    whatever colour the encoder left under transparent pixels, often black; torchvision has no
    compositing transform), and 16-bit samples scaled to 8 bits (Pillow's own conversion clips them)."""
    image = to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    return x.float().div_(127.5).sub_(1.0)
