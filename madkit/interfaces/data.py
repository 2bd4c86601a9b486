"""Images in: data sources, and codecs between images and latents."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class DataSource(ABC):
    """Images for training and reference statistics. Built with no runtime arguments.

    ``dataset()`` returns a torch map-style or iterable dataset of ``(image, label)`` where image is
    float [3, h, w] in [-1, 1] and label an int (0 when unconditional).
    """

    image_shape: tuple[int, int, int]
    num_classes: int  # 0 when the data has no labels

    @abstractmethod
    def dataset(self) -> torch.utils.data.Dataset: ...

    def describe(self) -> str:
        return type(self).__name__


class Codec(ABC):
    """Image <-> latent. Built with no runtime arguments; moved with ``to(device)``."""

    @abstractmethod
    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]: ...

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] in [-1, 1] -> [n, c, h, w] latents, scaled for diffusion."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[n, c, h, w] -> [n, 3, H, W] in [-1, 1]."""

    def to(self, device) -> Codec:
        return self

    @property
    def cache_key(self) -> str:
        """Identifies this codec's latents for on-disk caching."""
        return type(self).__name__
