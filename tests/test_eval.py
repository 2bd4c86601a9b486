"""``madkit eval`` (madkit/commands/eval.py, madkit/engine/evaluation/points.py): what it records,
per-image seeds, shards that combine to exactly the unsharded result, references, reuse, and bad input.

One tiny model is trained for 3 steps on 64 OpenMoji emoji at 16px; metrics use the offline proxy
extractor (the default for OpenMoji data), trained once into a temporary cache.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from eval_helpers import environment, train_tiny  # noqa: F401 (environment: autouse fixture for this module)

import madkit
from madkit.cli import main
from madkit.engine.checkpoints.weights import load_for_inference
from madkit.engine.evaluation.points import Evaluator, Request
from madkit.registry import Registry

ARGS = ["--num", "8", "--steps", "2", "--batch", "4"]
NAME = "00000003-ema-ddim-s2-n8-seed0-proxy"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs") / "tiny")


def evaluate(run_dir: Path, *extra: str) -> int:
    return main(["eval", str(run_dir), *ARGS, *extra])


def record(run_dir: Path, name: str = NAME) -> dict:
    return json.loads((run_dir / "eval" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def unsharded(run_dir) -> dict:
    assert evaluate(run_dir) == 0
    return record(run_dir)


def test_the_record_holds_the_metric_and_everything_needed_to_reproduce_it(run_dir, unsharded):
    r = unsharded
    assert r["fid"] == r["metric_values"]["fid"] and r["fid"] >= 0
    # the offline proxy is the OpenMoji default, and its figures carry its own name
    assert re.fullmatch(r"openmoji-proxy-[0-9a-f]{8}", r["extractor"]) and "inception" not in r["extractor"]
    assert r["checkpoint"] == {"path": str(run_dir / "checkpoints" / "00000003"), "step": 3, "weights": "ema"}
    assert {k: r["sampling"][k] for k in ("sampler", "steps", "seed", "num", "guidance")} == {
        "sampler": "ddim", "steps": 2, "seed": 0, "num": 8, "guidance": None,
    }
    # the default reference is the run's own [data], identified by its content
    assert r["reference"]["data"]["kind"] == "openmoji" and r["reference"]["num"] == 64
    assert re.fullmatch(r"[0-9a-f]{64}", r["reference"]["content_hash"])
    assert r["madkit_version"] == madkit.__version__ and r["seconds_per_image"] > 0 and r["shards"] == 1
    _, model = load_for_inference(run_dir, Registry.load())
    cost = model.compute_cost(2)
    assert r["cost"] == {k: cost[k] for k in ("nfe", "layer_passes", "sample_flops_per_image")}
    assert r["model"]["diffusion_depth"] == 2 and r["model"]["blocks"] == 4


def test_shards_of_any_batch_size_combine_to_the_unsharded_result(run_dir, unsharded, capsys):
    for i, batch in ((0, "1"), (1, "2")):
        assert evaluate(run_dir, "--shard", f"{i}/3", "--batch", batch, "--name", "sharded") == 0
        assert not (run_dir / "eval" / "sharded.json").exists()  # waits for the missing shards
    assert "waiting for shard(s) [2]" in capsys.readouterr().err
    assert evaluate(run_dir, "--shard", "2/3", "--batch", "5", "--name", "sharded") == 0
    sharded = record(run_dir, "sharded")
    assert sharded["generated_hash"] == unsharded["generated_hash"]  # the same images, pixel for pixel
    assert sharded["fid"] == pytest.approx(unsharded["fid"], rel=1e-6)
    assert sharded["shards"] == 3 and sharded["reference"] == unsharded["reference"]


def test_the_seed_and_the_weights_change_the_images_and_are_recorded(run_dir, unsharded):
    assert evaluate(run_dir, "--seed", "1") == 0
    assert record(run_dir, NAME.replace("seed0", "seed1"))["generated_hash"] != unsharded["generated_hash"]
    assert evaluate(run_dir, "--raw") == 0
    raw = record(run_dir, NAME.replace("-ema-", "-raw-"))
    assert raw["checkpoint"]["weights"] == "raw" and raw["generated_hash"] != unsharded["generated_hash"]


def test_an_up_to_date_record_is_reused_and_force_recomputes_it(run_dir, unsharded, capsys):
    path = run_dir / "eval" / f"{NAME}.json"
    before = path.stat().st_mtime_ns
    assert evaluate(run_dir) == 0
    assert "up to date" in capsys.readouterr().err and path.stat().st_mtime_ns == before
    assert evaluate(run_dir, "--force") == 0
    assert path.stat().st_mtime_ns != before and record(run_dir)["generated_hash"] == unsharded["generated_hash"]


def test_an_export_evaluates_and_sweeps_to_the_same_images(run_dir, unsharded, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(export)]) == 0
    card = (export / "README.md").read_text()
    assert f"| fid | {unsharded['fid']:.4f} | {unsharded['extractor']} | ddim | 2 | 8 |" in card
    assert evaluate(export) == 0
    outputs = tmp_path / "runs" / "exports" / "export"  # never inside the export (it may be a hub snapshot)
    assert not (export / "eval").exists()
    exported = record(outputs)  # named after the step the export came from
    assert exported["generated_hash"] == unsharded["generated_hash"]
    assert exported["fid"] == pytest.approx(unsharded["fid"], rel=1e-6)
    assert exported["checkpoint"] == {"path": str(export), "step": 3, "weights": "ema"}
    capsys.readouterr()
    assert main(["sweep", str(export), "--steps", "2", "--num", "8", "--batch", "4"]) == 0
    assert "up to date" in capsys.readouterr().err and (outputs / "eval" / "sweep.csv").is_file()


def test_statistics_of_the_run_data_give_the_same_fid(run_dir, unsharded, tmp_path):
    stats = tmp_path / "ref.npz"
    assert main(["fid-stats", str(run_dir / "config.resolved.toml"), "--out", str(stats), "--extractor", "proxy"]) == 0
    assert evaluate(run_dir, "--reference", str(stats), "--name", "vs-stats") == 0
    r = record(run_dir, "vs-stats")
    assert r["fid"] == pytest.approx(unsharded["fid"], rel=1e-5)
    assert r["reference"]["path"] == str(stats)
    assert r["reference"]["content_hash"] == unsharded["reference"]["content_hash"]


def test_statistics_from_another_extractor_are_refused_before_generating(run_dir, tmp_path, capsys, monkeypatch):
    stats = tmp_path / "other.npz"
    other = ["--extractor", "proxy", "--extractor-set", "epochs=1"]
    assert main(["fid-stats", str(run_dir / "config.resolved.toml"), "--out", str(stats), *other]) == 0
    capsys.readouterr()
    monkeypatch.setattr(Evaluator, "_generate", lambda *a, **k: pytest.fail("generated before checking the reference"))
    assert evaluate(run_dir, "--reference", str(stats), "--name", "mismatch") == 2
    assert "was computed with extractor" in capsys.readouterr().err
    assert not (run_dir / "eval" / "mismatch.json").exists()


def test_statistics_without_features_are_refused_for_kid_before_generating(run_dir, tmp_path, capsys, monkeypatch):
    stats = tmp_path / "ref.npz"
    assert main(["fid-stats", str(run_dir / "config.resolved.toml"), "--out", str(stats), "--extractor", "proxy"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(Evaluator, "_generate", lambda *a, **k: pytest.fail("generated before checking the reference"))
    assert evaluate(run_dir, "--reference", str(stats), "--metrics", "fid,kid", "--name", "kid") == 2
    assert "--keep-features" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num", "1"], "--num must be at least 2"),
        (["--sampler", "nope"], "no sampler kind 'nope'; installed: "),
        (["--metrics", "fid,nope"], "no metric kind 'nope'"),
        (["--extractor-set", "epochs=1"], "--extractor-set needs --extractor"),
        (["--shard", "2/2"], "shard 2/2 is invalid"),
        (["--steps", "0"], "--steps must be positive"),
    ],
)
def test_bad_arguments_are_usage_errors(run_dir, capsys, extra, message):
    assert main(["eval", str(run_dir), *ARGS, *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_run_folder_is_named(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere"), *ARGS]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err


def test_inception_is_the_default_beyond_the_embedded_emoji():
    from madkit_data.folder import FolderConfig
    from madkit_data.openmoji import OpenMojiConfig

    evaluator = Evaluator(Registry.load(), Request(num=8))
    def as_run(data):  # only .data is read
        return SimpleNamespace(data=data)

    assert evaluator.extractor_table(as_run(FolderConfig(root="photos"))) == {"kind": "inception"}
    assert evaluator.extractor_table(as_run(OpenMojiConfig())) == {"kind": "proxy"}
    chosen = Evaluator(Registry.load(), Request(num=8, extractor={"kind": "inception", "weights": "w.pth"}))
    assert chosen.extractor_table(as_run(OpenMojiConfig())) == {"kind": "inception", "weights": "w.pth"}


def test_small_samples_come_with_a_note(run_dir, unsharded, capsys):
    assert evaluate(run_dir) == 0  # up to date: the record is reused, the note still printed
    assert "note: 8 images is a small sample: FID is biased upward" in capsys.readouterr().out


def test_fid_stats_reports_proxy_training_progress_and_caches_under_madkit_cache_dir(run_dir, tmp_path, capsys):
    import os

    stats = tmp_path / "p.npz"
    args = ["fid-stats", str(run_dir / "config.resolved.toml"), "--out", str(stats), "--extractor", "proxy"]
    assert main([*args, "--extractor-set", "epochs=2"]) == 0  # another recipe: trained anew here
    err = capsys.readouterr().err
    assert "epoch 1/2: loss" in err and "epoch 2/2: loss" in err
    assert len(list((Path(os.environ["MADKIT_CACHE_DIR"]) / "extractors").glob("*-proxy-*.pt"))) >= 2


def test_unlabelled_openmoji_data_gets_a_proxy_that_learns_from_every_group():
    from madkit_data.openmoji import OpenMojiConfig

    from madkit.engine.evaluation.evaluate import with_proxy_data

    registry = Registry.load()
    faces = OpenMojiConfig(resolution=32, groups=("smileys-emotion",), labels=False)  # the quickstart's data
    assert with_proxy_data({"kind": "proxy"}, faces, registry) == {
        "kind": "proxy", "data": {"kind": "openmoji", "resolution": 32},
    }
    labelled = OpenMojiConfig(resolution=16, limit=64)
    assert with_proxy_data({"kind": "proxy"}, labelled, registry) == {"kind": "proxy"}
    assert with_proxy_data({"kind": "inception"}, faces, registry) == {"kind": "inception"}


def test_a_full_disk_while_writing_the_record_is_one_line_and_leaves_no_partial_file(run_dir, capsys, monkeypatch):
    import errno

    real = Path.write_bytes

    def full(self, data):
        if self.name.endswith(".tmp"):  # madkit.atomic_files' temp file: half written, then no space
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    capsys.readouterr()
    assert evaluate(run_dir, "--name", "full-disk") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("madkit eval:")]
    assert len(err) == 1 and err[0].startswith("madkit eval: disk full writing") and "nothing older" in err[0], err
    assert not (run_dir / "eval" / "full-disk.json").exists()
    assert not [p for p in (run_dir / "eval").rglob("*") if p.name.endswith(".tmp")]


def test_a_proxy_fid_without_held_out_images_says_it_has_no_floor(run_dir, unsharded, capsys):
    assert unsharded["floor"] == {"values": None, "why": "the data has no held-out split (OpenMoji: set data.holdout = 4)"}
    assert evaluate(run_dir) == 0
    assert "(no floor: the data has no held-out split" in capsys.readouterr().out


def test_a_proxy_fid_prints_the_held_out_real_images_floor_beside_it(tmp_path, capsys):
    import attrs

    from madkit.engine.evaluation.evaluate import compute_metrics, data_images
    from madkit.engine.evaluation.points import load_run

    held = train_tiny(tmp_path / "held", "data.holdout=4")
    assert evaluate(held) == 0
    out = capsys.readouterr().out
    floor = record(held)["floor"]
    assert floor["num_real"] == 16 and floor["values"]["fid"] >= 0  # every 4th of the 64 emoji
    assert f"(floor {floor['values']['fid']:.4g}: 16 held-out real images vs the training images)" in out
    # the same figure computed directly: the held-out split's images against the training split's
    data = load_run(held, Registry.load(), True, "cpu").data
    direct = compute_metrics(data_images(attrs.evolve(data, split="heldout")), data, ["fid"],
                             record(held)["extractor_config"], data=data)
    assert direct["fid"] == pytest.approx(floor["values"]["fid"], rel=1e-6)
