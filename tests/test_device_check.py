"""benchmarks/device_check.py: the prepared GPU check, exercised on the CPU with --cpu-smoke."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/device_check.py"


def device_check(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MADKIT_PLUGINS"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def script():
    """The script as a module, for calls in this process (its sections still run in their own)."""
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_without_cuda_it_stops_at_once_and_says_what_to_do(script, tmp_path, capsys):
    assert script.main(["--json", str(tmp_path / "check.json")]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA device" in err and "--cpu-smoke" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "check.json").exists()


def test_a_section_past_its_budget_leaves_the_others_figures(script, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "check.json"
    args = ["--cpu-smoke", "--only", "sample,train-step", "--budget", "train-step=2", "--sample-steps", "2,4"]
    assert script.main([*args, "--json", str(out)]) == 1
    stdout = capsys.readouterr().out
    report = json.loads(out.read_text())
    sample, train_step = report["sections"]["sample"], report["sections"]["train-step"]
    assert sample["status"] == "ok", sample
    assert [sample["figures"][k]["steps"] for k in ("steps_2", "steps_4")] == [2, 4]
    assert all(sample["figures"][k]["images_per_s"] > 0 for k in ("steps_2", "steps_4"))
    assert train_step["status"] == "timeout" and train_step["budget_s"] == 2
    assert report["env"]["mode"] == "cpu-smoke"
    table = stdout[stdout.index("section") :]
    assert "sample" in table and "timeout" in table and "2 steps:" in table


def test_bad_options_are_one_line_errors(tmp_path):
    proc = device_check(tmp_path, "--only", "train-step,warp-drive")
    assert proc.returncode == 2 and "unknown section(s) ['warp-drive']" in proc.stderr


@pytest.mark.slow
def test_cpu_smoke_runs_every_section(tmp_path):
    out = tmp_path / "check.json"
    proc = device_check(tmp_path, "--cpu-smoke", "--json", str(out), timeout=1500)
    report = json.loads(out.read_text())
    assert proc.returncode == 0, json.dumps(report, indent=1)[-6000:]
    sections = report["sections"]
    assert all(s["status"] == "ok" for s in sections.values())
    for key in ("without_activation_checkpointing", "with_activation_checkpointing"):
        figures = sections["train-step"]["figures"][key]
        assert figures["images_per_s"] > 0 and figures["train_tflops_per_s"] > 0
    assert {"steps_2", "steps_5"} <= set(sections["sample"]["figures"])
    for strategy in ("ddp", "fsdp"):
        run = sections["torchrun"]["figures"][strategy]
        assert run["returncode"] == 0 and run["steps"] == 4 and run["images_per_s"] > 0
    assert sections["pytest-gpu"]["figures"]["returncode"] in (0, 5)
