"""What docs/reliability.md promises, each through ``madkit.cli.main`` (the ``madkit`` command minus an
interpreter start-up; the registry is swapped for one holding the test plugin):

- a slowly diverging run stops before saving a bad state, keeps and names its newest healthy
  checkpoint, and ``--from STEP`` continues from it; under ``warn``, pruning keeps it;
- one writer per run folder: a second ``run`` is refused and changes nothing, side writers (report,
  sample, eval) are refused beside a run, and a SIGKILLed holder never blocks the next run;
- a truncated or garbage newest checkpoint is skipped (named, moved aside) by ``run`` and ``sample``;
- a full disk (a patched writer, a real small tmpfs, or too little free space) leaves no temp folder
  and a message that says "disk full" and which checkpoint is still the latest;
- a run killed while drawing its final sample grid draws it on the next invocation.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import signal
import subprocess
import time

import engine_fakes as fakes
import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture)

from madkit import cli
from madkit.engine import checkpoints as ckpt
from madkit.engine.checkpoints import saving
from madkit.engine.checkpoints.run_folder import read_metrics
from madkit.engine.checkpoints.run_lock import RunLock
from madkit.engine.checkpoints.weights import load_for_inference
from madkit.engine.training.health import recorded_health
from madkit.engine.training.loop import train


@pytest.fixture
def registry(monkeypatch):
    return fakes.serve_registry(monkeypatch, fakes.make_registry())


def madkit(*args: str) -> int:
    return cli.main([str(a) for a in args])


def err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def steps_of(run) -> list[int]:
    return [step for step, _ in ckpt.list_checkpoints(run)]


def no_temp_folders(run) -> bool:
    return not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


# --------------------------------------------------------------------------- health
# the learning rate warms up to 3.0 over the whole run: healthy at first, then a slow divergence
DIVERGING = {
    "steps": 40, "lr": 3.0, "warmup": 1.0, "lr_schedule": "constant", "grad_clip": 0.0,
    "ckpt_every": 2, "keep_ckpts": 1, "log_every": 1,
}


def test_slow_divergence_stops_before_saving_and_names_the_healthy_checkpoint(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, train={**DIVERGING, "health": {"window": 3}}, log={"sinks": []})
    out = tmp_path / "run"
    assert madkit("run", spec, "--out", out) == 1
    line, _hint = err_lines(capsys)
    assert "training is diverging: the median loss of the last 3 steps is" in line and "Traceback" not in line
    *_, healthy = [folder for _, folder in ckpt.list_checkpoints(out) if recorded_health(folder)["passed"]]
    assert f"the newest healthy checkpoint is {healthy}" in line and f"--from {int(healthy.name)} --allow-changes`" in line
    stopped_at = int(line.split("step ", 1)[1].split(":")[0])
    assert int(healthy.name) < stopped_at < 40  # it stopped early, after that checkpoint
    # keep_ckpts = 1, and yet the healthy checkpoint was kept; anything newer was already suspect
    assert all(step <= int(healthy.name) or not recorded_health(folder)["passed"]
               for step, folder in ckpt.list_checkpoints(out))
    _, model = load_for_inference(healthy, registry)
    assert max(p.abs().max() for p in model.parameters()) < 100  # the healthy weights, not exploded ones

    # lower the peak learning rate and continue from the healthy checkpoint
    capsys.readouterr()
    calm = fakes.write_spec(tmp_path, "calm.toml", train={**DIVERGING, "lr": 0.05, "health": {"window": 3}},
                            log={"sinks": []})
    assert madkit("run", calm, "--out", out, "--from", int(healthy.name), "--allow-changes") == 0
    assert steps_of(out)[-1] == 40 and recorded_health(ckpt.latest_checkpoint(out))["passed"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 41))


def test_from_step_sets_newer_checkpoints_aside(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, train={"steps": 6, "ckpt_every": 2, "keep_ckpts": 3}, log={"sinks": []})
    out = tmp_path / "run"
    assert madkit("run", spec, "--out", out) == 0
    assert steps_of(out) == [2, 4, 6]
    assert madkit("run", spec, "--out", out, "--from", 2) == 0
    assert steps_of(out) == [2, 4, 6]  # trained again from 2
    (aside,) = (out / "set-aside").iterdir()
    assert aside.name.endswith("after-step-2") and sorted(p.name for p in aside.iterdir()) == ["00000004", "00000006"]
    assert "moved checkpoint(s) 00000004, 00000006" in capsys.readouterr().err
    assert madkit("run", spec, "--out", out, "--from", 3) == 2
    (line,) = err_lines(capsys)
    assert f"--from 3: {out} has no checkpoint of step 3 (its checkpoints: 2, 4, 6)" in line


def test_warn_keeps_training_and_pruning_keeps_the_newest_healthy_checkpoint(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, train={**DIVERGING, "health": {"window": 3, "action": "warn"}},
                            log={"sinks": []})
    out = tmp_path / "run"
    assert madkit("run", spec, "--out", out) == 0
    assert "warning: training looks unhealthy" in capsys.readouterr().err
    records = {step: recorded_health(folder) for step, folder in ckpt.list_checkpoints(out)}
    assert len(records) == 2 and not records[40]["passed"]  # keep_ckpts = 1, plus the healthy one
    (healthy,) = [step for step, r in records.items() if r["passed"]]
    assert healthy < 40 and "the median loss of the last 3 steps" in records[40]["problems"][0]


def test_exploding_weights_stop_the_run(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, train={**DIVERGING, "health": {"loss_factor": 0.0, "max_weight": 8.0}},
                            log={"sinks": []})
    assert madkit("run", spec, "--out", tmp_path / "run") == 1
    line = err_lines(capsys)[0]
    assert "the largest |weight| is" in line and "train.health.max_weight = 8" in line
    for _, folder in ckpt.list_checkpoints(tmp_path / "run"):
        assert recorded_health(folder)["max_abs_weight"] <= 8.0


# --------------------------------------------------------------------------- one writer per run folder
def _train_child(spec_path, out):
    torch.set_num_threads(1)
    registry = fakes.make_registry()
    train(fakes.load(spec_path, registry), registry, out)


def _start(spec, out):
    """A training run in a forked child (what `madkit run` does, without an interpreter start-up)."""
    proc = multiprocessing.get_context("fork").Process(target=_train_child, args=(spec, out))
    proc.start()
    return proc


def _wait_for(condition, what, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_second_run_is_refused_and_a_killed_holder_blocks_nothing(tmp_path, registry, capsys):
    slow = fakes.write_spec(tmp_path, "a.toml", model={"sleep_s": 0.05},
                            train={"steps": 400, "ckpt_every": 1, "keep_ckpts": 2}, log={"sinks": []})
    other = fakes.write_spec(tmp_path, "b.toml", seed=99, train={"steps": 3}, log={"sinks": []})
    out = tmp_path / "run"
    holder = _start(slow, out)
    try:
        _wait_for(lambda: ckpt.latest_checkpoint(out) is not None, "the first run's first checkpoint")
        assert madkit("run", other, "--out", out) == 2
        (line,) = err_lines(capsys)
        assert f"cannot train in {out}: the run folder is in use by madkit run (pid {holder.pid}" in line
        assert "nothing was changed" in line
        for side in (["report", out], ["sample", out, "--num", "1", "--steps", "1"]):
            assert madkit(*side) == 2
            assert "the run folder is in use by madkit run" in err_lines(capsys)[0]
        assert madkit("report", out, "--out", tmp_path / "elsewhere.html") == 0  # outside the folder: fine
        assert "seed = 7" in (out / "config.resolved.toml").read_text()  # the first run's spec, not 99
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    finally:
        if holder.is_alive():
            holder.kill()
    # the kernel dropped the dead holder's lock: the run continues where it stopped (2 more steps, faster)
    killed_at = int(ckpt.latest_checkpoint(out).name)
    resumed = fakes.write_spec(tmp_path, "a2.toml", train={"steps": killed_at + 2, "ckpt_every": 1, "keep_ckpts": 2},
                               log={"sinks": []})
    assert madkit("run", resumed, "--out", out, "--allow-changes") == 0  # no sleeping, fewer steps
    assert steps_of(out)[-1] == killed_at + 2
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, killed_at + 3))


def _hold_lock_with_a_forked_worker(folder, ready):
    RunLock(folder, "madkit run").acquire()
    worker = os.fork()  # what a DataLoader worker is: it inherits every open descriptor
    if worker == 0:
        time.sleep(60)
        os._exit(0)
    (folder / "worker.pid").write_text(str(worker))
    ready.set()
    time.sleep(60)


def test_a_killed_holders_forked_workers_do_not_keep_its_lock(tmp_path):
    ready = multiprocessing.get_context("fork").Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_lock_with_a_forked_worker, args=(tmp_path, ready))
    holder.start()
    assert ready.wait(60)
    worker = int((tmp_path / "worker.pid").read_text())
    try:
        with pytest.raises(Exception, match="in use by madkit run"):
            RunLock(tmp_path, "madkit run").acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        os.kill(worker, 0)  # the orphaned worker still lives ...
        RunLock(tmp_path, "madkit run").acquire().release()  # ... and holds nothing
    finally:
        for pid in (holder.pid, worker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_run_is_refused_while_eval_or_sample_writes_into_the_folder(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, train={"steps": 2}, log={"sinks": []})
    out = tmp_path / "run"
    assert madkit("run", spec, "--out", out) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with RunLock(out, "madkit eval", shared=True):
        assert madkit("run", spec, "--out", out, "--set", "train.steps=4") == 2
        assert "in use by a madkit eval, sample, sweep or report" in err_lines(capsys)[0]
        assert madkit("report", out) == 0  # side writers share the folder
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "report.html"} == before


# --------------------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_newest_checkpoint_is_skipped_by_sample_and_run(tmp_path, registry, capsys, damage):
    spec = fakes.write_spec(tmp_path, train={"steps": 4, "ckpt_every": 2, "keep_ckpts": 3}, log={"sinks": []})
    out = tmp_path / "run"
    assert madkit("run", spec, "--out", out) == 0
    newest = out / "checkpoints" / "00000004"
    weights = newest / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    capsys.readouterr()

    assert madkit("sample", out, "--num", "2", "--steps", "2") == 0
    (warning,) = err_lines(capsys)
    assert f"skipping checkpoint {newest}: {weights}: " in warning
    assert f"using {out / 'checkpoints' / '00000002'} instead" in warning
    assert next(p.name for p in (out / "samples").iterdir() if p.is_dir()).startswith("00000002-")

    more = fakes.write_spec(tmp_path, "more.toml", train={"steps": 6, "ckpt_every": 2, "keep_ckpts": 3},
                            log={"sinks": []})
    assert madkit("run", more, "--out", out, "--allow-changes") == 0  # train.steps 4 -> 6
    assert f"skipping checkpoint {newest}" in capsys.readouterr().err
    assert steps_of(out) == [2, 4, 6]  # step 4 trained again, from step 2
    (aside,) = (out / "set-aside").iterdir()
    assert aside.name.endswith("-damaged") and (aside / "00000004").is_dir()
    load_for_inference(out, registry)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 7))


def test_a_named_damaged_checkpoint_is_refused_in_one_line(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, train={"steps": 4, "ckpt_every": 2, "keep_ckpts": 3}, log={"sinks": []})
    out = tmp_path / "run"
    assert madkit("run", spec, "--out", out) == 0
    state = out / "checkpoints" / "00000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:-40])
    capsys.readouterr()
    assert madkit("sample", out / "checkpoints" / "00000004", "--num", "1") == 2
    (line,) = err_lines(capsys)
    assert f"{state}: damaged or not a madkit state file" in line
    assert f"holds older checkpoints, e.g. {out / 'checkpoints' / '00000002'}" in line


# --------------------------------------------------------------------------- a full disk
def _full_after(real, good_calls):
    """A writer that works ``good_calls`` times, then writes half a file and fails as a full disk does."""
    calls = {"n": 0}

    def write(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] <= good_calls:
            return real(tensors, path, metadata=metadata)
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    return write


def test_a_full_disk_mid_save_leaves_no_temp_folder_and_names_the_latest(tmp_path, registry, capsys, monkeypatch):
    spec = fakes.write_spec(tmp_path, train={"steps": 6, "ckpt_every": 2}, log={"sinks": []})
    out = tmp_path / "run"
    # two files per checkpoint: the second checkpoint's first file fails
    monkeypatch.setattr(saving, "save_file", _full_after(saving.save_file, 2))
    assert madkit("run", spec, "--out", out) == 1
    line = err_lines(capsys)[0]
    assert "the checkpoint of step 4 could not be written" in line and "disk full (No space left on device)" in line
    assert f"the latest checkpoint is still {out / 'checkpoints' / '00000002'}" in line
    assert no_temp_folders(out) and steps_of(out) == [2]
    load_for_inference(out, registry)


def test_too_little_free_space_is_refused_before_writing(tmp_path, registry, capsys, monkeypatch):
    from madkit.engine.checkpoints import disk_space

    spec = fakes.write_spec(tmp_path, train={"steps": 2}, log={"sinks": []})
    monkeypatch.setattr(disk_space, "free_bytes", lambda folder: 4096)
    assert madkit("run", spec, "--out", tmp_path / "run") == 1
    line = err_lines(capsys)[0]
    assert line.startswith("madkit run: error: disk full: the checkpoint of step 2 needs about")
    assert "has 4.0 KiB free; nothing was written; no checkpoint had been written yet" in line
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


@contextlib.contextmanager
def small_tmpfs(path, size):
    path.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("mounting a tmpfs needs root; the patched-writer tests cover this path")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False, capture_output=True, timeout=30)


@pytest.mark.parametrize("precheck", [True, False], ids=["free-space-check", "write-fails"])
def test_a_real_full_tmpfs(tmp_path, registry, capsys, monkeypatch, precheck):
    """A 1 MiB tmpfs fills up: either the free-space check refuses the next save, or (with the check
    switched off) a real write runs out of space: ENOSPC from safetensors or torch's zip writer."""
    if not precheck:
        monkeypatch.setattr(saving, "ensure_free", lambda *args: None)
    with small_tmpfs(tmp_path / "small", "1m") as disk:
        out = disk / "run"
        spec = fakes.write_spec(tmp_path, train={"steps": 400, "ckpt_every": 1, "keep_ckpts": 400}, log={"sinks": []})
        assert madkit("run", spec, "--out", out) == 1
        line = err_lines(capsys)[0]
        latest = ckpt.latest_checkpoint(out)
        assert "disk full" in line and f"the latest checkpoint is still {latest}" in line
        assert no_temp_folders(out) and 1 < int(latest.name) < 400  # some were written, then the disk was full
        load_for_inference(out, registry)


# --------------------------------------------------------------------------- data read as it is
def test_a_16_bit_ramp_trains_with_its_range(tmp_path, monkeypatch, capsys):
    """`madkit run` on a folder holding one 16-bit grayscale ramp: the latents it trains on (pool codec,
    factor 1, cached so they can be read back) span black to white, not a clipped near-white."""
    import numpy as np
    from madkit_data import plugin as data_plugin
    from PIL import Image

    from madkit.experiment_spec import dumps_toml

    registry = fakes.make_registry()
    registry.add_plugin(data_plugin, "data")
    fakes.serve_registry(monkeypatch, registry)
    images = tmp_path / "images"
    images.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 8).round().astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(images / "ramp.png")  # mode I;16: a 16-bit grayscale PNG
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in fakes.BASE_SPEC.items()}
    spec["data"] = {"kind": "folder", "root": str(images), "resolution": 8}
    spec["codec"] = {"kind": "test-engine-pool", "factor": 1}
    spec["train"].update(steps=1, latent_cache=str(tmp_path / "cache"))
    spec["log"] = {"sinks": [], "progress": False}
    (tmp_path / "spec.toml").write_text(dumps_toml(spec))
    assert madkit("run", tmp_path / "spec.toml", "--out", tmp_path / "run") == 0
    (latents,) = [np.load(p) for p in (tmp_path / "cache").rglob("latents-*.npy")]
    row = latents[0, 0, 0].astype(np.float64)  # image 0, channel 0, top row
    assert row[0] == -1.0 and row[-1] == 1.0 and (np.diff(row) > 0).all()


# --------------------------------------------------------------------------- the final sample grid
def test_a_kill_while_drawing_the_final_grid_is_made_good_next_time(tmp_path, registry):
    spec = fakes.write_spec(tmp_path, model={"sample_sleep_s": 30}, train={"steps": 2}, log={"sinks": []})
    out = tmp_path / "run"
    child = _start(spec, out)
    try:
        _wait_for(lambda: ckpt.latest_checkpoint(out) is not None, "the final checkpoint")
        time.sleep(0.2)  # now inside the (slow) drawing of the final grid
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    finally:
        if child.is_alive():
            child.kill()
    grid = out / "samples" / "step_00000002.png"
    assert not grid.exists()
    metrics = (out / "metrics.jsonl").read_text()
    fast = fakes.write_spec(tmp_path, train={"steps": 2}, log={"sinks": []})
    result = train(fakes.load(fast, registry), registry, out, allow_changes=True)  # without the slow drawing
    assert result.samples == grid and grid.is_file()
    assert (out / "metrics.jsonl").read_text() == metrics  # nothing was trained again
