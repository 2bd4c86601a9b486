"""One point's shards (``madkit eval --shard i/k``, torchrun ranks): each shard's file of features
and per-image digests under ``RUN/eval/<name>.parts/``, read back and put together in image order.

The combined set's ``content_hash`` is a sha256 over the per-image sha256 digests in index order,
so it does not depend on the batch size or on how the images were sharded.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch

from madkit.errors import ConfigError
from madkit.interfaces import FeatureSet
from madkit.logs import get_logger

logger = get_logger(__name__)


def image_digest(image_uint8: torch.Tensor) -> str:
    digest = hashlib.sha256(f"{tuple(image_uint8.shape)};".encode())
    digest.update(image_uint8.contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_part(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:  # torn or foreign: regenerate
        logger.warning(f"ignoring unreadable shard file {path} ({type(exc).__name__}: {exc})")
        return None


def combine_parts(parts: Sequence[dict], num: int, extractor: str, source: str) -> tuple[FeatureSet, float]:
    """All shards' features in image order, and the summed generation seconds.

    ``content_hash`` is a sha256 over the per-image sha256 digests in index order, so it does not
    depend on the batch size or on how the images were sharded."""
    indices = [i for p in parts for i in p["indices"]]
    if sorted(indices) != list(range(num)):
        raise ConfigError(f"the shards hold {len(indices)} images, {len(set(indices))} distinct, but should hold each "
                         f"of 0..{num - 1} exactly once; delete the .parts folder and generate again")
    order = torch.tensor(indices).argsort()
    roles = parts[0]["features"].keys()
    features = {role: torch.cat([p["features"][role] for p in parts])[order] for role in roles}
    digests = [d for p in parts for d in p["digests"]]
    content = hashlib.sha256("".join(digests[j] for j in order.tolist()).encode()).hexdigest()
    seconds = float(sum(p["seconds"] for p in parts))
    return FeatureSet(extractor, num, content, source, features), seconds
