"""``madkit study DIR --launcher slurm`` without a cluster (madkit/engine/studies/launch.py, launchers.py,
study_state.py): fake ``sbatch``, ``sacct``, ``squeue``, ``scancel`` and ``srun`` on PATH record their
arguments and answer in SLURM's formats (the ones submitit parses: "Submitted batch job N", sacct's
--parsable2 table). Nothing trains: the jobs only exist in the fake scheduler's books.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from madkit.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny" / "madformer.toml"
LAUNCHER = """
[launcher]
partition = "gpu-long"
account = "madproj"
qos = "high"
time = "1-12:00:00"
eval_time = "3:30:00"
nodes = 2
gpus_per_node = 4
eval_gpus = 2
cpus_per_task = 8
mem = "200G"
constraint = "h100"
sbatch = {mail-type = "FAIL", exclusive = true}
setup = ["module load cuda/12.4", "source /opt/venvs/madkit/bin/activate"]
"""

# every fake appends "<name> <args>" to calls.log; sbatch keeps a copy of each script and numbers the jobs;
# sacct answers each -j with the state written in states/<id> (PENDING until the test writes one)
FAKES = {
    "sbatch": """
if grep -q -- "--partition=nowhere" "$1"; then echo "sbatch: error: invalid partition specified: nowhere" >&2; exit 1; fi
n=$(( $(cat "$SLURM_FAKE/next" 2>/dev/null || echo 0) + 1 )); echo $n > "$SLURM_FAKE/next"
cp "$1" "$SLURM_FAKE/script-$n.sh"
echo "Submitted batch job $n"
""",
    "sacct": """
echo "JobID|State|NodeList"
while [ $# -gt 0 ]; do
  if [ "$1" = "-j" ]; then shift; s=$(cat "$SLURM_FAKE/states/$1" 2>/dev/null || echo PENDING)
    echo "$1|$s|node01"; echo "$1.batch|$s|node01"; fi
  shift
done
""",
    "squeue": 'echo "JOBID PARTITION NAME USER ST TIME NODES NODELIST(REASON)"\n',
    "scancel": "",
    "srun": "",
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    books, bin_dir = tmp_path / "slurm", tmp_path / "bin"
    (books / "states").mkdir(parents=True)
    bin_dir.mkdir()
    for name, body in FAKES.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$SLURM_FAKE/calls.log"\n{body}')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_FAKE", str(books))
    import submitit

    submitit.SlurmJob.watcher.clear()  # the class-wide sacct cache would outlive this test's job ids
    return books


def write_design(folder: Path) -> Path:
    folder.mkdir()
    for depth in (1, 2):
        (folder / f"d{depth}.toml").write_text(f'extends = "{TINY.as_posix()}"\n\n[model]\ndiffusion_depth = {depth}\n')
    (folder / "study.toml").write_text("seeds = [0, 1]\nsteps = [1, 2]\nbudget_steps = [2]\nnum = 8\n" + LAUNCHER)
    return folder


def scripts(books: Path) -> dict[str, str]:
    """Job name -> the sbatch script submitted last under it."""
    out = {}
    for path in sorted(books.glob("script-*.sh"), key=lambda p: int(p.stem.split("-")[1])):
        text = path.read_text()
        out[re.search(r"--job-name=madkit-(\S+)", text).group(1).split("-at-")[0]] = text  # eval-d1-at-1-2-3
    return out


def test_every_job_carries_the_directives_and_evaluation_waits_for_its_training(tmp_path, fake_slurm, capsys):
    design, out = write_design(tmp_path / "design"), tmp_path / "out"
    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm"]) == 0
    assert "submitted 6 job(s)" in capsys.readouterr().out
    submitted = scripts(fake_slurm)
    assert sorted(submitted) == ["eval-d1", "eval-d2", "train-d1-seed0", "train-d1-seed1", "train-d2-seed0",
                                 "train-d2-seed1"]
    common = ["--partition=gpu-long", "--account=madproj", "--qos=high", "--cpus-per-task=8", "--mem=200G",
              "--constraint=h100", "--mail-type=FAIL", "#SBATCH --exclusive", "--requeue",
              "module load cuda/12.4\nsource /opt/venvs/madkit/bin/activate"]
    for name, text in submitted.items():
        assert all(c in text for c in common), name
        assert f"-m submitit.core._submit {(out / 'jobs').resolve()}" in text and "srun" in text
    train = submitted["train-d1-seed0"]  # 2 nodes x 4 GPUs: 8 tasks, one per GPU; 1.5 days
    assert "--nodes=2" in train and "--ntasks-per-node=4" in train and "--gpus-per-node=4" in train
    assert "--time=2160" in train and "--dependency" not in train
    ids = json.loads((out / "study_jobs.json").read_text())["jobs"]
    assert sorted(ids) == ["eval/d1@1-2", "eval/d2@1-2", "train/d1-seed0", "train/d1-seed1", "train/d2-seed0",
                           "train/d2-seed1"]
    for setting in ("d1", "d2"):
        text = submitted[f"eval-{setting}"]  # one node of 2 GPUs, after both seeds' training jobs
        waits = ":".join(ids[f"train/{setting}-seed{s}"]["ids"][0] for s in (0, 1))
        assert f"--dependency=afterok:{waits}" in text and "--kill-on-invalid-dep=yes" in text
        assert "--nodes=1" in text and "--ntasks-per-node=2" in text and "--gpus-per-node=2" in text
        assert "--time=210" in text
    calls = (fake_slurm / "calls.log").read_text()
    assert calls.count("sbatch ") == 6


def test_status_and_a_second_launch_resubmit_only_what_failed(tmp_path, fake_slurm, capsys):
    design, out = write_design(tmp_path / "design"), tmp_path / "out"
    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm"]) == 0
    ids = {k: v["ids"][-1] for k, v in json.loads((out / "study_jobs.json").read_text())["jobs"].items()}
    states = {"train/d1-seed0": "RUNNING", "train/d1-seed1": "PENDING", "train/d2-seed0": "FAILED",
              "train/d2-seed1": "COMPLETED", "eval/d1@1-2": "PENDING", "eval/d2@1-2": "CANCELLED by 0"}
    for key, state in states.items():
        (fake_slurm / "states" / ids[key]).write_text(state)
    capsys.readouterr()
    assert main(["study", str(design), "--out", str(out), "--status"]) == 0
    table = capsys.readouterr().out
    row = {line.split()[1]: line.split()[2:4] for line in table.splitlines() if line.startswith(("run ", "point "))}
    assert row["d1-seed0"] == ["running", ids["train/d1-seed0"]] and row["d1-seed1"] == ["pending", ids["train/d1-seed1"]]
    # d2-seed1's job completed without a trained run folder: it failed, whatever SLURM says
    assert row["d2-seed0"][0] == "failed" and row["d2-seed1"][0] == "failed"
    assert row["d1-seed0@1"] == ["pending", ids["eval/d1@1-2"]] and row["d2-seed0@2"][0] == "failed"
    assert f"{(out / 'jobs').resolve()}/{ids['train/d1-seed0']}_0_log.out" in table  # madkit's progress
    assert f"{(out / 'jobs').resolve()}/{ids['train/d2-seed0']}_0_log.err" in table  # a failed job's traceback
    assert "sacct -o JobID,State,NodeList --parsable2" in (fake_slurm / "calls.log").read_text()

    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm"]) == 0
    jobs = json.loads((out / "study_jobs.json").read_text())["jobs"]
    again = {k for k, v in jobs.items() if len(v["ids"]) == 2}
    assert again == {"train/d2-seed0", "train/d2-seed1", "eval/d2@1-2"}  # running and pending jobs are left alone
    # the new evaluation job waits for the new training jobs of d2; d1's keeps waiting for its own
    text = scripts(fake_slurm)["eval-d2"]
    assert f"--dependency=afterok:{jobs['train/d2-seed0']['ids'][1]}:{jobs['train/d2-seed1']['ids'][1]}" in text


def test_dry_run_prints_the_scripts_and_the_graph_and_submits_nothing(tmp_path, capsys):
    design, out = write_design(tmp_path / "design"), tmp_path / "out"
    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count("#!/bin/bash") == 6 and "--partition=gpu-long" in text
    assert "--dependency='afterok:<train/d1-seed0>:<train/d1-seed1>'" in text
    assert "eval/d2@1-2  after train/d2-seed0, train/d2-seed1" in text and "train/d1-seed0  (no dependency)" in text
    assert not out.exists()


@pytest.mark.parametrize(
    "launcher, message",
    [
        ('[launcher]\npartiton = "gpu"\n', "study.toml: launcher.partiton: unknown key; did you mean 'partition'?"),
        ('[launcher]\ntime = "soon"\n', "study.toml: launcher.time: expected a time limit such as"),
        ('[launcher]\ngpus_per_node = -1\n', "study.toml: launcher.gpus_per_node: must be >= 0"),
        ('[launcher]\nmem = "lots"\n', "study.toml: launcher.mem: expected a size such as"),
    ],
)
def test_a_bad_launcher_table_is_refused_with_its_key(tmp_path, capsys, launcher, message):
    design = write_design(tmp_path / "design")
    (design / "study.toml").write_text("seeds = [0]\n" + launcher)
    assert main(["study", str(design), "--out", str(tmp_path / "out"), "--launcher", "slurm", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_without_sbatch_the_slurm_launcher_says_where_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    design = write_design(tmp_path / "design")
    assert main(["study", str(design), "--out", str(tmp_path / "out"), "--launcher", "slurm"]) == 2
    assert "sbatch, srun, sacct not found on PATH" in capsys.readouterr().err


def test_a_task_of_a_multi_node_job_joins_its_torch_distributed_group(monkeypatch):
    """Task 5 of 8 (2 nodes x 4 GPUs) as SLURM starts it: the variables torchrun would have set."""
    from madkit.engine.studies.jobs import join_job_group

    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8", "SLURM_PROCID": "5",
             "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
             "SLURM_JOB_NODELIST": "gpu[017-018]"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.setenv(key, "stale")  # left by a requeued job: overwritten
    monkeypatch.setenv("MASTER_PORT", "29500")  # the submitting shell's, which SLURM passes on: not used
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert join_job_group() == 8
    assert [os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")] == \
        ["5", "8", "1", "4", "gpu017"]
    assert 20000 <= int(os.environ["MASTER_PORT"]) <= 60000  # the same on every task: seeded by the job id
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # each rank picks cuda:LOCAL_RANK, as under torchrun


@pytest.mark.parametrize("text, minutes", [("24:00:00", 1440), ("1-12:00:00", 2160), ("90", 90),
                                           ("2-12", 3600), ("1-12:30", 2190), ("0:00:30", 1)])
def test_time_limits_in_slurms_formats_become_whole_minutes(text, minutes):
    from madkit.engine.studies.launcher_config import time_minutes

    assert time_minutes(text) == minutes


def test_a_bare_two_field_time_is_refused_as_ambiguous(tmp_path, capsys):
    design = write_design(tmp_path / "design")
    (design / "study.toml").write_text('seeds = [0]\n[launcher]\ntime = "12:00"\n')
    assert main(["study", str(design), "--out", str(tmp_path / "out"), "--launcher", "slurm", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "launcher.time" in err and "'12:00' is ambiguous" in err and '"12:00:00" for 12 h 00 min' in err


def test_a_job_sbatch_refuses_is_one_line_naming_the_launcher_table(tmp_path, fake_slurm, capsys):
    design, out = write_design(tmp_path / "design"), tmp_path / "out"
    toml = design / "study.toml"
    toml.write_text(toml.read_text().replace('partition = "gpu-long"', 'partition = "nowhere"'))
    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert ("submitting train/d1-seed0 failed: sbatch: error: invalid partition specified: nowhere; check the "
            f"[launcher] table of {toml}") in err


def test_a_study_launched_locally_is_not_mixed_with_slurm_jobs(tmp_path, fake_slurm, capsys):
    design, out = write_design(tmp_path / "design"), tmp_path / "out"
    out.mkdir()
    (out / "study_jobs.json").write_text('{"launcher": "local", "jobs": {}}')
    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm"]) == 2
    assert "holds jobs of --launcher local; pass that launcher, or another --out" in capsys.readouterr().err
    assert not (fake_slurm / "calls.log").exists()


def test_no_option_of_one_job_carries_over_to_the_next(tmp_path, fake_slurm, capsys):
    """submitit's executor adds to the options it holds: each job is submitted with its own alone."""
    design, out = write_design(tmp_path / "design"), tmp_path / "out"
    study = design / "study.toml"
    study.write_text(study.read_text().replace("eval_gpus = 2", "eval_gpus = 0"))  # evaluation on CPU nodes
    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm"]) == 0
    submitted = scripts(fake_slurm)
    assert all("--gpus-per-node=4" in submitted[f"train-d{d}-seed{s}"] for d in (1, 2) for s in (0, 1))
    for setting in ("d1", "d2"):
        text = submitted[f"eval-{setting}"]
        assert "--gpus-per-node" not in text and "--ntasks-per-node=1" in text, text


def test_an_evaluation_queued_behind_a_failed_training_is_cancelled_and_submitted_again(tmp_path, fake_slurm, capsys):
    design, out = write_design(tmp_path / "design"), tmp_path / "out"
    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm"]) == 0
    ids = {k: v["ids"][-1] for k, v in json.loads((out / "study_jobs.json").read_text())["jobs"].items()}
    (fake_slurm / "states" / ids["train/d1-seed0"]).write_text("FAILED")  # its evaluation is still PENDING
    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm"]) == 0
    jobs = json.loads((out / "study_jobs.json").read_text())["jobs"]
    assert {k for k, v in jobs.items() if len(v["ids"]) == 2} == {"train/d1-seed0", "eval/d1@1-2"}
    assert f"scancel {ids['eval/d1@1-2']}" in (fake_slurm / "calls.log").read_text()
    waits = f"afterok:{jobs['train/d1-seed0']['ids'][1]}:{ids['train/d1-seed1']}"
    assert f"--dependency={waits}" in scripts(fake_slurm)["eval-d1"]


def test_a_job_sacct_has_long_forgotten_counts_as_failed_a_fresh_one_as_pending(tmp_path, fake_slurm, capsys):
    design, out = write_design(tmp_path / "design"), tmp_path / "out"
    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm"]) == 0
    state = json.loads((out / "study_jobs.json").read_text())
    for key in ("train/d1-seed0", "train/d1-seed1"):
        (fake_slurm / "states" / state["jobs"][key]["ids"][-1]).write_text("UNKNOWN")
    state["jobs"]["train/d1-seed0"]["submitted"] = "2026-01-01T00:00:00+0000"  # purged from sacct since
    (out / "study_jobs.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert main(["study", str(design), "--out", str(out), "--status"]) == 0
    rows = {line.split()[1]: line.split()[2] for line in capsys.readouterr().out.splitlines()
            if line.startswith("run ")}
    assert rows["d1-seed0"] == "failed" and rows["d1-seed1"] == "pending"


def test_two_commands_sharing_an_out_keep_each_others_job_ids(tmp_path):
    from madkit.engine.studies.study_state import StudyState

    first, second = StudyState(tmp_path), StudyState(tmp_path)  # both read the file before either wrote
    first.record("train/a-seed0", "slurm", "11")
    second.record("train/b-seed0", "slurm", "12")
    first.record("eval/a@1", "slurm", "13")
    jobs = StudyState(tmp_path).jobs
    assert {k: v["ids"] for k, v in jobs.items()} == {"train/a-seed0": ["11"], "train/b-seed0": ["12"],
                                                      "eval/a@1": ["13"]}


def test_status_reuses_the_set_values_the_jobs_were_submitted_with(tmp_path, fake_slurm, capsys):
    design, out = write_design(tmp_path / "design"), tmp_path / "out"
    sets = ["--set", "train.lr=5e-4"]
    assert main(["study", str(design), "--out", str(out), "--launcher", "slurm", *sets]) == 0
    capsys.readouterr()
    assert main(["study", str(design), "--out", str(out), "--status"]) == 0  # no --set given
    captured = capsys.readouterr()
    assert "--status with the --set values the jobs were submitted with: train.lr=5e-4" in captured.err
    ids = json.loads((out / "study_jobs.json").read_text())["jobs"]
    assert ids["train/d1-seed0"]["ids"][0] in captured.out  # the same runs, so their job ids are found
