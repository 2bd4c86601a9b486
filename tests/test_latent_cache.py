"""The latent cache: encode once, reuse from disk, flipped copies, keys, atomic writes."""

from __future__ import annotations

import json
import pickle

import attrs
import numpy as np
import pytest
import torch
from madkit_data import openmoji
from madkit_data.openmoji import OpenMojiConfig
from torch.utils.data import Dataset, IterableDataset

from madkit.engine.data.latent_cache import LatentDataset, latents_for_source, load_or_encode
from madkit.interfaces import Codec, DataSource


class CountingCodec(Codec):
    """2x2 average pooling (so a flip of the latent is NOT what we test for), counting calls."""

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def latent_shape(self, image_shape):
        return (3, image_shape[1] // 2, image_shape[2] // 2)

    def encode(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("encoder crashed")
        return torch.nn.functional.avg_pool2d(images, 2) + torch.arange(images.shape[-1] // 2) * 1e-3

    def decode(self, latents):
        return latents.repeat_interleave(2, -1).repeat_interleave(2, -2)

    @property
    def cache_key(self):
        return "counting-pool2"


@attrs.frozen
class RampConfig:
    """A stand-in data config: n images whose pixels are distinct ramps; labels i % 3."""

    n: int = 7
    side: int = 4
    hflip: bool = False
    crop: str = "center"


class RampSource(DataSource):
    def __init__(self, config: RampConfig):
        self.config = config
        self.image_shape = (3, config.side, config.side)
        self.num_classes = 3

    @property
    def hflip(self):
        return self.config.hflip

    @property
    def random_crop(self):
        return self.config.crop == "random"

    def dataset(self, augment: bool = True):
        assert not augment, "the cache must ask for the deterministic view"
        return RampImages(self.config)


class RampImages(Dataset):
    def __init__(self, config: RampConfig):
        self.n, self.side = config.n, config.side

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        ramp = torch.linspace(-1, 1, 3 * self.side * self.side).view(3, self.side, self.side)
        return (ramp * (i + 1) / self.n).clamp(-1, 1), i % 3


def cache(source, config, codec, root, **kw):
    return latents_for_source(source, config, codec, cache_root=root, progress=False, batch_size=3, **kw)


def test_second_call_reuses_the_cache_without_encoding(tmp_path):
    config, codec = RampConfig(), CountingCodec()
    first = cache(RampSource(config), config, codec, tmp_path, store_dtype=torch.float32)
    assert codec.calls == 3  # 7 images in batches of 3
    again = CountingCodec()
    second = cache(RampSource(config), config, again, tmp_path, store_dtype=torch.float32)
    assert again.calls == 0 and second.directory == first.directory
    images = RampImages(config)
    for i in range(len(images)):
        x, label = images[i]
        z, cached_label = second[i]
        assert torch.allclose(z, CountingCodec().encode(x[None])[0]) and cached_label == label == i % 3


def test_default_storage_is_float16_within_its_precision(tmp_path):
    config = RampConfig()
    latents = cache(RampSource(config), config, CountingCodec(), tmp_path)
    x, _ = RampImages(config)[5]
    z, _ = latents[5]
    assert z.dtype == torch.float32 and torch.allclose(z, CountingCodec().encode(x[None])[0], atol=1e-3)


def test_a_different_config_or_codec_is_a_different_cache(tmp_path):
    config = RampConfig()
    base = cache(RampSource(config), config, CountingCodec(), tmp_path)
    other_data = cache(RampSource(RampConfig(n=5)), RampConfig(n=5), CountingCodec(), tmp_path)
    assert other_data.directory != base.directory and len(other_data) == 5

    class OtherCodec(CountingCodec):
        cache_key = "other"

    assert cache(RampSource(config), config, OtherCodec(), tmp_path).directory != base.directory


def test_flips_store_the_latent_of_the_flipped_image_and_pick_per_epoch(tmp_path):
    config = RampConfig(n=16, hflip=True)
    codec = CountingCodec()
    latents = cache(RampSource(config), config, codec, tmp_path, store_dtype=torch.float32, seed=1)
    assert latents.flips and codec.calls == 2 * 6  # plain and flipped, 6 batches
    images = RampImages(config)
    plain = [CountingCodec().encode(images[i][0][None])[0] for i in range(16)]
    flipped = [CountingCodec().encode(images[i][0].flip(-1)[None])[0] for i in range(16)]
    assert not torch.allclose(plain[0].flip(-1), flipped[0])  # a flipped latent would be the wrong thing

    def picks(epoch):
        latents.set_epoch(epoch)
        out = []
        for i in range(16):
            z = latents[i][0]
            assert torch.allclose(z, plain[i]) or torch.allclose(z, flipped[i])
            out.append(torch.allclose(z, flipped[i]))
        return out

    epoch0, epoch1 = picks(0), picks(1)
    assert picks(0) == epoch0  # reproducible for a given (seed, epoch)
    assert epoch0 != epoch1  # redrawn every epoch
    assert 0 < sum(epoch0) < 16  # and per item
    latents.epoch = None  # without set_epoch: torch's generator decides
    torch.manual_seed(0)
    assert 0 < sum(torch.allclose(latents[i][0], flipped[i]) for i in range(16)) < 16


def test_openmoji_flips_go_through_its_deterministic_view(tmp_path, monkeypatch):
    monkeypatch.setenv("MADKIT_CACHE_DIR", str(tmp_path / "render"))
    monkeypatch.setattr(openmoji, "_RENDERED", {})
    config = OpenMojiConfig(resolution=8, limit=6, hflip=True)
    source = config.build()
    latents = cache(source, config, CountingCodec(), tmp_path, store_dtype=torch.float32)
    x, label = source.dataset(augment=False)[4]
    stored = np.load(latents.directory / "latents-00000.npy")
    assert torch.allclose(torch.from_numpy(stored[4, 0]), CountingCodec().encode(x[None])[0])
    assert torch.allclose(torch.from_numpy(stored[4, 1]), CountingCodec().encode(x.flip(-1)[None])[0])
    assert latents[4][1] == label


def test_random_crop_is_refused(tmp_path):
    config = RampConfig(crop="random")
    with pytest.raises(ValueError, match=r'data\.crop = "random" cannot be combined with the latent cache'):
        cache(RampSource(config), config, CountingCodec(), tmp_path)


def test_shards_split_the_items_and_index_across_them(tmp_path):
    config = RampConfig(n=7)
    images = RampImages(config)
    facts = {"test": "shards"}
    latents = load_or_encode(
        images, CountingCodec(), tmp_path / "c", facts=facts, batch_size=2, shard_size=2, progress=False,
        store_dtype=torch.float32,
    )
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert [s["count"] for s in meta["shards"]] == [2, 2, 2, 1]
    assert [latents[i][1] for i in range(7)] == [i % 3 for i in range(7)] and latents[-1][1] == 0
    assert torch.allclose(latents[6][0], CountingCodec().encode(images[6][0][None])[0])
    with pytest.raises(IndexError):
        latents[7]


def test_iterable_datasets_without_length_are_cached(tmp_path):
    class Stream(IterableDataset):
        def __iter__(self):
            for i in range(5):
                yield torch.full((3, 4, 4), i / 5), i

    latents = load_or_encode(Stream(), CountingCodec(), tmp_path / "s", facts={"s": 1}, batch_size=2, progress=False)
    assert len(latents) == 5 and [latents[i][1] for i in range(5)] == list(range(5))


def test_an_interrupted_encode_leaves_nothing_behind(tmp_path):
    config = RampConfig()
    with pytest.raises(RuntimeError, match="encoder crashed"):
        cache(RampSource(config), config, CountingCodec(fail_after=1), tmp_path)
    assert not list((tmp_path / "latents").iterdir())  # neither a final folder nor a temporary one


def test_a_damaged_cache_is_rebuilt(tmp_path):
    config = RampConfig()
    first = cache(RampSource(config), config, CountingCodec(), tmp_path)
    (first.directory / "latents-00000.npy").unlink()
    codec = CountingCodec()
    second = cache(RampSource(config), config, codec, tmp_path)
    assert codec.calls > 0 and len(second) == 7 and second[3][1] == 0


def test_latent_dataset_pickles_without_its_memory_maps(tmp_path):
    config = RampConfig()
    latents = cache(RampSource(config), config, CountingCodec(), tmp_path)
    latents[0]  # maps the shards in this process
    clone = pickle.loads(pickle.dumps(latents))
    assert clone._arrays is None and torch.equal(clone[2][0], latents[2][0])
    assert isinstance(clone, LatentDataset)
