"""Decoding image files, and what to do with the ones that cannot be decoded (``on_bad_image``).

- ``fail`` (default): raise ``BadImageError`` naming the file, so a broken dataset is noticed.
- ``skip``: log the file and carry on. Map-style datasets answer a bad index with the next readable
  item (keeping epoch length and batch sizes fixed); streaming datasets drop it, and drop a damaged
  shard whole. Skips are counted on the source (``source.skipped``) in the process that decoded
  them: with DataLoader workers each worker counts and logs its own.
"""

from __future__ import annotations

import io
import logging
from os import PathLike
from typing import Callable, TypeVar

import attrs
from PIL import Image

from madkit.errors import DataError

logger = logging.getLogger("madkit.data")

BAD_IMAGE_POLICIES = ("fail", "skip")

T = TypeVar("T")


class BadImageError(DataError):
    """An image could not be decoded; ``name`` identifies it, the message also says the way out."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


class BadShardError(BadImageError):
    """A whole shard (tar) cannot be read; under ``skip`` it is counted once, by its path."""


def on_bad_image_field():
    return attrs.field(default="fail", validator=attrs.validators.in_(BAD_IMAGE_POLICIES))


def decode_image(data: bytes | str | PathLike, name: str) -> Image.Image:
    """Fully decode an image (``load()`` forces it: ``open`` alone reads only the header, so a
    truncated file would fail later, far from its name)."""
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
        image.load()
        return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImageError(
            name,
            f"{name}: cannot decode image ({type(exc).__name__}: {exc}); repair or remove the file, "
            f'or set data.on_bad_image = "skip"'
        ) from exc


class SkipLog:
    """Names of unreadable images skipped so far in this process, with a log line per skip."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def record(self, error: BadImageError) -> None:
        if error.name not in self.names:
            self.names.add(error.name)
            logger.warning("skipping unreadable image (%d skipped so far): %s", len(self.names), error)

    def __len__(self) -> int:
        return len(self.names)


def read_with_policy(read: Callable[[int], T], index: int, length: int, policy: str, skips: SkipLog) -> T:
    """``read(index)``; under ``skip``, the first readable item after a bad one (wrapping around)."""
    for offset in range(length):
        i = (index + offset) % length
        try:
            return read(i)
        except BadImageError as exc:
            if policy != "skip":
                raise
            skips.record(exc)
    raise BadImageError("(all)", f"none of the {length} images can be decoded (see the log for each file)")
