"""Bad input stops training with a clear message and a non-zero exit, and loses nothing.

These go through ``madkit.cli.main`` in this process (the registry is swapped for one holding the
test plugin), which is exactly what the ``madkit`` command runs, minus an interpreter start-up.
"""

from __future__ import annotations

import hashlib

import engine_fakes as fakes
import pytest
from engine_fakes import one_thread  # noqa: F401  (autouse fixture)

from madkit import cli
from madkit.engine import checkpoints as ckpt
from madkit.engine.checkpoints.run_folder import read_metrics
from madkit.engine.checkpoints.weights import load_for_inference


@pytest.fixture
def registry(monkeypatch):
    return fakes.serve_registry(monkeypatch, fakes.make_registry())


def madkit(*args: str) -> int:
    return cli.main(list(args))


def snapshot(folder) -> dict[str, str]:
    """Every file under ``folder`` -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, registry, capsys):
    # two micro-batches per step: the 9th loss call is step 5's first
    spec = fakes.write_spec(tmp_path, model={"nan_after": 8}, train={"steps": 8, "ckpt_every": 2})
    out = tmp_path / "run"
    assert madkit("run", str(spec), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "step 5: non-finite loss" in err and "loss=nan" in err and "mse=" in err
    assert f"the newest healthy checkpoint is {out / 'checkpoints' / '00000004'}" in err
    assert "Traceback" not in err
    assert ckpt.latest_checkpoint(out).name == "00000004"
    _, model = load_for_inference(out, registry)
    assert all(p.isfinite().all() for p in model.parameters())
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_checkpoint_from_an_incompatible_spec_is_refused_and_touches_nothing(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, train={"steps": 2})
    out = tmp_path / "run"
    assert madkit("run", str(spec), "--out", str(out)) == 0
    before = snapshot(out)
    wider = fakes.write_spec(tmp_path, "wider.toml", model={"width": 24}, train={"steps": 4})
    capsys.readouterr()
    assert madkit("run", str(wider), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {out / 'checkpoints' / '00000002'} does not fit the model built from {wider}" in err
    assert "inp.weight: checkpoint [16, 48] vs spec [24, 48]" in err
    assert "model.width: checkpoint 16 vs spec 24" in err
    assert "train.steps" not in err  # only differences that can change shapes are listed
    assert snapshot(out) == before


def test_missing_dataset_is_reported_by_its_source_before_anything_is_written(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, data={"root": str(tmp_path / "no-such-folder")})
    out = tmp_path / "run"
    assert madkit("run", str(spec), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"dataset folder {str(tmp_path / 'no-such-folder')!r} does not exist" in err
    assert not out.exists()


def test_resume_never_refuses_a_folder_with_checkpoints(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, train={"steps": 2})
    out = tmp_path / "run"
    assert madkit("run", str(spec), "--out", str(out)) == 0
    before = snapshot(out)
    assert madkit("run", str(spec), "--out", str(out), "--set", "train.resume=never") == 2
    assert "would mix two runs" in capsys.readouterr().err
    assert snapshot(out) == before


def test_batch_that_does_not_split_and_unknown_sinks_are_spec_errors(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, train={"batch": 6, "micro_batch": 4}, log={"sinks": ["tensorbord"]})
    assert madkit("run", str(spec), "--out", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "train.micro_batch: global batch 6 is not a multiple of micro_batch 4" in err
    assert "log.sinks[0].kind: unknown sink kind 'tensorbord'" in err
    assert not (tmp_path / "run").exists()


def test_bad_stop_after_is_a_usage_error(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path)
    assert madkit("run", str(spec), "--stop-after", "0") == 2
    assert "--stop-after must be a positive step count" in capsys.readouterr().err
