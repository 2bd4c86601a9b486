"""Which jobs a launched study submitted, and where each stands.

OUT/study_jobs.json records, per job key ("train/d1-seed0", "eval/d1"), the launcher and every job
id submitted for it (the last one is current), so that running ``madkit study`` again submits only
what is missing or failed, and ``--status`` can ask the scheduler. A job's state is one of

    pending   queued, or waiting for the jobs it depends on
    running   started (a requeued job is pending again, then running)
    done      it returned (for a run or point, what decides is the run folder: trained, evaluated)
    failed    it raised, was killed, cancelled, timed out or preempted without coming back

from submitit's result file when the job has one, else from SLURM's accounting (``sacct``, which
submitit calls) or, for the local launcher, from whether its process is alive.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

from madkit.atomic_files import atomic_write

STATE_FILE = "study_jobs.json"

_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED",
            "UNKNOWN"}  # UNKNOWN: sacct does not list a job for a moment after sbatch returns
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


class StudyState:
    def __init__(self, out: Path):
        self.path = Path(out) / STATE_FILE
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.launcher: str | None = data.get("launcher")
        self.jobs: dict[str, dict[str, Any]] = data.get("jobs", {})

    def job_id(self, key: str) -> str | None:
        entry = self.jobs.get(key)
        return entry["ids"][-1] if entry else None

    def record(self, key: str, launcher: str, job_id: str) -> None:
        entry = self.jobs.setdefault(key, {"ids": []})
        entry["ids"].append(job_id)
        entry["submitted"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.launcher = launcher
        self.save()  # after every submission: a crash mid-way forgets nothing that was submitted

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"launcher": self.launcher, "jobs": self.jobs}
        atomic_write(self.path, (json.dumps(data, indent=2) + "\n").encode())


def job_paths(folder: Path, job_id: str):
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id=job_id, task_id=0)


def job_outcome(folder: Path, job_id: str) -> str | None:
    """"done" or "failed" from submitit's result file of the job's first task; None while there is none."""
    path = job_paths(folder, job_id).result_pickle
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            outcome = pickle.load(f)[0]
    except Exception:  # noqa: BLE001  (a half-written or foreign file says nothing)
        return None
    return "done" if outcome == "success" else "failed"


def job_states(launcher: str, folder: Path, job_ids: list[str]) -> dict[str, str]:
    """pending / running / done / failed for every job id."""
    states, ask = {}, []
    for job_id in job_ids:
        outcome = job_outcome(folder, job_id)
        if outcome is not None:
            states[job_id] = outcome
        elif launcher == "local":
            states[job_id] = "running" if _local_job_alive(job_id) else "failed"
        else:
            ask.append(job_id)
    if ask:
        states.update(_slurm_states(ask))
    return states


def _slurm_states(job_ids: list[str]) -> dict[str, str]:
    import submitit

    watcher = submitit.SlurmJob.watcher  # one sacct call for every job
    for job_id in job_ids:
        watcher.register_job(job_id)
    watcher.update()
    states = {}
    for job_id in job_ids:
        raw = watcher.get_state(job_id, mode="cache").split(" ")[0]  # "CANCELLED by 1234"
        states[job_id] = ("pending" if raw in _PENDING else "running" if raw in _RUNNING else
                          "done" if raw == "COMPLETED" else "failed")
    return states


def _local_job_alive(job_id: str) -> bool:
    """A local job's id is its controller's process id: alive, not a zombie, and still submitit's."""
    proc = Path("/proc") / job_id
    try:
        stat = (proc / "stat").read_text()
        command = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"submitit" in command
