"""``madkit study`` (madkit/engine/studies/runner.py, results.py, commands/study.py): every spec x seed
trained once, finished runs skipped, points at matched compute, the mean and spread over seeds, the
verdict per budget.

The end-to-end study trains two tiny specs (D = 1 and D = 2 of N = 4) with two seeds for 2 steps;
metrics use the offline proxy extractor, trained once into a temporary cache. The same study then
runs as jobs through submitit's local executor (--launcher local, real subprocesses; launch.py) and
must give the same study.csv; the SLURM path is tests/test_study_slurm.py.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
from eval_helpers import environment  # noqa: F401 (autouse fixture for this module)
from PIL import Image

from madkit.cli import main
from madkit.engine.evaluation.points import Evaluator
from madkit.engine.studies.results import trend, verdict

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny" / "madformer.toml"
STUDY = 'seeds = [0, 1]\nsteps = [1]\nbudget_steps = [4]\nnum = 8\nbatch = 8\n'


def write_study(folder: Path, study: str = STUDY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for depth in (1, 2):
        (folder / f"d{depth}.toml").write_text(
            f'extends = "{TINY.as_posix()}"\nname = "tiny_d{depth}"\n\n[model]\ndiffusion_depth = {depth}\n\n'
            "[train]\nsteps = 2\nckpt_every = 2\nsample_num = 2\nsample_steps = 1\n\n[log]\nsinks = []\n"
        )
    (folder / "study.toml").write_text(study)
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("study")
    folder, out = write_study(root / "design"), root / "out"
    assert main(["study", str(folder), "--out", str(out)]) == 0
    return folder, out


def test_the_study_trains_every_spec_and_seed_and_summarises_them(finished):
    _, out = finished
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["d1-seed0", "d1-seed1", "d2-seed0", "d2-seed1"]
    points, rows = read_csv(out / "points.csv"), read_csv(out / "study.csv")
    assert {(p["setting"], p["seed"]) for p in points} == {(s, str(seed)) for s in ("d1", "d2") for seed in (0, 1)}
    for row in rows:  # the mean and the spread over the two seeds, from the points themselves
        mine = [float(p["fid"]) for p in points if p["setting"] == row["setting"] and p["steps"] == row["steps"]]
        assert int(row["seeds"]) == len(mine) == 2 and row["spread_of"] == "seeds"
        assert float(row["fid"]) == pytest.approx(statistics.fmean(mine))
        assert float(row["fid_std"]) == pytest.approx(statistics.stdev(mine))
        assert float(row["fid_bootstrap_std"]) > 0 and row["num"] == "8"
    # the budget is D = 2's cost at 4 steps; the AR-heavy D = 1 affords more, and is compared there
    matched = {r["setting"]: int(r["steps"]) for r in rows if r["budget_matched"] == "True"}
    assert matched["d2"] == 4 and matched["d1"] > 4
    record = json.loads((out / "study.json").read_text())
    (entry,) = record["verdict"]
    assert {e["setting"]: e["steps"] for e in entry["entries"]} == matched
    assert entry["winner"] in ("d1", "d2") and record["wall_seconds"]["trained"] == 4
    text = (out / "verdict.md").read_text()
    assert "D=1/N=4, T=4" in text and "D=2/N=4, T=4" in text and "beyond the spread" in text
    assert "8 generated images per point" in text and "Training seeds 0, 1" in text
    with Image.open(out / "study.png") as image:
        assert image.format == "PNG"


def test_a_second_run_skips_finished_runs_and_reuses_every_record(finished, monkeypatch, capsys):
    folder, out = finished
    monkeypatch.setattr("madkit.engine.training.loop.train", lambda *a, **k: pytest.fail("trained a finished run"))
    monkeypatch.setattr(Evaluator, "_generate", lambda *a, **k: pytest.fail("generated for an up-to-date record"))
    records = sorted((out / "runs").glob("*/eval/*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert main(["study", str(folder), "--out", str(out)]) == 0
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert capsys.readouterr().err.count("; skipped") == 4
    assert json.loads((out / "study.json").read_text())["wall_seconds"]["skipped"] == 4


def test_a_run_folder_trained_from_another_spec_is_refused_before_training(finished, monkeypatch, capsys):
    folder, out = finished
    monkeypatch.setattr("madkit.engine.training.loop.train", lambda *a, **k: pytest.fail("trained before refusing"))
    assert main(["study", str(folder), "--out", str(out), "--set", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "d1-seed0 was trained from another spec" in err and "train.lr" in err and "--out" in err


@pytest.mark.parametrize(
    "study, message",
    [
        ("seeds = []\n", "study.toml: seeds: must name at least one"),
        ("steps = [0, 2]\n", "study.toml: steps: step counts must be positive"),
        ("sede = [1]\n", "study.toml: sede: unknown key"),
        ('specs = ["d1.toml", "d9.toml"]\n', "specs: d9.toml does not exist"),
        ('sampler = "ddmi"\n', "study.toml: sampler: no sampler kind 'ddmi'; installed: "),
        ('extractor = {kind = "incept"}\n', "study.toml: extractor.kind: no extractor kind 'incept'"),
    ],
)
def test_a_bad_design_is_refused_with_its_file_and_key(tmp_path, capsys, study, message):
    assert main(["study", str(write_study(tmp_path / "bad", study)), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_options_are_usage_errors(tmp_path, capsys):
    assert main(["study", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["study", str(write_study(tmp_path / "s")), "--seeds", "0,x"]) == 2
    assert "--seeds '0,x'" in capsys.readouterr().err


# --------------------------------------------------------------------------- the verdict
def _row(setting, steps, fid, std, depth, n=3):
    return {"setting": setting, "steps": steps, "label": f"D={depth}", "fid": fid, "fid_std": std, "seeds": n,
            "spread_of": "seeds", "sample_flops_per_image": 1e7 * steps, "diffusion_depth": depth}


def test_the_verdict_names_the_winner_and_tests_its_margin_against_the_spread():
    rows = [_row("ar", 4, 40.0, 0.5, 1), _row("ar", 8, 38.0, 0.5, 1),
            _row("diff", 2, 42.0, 0.5, 3), _row("diff", 4, 37.8, 0.5, 3)]
    budgets = [{"flops": 2e7, "steps": 2, "setting": "diff"}, {"flops": 4e7, "steps": 4, "setting": "diff"}]
    matches = {"ar": [4, 8], "diff": [2, 4]}
    small, large = verdict(rows, budgets, matches, ["ar", "diff"])
    # 2 standard errors of the difference: 2 * sqrt(0.25/3 + 0.25/3) = 0.816
    assert small["winner"] == "ar" and small["margin"] == pytest.approx(2.0) and small["beyond_spread"]
    assert small["threshold"] == pytest.approx(0.8165, rel=1e-3)
    assert large["winner"] == "diff" and large["margin"] == pytest.approx(0.2) and not large["beyond_spread"]
    text = trend([small, large], {"ar": 1, "diff": 3})
    assert "D=1 -> D=3" in text and "consistent with the paper's trend" in text and "at 1 of 2 budget(s)" in text
    assert "not the paper's trend" in trend([large, small], {"ar": 1, "diff": 3})


def test_a_setting_that_cannot_afford_a_budget_is_left_out_of_it():
    rows = [_row("ar", 1, 40.0, 0.5, 1), _row("diff", 1, 41.0, 0.5, 3)]
    (only,) = verdict(rows, [{"flops": 1e7, "steps": 1, "setting": "ar"}], {"ar": [1], "diff": [None]}, ["ar", "diff"])
    assert only["winner"] == "ar" and "margin" not in only
    assert [e.get("fid") for e in only["entries"]] == [40.0, None]


def test_cost_adds_up_the_flops_of_every_run_and_point_without_training(tmp_path, capsys):
    """`madkit study DIR --cost`: training FLOPs = per-image cost x steps x batch x seeds, sampling
    FLOPs = per-image cost at every evaluated step count x images x seeds; nothing is written."""
    from madkit.build import build_experiment
    from madkit.experiment_spec import load_spec
    from madkit.registry import Registry

    folder = Path(__file__).resolve().parents[1] / "experiments" / "toy_studies" / "hidden_loss"
    out = tmp_path / "never"
    assert main(["study", str(folder), "--out", str(out), "--cost", "--mfu", "0.5", "--peak-tflops", "1"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    registry = Registry.load()
    spec = load_spec(folder / "d2.toml", [], registry).spec
    model = build_experiment(spec, registry, meta=True).model
    train = model.compute_cost(1)["train_flops_per_image"] * 800 * 32 * 3
    sample = model.compute_cost(8)["sample_flops_per_image"] * 1000 * 3
    row = next(line for line in text.splitlines() if line.startswith("d2 "))
    assert f"{train:.3e}" in row and f"{sample:.3e}" in row
    total = float(text.split("total ")[1].split(" FLOPs")[0])
    hours = float(text.split("= ")[1].split(" accelerator-hours")[0])
    assert hours == pytest.approx(total / (0.5 * 1e12) / 3600, rel=1e-2)
    assert "assumed 50% MFU of 1 TFLOP/s" in text


def test_validate_checks_a_study_design_as_a_study(tmp_path, capsys):
    toy = Path(__file__).resolve().parents[1] / "experiments" / "toy_study"
    assert main(["validate", str(toy / "study.toml")]) == 0
    assert "valid study: 4 setting(s) (d1, d2, d3, d4) x 3 seed(s)" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "study.toml").write_text("seedz = [1]\n")
    (bad / "a.toml").write_text((toy / "d2.toml").read_text())
    assert main(["validate", str(bad / "study.toml")]) == 2
    assert "study.toml: seedz: unknown key; did you mean 'seeds'?" in capsys.readouterr().err


# --------------------------------------------------------------------------- launched as local jobs
GATE = '''
import os, time
from pathlib import Path

import attrs

from madkit.hookspecs import hookimpl
from madkit.interfaces import Sink


@attrs.frozen
class GateConfig:
    """Holds one run's training at its last step (after its step-1 checkpoint) until ``folder/release``
    exists, its process id in ``folder/held.pid``: a job the test kills mid-training."""

    run: str
    folder: str

    def build(self, run_dir):
        return Gate(self, Path(run_dir))


class Gate(Sink):
    def __init__(self, config, run_dir):
        self.config, self.run_dir = config, run_dir

    def log_scalars(self, step, scalars):
        folder = Path(self.config.folder)
        if self.run_dir.name != self.config.run or step != 2 or (folder / "release").exists():
            return
        (folder / "held.pid").write_text(str(os.getpid()))
        while not (folder / "release").exists():
            time.sleep(0.05)


@hookimpl
def madkit_register(registry):
    registry.register("sink", "test-gate", GateConfig)
'''


def _states(table: str) -> dict[str, str]:
    return {line.split()[1]: line.split()[2] for line in table.splitlines() if line.startswith(("run ", "point "))}


def _status(folder: Path, out: Path, capsys) -> dict[str, str]:
    capsys.readouterr()
    assert main(["study", str(folder), "--out", str(out), "--status"]) == 0
    return _states(capsys.readouterr().out)


def test_a_point_is_done_only_with_a_record_of_the_studys_own_settings(finished, tmp_path, capsys):
    """--status (and so what a launch submits) counts a record only when every setting that decides it
    matches: the same steps and images drawn by another sampler leave the points to evaluate."""
    folder, out = finished
    states = _status(folder, out, capsys)
    assert set(states.values()) == {"done"} and len(states) == 4 + 4 * 2  # 4 runs, 2 step counts each
    other = tmp_path / "design"
    shutil.copytree(folder, other)
    (other / "study.toml").write_text(STUDY + 'sampler = "ddpm"\n')
    moved = _status(other, out, capsys)
    assert {k: v for k, v in moved.items() if "@" not in k} == {k: "done" for k in states if "@" not in k}
    assert {v for k, v in moved.items() if "@" in k} == {"pending"}


def test_local_jobs_give_the_inline_study_csv_and_a_killed_training_resumes(finished, tmp_path, plugin_site,
                                                                          monkeypatch, capsys):
    """The same study as the inline fixture, through submitit's local executor (real subprocesses):
    d1-seed0's training job is killed after its step-1 checkpoint; the next invocation submits it
    again (and d1's evaluation), it resumes, and study.csv equals the inline one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder, inline = finished
    plugin_site.install("madkit-test-gate", "1.0", {"test-gate": "study_gate"}, {"study_gate.py": GATE})
    gate, out = tmp_path / "gate", tmp_path / "launched"
    gate.mkdir()
    command = ["study", str(folder), "--out", str(out), "--launcher", "local", "--threads", "1",
               "--set", "train.ckpt_every=1",
               "--set", f'log.sinks=[{{kind = "test-gate", run = "d1-seed0", folder = "{gate.as_posix()}"}}]']
    # every job process, whoever starts it, finds the gate plugin
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugin_site.root), os.environ.get("PYTHONPATH", "")]))
    first = subprocess.Popen([sys.executable, "-m", "madkit", *command], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (gate / "held.pid").is_file():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
            time.sleep(0.2)
        held = _status(folder, out, capsys)  # d1-seed0 held mid-training; d1's evaluation waits for it
        assert held["d1-seed0"] == "running" and held["d1-seed0@1"] == "pending"
        os.kill(int((gate / "held.pid").read_text()), signal.SIGKILL)
        output = first.communicate(timeout=300)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1 and "run the same command again" in output, output
    killed = _status(folder, out, capsys)
    assert killed["d1-seed0"] == "failed" and killed["d1-seed0@1"] == "pending"
    assert killed["d2-seed0@1"] == killed["d1-seed1"] == "done"
    assert not (out / "study.csv").exists()

    (gate / "release").touch()
    assert main(command) == 0
    jobs = json.loads((out / "study_jobs.json").read_text())["jobs"]
    assert {k for k, v in jobs.items() if len(v["ids"]) > 1} == {"train/d1-seed0"}  # nothing done runs again
    resumed = Path(next(line.split()[-1] for line in capsys.readouterr().out.splitlines()
                        if line.startswith("run   d1-seed0")))
    assert "resuming from" in resumed.read_text() and "checkpoints/00000001 at step 1" in resumed.read_text()
    assert set(_status(folder, out, capsys).values()) == {"done"}
    mine, theirs = read_csv(out / "study.csv"), read_csv(inline / "study.csv")
    assert [(r["setting"], r["steps"], r["fid"], r["fid_std"]) for r in mine] == \
        [(r["setting"], r["steps"], r["fid"], r["fid_std"]) for r in theirs]
    assert mine == theirs


@pytest.mark.slow
def test_a_two_task_local_job_trains_on_two_ranks_and_evaluates_in_two_shards(finished, tmp_path, capsys):
    """[launcher] gpus_per_node = 2 on a CPU machine: each job is 2 tasks forming a gloo group from
    submitit's variables; the run and its FID equal the inline study's (one process)."""
    folder, inline = finished
    design = tmp_path / "two"
    design.mkdir()
    (design / "d1.toml").write_text((folder / "d1.toml").read_text())
    (design / "study.toml").write_text("seeds = [0]\nsteps = [1]\nnum = 8\nbatch = 8\n\n[launcher]\ngpus_per_node = 2\n")
    out = tmp_path / "out"
    assert main(["study", str(design), "--out", str(out), "--launcher", "local", "--threads", "1"]) == 0
    (train_log,) = [p for p in (out / "jobs").glob("*_0_log.out") if "global batch" in p.read_text()]
    assert "global batch 8 = 2 rank(s) x 1 x 4" in train_log.read_text()
    (record,) = [json.loads(p.read_text()) for p in (out / "runs" / "d1-seed0" / "eval").glob("*.json")]
    assert record["shards"] == 2
    (theirs,) = [p for p in read_csv(inline / "points.csv") if p["run"].endswith("d1-seed0") and p["steps"] == "1"]
    assert record["fid"] == pytest.approx(float(theirs["fid"]), rel=1e-6)


def test_a_study_without_budgets_says_so_instead_of_an_empty_budget_list():
    from types import SimpleNamespace

    from madkit.engine.studies.results import verdict_markdown

    config = SimpleNamespace(budget_steps=[], num=8, eval_seed=0, seeds=[0])
    study = SimpleNamespace(config=config, settings=[], folder="design")
    wall = {"total": 1.0, "train": 0.0, "evaluate": 1.0, "train_cpu": 0.0, "evaluate_cpu": 1.0, "trained": 0,
            "skipped": 0, "device": "cpu", "threads": 1}
    text = verdict_markdown(study, [], "Winners by budget: none.", [], wall)
    assert "No budgets: study.toml's budget_steps is empty" in text and "at  step(s)" not in text
