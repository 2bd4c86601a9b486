"""The data-source and codec contract suites (madkit.testing) run on every built-in source and codec
that works offline; each suite must also fail a source or codec that breaks what it checks."""

from __future__ import annotations

import pytest
import torch
from madkit_codecs.identity import IdentityConfig
from madkit_codecs.sd_vae import SDVAEConfig
from madkit_data.folder import FolderConfig
from madkit_data.openmoji import OpenMojiConfig
from test_codecs import tiny_vae
from test_data import png_bytes, write_shard

from madkit.testing import CodecContract, DataSourceContract


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MADKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return tiny_vae(tmp_path_factory.mktemp("vae") / "tiny")


class TestOpenMoji(DataSourceContract):
    @pytest.fixture
    def data_config(self):
        return OpenMojiConfig(resolution=16, groups=("smileys-emotion", "animals-nature"), limit=12, hflip=True)


class TestFolderWithClasses(DataSourceContract):
    @pytest.fixture
    def data_config(self, tmp_path):
        for label, colour in (("cats", (200, 30, 30)), ("dogs", (30, 200, 30))):
            for i in range(3):
                (tmp_path / "images" / label).mkdir(parents=True, exist_ok=True)
                (tmp_path / "images" / label / f"{i}.png").write_bytes(png_bytes(colour))
        return FolderConfig(root=str(tmp_path / "images"), resolution=8, class_subfolders=True)


class TestWebDataset(DataSourceContract):
    @pytest.fixture
    def data_config(self, tmp_path):
        pytest.importorskip("webdataset")
        from madkit_data.webdataset_source import WebDatasetConfig

        write_shard(tmp_path / "shard-000.tar", [(f"{i:04d}", png_bytes((60 * i, 20, 90)), i % 3) for i in range(4)])
        return WebDatasetConfig(shards=str(tmp_path / "shard-000.tar"), image_key="png", class_key="cls",
                                classes=3, resolution=4)


class TestIdentityCodec(CodecContract):
    roundtrip_tol = 0.0

    @pytest.fixture
    def codec_config(self):
        return IdentityConfig()


class TestSDVAECodec(CodecContract):
    @pytest.fixture
    def codec_config(self, vae_dir):
        return SDVAEConfig(path=str(vae_dir), downsample=2)


# --------------------------------------------------------------------------- the suites have teeth
def test_the_data_contract_fails_images_outside_the_unit_range(tmp_path):
    config = FolderConfig(root=str(tmp_path), resolution=4)
    (tmp_path / "a.png").write_bytes(png_bytes((255, 255, 255)))
    source = config.build()
    dataset = source.dataset()
    broken = type(source)(config)
    broken.dataset = lambda augment=True: [(dataset[0][0] * 2 + 1, 0)]  # [0, 255]-style scaling slip
    with pytest.raises(AssertionError):
        DataSourceContract().test_items_are_images_in_range_with_valid_labels(broken)


def test_the_codec_contract_fails_a_codec_that_samples_while_encoding(vae_dir):
    codec = SDVAEConfig(path=str(vae_dir), downsample=2, posterior="sample").build()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with pytest.raises(AssertionError, match="encode must not draw randomness"):
        CodecContract().test_encoding_is_deterministic_and_independent_of_the_batch(codec, images)
