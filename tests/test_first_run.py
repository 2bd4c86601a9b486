"""What a new user meets first, through the real CLI: --version and a --help that imports no torch,
the run folder's train.log and versions.json, refusing a resume that changes training values,
--threads, guidance on a model without classes, sample grid names, notes on --set kind swaps and
small FID samples, and proxy-extractor progress.

One tiny MADFormer (experiments/tiny/madformer.toml, 16px OpenMoji) is trained for 2 steps and shared.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: one intra-op thread)

import madkit
from madkit.cli import main
from madkit.engine.training import threads

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny" / "madformer.toml"
QUICK = ["train.steps=2", "train.ckpt_every=2", "train.sample_num=2", "sampler.steps=2", "log.sinks=[]"]


def run_args(out: Path, *sets: str, extra: tuple[str, ...] = ()) -> list[str]:
    return ["run", str(TINY), "--out", str(out), *extra, *(a for s in (*QUICK, *sets) for a in ("--set", s))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("first") / "tiny"
    assert main(run_args(out, extra=("--threads", "1"))) == 0
    return out


# --------------------------------------------------------------------------- the command itself
def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"madkit {madkit.__version__}\n"


def test_help_lists_the_commands_without_importing_torch():
    code = (
        "import sys\nfrom madkit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "validate" in done.stdout and "sample" in done.stdout
    assert done.stdout.strip().endswith("no torch")


# --------------------------------------------------------------------------- the run folder
def test_the_run_folder_keeps_the_console_and_every_version(trained):
    log = (trained / "train.log").read_text()
    assert re.match(r"==== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", log)  # when, then the command line
    assert "tiny_madformer: madformer model" in log and "1 CPU thread (train.threads)" in log
    assert "step 2/2 | loss" in log
    versions = json.loads((trained / "versions.json").read_text())
    assert {"torch", "diffusers", "torch-fidelity", "pluggy", "braceexpand"} <= versions["dependencies"].keys()
    assert versions["command"] == sys.argv  # in-process here; `madkit run ...` in a shell
    git = versions["git"]  # this test runs from a source checkout
    assert git is None or re.fullmatch(r"[0-9a-f]{40}", git["commit"])


def test_resuming_with_changed_training_values_refuses_unless_allowed(trained, tmp_path, capsys):
    run = tmp_path / "tiny"
    shutil.copytree(trained, run)
    config = (run / "config.resolved.toml").read_bytes()
    assert main(run_args(run, "train.lr=5e-4", "train.steps=3", "train.log_every=1")) == 2
    err = capsys.readouterr().err
    assert "train.lr 0.001 -> 0.0005" in err and "train.steps 2 -> 3" in err and "--allow-changes" in err
    assert "log_every" not in err  # bookkeeping may change freely
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (run / "config.resolved.toml").read_bytes() == config  # nothing was written
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["00000002"]

    assert main(run_args(run, "train.lr=5e-4", "train.steps=3", extra=("--allow-changes",))) == 0
    assert (run / "checkpoints" / "00000003").is_dir()
    assert "lr = 0.0005" in (run / "config.resolved.toml").read_text()
    assert "resuming with changed values: train.lr 0.001 -> 0.0005, train.steps 2 -> 3" in (run / "train.log").read_text()


def test_a_checkpoint_from_before_a_new_spec_key_resumes_without_complaint(trained, tmp_path, capsys):
    run = tmp_path / "older"
    shutil.copytree(trained, run)
    state_file = run / "checkpoints" / "00000002" / "state.pt"
    state = torch.load(state_file, weights_only=True)
    del state["spec"]["data"]["holdout"], state["spec"]["train"]["init_from"]  # keys this madkit added
    torch.save(state, state_file)
    assert main(run_args(run)) == 0  # the defaults fill them in: no change, nothing to refuse
    assert "already trained to step 2" in capsys.readouterr().out


def test_init_from_starts_a_fresh_run_from_the_ema_weights(trained, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "tuned"
    # a learning rate so small that one step leaves the loaded weights as they were, to float precision
    assert main(run_args(out, f"train.init_from={str(trained)!r}", "train.steps=1", "train.lr=1e-12")) == 0
    assert f"starting from the weights of {trained / 'checkpoints' / '00000002'}" in capsys.readouterr().out
    source = load_file(trained / "checkpoints" / "00000002" / "ema.safetensors")
    tuned = load_file(out / "checkpoints" / "00000001" / "model.safetensors")
    assert source.keys() == tuned.keys()
    assert all(torch.allclose(source[k], tuned[k], atol=1e-6) for k in source)
    fresh = load_file(trained / "checkpoints" / "00000002" / "model.safetensors")
    assert any(not torch.allclose(fresh[k], tuned[k], atol=1e-6) for k in source)  # EMA, not the raw weights


def test_threads_flag_and_auto_rule(monkeypatch):
    assert threads.choose_threads(3) == (3, "train.threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads(0) == (2, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.6, 0.0, 0.0))  # a busy machine
    assert threads.choose_threads(0) == (1, "auto: 0 of 4 cores idle")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.0, 0.0))  # a quiet one
    assert threads.choose_threads(0)[0] == 4
    assert main(["run", str(TINY), "--threads", "0"]) == 2


# --------------------------------------------------------------------------- sampling
def test_sample_grid_is_grid_png_and_guidance_needs_a_conditional_model(trained, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(trained), "--num", "2", "--steps", "1", "--grid", "--out", str(out)]) == 0
    assert (out / "grid.png").is_file()
    shard = tmp_path / "sharded"
    assert main(["sample", str(trained), "--num", "2", "--steps", "1", "--grid", "--shard", "1/2", "--out", str(shard)]) == 0
    assert (shard / "grid-1of2.png").is_file()
    capsys.readouterr()

    refused = tmp_path / "g3"
    assert main(["sample", str(trained), "--num", "2", "--guidance", "3", "--out", str(refused)]) == 2
    err = capsys.readouterr().err
    assert "--guidance: guidance 3 needs a class-conditional model" in err and "Traceback" not in err
    assert not refused.exists()


def test_the_python_api_checks_labels_and_guidance(trained):
    pipe = madkit.load(trained, device="cpu")
    assert not pipe.model.class_conditional
    with pytest.raises(ValueError, match="does not use class labels"):
        pipe.generate(labels=[0, 1])
    with pytest.raises(ValueError, match="guidance 2 needs a class-conditional model"):
        pipe.generate(2, guidance=2.0)
    images = pipe.generate(2, steps=1, output="uint8")
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8


# --------------------------------------------------------------------------- notes
def test_validate_says_what_a_kind_swap_dropped_and_shows_the_shapes(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20), "red").save(tmp_path / "imgs" / "a.png")
    args = ["validate", str(TINY), "--set", "data.kind=folder", "--set", f"data.root={tmp_path / 'imgs'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "images 3x256x256" in out  # the folder kind's default resolution, not the file's 16
    assert "[data] changed kind ('openmoji' -> 'folder')" in out and "resolution, limit" in out
