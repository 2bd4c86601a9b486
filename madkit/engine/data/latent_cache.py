"""Encode a dataset once with a codec and reuse the latents from disk across epochs and runs.

Encoding 1024px images with a VAE costs far more than a training step's data loading, and the
codec is frozen, so each image's latent is computed once. A cache folder holds:

    meta.json                 format, the facts the key was derived from, shapes, shard list
    latents-00000.npy ...     float16 (default) [k, c, h, w], or [k, 2, c, h, w] with flips
    labels-00000.npy  ...     int64 [k]

The folder name is a hash of the data config, the codec's ``cache_key``, the image shape and
whether flips are stored, so a changed spec never reads stale latents. The folder is written
under a temporary name and renamed when complete: an interrupted run leaves no half cache.

Horizontal flips: the flip of a latent is not the latent of the flipped image, so when the source
flips (``source.hflip``) the flipped images are encoded too, and each item returns one of its two
latents at random, anew every epoch.

Under DDP, let one rank build the cache (``latents_for_source``) and the others wait on a barrier
before calling it: they then find the finished folder. Ranks racing to build it are still correct
(the second rename loses and its copy is dropped), only wasteful.
"""

from __future__ import annotations

import bisect
import hashlib
import inspect
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from madkit.cache import cache_root as madkit_cache_root
from madkit.interfaces import Codec, DataSource

logger = logging.getLogger("madkit.latent_cache")

FORMAT_VERSION = 1
META = "meta.json"
_MASK64 = (1 << 64) - 1


def cache_facts(data_config: Any, codec: Codec, image_shape: tuple[int, ...], hflip: bool) -> dict[str, Any]:
    """Everything the latents depend on, as plain data (stored in meta.json, hashed into the name)."""
    data = attrs.asdict(data_config) if attrs.has(type(data_config)) else repr(data_config)
    return json.loads(
        json.dumps(
            {
                "format": FORMAT_VERSION,
                "data_type": f"{type(data_config).__module__}.{type(data_config).__qualname__}",
                "data": data,
                "codec": codec.cache_key,
                "image_shape": list(image_shape),
                "hflip": bool(hflip),
            },
            sort_keys=True,
            default=str,
        )
    )


def cache_dir_for(facts: dict[str, Any], cache_root: str | Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_root or madkit_cache_root()) / "latents" / digest


def latents_for_source(
    source: DataSource,
    data_config: Any,
    codec: Codec,
    *,
    cache_root: str | Path | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    store_dtype: torch.dtype = torch.float16,
) -> LatentDataset:
    """The cached latents of ``source`` under ``codec``, encoding them first if needed.

    ``source`` may expose ``hflip`` (store flipped latents too), ``random_crop`` (refused: a crop
    drawn once would silently become a fixed crop) and ``dataset(augment=False)`` (the deterministic
    view to encode). Sources without these attributes are taken as deterministic.
    """
    if getattr(source, "random_crop", False):
        raise ValueError(
            'data.crop = "random" cannot be combined with the latent cache: the cache stores one crop '
            'per image. Use data.crop = "center" or train without the latent cache'
        )
    hflip = bool(getattr(source, "hflip", False))
    if "augment" in inspect.signature(source.dataset).parameters:
        dataset = source.dataset(augment=False)
    elif hflip:
        raise TypeError(
            f"{type(source).__name__} flips images but its dataset() has no augment=False view to cache"
        )
    else:
        dataset = source.dataset()
    facts = cache_facts(data_config, codec, source.image_shape, hflip)
    return load_or_encode(
        dataset,
        codec,
        cache_dir_for(facts, cache_root),
        facts=facts,
        hflip=hflip,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        progress=progress,
        store_dtype=store_dtype,
    )


def load_or_encode(
    dataset: Dataset,
    codec: Codec,
    directory: str | Path,
    *,
    facts: dict[str, Any],
    hflip: bool = False,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    store_dtype: torch.dtype = torch.float16,
    shard_size: int = 4096,
) -> LatentDataset:
    """Reuse ``directory`` when its meta.json records the same ``facts``; else encode into it.

    ``dataset`` yields (image float [3, H, W] in [-1, 1], label) and must be deterministic (no
    random crop or flip): flips are added here when ``hflip``.
    """
    if store_dtype not in (torch.float16, torch.float32):
        raise ValueError(f"store_dtype must be torch.float16 or torch.float32 (numpy has no bfloat16): {store_dtype}")
    directory = Path(directory)
    if directory.exists():
        problem = _mismatch(directory, facts)
        if problem is None:
            logger.info("reusing cached latents in %s", directory)
            return LatentDataset(directory, seed=seed)
        logger.warning("latent cache %s is unusable (%s); encoding again", directory, problem)
        _remove(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _encode_into(
            tmp, dataset, codec, facts, hflip, device, batch_size, num_workers, progress, store_dtype, shard_size
        )
        try:
            os.rename(tmp, directory)  # atomic: readers see no folder or a complete one
        except OSError:
            if _mismatch(directory, facts) is not None:
                raise
            logger.info("another process finished %s first; using its latents", directory)
    finally:
        if tmp.exists():
            _remove(tmp)
    return LatentDataset(directory, seed=seed)


@torch.inference_mode()
def _encode_into(
    folder: Path,
    dataset: Dataset,
    codec: Codec,
    facts: dict[str, Any],
    hflip: bool,
    device: torch.device | str,
    batch_size: int,
    num_workers: int,
    progress: bool,
    store_dtype: torch.dtype,
    shard_size: int,
) -> None:
    folder.mkdir(parents=True)
    codec = codec.to(device)
    np_dtype = torch.empty((), dtype=store_dtype).numpy().dtype
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    shards: list[dict[str, Any]] = []
    latents: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    pending = 0

    def flush() -> None:
        nonlocal latents, labels, pending
        if not pending:
            return
        name = f"{len(shards):05d}"
        np.save(folder / f"latents-{name}.npy", np.concatenate(latents))
        np.save(folder / f"labels-{name}.npy", np.concatenate(labels))
        shards.append({"latents": f"latents-{name}.npy", "labels": f"labels-{name}.npy", "count": pending})
        latents, labels, pending = [], [], 0

    latent_shape = None
    with tqdm(total=total, unit="img", desc="encoding latents", disable=None if progress else True) as bar:
        for images, batch_labels in loader:
            images = images.to(device)
            z = codec.encode(images)  # [n, c, h, w]
            if hflip:
                z = torch.stack((z, codec.encode(images.flip(-1))), dim=1)  # [n, 2, c, h, w]
            latent_shape = list(z.shape[2:] if hflip else z.shape[1:])
            latents.append(z.float().cpu().to(store_dtype).numpy())
            labels.append(torch.as_tensor(batch_labels, dtype=torch.int64).numpy())
            pending += len(images)
            bar.update(len(images))
            if pending >= shard_size:
                flush()
    flush()
    if not shards:
        raise ValueError("the dataset to encode is empty")
    meta = {
        "format": FORMAT_VERSION,
        "facts": facts,
        "count": sum(s["count"] for s in shards),
        "latent_shape": latent_shape,
        "flips": hflip,
        "dtype": str(np_dtype),
        "shards": shards,
    }
    (folder / META).write_text(json.dumps(meta, indent=1, sort_keys=True))


def _mismatch(directory: Path, facts: dict[str, Any]) -> str | None:
    """Why ``directory`` cannot be reused for ``facts``, or None when it can."""
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, ValueError) as exc:
        return f"no readable {META}: {exc}"
    if meta.get("format") != FORMAT_VERSION:
        return f"format {meta.get('format')} != {FORMAT_VERSION}"
    if meta.get("facts") != facts:
        return "it was built for a different data config or codec"
    for shard in meta["shards"]:
        for key in ("latents", "labels"):
            try:
                rows = np.load(directory / shard[key], mmap_mode="r").shape[0]
            except (OSError, ValueError) as exc:
                return f"shard {shard[key]} unreadable: {exc}"
            if rows != shard["count"]:
                return f"shard {shard[key]} has {rows} rows, meta.json says {shard['count']}"
    return None


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _mix(*values: int) -> int:
    """splitmix64 over the values: a cheap, well-spread hash for per-item random choices."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h


class LatentDataset(Dataset):
    """Item i -> (latent float32 [c, h, w], label int) from a finished cache folder.

    With stored flips, each item returns its plain or flipped latent: decided by (seed, epoch,
    index) after ``set_epoch(epoch)`` (reproducible, the same in every worker), else by torch's
    global generator. Shards are memory-mapped lazily in each process (workers included).
    """

    def __init__(self, directory: str | Path, seed: int = 0):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / META).read_text())
        self.flips: bool = self.meta["flips"]
        self.latent_shape = tuple(self.meta["latent_shape"])
        self.seed, self.epoch = seed, None
        self._ends = np.cumsum([s["count"] for s in self.meta["shards"]]).tolist()
        self._arrays: list[tuple[np.ndarray, np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.meta["count"]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}  # workers map the files themselves

    def _shards(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._arrays is None:
            self._arrays = [
                (np.load(self.directory / s["latents"], mmap_mode="r"), np.load(self.directory / s["labels"]))
                for s in self.meta["shards"]
            ]
        return self._arrays

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} cached latents")
        index %= n
        shard = bisect.bisect_right(self._ends, index)
        row = index - (self._ends[shard - 1] if shard else 0)
        latents, labels = self._shards()[shard]
        z = latents[row]
        if self.flips:
            if self.epoch is None:
                pick = int(torch.randint(0, 2, ()))
            else:
                pick = _mix(self.seed, self.epoch, index) & 1
            z = z[pick]
        return torch.from_numpy(np.array(z, dtype=np.float32)), int(labels[row])  # a copy: the map is read-only
