"""Deterministic, resumable, sharded data order: which images each rank sees at each step.

The dataset is read as one endless stream: epoch e is a permutation of the N images seeded from
(seed, e), epochs follow one another, and position p of the stream is image
``perm(p // N)[p % N]``. Optimizer step s consumes stream positions [s*B, (s+1)*B) for global batch
B; rank r of W takes every W-th of them starting at r (the DistributedSampler layout) and splits its
B/W images into micro-batches. The whole state is one integer, the number of images consumed, so a
resumed run (even with another world size) continues exactly where the last checkpoint stopped.
A batch may straddle an epoch boundary, so a dataset smaller than one batch still trains.

Iterable datasets (no random access) are read in their own order: rank r keeps every W-th item,
and resuming skips the consumed items by reading past them.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from madkit import rng
from madkit.errors import ConfigError, DataError


@attrs.frozen
class BatchPlan:
    """How the global batch divides: per rank, then into micro-batches."""

    global_batch: int
    world_size: int
    micro_batch: int  # per rank and forward pass

    @classmethod
    def make(cls, global_batch: int, micro_batch: int, world_size: int) -> BatchPlan:
        if global_batch % world_size:
            raise ConfigError(
                f"train.batch = {global_batch} (global) does not split over {world_size} ranks; "
                f"use a multiple of {world_size}"
            )
        per_rank = global_batch // world_size
        micro = micro_batch or per_rank
        if per_rank % micro:
            raise ConfigError(
                f"train.batch = {global_batch} gives {per_rank} images per rank over {world_size} rank(s), "
                f"which train.micro_batch = {micro} does not divide; choose a divisor of {per_rank}"
            )
        return cls(global_batch, world_size, micro)

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world_size

    @property
    def accumulation(self) -> int:
        """Micro-batches per rank per optimizer step."""
        return self.per_rank // self.micro_batch

    def example_indices(self, rank: int, micro: int) -> list[int]:
        """Positions within the step's global batch (0 .. B-1) of micro-batch ``micro`` on ``rank``:
        rank r takes every W-th position from r, and its micro-batches split those in order."""
        m = self.micro_batch
        return [rank + self.world_size * j for j in range(micro * m, (micro + 1) * m)]


def position(consumed: int, dataset_len: int | None) -> dict[str, int]:
    """The data position for checkpoints: images consumed, and (epoch, index within the epoch)."""
    if not dataset_len:
        return {"consumed": consumed, "epoch": -1, "index": -1}
    return {"consumed": consumed, "epoch": consumed // dataset_len, "index": consumed % dataset_len}


class StreamOrder:
    """Stream position -> dataset index, one seeded permutation per epoch."""

    def __init__(self, dataset_len: int, seed: int):
        if dataset_len <= 0:
            raise DataError("the data source returned an empty dataset; there is nothing to train on")
        self.n, self.seed = dataset_len, seed
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:  # a batch touches at most two epochs; keep memory flat
                self._cache.pop(min(self._cache))
            self._cache[epoch] = torch.randperm(self.n, generator=rng.generator(self.seed, "data", epoch))
        return self._cache[epoch]

    def index(self, pos: int) -> int:
        return int(self.permutation(pos // self.n)[pos % self.n])

    def locate(self, pos: int) -> tuple[int, int]:
        """(epoch, dataset index) of stream position ``pos``."""
        return pos // self.n, self.index(pos)


class EpochKeyed(Dataset):
    """Items addressed as (epoch, index, stream position). A dataset with ``set_epoch(epoch)``
    (per-epoch choices such as the latent cache's flips) learns the epoch of every item, in whichever
    worker loads it, and the random draws of its augmentation (flips, random crops: torch's, Python's
    and NumPy's global generators) are seeded from (seed, stream position) for that one item and
    restored after. An item's augmentation is then a function of where it sits in the stream, like
    the loss's draws: the same global batch is augmented alike whatever the ranks, micro-batches and
    workers, and a resumed run repeats it."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed
        self._set_epoch = getattr(dataset, "set_epoch", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        epoch, index, pos = key
        if callable(self._set_epoch):
            self._set_epoch(epoch)
        with rng.seeded_globals(rng.derive_seed(self.seed, "augment", pos)):
            return self.dataset[index]


class MicroBatchIndices(torch.utils.data.Sampler):
    """Endless micro-batches of (epoch, dataset index, stream position) keys for one rank, starting at
    ``consumed``."""

    def __init__(self, order: StreamOrder, plan: BatchPlan, rank: int, consumed: int):
        self.order, self.plan, self.rank, self.start = order, plan, rank, consumed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        plan, start = self.plan, self.start
        while True:
            for k in range(plan.accumulation):
                yield [(*self.order.locate(start + i), start + i) for i in plan.example_indices(self.rank, k)]
            start += plan.global_batch


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"datasets must yield (image, label) pairs, got {type(item).__name__}")
        images.append(torch.as_tensor(item[0]))
        labels.append(int(item[1]))
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _iterable_micro_batches(
    dataset: IterableDataset, plan: BatchPlan, rank: int, consumed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    def stream():
        while True:
            empty = True
            for item in dataset:
                empty = False
                yield item
            if empty:
                raise DataError("the data source's iterable dataset yielded nothing; check the [data] table")

    items = stream()
    for _ in range(consumed):  # resume: read past what earlier runs consumed
        next(items)
    pending: list = []
    pos = consumed
    for item in items:
        if pos % plan.world_size == rank:
            pending.append(item)
            if len(pending) == plan.micro_batch:
                yield _collate(pending)
                pending = []
        pos += 1


def micro_batches(
    dataset: Dataset, plan: BatchPlan, rank: int, consumed: int, seed: int, num_workers: int, pin_memory: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images [m,3,H,W], labels [m]) micro-batches for ``rank``, from stream position ``consumed``."""
    if isinstance(dataset, IterableDataset):
        return _iterable_micro_batches(dataset, plan, rank, consumed)
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(
            f"{type(dataset).__name__} has neither __len__ (map-style) nor is an IterableDataset; "
            "the trainer cannot order it"
        ) from None
    sampler = MicroBatchIndices(StreamOrder(n, seed), plan, rank, consumed)
    loader = DataLoader(
        EpochKeyed(dataset, seed),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
        # worker seeds come from here, not from the global RNG, which a resumed run must find untouched
        generator=rng.generator(seed, "workers", rank, consumed),
    )
    return iter(loader)


def dataset_length(dataset: Dataset) -> int | None:
    if isinstance(dataset, IterableDataset):
        return None
    return len(dataset)
