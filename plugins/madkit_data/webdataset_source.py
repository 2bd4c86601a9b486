"""``webdataset``: samples streamed from tar shards (``shards = "/data/ffhq-{000000..000069}.tar"``).

A sample is the files of one tar sharing a key (``00042.webp``, ``00042.cls``). The image is the
first of the ``image_key`` extensions the sample has; the label is the integer text stored under
``class_key``. The dataset is iterable: it has no length, and a bad image is dropped (``skip``),
not replaced.

Every process reads the same stream: madkit's trainer gives rank r every W-th item of it, so the
shards are NOT split across DDP ranks here (that would hand each rank 1/W of 1/W). DataLoader
workers, by contrast, split the shards among themselves, so a worker pool reads each shard once.
Shuffling is seeded by (``shuffle_seed``, pass number), hence identical on every rank and new on
every pass over the data.

Each local shard is checked before it is read (madkit_data.tar_check): one that is not a tar, or
that ends early, stops the run naming the shard, or under ``on_bad_image = "skip"`` is skipped whole,
counted and logged. (Streaming readers would drop a truncated shard's tail without a word.)

Needs the optional ``webdataset`` package: ``pip install 'madkit[webdataset]'``; ``madkit validate``
says so when it is missing.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable, Iterator

import attrs
import torch
from braceexpand import braceexpand
from torch.utils.data import IterableDataset

from madkit.errors import missing_package, require_package
from madkit.interfaces import SpecProblem
from madkit.validators import non_negative
from madkit_data.base import ImageSource
from madkit_data.decoding import BadImageError, BadShardError, SkipLog, decode_image, on_bad_image_field
from madkit_data.tar_check import shard_problem
from madkit_data.transforms import ImageTransform, crop_field, hflip_field, resolution_field


@attrs.frozen
class WebDatasetConfig:
    shards: str  # a path or URL, with {a..b} brace ranges (required)
    image_key: str = "jpg;jpeg;png;webp"  # extensions to try, in order, separated by ";"
    class_key: str = ""  # e.g. "cls"; empty: unconditional
    classes: int = attrs.field(default=0, validator=non_negative)  # number of classes; needed with class_key
    shuffle: int = attrs.field(default=0, validator=non_negative)  # sample shuffle buffer; 0 = shard order
    shuffle_seed: int = 0  # the same on every rank, so ranks agree on the order
    resolution: int = resolution_field(256)
    crop: str = crop_field()
    hflip: bool = hflip_field()
    on_bad_image: str = on_bad_image_field()

    def build(self) -> WebDatasetSource:
        for problem in self.check({}):
            raise ValueError(f"data.{problem.path}: {problem.message}")
        return WebDatasetSource(self)

    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    def num_classes(self) -> int:
        return self.classes if self.class_key else 0

    def check(self, context: dict[str, Any]) -> Iterable[SpecProblem]:
        if self.class_key and not self.classes:
            yield SpecProblem(
                "classes", f"class_key = {self.class_key!r} needs the number of classes: set data.classes"
            )
        if not context.get("check_resources", True):
            return
        if (missing := missing_package("webdataset", "webdataset", "the webdataset data source")) is not None:
            yield SpecProblem("kind", missing)
        if not _is_local(self.shards):
            return  # a URL or pipe: only reading it tells
        urls = expand_shards(self.shards)
        missing = [u for u in urls if not Path(u).expanduser().is_file()]
        if missing:
            yield SpecProblem(
                "shards",
                f"{len(missing)} of {len(urls)} shard(s) do not exist, e.g. {missing[0]!r}; check data.shards",
            )


def _is_local(pattern: str) -> bool:
    return "://" not in pattern and not pattern.startswith("pipe:")


def expand_shards(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``[a-000.tar, a-001.tar, a-002.tar]``; ``::`` joins several patterns.

    Bash-style braces through ``braceexpand`` (a madkit dependency, and what webdataset itself uses),
    so validation expands shard lists exactly as loading does, with or without webdataset installed."""
    return [url for part in pattern.split("::") for url in braceexpand(part)]


def import_webdataset():
    return require_package("webdataset", "webdataset", "the webdataset data source")


class WebDatasetSource(ImageSource):
    def __init__(self, config: WebDatasetConfig):
        import_webdataset()  # fail at build, not in the first worker
        self.config = config
        self.urls = [str(Path(u).expanduser()) if _is_local(u) else u for u in expand_shards(config.shards)]
        transform = ImageTransform(config.resolution, config.crop, config.hflip)
        super().__init__(transform, config.num_classes(), config.on_bad_image)

    def dataset(self, augment: bool = True) -> WebDatasetImages:
        return WebDatasetImages(self, augment)

    def describe(self) -> str:
        return f"webdataset {self.config.shards} ({len(self.urls)} shards)"


class WebDatasetImages(IterableDataset):
    def __init__(self, source: WebDatasetSource, augment: bool):
        self.config, self.urls = source.config, source.urls
        self.transform, self.augment = source.transform, augment
        self.skips: SkipLog = source.skips
        self.image_keys = [k.strip().lower() for k in self.config.image_key.split(";") if k.strip()]
        self.passes = 0  # completed or started passes over the data: the shuffle's epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        wds = import_webdataset()
        urls, epoch_seed = list(self.urls), self.config.shuffle_seed * 1_000_003 + self.passes
        self.passes += 1
        if self.config.shuffle:
            random.Random(epoch_seed).shuffle(urls)
        # what wds.WebDataset(urls, nodesplitter=None) assembles, with each shard checked before it is opened
        stream = wds.DataPipeline(
            wds.SimpleShardList(urls), wds.split_by_worker, self._readable_shards, wds.tarfile_to_samples()
        )
        if self.config.shuffle:
            # detshuffle seeds its generator with seed + (its own pass count, 0 for a fresh stage)
            stream = stream.compose(wds.detshuffle(self.config.shuffle, seed=epoch_seed))
        for sample in stream:
            try:
                image = decode_image(self._image_bytes(sample), self._name(sample))
            except BadImageError as exc:
                if self.config.on_bad_image != "skip":
                    raise
                self.skips.record(exc)
                continue
            yield self.transform(image, self.augment), self._label(sample)

    def _readable_shards(self, shards: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Pass on the shards that are whole; a damaged local one raises, or under ``skip`` is left out."""
        for shard in shards:
            url = shard["url"]
            problem = shard_problem(url) if _is_local(url) else None
            if problem is None:
                yield shard
                continue
            error = BadShardError(
                url, f"shard {url}: {problem}; replace it, leave it out of data.shards, or set "
                f'data.on_bad_image = "skip" to train on the others'
            )
            if self.config.on_bad_image != "skip":
                raise error
            self.skips.record(error)

    def _name(self, sample: dict[str, Any]) -> str:
        return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"

    def _image_bytes(self, sample: dict[str, Any]) -> bytes:
        for key in self.image_keys:
            if key in sample:
                return sample[key]
        name = self._name(sample)
        present = ", ".join(k for k in sample if not k.startswith("__"))
        raise BadImageError(
            name, f"{name}: no image under data.image_key = {self.config.image_key!r} (the sample has: {present})"
        )

    def _label(self, sample: dict[str, Any]) -> int:
        if not self.config.class_key:
            return 0
        raw = sample.get(self.config.class_key)
        try:
            label = int(raw.decode() if isinstance(raw, bytes) else raw)
        except (TypeError, ValueError):
            raise ValueError(
                f"{self._name(sample)}: data.class_key = {self.config.class_key!r} holds {raw!r}, not an integer"
            ) from None
        if not 0 <= label < self.config.classes:
            raise ValueError(
                f"{self._name(sample)}: label {label} is outside [0, data.classes = {self.config.classes})"
            )
        return label
