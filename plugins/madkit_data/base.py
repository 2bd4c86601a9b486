"""What the built-in sources share: a map-style dataset over decodable items, and the source base.

A source's ``dataset(augment=False)`` is the deterministic view (center crop, no flip) that the
latent cache encodes; the cache reads ``hflip`` and ``random_crop`` to know what it must add or refuse.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from PIL import Image
from torch.utils.data import Dataset

from madkit.interfaces import DataSource
from madkit_data.decoding import SkipLog, read_with_policy
from madkit_data.transforms import ImageTransform


class IndexedImages(Dataset):
    """Item i -> (float32 [3, r, r] in [-1, 1], int label); subclasses say how to load item i."""

    def __init__(self, transform: ImageTransform, augment: bool, on_bad_image: str, skips: SkipLog):
        self.transform, self.augment = transform, augment
        self.on_bad_image, self.skips = on_bad_image, skips

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int) -> tuple[Image.Image, int]:
        """The decoded image and label of item ``index``; raises ``BadImageError`` if undecodable."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        image, label = read_with_policy(self.load, index % n, n, self.on_bad_image, self.skips)
        return self.transform(image, self.augment), label


class ImageSource(DataSource):
    """A DataSource with the shared transform and bad-image accounting."""

    def __init__(self, transform: ImageTransform, num_classes: int, on_bad_image: str = "fail"):
        self.transform = transform
        self.image_shape = (3, transform.resolution, transform.resolution)
        self.num_classes = num_classes
        self.on_bad_image = on_bad_image
        self.skips = SkipLog()

    @abstractmethod
    def dataset(self, augment: bool = True) -> Dataset:
        """``augment=False``: the deterministic view (center crop, no flip)."""

    @property
    def hflip(self) -> bool:
        return self.transform.hflip

    @property
    def random_crop(self) -> bool:
        return self.transform.crop == "random"

    @property
    def skipped(self) -> int:
        """How many unreadable images this process has skipped so far (``on_bad_image = "skip"``)."""
        return len(self.skips)

    @property
    def skipped_files(self) -> list[str]:
        return sorted(self.skips.names)
