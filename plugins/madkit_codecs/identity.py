"""``identity``: train in pixel space; the latent is the image."""

from __future__ import annotations

import attrs
import torch

from madkit.interfaces import Codec


@attrs.frozen
class IdentityConfig:
    def build(self) -> IdentityCodec:
        return IdentityCodec()

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(image_shape)


class IdentityCodec(Codec):
    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(image_shape)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] in [-1, 1] -> the same tensor, as float32."""
        return images.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model output -> image; clamped, since a model's prediction can leave [-1, 1]."""
        return latents.float().clamp(-1.0, 1.0)

    @property
    def cache_key(self) -> str:
        return "identity"
