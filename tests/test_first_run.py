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
from madkit import threads

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
    assert threads.choose_threads(3, "train.threads") == (3, "train.threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads(0) == (2, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "physical_cores", lambda: 4)
    assert threads.choose_threads(None) == (4, "auto: 4 physical cores")
    monkeypatch.setattr(threads, "physical_cores", lambda: 64)
    assert threads.choose_threads(0)[0] == threads.AUTO_MAX
    assert main(["run", str(TINY), "--threads", "0"]) == 2


def test_the_thread_count_does_not_depend_on_the_load(monkeypatch):
    """Two runs started at different load get the same count (the old rule followed the load average)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    counts = set()
    for load in (0.0, 1.9, 7.5):
        monkeypatch.setattr(threads.os, "getloadavg", lambda load=load: (load, load, load), raising=False)
        counts.add(threads.choose_threads(0))
    assert len(counts) == 1 and next(iter(counts))[0] >= 1


def test_physical_cores_counts_cores_not_hyperthreads(tmp_path):
    def cpu(n, package, core):
        topology = tmp_path / f"cpu{n}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")

    for n, (package, core) in enumerate([(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0)]):
        cpu(n, package, core)  # 2 packages, 3 cores, 6 hyper-threads
    assert threads.physical_cores(list(range(6)), sysfs=tmp_path) == 3
    assert threads.physical_cores([0, 1], sysfs=tmp_path) == 1  # affinity: one core's two threads
    assert threads.physical_cores([0, 7], sysfs=tmp_path) == 2  # unreadable topology: the CPUs themselves


def test_every_computing_command_takes_threads(trained, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        sample = ["sample", str(trained), "--num", "1", "--steps", "1"]
        assert main([*sample, "--threads", "1", "--out", str(tmp_path / "a")]) == 0
        assert torch.get_num_threads() == 1
        assert main([*sample, "--threads", "0", "--out", str(tmp_path / "b")]) == 2
        capsys.readouterr()
        commands = (["eval", str(trained), "--num", "1"], ["sweep", str(trained), "--num", "1", "--steps", "1"],
                    ["fid-stats", str(TINY), "--out", str(tmp_path / "r.npz")], ["study", str(tmp_path)])
        for command in commands:
            assert main([*command, "--threads", "-1"]) == 2, command
            assert "--threads must be a positive thread count (at most 4096), got -1" in capsys.readouterr().err, command
    finally:
        torch.set_num_threads(before)


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


def test_a_grid_lost_between_its_checkpoint_and_its_drawing_is_drawn_on_resume(tmp_path, capsys):
    """A kill after the checkpoint of step 2 and before its grid: resuming draws that grid first, the
    same pixels the uninterrupted run drew (EMA weights and noise are restored/fixed)."""
    out = tmp_path / "run"
    every = ("train.sample_every=2", "train.ckpt_every=2", "train.keep_ckpts=5")
    assert main(run_args(out, "train.steps=2", *every)) == 0
    grid = out / "samples" / "step_00000002.png"
    drawn = grid.read_bytes()
    grid.unlink()  # what the kill left: the checkpoint of step 2, no grid
    assert main(run_args(out, "train.steps=4", *every, extra=("--allow-changes",))) == 0
    assert "making the missing sample grid of step 2" in capsys.readouterr().out
    assert grid.read_bytes() == drawn
    assert (out / "samples" / "step_00000004.png").is_file()
