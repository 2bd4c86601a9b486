"""``madkit study DIR --launcher local|slurm``: submit what is missing or failed, and gather the
results once every run and point is done.

    slurm   every job is submitted at once, each evaluation job with ``--dependency=afterok:`` on the
            training jobs of its runs still to finish; the command returns, ``--status`` watches
    local   submitit's local executor has no dependencies, so the command stays and submits each
            evaluation job when its runs are trained, then gathers; it ends when nothing is left to
            run (exit 1 when a job failed: run the same command again to submit it again)

Running the command again submits only what is neither done (in the run folders) nor pending or
running (the jobs in OUT/study_jobs.json); a resubmitted training resumes from its run folder.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from madkit.engine.studies.job_plan import PlannedJob
from madkit.engine.studies.launchers import JOBS_DIR, afterok, local_description, make_executor, sbatch_script, submit
from madkit.engine.studies.runner import Study
from madkit.engine.studies.study_state import StudyState
from madkit.engine.studies.study_status import format_rows, status_rows
from madkit.errors import ConfigError

POLL_SECONDS = 1.0


def dry_run(study: Study, plan: list[PlannedJob], launcher: str) -> str:
    """Every job's sbatch script (or local command) and the dependency graph; nothing is submitted."""
    folder, config = (study.out / JOBS_DIR).resolve(), study.config.launcher
    parts = []
    for job in plan:
        dependency = afterok([f"<{key}>" for key in job.after])
        body = sbatch_script(config, job, folder, dependency) if launcher == "slurm" else local_description(job, folder)
        parts.append(f"# ---- {job.key} ----\n{body}")
    graph = ["# ---- dependencies ----"]
    for job in plan:
        graph.append(f"{job.key}" + (f"  after {', '.join(job.after)}" if job.after else "  (no dependency)"))
    return "\n".join(parts + graph)


class Launch:
    def __init__(self, study: Study, plan: list[PlannedJob], launcher: str, registry, log: Callable[[str], None],
                 sets: list[str] | tuple[str, ...] = ()):
        self.study, self.plan, self.launcher, self.registry, self.log = study, plan, launcher, registry, log
        self.sets = list(sets)  # the command's --set values, recorded with each job
        self.folder = (study.out / JOBS_DIR).resolve()
        self.state = StudyState(study.out)
        if self.state.launcher not in (None, launcher):
            raise ConfigError(f"{study.out} holds jobs of --launcher {self.state.launcher}; pass that launcher, or "
                              f"another --out")
        self.state.launcher = launcher
        self.submitted: list[Any] = []  # this invocation's submitit jobs (the local ones are our children)

    def rows(self, details: bool = True) -> list[dict[str, Any]]:
        for job in self.submitted:
            job.done()  # a local job: poll its process, so that a finished one is reaped
        return status_rows(self.plan, self.state, self.folder, self.registry, details)

    def states(self) -> dict[str, str]:
        """Per job key: done when all its rows are, else failed, running or pending (in that order)."""
        by_key: dict[str, list[str]] = {}
        for row in self.rows(details=False):
            by_key.setdefault(row["key"], []).append(row["state"])
        return {key: ("done" if all(s == "done" for s in states) else
                      next(s for s in ("failed", "running", "pending") if s in states)) for key, states in by_key.items()}

    def _submit(self, job: PlannedJob, dependency: str | None) -> None:
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        # a fresh executor per job: submitit's update_parameters adds to the options it holds, and leaves out
        # those set to None, so one job's dependency or GPU count would otherwise carry over to the next
        executor = make_executor(self.launcher, self.folder, self.study.config.launcher)
        try:
            submitted = submit(executor, self.launcher, self.study.config.launcher, job, dependency)
        except (FailedJobError, FailedSubmissionError) as exc:  # sbatch refused it: its own words, one line
            said = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise ConfigError(f"submitting {job.key} failed: {said[-1] if said else exc}; check the [launcher] table "
                              f"of {self.study.folder / 'study.toml'}") from None
        if self.launcher == "local":
            self.submitted.append(submitted)
        self.state.record(job.key, self.launcher, str(submitted.job_id), self.sets)
        self.log(f"submitted {job.key} as {self.launcher} job {submitted.job_id}"
                 + (f" ({dependency})" if dependency else ""))

    def _needs(self, key: str, states: dict[str, str]) -> bool:
        """Neither done nor on its way: never submitted, or its current job failed."""
        return states[key] == "failed" or (states[key] == "pending" and self.state.job_id(key) is None)

    def submit_missing(self) -> int:
        """Submit every training job needed and, with slurm, every evaluation job needed (waiting for the
        training jobs of its runs that are not done); returns how many."""
        states, count, retrained = self.states(), 0, set()
        for job in self.plan:
            if job.kind == "train" and self._needs(job.key, states):
                self._submit(job, None)
                retrained.add(job.key)
                count += 1
        if self.launcher == "slurm":
            for job in self.plan:
                # an evaluation still queued behind a failed training job waits for a job that will never
                # succeed (SLURM cancels it, but maybe not yet): cancel it and wait for the new one instead
                stale = states[job.key] == "pending" and self.state.job_id(job.key) and retrained & set(job.after)
                if job.kind == "eval" and (self._needs(job.key, states) or stale):
                    if stale:
                        subprocess.run(["scancel", self.state.job_id(job.key)], check=False, capture_output=True)
                    waiting = [self.state.job_id(k) for k in job.after if states[k] != "done"]
                    self._submit(job, afterok([i for i in waiting if i]))
                    count += 1
        return count

    def wait_local(self) -> dict[str, str]:
        """Local jobs: submit each evaluation job (once per invocation) when its runs are trained; return
        when nothing runs and nothing more can start (a failed training blocks its evaluation)."""
        tried: set[str] = set()
        while True:
            states = self.states()
            ready = [job for job in self.plan if job.kind == "eval" and job.key not in tried
                     and self._needs(job.key, states) and all(states[k] == "done" for k in job.after)]
            for job in ready:
                self._submit(job, None)
                tried.add(job.key)
            if not ready and "running" not in states.values():
                return states
            time.sleep(POLL_SECONDS)


def gather(study: Study, registry, results: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """study.csv, points.csv, the plot, the verdict and study.json from the records the jobs wrote
    (madkit.engine.studies.results, as an inline study writes them; no image is generated here)."""
    import torch

    from madkit.engine.studies.results import write_results
    from madkit.engine.studies.runner import evaluate_runs

    started = time.perf_counter()
    evaluation = evaluate_runs(study, registry, torch.device("cpu"), log)
    training = {"trained": [], "skipped": [str(r.run_dir) for r in study.runs], "seconds": 0.0, "cpu_seconds": 0.0}
    wall = {"total": time.perf_counter() - started, "train": 0.0, "evaluate": evaluation["seconds"], "train_cpu": 0.0,
            "evaluate_cpu": evaluation["cpu_seconds"], "trained": 0, "skipped": len(study.runs),
            "device": "cpu (gathering the jobs' records)", "threads": torch.get_num_threads()}
    return write_results(study, results, training, evaluation, wall)


def status_text(launch: Launch) -> tuple[str, bool]:
    rows = launch.rows()
    return format_rows(rows), all(r["state"] == "done" for r in rows)
