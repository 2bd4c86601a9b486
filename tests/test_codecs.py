"""Codecs: identity round trip, and sd-vae through the real from_pretrained path with a tiny random VAE."""

from __future__ import annotations

import madkit_codecs.plugin
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from madkit_codecs.identity import IdentityConfig
from madkit_codecs.sd_vae import SDVAEConfig

from madkit.registry import PluginInfo


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny VAE is latency-bound: extra threads only fight the other processes on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vae(folder, latent_channels: int = 4, levels: int = 2, seed: int = 0):
    """A randomly initialised AutoencoderKL (downsample 2 ** (levels - 1)) saved with save_pretrained."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16)[:levels],
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=latent_channels,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    )
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return tiny_vae(tmp_path_factory.mktemp("vae") / "tiny")


def images(n: int = 2, side: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(n)) * 2 - 1


# --------------------------------------------------------------------------- identity
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))
def test_identity_round_trip(n, h, w):
    codec = IdentityConfig().build()
    x = torch.rand(n, 3, h, w) * 2 - 1
    assert torch.equal(codec.decode(codec.encode(x)), x)
    assert codec.latent_shape((3, h, w)) == IdentityConfig().latent_shape((3, h, w)) == (3, h, w)


def test_identity_decode_clamps_predictions():
    codec = IdentityConfig().build()
    assert torch.equal(codec.decode(torch.tensor([-3.0, 0.5, 2.0])), torch.tensor([-1.0, 0.5, 1.0]))


# --------------------------------------------------------------------------- sd-vae
def test_sd_vae_shapes_range_and_scaling(vae_dir):
    config = SDVAEConfig(path=str(vae_dir), downsample=2)
    codec = config.build()
    x = images()
    z = codec.encode(x)
    assert z.shape == (2, 4, 8, 8) == (2, *config.latent_shape((3, 16, 16))) and z.dtype == torch.float32
    y = codec.decode(z)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.min() >= -1 and y.max() <= 1
    assert codec.scale == pytest.approx(0.18215)  # from the VAE's config
    unscaled = SDVAEConfig(path=str(vae_dir), downsample=2, scaling_factor=1.0).build()
    assert torch.allclose(unscaled.encode(x) * 0.18215, z, atol=1e-6)


def test_sd_vae_posterior_mean_is_deterministic_and_sample_is_not(vae_dir):
    x = images()
    mean = SDVAEConfig(path=str(vae_dir), downsample=2).build()
    assert torch.equal(mean.encode(x), mean.encode(x))
    sample = SDVAEConfig(path=str(vae_dir), downsample=2, posterior="sample").build()
    assert not torch.equal(sample.encode(x), sample.encode(x))


def test_sd_vae_latents_carry_no_autograd_state(vae_dir):
    codec = SDVAEConfig(path=str(vae_dir), downsample=2).build()
    z = codec.encode(images())
    assert not z.requires_grad and not z.is_inference()  # usable as an input to a model that trains


def test_sd_vae_auto_dtype_is_fp32_on_cpu(vae_dir):
    codec = SDVAEConfig(path=str(vae_dir), downsample=2).build().to("cpu")
    assert codec.dtype == torch.float32 and codec.vae.dtype == torch.float32
    bf16 = SDVAEConfig(path=str(vae_dir), downsample=2, dtype="bf16").build().to("cpu")
    assert bf16.vae.dtype == torch.bfloat16 and bf16.encode(images()).dtype == torch.float32


def test_sd_vae_mismatched_config_is_refused_after_loading(vae_dir):
    with pytest.raises(ValueError, match=r"codec\.downsample = 8 but the VAE .* has downsample = 2"):
        SDVAEConfig(path=str(vae_dir)).build()
    with pytest.raises(ValueError, match=r"codec\.latent_channels = 16 .* has latent_channels = 4"):
        SDVAEConfig(path=str(vae_dir), downsample=2, latent_channels=16).build()


def test_sd_vae_cache_key_tells_weights_and_usage_apart(vae_dir, tmp_path):
    other = tiny_vae(tmp_path / "other", seed=1)
    key = SDVAEConfig(path=str(vae_dir), downsample=2).build().cache_key
    assert key == SDVAEConfig(path=str(vae_dir), downsample=2).build().cache_key
    assert key != SDVAEConfig(path=str(other), downsample=2).build().cache_key
    assert key != SDVAEConfig(path=str(vae_dir), downsample=2, posterior="sample").build().cache_key


def test_sd_vae_missing_local_path(tmp_path):
    missing = tmp_path / "no-vae"
    problems = list(SDVAEConfig(path=str(missing)).check({}))
    assert [p.path for p in problems] == ["path"] and "save_pretrained" in problems[0].message
    with pytest.raises(OSError, match=r"codec\.path: .*no-vae.* is not a saved VAE"):
        SDVAEConfig(path=str(missing)).build()


def test_sd_vae_uncached_hub_id_offline_is_a_validation_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hf-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-hf-cache")
    problems = list(SDVAEConfig(path="stabilityai/sd-vae-ft-mse").check({}))
    assert [p.path for p in problems] == ["path"]
    assert "HF_HUB_OFFLINE" in problems[0].message and "local folder" in problems[0].message


def test_sd_vae_image_side_must_divide_by_the_factor(vae_dir):
    config = SDVAEConfig(path=str(vae_dir), downsample=2)
    assert list(config.check({"image_shape": (3, 16, 16)})) == []
    problems = list(config.check({"image_shape": (3, 17, 16)}))
    assert [p.path for p in problems] == ["downsample"] and "17x16" in problems[0].message


def test_plugin_registers_both_codecs(fake_registry):
    fake_registry.add_plugin(madkit_codecs.plugin, PluginInfo("codecs", "madkit", "(source)"))
    assert {"identity", "sd-vae"} <= set(fake_registry.kinds("codec"))
