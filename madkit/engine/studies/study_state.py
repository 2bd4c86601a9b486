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

import contextlib
import fcntl
import json
import os
import pickle
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from madkit.atomic_files import atomic_write

STATE_FILE = "study_jobs.json"

_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
# sacct does not list a job for a moment after sbatch returns; one it still does not know after this long
# was purged from its accounting (or submitted on another cluster): failed, so that a launch submits it again
UNKNOWN_GRACE_S = 600
_STAMP = "%Y-%m-%dT%H:%M:%S%z"
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


class StudyState:
    """The state file. Two commands may share an --out (studies with one baseline, a local launch
    waiting for hours beside a second study): every write holds a lock on the file, reads it again
    and adds this command's submission to what is there, so neither forgets the other's jobs."""

    def __init__(self, out: Path):
        self.path = Path(out) / STATE_FILE
        self.launcher: str | None = None
        self.jobs: dict[str, dict[str, Any]] = {}
        self._read()

    def _read(self) -> None:
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.launcher = data.get("launcher", self.launcher)
        self.jobs = data.get("jobs", {})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(STATE_FILE + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def submitted_sets(self) -> list[str] | None:
        """The --set values every recorded job was submitted with, when they all agree; else None."""
        distinct = {tuple(entry.get("sets", ())) for entry in self.jobs.values()}
        return list(distinct.pop()) if len(distinct) == 1 else None

    def job_id(self, key: str) -> str | None:
        entry = self.jobs.get(key)
        return entry["ids"][-1] if entry else None

    def age_seconds(self, key: str) -> float | None:
        """Seconds since ``key``'s current job was submitted."""
        stamp = (self.jobs.get(key) or {}).get("submitted")
        try:
            return time.time() - datetime.strptime(stamp, _STAMP).timestamp() if stamp else None
        except ValueError:
            return None

    def record(self, key: str, launcher: str, job_id: str, sets: list[str] | tuple[str, ...] = ()) -> None:
        """``job_id`` is ``key``'s job now; ``sets``: the submitting command's --set values (``--status`` reuses them)."""
        with self._locked():
            self._read()  # what other commands recorded meanwhile
            entry = self.jobs.setdefault(key, {"ids": []})
            entry["ids"].append(job_id)
            entry["submitted"] = time.strftime(_STAMP)
            entry["sets"] = list(sets)
            self.launcher = launcher
            self._write()  # after every submission: a crash mid-way forgets nothing that was submitted

    def _write(self) -> None:
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


def job_states(launcher: str, folder: Path, job_ids: list[str], ages: dict[str, float | None] | None = None
               ) -> dict[str, str]:
    """pending / running / done / failed for every job id (``ages``: seconds since each was submitted)."""
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
        states.update(_slurm_states(ask, ages or {}))
    return states


def _slurm_states(job_ids: list[str], ages: dict[str, float | None]) -> dict[str, str]:
    import submitit

    watcher = submitit.SlurmJob.watcher  # one sacct call for every job
    for job_id in job_ids:
        watcher.register_job(job_id)
    watcher.update()
    states = {}
    for job_id in job_ids:
        raw = watcher.get_state(job_id, mode="cache").split(" ")[0]  # "CANCELLED by 1234"
        if raw == "UNKNOWN":
            age = ages.get(job_id)
            states[job_id] = "pending" if age is None or age < UNKNOWN_GRACE_S else "failed"
            continue
        states[job_id] = ("pending" if raw in _PENDING else "running" if raw in _RUNNING else
                          "done" if raw == "COMPLETED" else "failed")
    return states


def _local_job_alive(job_id: str) -> bool:
    """A local job's id is its controller's process id: alive, not a zombie, and still submitit's
    (where /proc tells; elsewhere, e.g. macOS, whether a process of that id exists)."""
    if not Path("/proc/self").is_dir():
        try:
            os.kill(int(job_id), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            return True
        return True
    proc = Path("/proc") / job_id
    try:
        stat = (proc / "stat").read_text()
        command = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"submitit" in command
