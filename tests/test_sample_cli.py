"""`madkit sample`: PNGs from a trained run, independent of batch size, sharding and the cache."""

from __future__ import annotations

import json
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
    for other in (one, shards):  # the same computation in other chunks: the same pixels, bit for bit
        pixels = _pixels(other)
        assert sorted(pixels) == sorted(reference)
        assert all(np.array_equal(pixels[name], image) for name, image in reference.items()), other.name
    pixels = _pixels(nocache)
    for name, image in reference.items():
        # another computation (the whole prefix again): float noise may move a pixel by one level
        assert np.abs(pixels[name].astype(int) - image.astype(int)).max() <= 1, name


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


def test_an_export_is_the_ema_weights_plus_a_few_kb_and_samples_the_same_pngs(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(export)]) == 0
    assert sorted(p.name for p in export.iterdir()) == ["README.md", "config.resolved.toml", "model.safetensors"]
    ema = run_dir / "checkpoints" / "00000002" / "ema.safetensors"
    extra = sum(p.stat().st_size for p in export.iterdir()) - ema.stat().st_size
    assert 0 < extra <= 8192, f"{extra} bytes beyond the EMA weights"
    args = ["--num", "3", "--steps", "2", "--seed", "4"]
    assert main(["sample", str(run_dir), *args, "--out", str(tmp_path / "from-run")]) == 0
    assert main(["sample", str(export), *args]) == 0  # default folder: runs/exports/<name>, never the export
    outputs = tmp_path / "runs" / "exports" / "export" / "samples" / "export-ddim-2-g1-ema-s4"
    from_run, from_export = _pixels(tmp_path / "from-run"), _pixels(outputs)
    assert sorted(p.name for p in export.iterdir()) == ["README.md", "config.resolved.toml", "model.safetensors"]
    assert sorted(from_run) == sorted(from_export) and len(from_run) == 3
    assert all(np.array_equal(from_run[name], from_export[name]) for name in from_run)
    assert main(["sample", str(export), "--raw", *args]) == 2  # an export holds only the EMA weights: a flag mistake


def test_an_out_folder_never_mixes_two_sets_of_images(run_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    base = ["sample", str(run_dir), "--num", "2", "--steps", "2", "--out", str(out)]
    assert main(base) == 0
    first = _pixels(out)
    assert main(base) == 0  # the same command again (or another shard of it): allowed, the same images
    assert all(np.array_equal(_pixels(out)[k], v) for k, v in first.items())
    capsys.readouterr()
    assert main([*base[:-2], "--seed", "1", "--out", str(out)]) == 2  # other settings: refused, untouched
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty" in err[0] and "seed=0 (now 1)" in err[0] and "--overwrite" in err[0]
    assert all(np.array_equal(_pixels(out)[k], v) for k, v in first.items())
    assert main([*base[:-2], "--seed", "1", "--num", "1", "--out", str(out), "--overwrite"]) == 0
    assert sorted(_pixels(out)) == ["000000.png"]  # the old set is gone, not mixed with the new one
    assert not np.array_equal(_pixels(out)["000000.png"], first["000000.png"])


def test_a_folder_of_someone_elses_files_is_refused_even_with_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"not madkit's")
    for extra in ([], ["--overwrite"]):
        assert main(["sample", str(run_dir), "--num", "1", "--steps", "1", "--out", str(out), *extra]) == 2
    assert "did not write" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["holiday.png"]
    file_out = tmp_path / "a-file"
    file_out.write_text("x")
    assert main(["sample", str(run_dir), "--num", "1", "--steps", "1", "--out", str(file_out)]) == 2


def test_a_full_disk_while_sampling_is_one_line_and_leaves_no_partial_file(run_dir, tmp_path, capsys, monkeypatch):
    import errno

    real_save = Image.Image.save
    calls = []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:  # the third image: half written, then the disk is full
            Path(fp).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "full"
    assert main(["sample", str(run_dir), "--num", "4", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("madkit sample: disk full: could not write") and "000002.png" in err[0]
    assert "the 2 image(s) before it are complete" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "madkit-output.json"]


def test_sample_and_export_read_a_live_run_that_prunes_every_step(tmp_path, capsys):
    """A real training run saves and prunes a checkpoint at every step (keep 1) while sample and export
    read its newest checkpoint again and again: each read either wins the race or moves to the newer
    checkpoint; none fails because pruning pulled files from under it."""
    import os
    import subprocess
    import sys
    import time

    run = tmp_path / "live"
    sets = ["train.steps=100000", "train.ckpt_every=1", "train.keep_ckpts=1", "train.sample_every=0",
            "train.log_every=100000", "train.batch=4", "log.sinks=[]", "train.threads=1"]
    args = [sys.executable, "-m", "madkit", "run", str(TINY), "--out", str(run)]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    trainer = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list((run / "checkpoints").glob("0*")):
            assert trainer.poll() is None and time.monotonic() < deadline, "the training run did not start"
            time.sleep(0.2)
        steps = set()
        for i in range(6):
            assert main(["sample", str(run), "--num", "1", "--steps", "1", "--out", str(tmp_path / f"s{i}")]) == 0
            assert main(["export", str(run), "--out", str(tmp_path / f"e{i}")]) == 0
            steps.add(json.loads((tmp_path / f"s{i}" / "madkit-output.json").read_text())["step"])
        assert trainer.poll() is None, "the training run stopped while it was read"
        assert len(steps) > 1, "the run did not advance while it was read: the race was not exercised"
    finally:
        trainer.kill()
        trainer.wait()


def test_a_full_disk_during_report_or_export_is_one_line_and_leaves_no_partial_file(run_dir, tmp_path, capsys,
                                                                                     monkeypatch):
    import errno

    from madkit.engine.packaging import export

    real = Path.write_bytes

    def full(self, data):
        if self.name.endswith(".tmp"):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    def full_weights(tensors, path, metadata=None):
        Path(path).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Path, "write_bytes", full)
    monkeypatch.setattr(export, "save_file", full_weights)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if ".lease" not in p.name)
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 2
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("disk full" in line and "nothing older was touched" in line for line in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no report, no export folder, no temp files
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if ".lease" not in p.name) == before
