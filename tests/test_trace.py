"""Generation traces: frame k holds exactly the first k blocks of the finished image, grey elsewhere;
per-step frames hold the sampler's clean-sample estimate of the block being denoised."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: one intra-op thread)
from eval_helpers import TWO_STEPS, train_tiny
from model_helpers import registry
from PIL import Image

import madkit
from madkit.cli import main
from madkit.generation import block_pixels
from madkit.trace import TraceError, check_mode

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny" / "madformer.toml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("trace") / "tiny", *TWO_STEPS)


@pytest.fixture(scope="module")
def pipe(run_dir):
    return madkit.load(run_dir, device="cpu")


def test_block_frames_are_the_finished_blocks_at_each_stage(pipe):
    plain = pipe.generate(3, seed=2, steps=3, output="tensor", batch=2)
    images, traces = pipe.generate(3, seed=2, steps=3, output="tensor", batch=2, trace=True)
    assert torch.equal(images, plain)  # watching changes nothing
    blocks = block_pixels(pipe.model, pipe.image_shape[1:])
    assert len(traces) == 3
    for image, trace in zip(images, traces):
        assert trace.frames.shape == (5, *pipe.image_shape)  # blank, then one frame per block (identity codec)
        for k, frame in enumerate(trace.frames):
            shown = blocks < k
            assert torch.equal(frame[:, shown], image[:, shown]) and (frame[:, ~shown] == 0).all()
    assert traces[0].captions[1] == "block 1/4"


def test_step_frames_show_the_estimate_and_end_on_the_block(pipe):
    _, blocks_only = pipe.generate(1, seed=2, steps=3, output="tensor", trace=True)
    images, traces = pipe.generate(1, seed=2, steps=3, output="tensor", trace="steps")
    frames = traces[0].frames
    assert frames.shape[0] == 1 + 4 * (3 + 1)
    finished = frames[[0, 4, 8, 12, 16]]
    assert torch.equal(finished, blocks_only[0].frames)
    pixels = block_pixels(pipe.model, pipe.image_shape[1:])
    # DDIM's last step lands on alpha-bar = 1, where the next sample is the estimate itself
    for j in range(4):
        last_step, done = frames[4 * j + 3], frames[4 * j + 4]
        assert torch.allclose(last_step, done, atol=1e-4)
        assert torch.equal(last_step[:, pixels > j], done[:, pixels > j])  # later blocks grey in both
        assert not torch.allclose(frames[4 * j + 1][:, pixels == j], done[:, pixels == j])  # the first guess differs


@pytest.mark.parametrize(
    "kind,prediction", [("ddpm-linear", "epsilon"), ("ddpm-linear", "v"), ("cosine", "x0"), ("flow", None)]
)
def test_the_schedule_inverts_its_own_target(kind, prediction):
    cfg = registry().get("schedule", kind).config_cls
    schedule = (cfg(prediction=prediction) if prediction else cfg()).build()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    for t in schedule.sample_timesteps((3,), torch.Generator().manual_seed(1), "cpu"):
        t = t.reshape(1)
        xt, target = schedule.add_noise(x0, noise, t), schedule.target(x0, noise, t)
        assert torch.allclose(schedule.denoised(target, xt, t), x0, atol=1e-3)


def test_sample_trace_writes_a_gif_and_a_strip(run_dir, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", str(run_dir), "--num", "2", "--steps", "2", "--trace", "--out", str(out)]) == 0
    gif = Image.open(out / "trace" / "000001.gif")
    assert gif.n_frames == 5 and gif.info.get("loop") == 0
    strip = Image.open(out / "trace" / "000001-strip.png")
    assert strip.width > 4 * strip.height  # five frames side by side
    with pytest.raises(TraceError, match="use one of blocks, steps"):
        check_mode("pixels")
