"""Image completion: the kept blocks are the encoded input, exactly, and the rest is what the cached
block-wise sampler generates from that finished prefix with the same noise; every partitioner."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: one intra-op thread)
from eval_helpers import TWO_STEPS, train_tiny
from model_helpers import build, registry
from PIL import Image

import madkit
from madkit import rng
from madkit.cli import main
from madkit.completion import CompletionError, check_keep, load_images
from madkit.generation import block_pixels
from madkit.interfaces import GenerationObserver, Partitioner

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny" / "madformer.toml"


class BottomUpPartitioner(Partitioner):
    """A third party's order: raster runs of 4 cells from the last row up, so the kept prefix is the
    bottom of the image (the built-in kinds all start at the top)."""

    def _order(self):
        h, w = self.grid
        return torch.arange(h * w).flip(0).view(-1, 4)

    @property
    def block_shape(self):
        return None


@attrs.frozen
class BottomUpConfig:
    def build(self, grid):
        return BottomUpPartitioner(grid)

    def problems(self, grid):
        return []


def _model(kind: str, **overrides):
    if kind == "third-party":
        model = build("raster", **overrides)  # geometry from a real config, then the third party's order
        cfg = attrs.evolve(model.cfg, partitioner=BottomUpConfig())
        torch.manual_seed(0)
        return cfg.build(latent_shape=(3, 8, 8), num_classes=model.num_classes, registry=registry()).eval()
    return build(kind, **overrides)


def _sampler(kind="ddpm", steps=3):
    schedule = registry().get("schedule", "ddpm-linear").config_cls().build()
    return registry().get("sampler", kind).config_cls(steps=steps).build(schedule=schedule)


class StateAtBlock(GenerationObserver):
    """Remembers the generators' states when block ``keep - 1`` is done: the noise block ``keep`` starts from."""

    def __init__(self, generators, keep):
        self.generators, self.keep, self.states = generators, keep, None

    def block_finished(self, block, latents):
        if block == self.keep - 1:
            self.states = [g.get_state() for g in self.generators]


def _generators(states):
    out = [torch.Generator() for _ in states]
    for g, state in zip(out, states):
        g.set_state(state)
    return out


@pytest.mark.parametrize("kind", ["tiles", "raster", "third-party", "class"])
def test_a_generated_images_own_prefix_and_noise_reproduce_it(kind):
    """Completing an image's first K blocks with the noise generation drew after them gives back the
    image: the prefix enters the cached sampler exactly as its own finished blocks did."""
    model = _model("tiles", conditioning="class", num_classes=3) if kind == "class" else _model(kind)
    labels, guidance = (torch.tensor([2, 0]), 2.0) if kind == "class" else (None, None)
    sampler, keep = _sampler(), 2
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    watch = StateAtBlock(generators, keep)
    full = model.generate(sampler, generators, labels=labels, guidance=guidance, observer=watch)
    again = model.generate(sampler, _generators(watch.states), labels=labels, guidance=guidance, prefix=full, keep=keep)
    assert torch.equal(again, full)
    uncached = model.generate(
        sampler, _generators(watch.states), labels=labels, guidance=guidance, prefix=full, keep=keep, use_cache=False
    )
    scale = max(1.0, full.abs().max().item())  # an untrained model's samples reach hundreds
    assert (uncached - full).abs().max().item() <= 1e-4 * scale


@pytest.mark.parametrize("kind", ["tiles", "raster", "third-party"])
def test_kept_blocks_are_the_prefix_exactly_and_the_rest_is_generated(kind):
    model = _model(kind)
    prefix = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(5))
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    out = model.generate(_sampler(), generators, prefix=prefix, keep=1)
    kept = model.block_index() == 0
    assert kept.sum() == kept.numel() // model.T
    assert torch.equal(out[..., kept], prefix[..., kept])
    assert not torch.allclose(out[..., ~kept], prefix[..., ~kept])
    if kind == "third-party":  # the partitioner's order, not the raster one: block 0 is the bottom rows
        assert kept[-1].all() and not kept[0].any()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("complete") / "tiny", *TWO_STEPS)


@pytest.fixture(scope="module")
def pipe(run_dir):
    return madkit.load(run_dir, device="cpu")


def test_pipeline_complete_equals_the_cached_sampler_from_the_encoded_prefix(pipe):
    images = pipe.generate(3, seed=4, steps=2, output="tensor")
    result = pipe.complete(images, keep=2, num=2, seed=1, steps=2)
    assert result.completions.shape == (3, 2, *pipe.image_shape)
    encoded = pipe.experiment.codec.encode(images)
    mask = block_pixels(pipe.model, pipe.image_shape[1:]) < 2
    assert torch.equal(result.completions[..., mask], images[:, None].expand_as(result.completions)[..., mask])
    assert torch.equal(result.kept[..., mask], images[..., mask]) and (result.kept[..., ~mask] == 0).all()
    for c in range(2):  # completion c of image i: noise from (seed, "complete", c, i), prefix = the encoded image
        generators = [rng.generator(1, "complete", c, i) for i in range(3)]
        direct = pipe.model.generate(pipe.experiment.sampler, generators, steps=2, prefix=encoded, keep=2)
        assert torch.equal(pipe.experiment.codec.decode(direct), result.completions[:, c])
    assert not torch.equal(result.completions[:, 0], result.completions[:, 1])
    # one image at a time gives the same completions as three in a batch
    alone = pipe.complete(images[1:2], keep=2, num=2, seed=1, steps=2)
    # image 1 alone draws from (seed, "complete", c, 0): the same as image 0 of the batch with image 1's prefix
    batch0 = pipe.complete(torch.stack([images[1], images[0]]), keep=2, num=2, seed=1, steps=2, batch=2)
    assert torch.equal(alone.completions[0], batch0.completions[0])


def test_errors_say_what_is_wrong(pipe, tmp_path):
    with pytest.raises(CompletionError, match="leaves nothing to generate"):
        check_keep(4, 4)
    with pytest.raises(CompletionError, match="out of range"):
        check_keep(-1, 4)
    wrong = tmp_path / "big.png"
    Image.new("RGB", (20, 16), "red").save(wrong)
    with pytest.raises(CompletionError, match="20x16 but this model makes 16x16.*resize=True"):
        pipe.complete([wrong], keep=1)
    resized = load_images([wrong], pipe.image_shape, resize=True)
    assert resized.shape == (1, *pipe.image_shape) and torch.allclose(resized[0, 0], torch.ones(16, 16))
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(clear)
    assert torch.equal(load_images([clear], pipe.image_shape, False), torch.ones(1, 3, 16, 16))  # laid on white


def test_cli_writes_rows_and_a_grid_and_refuses_bad_input(run_dir, tmp_path, capsys):
    src = tmp_path / "in"
    assert main(["sample", str(run_dir), "--num", "2", "--steps", "2", "--out", str(src)]) == 0
    out = tmp_path / "out"
    inputs = [str(src / "000000.png"), str(src / "000001.png")]
    assert main(["complete", str(run_dir), *inputs, "--keep", "1", "--num", "3", "--steps", "2", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(["grid.png"] + [f"00000{i}-{s}.png" for i in (0, 1) for s in ("row", "c0", "c1", "c2")])
    row = np.asarray(Image.open(out / "000000-row.png"))
    assert row.shape[1] > 4 * row.shape[0]  # original | kept | 3 completions side by side
    assert "completed 2 image(s) x 3 from 1 of 4 blocks" in capsys.readouterr().out
    for flags, message in [
        (["--keep", "4"], "--keep 4 keeps all 4 blocks and leaves nothing to generate"),
        (["--keep", "9"], "--keep 9 is out of range"),
        (["--keep", "1", "--label", "0"], "--label: labels were given, but this model does not use class labels"),
    ]:
        assert main(["complete", str(run_dir), inputs[0], "--out", str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert main(["complete", str(run_dir), str(out / "grid.png"), "--keep", "1", "--out", str(tmp_path / "y")]) == 2
    assert "pass --resize" in capsys.readouterr().err


def test_class_labels_and_guidance_work_as_in_sample(tmp_path):
    out = tmp_path / "classes"
    sets = ["train.steps=2", "train.ckpt_every=2", "train.sample_num=1", "train.sample_steps=1", "log.sinks=[]",
            "model.conditioning=class"]
    assert main(["run", str(TINY), "--out", str(out), "--threads", "1", *(a for s in sets for a in ("--set", s))]) == 0
    pipe = madkit.load(out, device="cpu")
    images = pipe.generate(2, seed=0, steps=2, output="tensor")
    result = pipe.complete(images, keep=1, labels=[1, 2], guidance=2.0, steps=2, seed=3)
    generators = [rng.generator(3, "complete", 0, i) for i in range(2)]
    encoded = pipe.experiment.codec.encode(images)
    direct = pipe.model.generate(pipe.experiment.sampler, generators, labels=torch.tensor([1, 2]), steps=2,
                                 guidance=2.0, prefix=encoded, keep=1)
    assert torch.equal(pipe.experiment.codec.decode(direct), result.completions[:, 0])
    other = pipe.complete(images, keep=1, labels=[0, 0], guidance=2.0, steps=2, seed=3)
    assert not torch.equal(other.completions, result.completions)
    src = tmp_path / "in.png"
    Image.fromarray(((images[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(src)
    args = ["complete", str(out), str(src), "--keep", "1", "--num", "1", "--steps", "2", "--out", str(tmp_path / "c")]
    assert main([*args, "--label", "1", "--guidance", "2"]) == 0
    assert main([*args, "--label", "99", "--overwrite"]) == 2
