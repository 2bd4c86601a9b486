"""Contract suites for data sources and codecs: subclass one in your plugin's tests and provide its
config fixture.

    from madkit.testing import CodecContract, DataSourceContract

    class TestMyData(DataSourceContract):
        @pytest.fixture
        def data_config(self, tmp_path):
            return MyDataConfig(path=str(make_tiny_set(tmp_path)))

    class TestMyCodec(CodecContract):
        @pytest.fixture
        def codec_config(self):
            return MyCodecConfig(...)

Each check is something the trainer, the latent cache, the evaluator or ``madkit validate`` relies
on; a source or codec that fails one validates and then breaks a run later.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from madkit.interfaces import Codec, DataSource
from madkit.interfaces.problems import SpecProblem
from madkit.testing.config_checks import assert_frozen_attrs_config, assert_toml_round_trip


def _first(dataset: Any, count: int) -> list[Any]:
    if isinstance(dataset, IterableDataset):
        return list(itertools.islice(iter(dataset), count))
    return [dataset[i] for i in range(min(count, len(dataset)))]


def _unaugmented(source: DataSource) -> Any | None:
    """The source's dataset without random augmentation, or None when it offers no such view."""
    if "augment" not in inspect.signature(source.dataset).parameters:
        return None
    return source.dataset(augment=False)


class DataSourceContract:
    """Checks every data source must pass. Provide a ``data_config`` fixture (a small, valid config:
    the suite reads ``items_checked`` items)."""

    items_checked = 6

    @pytest.fixture
    def data_config(self) -> Any:
        raise NotImplementedError("define a `data_config` fixture returning your data config")

    @pytest.fixture
    def source(self, data_config) -> DataSource:
        return data_config.build()

    def test_config_is_frozen_attrs_and_survives_the_resolved_spec(self, data_config):
        assert_frozen_attrs_config(data_config, methods=("build", "image_shape", "num_classes"))
        assert_toml_round_trip(data_config, "data")

    def test_a_valid_config_reports_no_problem(self, data_config):
        check = getattr(data_config, "check", None)
        problems = list(check({})) if check is not None else []
        assert all(isinstance(p, SpecProblem) for p in problems), "check() yields SpecProblem"
        assert problems == [], [f"{p.path}: {p.message}" for p in problems]

    def test_builds_a_data_source_that_describes_itself(self, source):
        assert isinstance(source, DataSource)
        assert isinstance(source.describe(), str) and source.describe()

    def test_config_and_source_agree_on_shape_and_classes(self, data_config, source):
        # `madkit validate` and the model's build read the config; the trainer reads the source
        shape = tuple(data_config.image_shape())
        assert tuple(source.image_shape) == shape and len(shape) == 3 and shape[0] == 3
        assert source.num_classes == data_config.num_classes() >= 0

    def test_items_are_images_in_range_with_valid_labels(self, source):
        dataset = source.dataset()
        if not isinstance(dataset, IterableDataset):
            assert len(dataset) > 0, "a map-style dataset must not be empty"
        items = _first(dataset, self.items_checked)
        assert items, "the dataset yielded nothing"
        for image, label in items:
            assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
            assert tuple(image.shape) == tuple(source.image_shape), f"{tuple(image.shape)} vs {source.image_shape}"
            assert torch.isfinite(image).all() and image.min() >= -1.0 and image.max() <= 1.0
            label = int(label)
            assert 0 <= label < max(1, source.num_classes), f"label {label} with {source.num_classes} classes"

    def test_batches_through_the_default_collate(self, source):
        images, labels = next(iter(DataLoader(source.dataset(), batch_size=2, num_workers=0)))
        assert images.shape[1:] == torch.Size(source.image_shape) and labels.shape == (images.shape[0],)

    def test_the_unaugmented_view_is_the_same_every_time(self, source):
        # reference statistics and the latent cache read it: it must not change between calls
        first = _unaugmented(source)
        if first is None:
            pytest.skip("the source has no dataset(augment=False) view")
        again = _unaugmented(source)
        for (a, label_a), (b, label_b) in zip(_first(first, self.items_checked), _first(again, self.items_checked)):
            assert torch.equal(a, b) and int(label_a) == int(label_b)


class CodecContract:
    """Checks every codec must pass. Provide a ``codec_config`` fixture; ``image_shape`` (a fixture)
    is the image size the checks encode, ``roundtrip_tol`` (a class attribute, None = not checked) the
    largest mean absolute error of decode(encode(x)) for a lossy codec."""

    roundtrip_tol: float | None = None

    @pytest.fixture
    def codec_config(self) -> Any:
        raise NotImplementedError("define a `codec_config` fixture returning your codec config")

    @pytest.fixture
    def image_shape(self) -> tuple[int, int, int]:
        return (3, 16, 16)

    @pytest.fixture
    def codec(self, codec_config) -> Codec:
        return codec_config.build()

    @pytest.fixture
    def images(self, image_shape) -> torch.Tensor:
        return torch.rand(3, *image_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def test_config_is_frozen_attrs_and_survives_the_resolved_spec(self, codec_config):
        assert_frozen_attrs_config(codec_config, methods=("build", "latent_shape"))
        assert_toml_round_trip(codec_config, "codec")

    def test_builds_a_codec_with_a_stable_cache_key(self, codec_config, codec):
        # the latent cache names its folder after cache_key: equal configs must share it
        assert isinstance(codec, Codec) and codec.to("cpu") is not None
        assert isinstance(codec.cache_key, str) and codec.cache_key
        assert codec_config.build().cache_key == codec.cache_key

    def test_latent_shape_is_what_encode_returns(self, codec_config, codec, images, image_shape):
        z = codec.encode(images)
        assert z.dtype == torch.float32 and torch.isfinite(z).all()
        assert tuple(z.shape) == (len(images), *codec.latent_shape(image_shape))
        assert tuple(codec_config.latent_shape(image_shape)) == tuple(codec.latent_shape(image_shape))

    def test_decode_returns_images_of_the_input_size_in_range(self, codec, images):
        x = codec.decode(codec.encode(images))
        assert x.shape == images.shape and x.dtype == torch.float32
        assert torch.isfinite(x).all() and x.min() >= -1.0 and x.max() <= 1.0
        if self.roundtrip_tol is not None:
            assert (x - images).abs().mean() <= self.roundtrip_tol

    def test_encoding_is_deterministic_and_independent_of_the_batch(self, codec, images):
        # the latent cache encodes once and trains on the result; eval shards encode any batch size
        whole = codec.encode(images)
        assert torch.equal(codec.encode(images), whole), "encode must not draw randomness"
        one = torch.cat([codec.encode(images[i : i + 1]) for i in range(len(images))])
        torch.testing.assert_close(one, whole, rtol=1e-4, atol=1e-5)
