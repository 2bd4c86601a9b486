"""Checkpoints: atomic folders, finding the latest valid one, pruning, plain state, inference loading, kills."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import time

import engine_fakes as fakes
import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture)
from safetensors.torch import load_file
from torch import nn

from madkit.engine import checkpoints as ckpt
from madkit.engine.checkpoints.run_folder import read_metrics
from madkit.engine.checkpoints.weights import load_for_inference
from madkit.engine.training.loop import train


@pytest.fixture(scope="module")
def registry():
    return fakes.make_registry()


def tiny_state(step: int) -> tuple[dict, dict, dict]:
    w = {"w": torch.full((2, 2), float(step))}
    return w, w, {"step": step}


def test_latest_ignores_temp_and_incomplete_folders(tmp_path):
    for step in (2, 10):
        ckpt.save_checkpoint(tmp_path, step, *tiny_state(step), keep=5)
    root = tmp_path / "checkpoints"
    (root / ".tmp-00000011-4242").mkdir()  # a save killed mid-write
    (root / ".tmp-00000011-4242" / "model.safetensors").write_bytes(b"torn")
    (root / "00000012").mkdir()  # a folder under a valid name but incomplete (e.g. hand-copied)
    (root / "00000012" / "state.pt").write_bytes(b"")
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 10]  # numeric order, not text order
    assert ckpt.latest_checkpoint(tmp_path) == root / "00000010"
    with pytest.raises(ckpt.CheckpointError, match="incomplete: missing model.safetensors, ema.safetensors"):
        ckpt.resolve_checkpoint(root / "00000012")
    assert ckpt.latest_checkpoint(tmp_path / "nothing-here") is None


def test_save_keeps_the_newest_and_sweeps_leftovers(tmp_path):
    (tmp_path / "checkpoints" / ".tmp-del-00000001-7").mkdir(parents=True)  # an interrupted prune
    for step in range(1, 6):
        ckpt.save_checkpoint(tmp_path, step, *tiny_state(step), keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["00000004", "00000005"]
    assert load_file(tmp_path / "checkpoints" / "00000005" / "model.safetensors")["w"][0, 0] == 5.0


def test_compiled_submodule_names_are_unwrapped():
    model = nn.Sequential(nn.Linear(2, 2))
    model.add_module("1", torch.compile(nn.Linear(2, 2)))  # wrapping is lazy: nothing compiles here
    names = set(ckpt.unwrapped_state_dict(model))
    assert names == {"0.weight", "0.bias", "1.weight", "1.bias"}
    fresh = nn.Sequential(nn.Linear(2, 2))
    fresh.add_module("1", torch.compile(nn.Linear(2, 2)))
    ckpt.load_unwrapped(fresh, ckpt.unwrapped_state_dict(model))
    assert torch.equal(fresh[1]._orig_mod.weight, model[1]._orig_mod.weight)


def test_a_training_checkpoint_is_plain_data_with_everything(tmp_path, registry):
    spec = fakes.write_spec(tmp_path, train={"steps": 2})
    result = train(fakes.load(spec, registry), registry, tmp_path / "run")
    state = torch.load(result.checkpoint / "state.pt", weights_only=True)
    assert {"step", "optimizer", "lr_schedule", "scaler", "data", "rng", "ema", "spec", "versions"} <= state.keys()
    assert state["step"] == 2 and state["data"] == {"consumed": 8, "epoch": 0, "index": 8}
    assert {"python", "numpy", "torch", "cuda"} <= state["rng"][0].keys()
    assert state["spec"]["model"]["kind"] == "test-engine-tiny" and "test-engine" in state["versions"]["plugins"]
    for name in ("model.safetensors", "ema.safetensors"):
        keys = load_file(result.checkpoint / name).keys()
        assert "inp.weight" in keys and not any(k.startswith("module.") or "_orig_mod" in k for k in keys)


def test_load_for_inference_rebuilds_from_the_stored_spec(tmp_path, registry):
    spec = fakes.write_spec(tmp_path, train={"steps": 2, "ema_decay": 0.5})
    result = train(fakes.load(spec, registry), registry, tmp_path / "run")
    spec.unlink()  # inference must not need the spec file
    ema = load_file(result.checkpoint / "ema.safetensors")
    raw = load_file(result.checkpoint / "model.safetensors")
    experiment, model = load_for_inference(tmp_path / "run", registry)
    assert model is experiment.model and not model.training
    assert torch.equal(model.state_dict()["inp.weight"], ema["inp.weight"])
    assert not torch.equal(ema["inp.weight"], raw["inp.weight"])  # decay 0.5: the EMA lags
    _, model_raw = load_for_inference(result.checkpoint, registry, use_ema=False)
    assert torch.equal(model_raw.state_dict()["inp.weight"], raw["inp.weight"])
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    assert model.generate(experiment.sampler, gens, labels=torch.tensor([0, 1])).shape == (2, 3, 4, 4)
    with pytest.raises(ckpt.CheckpointError, match="holds no complete checkpoint"):
        load_for_inference(tmp_path, registry)


def test_resume_auto_skips_a_torn_save(tmp_path, registry):
    spec = fakes.write_spec(tmp_path)
    train(fakes.load(spec, registry), registry, tmp_path / "run", stop_after=2)
    torn = tmp_path / "run" / "checkpoints" / ".tmp-00000003-99999"
    torn.mkdir()
    (torn / "state.pt").write_bytes(b"\x00" * 10)
    result = train(fakes.load(spec, registry), registry, tmp_path / "run")
    assert result.step == 4 and not torn.exists()
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]


# --------------------------------------------------------------------------- verification
def _damaged(tmp_path, damage):
    for step in (2, 4):
        ckpt.save_checkpoint(tmp_path, step, *tiny_state(step), keep=5)
    folder = tmp_path / "checkpoints" / "00000004"
    model = folder / "model.safetensors"
    data = model.read_bytes()
    if damage == "truncated":
        model.write_bytes(data[:-3])
    elif damage == "longer":
        model.write_bytes(data + b"\0" * 8)
    elif damage == "header":
        model.write_bytes(data[:8] + b"{not json" + data[17:])
    elif damage == "names":
        ckpt.save_checkpoint(tmp_path, 6, {"w": torch.zeros(1)}, {"v": torch.zeros(1)}, {"step": 6}, keep=5)
        return tmp_path / "checkpoints" / "00000006"
    elif damage == "state":
        (folder / "state.pt").write_bytes((folder / "state.pt").read_bytes()[:100])
    elif damage == "step":
        torch.save({"format": 1, "step": 3}, folder / "state.pt")
    return folder


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", "truncated: the header describes"),
        ("longer", "longer than its header describes"),
        ("header", "damaged safetensors header"),
        ("names", "hold different tensors"),
        ("state", "damaged or not a madkit state file"),
        ("step", "records step 3, but its folder is named 00000004"),
    ],
)
def test_verification_names_the_damage_and_falls_back(tmp_path, damage, message):
    from madkit.engine.checkpoints.verify import CorruptCheckpointError, newest_verified, verify_checkpoint

    bad = _damaged(tmp_path, damage)
    with pytest.raises(CorruptCheckpointError, match=message):
        verify_checkpoint(bad)
    chosen, skipped = newest_verified(tmp_path)
    assert chosen == tmp_path / "checkpoints" / "00000002" or (damage == "names" and chosen.name == "00000004")
    assert skipped[0][0] == bad and message.split(":")[0] in skipped[0][1]
    verify_checkpoint(tmp_path / "checkpoints" / "00000002")  # an intact one passes


# --------------------------------------------------------------------------- SIGKILL during training
def _train_child(spec_path, out):
    torch.set_num_threads(1)
    registry = fakes.make_registry()
    train(fakes.load(spec_path, registry), registry, out)


def _launch(mode: str, spec_path, out, tmp_path):
    if mode == "fork":  # a forked child: no interpreter start-up, so many kills stay cheap
        proc = multiprocessing.get_context("fork").Process(target=_train_child, args=(spec_path, out))
        proc.start()
        return proc.pid, proc.join, lambda: proc.exitcode
    proc = subprocess.Popen(
        fakes.madkit_cmd("run", str(spec_path), "--out", str(out)),
        env=fakes.cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc.pid, proc.wait, lambda: proc.returncode


@pytest.mark.parametrize("mode", ["fork", pytest.param("cli", marks=pytest.mark.slow)])
def test_sigkill_never_leaves_an_unloadable_latest_checkpoint(tmp_path, registry, mode):
    seed = int.from_bytes(os.urandom(4), "little")
    pick = random.Random(seed)
    steps = 40
    spec = fakes.write_spec(
        tmp_path, train={"steps": steps, "ckpt_every": 1, "keep_ckpts": 2, "log_every": 1}, log={"sinks": []}
    )
    out = tmp_path / "run"
    last_step = 0
    for kill in range(3):
        pid, wait, _ = _launch(mode, spec, out, tmp_path)
        deadline = time.monotonic() + 120
        while (latest := ckpt.latest_checkpoint(out)) is None or int(latest.name) <= last_step:
            assert time.monotonic() < deadline, f"no progress before kill {kill} (seed {seed})"
            time.sleep(0.005)
        time.sleep(pick.uniform(0.0, 0.15))  # a random moment: mid-step, mid-save or mid-prune
        os.kill(pid, signal.SIGKILL)
        wait()
        latest = ckpt.latest_checkpoint(out)
        state = ckpt.load_state(latest)  # readable with weights_only=True
        load_for_inference(out, registry)  # and its weights load
        assert state["step"] == int(latest.name) >= last_step, f"seed {seed}"
        last_step = state["step"]
        if last_step >= steps:
            break
    pid, wait, exitcode = _launch(mode, spec, out, tmp_path)  # the same command again finishes the run
    wait()
    assert exitcode() == 0, f"seed {seed}"
    assert ckpt.latest_checkpoint(out).name == f"{steps:08d}"
    killed_metrics = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in killed_metrics] == list(range(1, steps + 1))  # every step logged once
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    # and bit-exact: the killed and resumed run ends where an uninterrupted one does
    straight = train(fakes.load(spec, registry), registry, tmp_path / "straight")
    for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE):
        a, b = load_file(straight.checkpoint / name), load_file(ckpt.latest_checkpoint(out) / name)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} (seed {seed})"
    assert [r["loss"] for r in killed_metrics] == [r["loss"] for r in read_metrics(straight.run_dir / "metrics.jsonl")]


def test_running_a_finished_run_again_changes_nothing(tmp_path, registry):
    spec = fakes.write_spec(tmp_path, train={"steps": 2})
    first = train(fakes.load(spec, registry), registry, tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "checkpoints").rglob("*")}
    again = train(fakes.load(spec, registry), registry, tmp_path / "run")
    assert (again.step, again.checkpoint, again.samples) == (2, first.checkpoint, first.samples)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "checkpoints").rglob("*")} == before


def test_pruning_keeps_a_checkpoint_a_reader_holds_until_the_reader_lets_go(tmp_path):
    from madkit.engine.checkpoints.read_lease import FolderMoved, read_lease

    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, *tiny_state(step), keep=1)
    held = tmp_path / "checkpoints" / "00000002"
    with read_lease(held):
        ckpt.save_checkpoint(tmp_path, 3, *tiny_state(3), keep=1)  # would prune step 2: it is being read
        assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
        assert ckpt.load_state(held)["step"] == 2
    ckpt.save_checkpoint(tmp_path, 4, *tiny_state(4), keep=1)  # released: pruned with the rest
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4]
    with pytest.raises(FolderMoved):  # a reader that chose step 2 before it went chooses again
        with read_lease(held):
            pass
