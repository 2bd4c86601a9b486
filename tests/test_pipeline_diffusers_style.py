"""``madkit.Pipeline`` the way diffusers users call a pipeline: ``pipe(...)``, ``.images``,
``num_inference_steps``, ``guidance_scale``, ``generator``, ``output_type``, ``.to()``, ``.device``,
``.dtype`` and ``torch_dtype=``, on a real (tiny, trained) MADFormer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ImagePipelineOutput
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: one intra-op thread)

import madkit
from madkit.cli import main

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny" / "madformer.toml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipe") / "tiny"
    sets = ["train.steps=2", "train.ckpt_every=2", "train.sample_num=1", "train.sample_steps=1", "log.sinks=[]"]
    assert main(["run", str(TINY), "--out", str(out), *(a for s in sets for a in ("--set", s))]) == 0
    return out


@pytest.fixture
def pipe(run_dir):
    return madkit.load(run_dir)


def test_calling_the_pipeline_returns_diffusers_output(pipe):
    g = torch.Generator().manual_seed(7)
    out = pipe(3, num_inference_steps=2, generator=g)
    assert isinstance(out, ImagePipelineOutput) and len(out.images) == 3
    assert out.images[0].size == (16, 16) and out.images[0].mode == "RGB"
    again = pipe(3, num_inference_steps=2, generator=torch.Generator().manual_seed(7)).images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out.images, again))
    other = pipe(3, num_inference_steps=2, generator=torch.Generator().manual_seed(8)).images
    assert not np.array_equal(np.asarray(out.images[0]), np.asarray(other[0]))
    (only,) = pipe(1, num_inference_steps=1, return_dict=False)
    assert len(only) == 1


def test_output_types_follow_diffusers(pipe):
    as_np = pipe(2, num_inference_steps=2, output_type="np", seed=3).images
    assert isinstance(as_np, np.ndarray) and as_np.shape == (2, 16, 16, 3) and 0 <= as_np.min() <= as_np.max() <= 1
    as_pt = pipe(2, num_inference_steps=2, output_type="pt", seed=3).images
    assert as_pt.shape == (2, 3, 16, 16) and torch.allclose(as_pt.permute(0, 2, 3, 1), torch.from_numpy(as_np))
    pil = pipe(2, num_inference_steps=2, seed=3).images  # the same images as madkit's own generate
    assert np.array_equal(np.asarray(pil[1]), np.asarray(pipe.generate(2, steps=2, seed=3)[1]))
    with pytest.raises(ValueError, match="output_type must be"):
        pipe(1, output_type="latent")


def test_generators_are_one_per_call_and_never_mixed_with_a_seed(pipe):
    with pytest.raises(ValueError, match="one torch.Generator"):
        pipe(2, generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="generator or seed, not both"):
        pipe(2, generator=torch.Generator(), seed=1)
    with pytest.raises(TypeError, match="torch.Generator"):
        pipe(2, generator=5)
    with pytest.raises(ValueError, match="needs a class-conditional model"):  # guidance_scale is guidance
        pipe(1, guidance_scale=2.0)


def test_bf16_weights_generate_through_autocast(run_dir, pipe):
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    reference = pipe(2, num_inference_steps=2, output_type="pt", seed=1).images
    half = madkit.load(run_dir, torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    images = half(2, num_inference_steps=2, output_type="pt", seed=1).images
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert (images - reference).abs().mean() < 0.25  # the same model, rounded: close, not equal
    pipe.model.to(torch.bfloat16)  # the way that used to crash on mixed dtypes
    assert pipe.generate(1, steps=1, output="tensor").dtype == torch.float32
    assert pipe.to(torch.float32) is pipe and pipe.dtype == torch.float32
    with pytest.raises(ValueError, match="floating point"):
        pipe.to(torch.int8)
