"""`madkit sample`: PNGs from a trained run, independent of batch size, sharding and the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from madkit.cli import main

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny" / "madformer.toml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    sets = ["train.steps=2", "train.ckpt_every=2", "train.sample_num=2", "sampler.steps=2", "log.sinks=[]"]
    args = ["run", str(TINY), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return out


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("0*.png"))}


def test_sample_writes_pngs_and_a_grid(run_dir, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["sample", str(run_dir), "--num", "3", "--steps", "2", "--batch", "2", "--grid", "--out", str(out)]) == 0
    images = _pixels(out)
    assert sorted(images) == ["000000.png", "000001.png", "000002.png"]
    assert all(im.shape == (16, 16, 3) and im.dtype == np.uint8 for im in images.values())
    assert (out / "grid.png").is_file()
    assert "EMA" in capsys.readouterr().out


def test_batch_size_shards_and_cache_do_not_change_the_images(run_dir, tmp_path):
    base = tmp_path / "base"
    assert main(["sample", str(run_dir), "--num", "4", "--steps", "2", "--batch", "4", "--out", str(base)]) == 0
    reference = _pixels(base)
    one = tmp_path / "one"
    assert main(["sample", str(run_dir), "--num", "4", "--steps", "2", "--batch", "1", "--out", str(one)]) == 0
    shards = tmp_path / "shards"
    for shard in ("0/2", "1/2"):
        args = ["sample", str(run_dir), "--num", "4", "--steps", "2", "--shard", shard, "--out", str(shards)]
        assert main(args) == 0
    nocache = tmp_path / "nocache"
    assert main(["sample", str(run_dir), "--num", "4", "--steps", "2", "--no-cache", "--out", str(nocache)]) == 0
    for other in (one, shards, nocache):
        pixels = _pixels(other)
        assert sorted(pixels) == sorted(reference)
        for name, image in reference.items():
            # uint8 rounding of values that differ by float noise may move a pixel by one level
            assert np.abs(pixels[name].astype(int) - image.astype(int)).max() <= 1, (other.name, name)


def test_sample_refuses_a_bad_shard(run_dir, capsys):
    assert main(["sample", str(run_dir), "--shard", "2/2"]) != 0
    assert "shard" in capsys.readouterr().err


def test_sample_names_a_missing_run(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nowhere")]) != 0
    assert "nowhere" in capsys.readouterr().err


def test_default_folders_name_every_setting_that_changes_pixels(run_dir):
    assert main(["sample", str(run_dir), "--num", "1", "--steps", "2", "--seed", "3"]) == 0
    assert main(["sample", str(run_dir), "--num", "1", "--steps", "2", "--seed", "3", "--raw"]) == 0
    names = sorted(p.name for p in (run_dir / "samples").iterdir() if p.is_dir())
    assert "00000002-ddim-2-g1-ema-s3" in names and "00000002-ddim-2-g1-raw-s3" in names


def test_an_export_is_the_ema_weights_plus_a_few_kb_and_samples_the_same_pngs(run_dir, tmp_path):
    export = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(export)]) == 0
    assert sorted(p.name for p in export.iterdir()) == ["README.md", "config.resolved.toml", "model.safetensors"]
    ema = run_dir / "checkpoints" / "00000002" / "ema.safetensors"
    extra = sum(p.stat().st_size for p in export.iterdir()) - ema.stat().st_size
    assert 0 < extra <= 8192, f"{extra} bytes beyond the EMA weights"
    args = ["--num", "3", "--steps", "2", "--seed", "4"]
    assert main(["sample", str(run_dir), *args, "--out", str(tmp_path / "from-run")]) == 0
    assert main(["sample", str(export), *args]) == 0  # default folder: inside the export
    from_run, from_export = _pixels(tmp_path / "from-run"), _pixels(export / "samples" / "export-ddim-2-g1-ema-s4")
    assert sorted(from_run) == sorted(from_export) and len(from_run) == 3
    assert all(np.array_equal(from_run[name], from_export[name]) for name in from_run)
    assert main(["sample", str(export), "--raw", *args]) == 2  # an export holds only the EMA weights: a flag mistake
