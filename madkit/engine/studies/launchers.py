"""Submitting a study's jobs through submitit: its local executor (real subprocesses on this
machine) or its SLURM executor (``sbatch``), with the ``[launcher]`` settings of study.toml.

A job of G GPUs per node on N nodes runs N x G tasks (one per GPU, each a torch.distributed rank, see
madkit.engine.studies.jobs); a CPU job runs one task. Job files (submitit's pickles, the sbatch
script, each task's stdout and stderr) go to OUT/jobs/.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from madkit.engine.studies.job_plan import PlannedJob
from madkit.engine.studies.launcher_config import LauncherConfig
from madkit.errors import ConfigError

JOBS_DIR = "jobs"
MAX_TIMEOUTS = 20  # requeues after hitting the time limit, per job (preemptions do not count)


def job_name(job: PlannedJob) -> str:
    return "madkit-" + job.key.replace("/", "-").replace("@", "-at-")


def slurm_parameters(config: LauncherConfig, job: PlannedJob, dependency: str | None) -> dict[str, Any]:
    """The job's sbatch options, in the names submitit's SlurmExecutor takes."""
    params: dict[str, Any] = {
        "job_name": job_name(job), "time": job.minutes, "nodes": job.nodes,
        "ntasks_per_node": max(1, job.gpus_per_node), "setup": list(config.setup) or None,
        "partition": config.partition, "account": config.account, "qos": config.qos,
        "cpus_per_task": config.cpus_per_task, "mem": config.mem, "constraint": config.constraint,
        "gpus_per_node": job.gpus_per_node or None, "dependency": dependency,
        # a job whose training failed can never start: SLURM cancels it (shown failed, submitted again later)
        # rather than leaving it pending forever; requeue: SLURM may put a preempted job back in the queue
        "additional_parameters": {**({"kill-on-invalid-dep": "yes"} if dependency else {}), "requeue": True,
                                  **config.sbatch},
    }
    return {k: v for k, v in params.items() if v is not None}


def local_parameters(job: PlannedJob) -> dict[str, Any]:
    return {"name": job_name(job), "timeout_min": job.minutes,
            "tasks_per_node": max(1, job.gpus_per_node * job.nodes), "gpus_per_node": job.gpus_per_node * job.nodes}


def afterok(job_ids: list[str]) -> str | None:
    return "afterok:" + ":".join(job_ids) if job_ids else None


def make_executor(launcher: str, folder: Path, config: LauncherConfig):
    import submitit

    if launcher == "local":
        return submitit.LocalExecutor(folder=folder)
    missing = [tool for tool in ("sbatch", "srun", "sacct") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"--launcher slurm: {', '.join(missing)} not found on PATH; run it on a SLURM login node "
                          "(or see the jobs with --dry-run)")
    python = config.python or shlex.quote(sys.executable)
    # a training longer than the time limit is requeued at each timeout and resumes: allow a long run many
    return submitit.SlurmExecutor(folder=folder, python=python, max_num_timeout=MAX_TIMEOUTS)


def submit(executor, launcher: str, config: LauncherConfig, job: PlannedJob, dependency: str | None):
    """Submit ``job`` (waiting on ``dependency``, SLURM's syntax; the local executor has none); returns
    submitit's job."""
    if launcher == "local":
        executor.update_parameters(**local_parameters(job))
    else:
        executor.update_parameters(**slurm_parameters(config, job, dependency))
    return executor.submit(job.function)


def sbatch_script(config: LauncherConfig, job: PlannedJob, folder: Path, dependency: str | None) -> str:
    """The sbatch script submitit would write for ``job`` (``--dry-run``; nothing is submitted)."""
    from submitit.slurm.slurm import _make_sbatch_string  # the very text SlurmExecutor submits

    python = config.python or shlex.quote(sys.executable)
    command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **slurm_parameters(config, job, dependency))


def local_description(job: PlannedJob, folder: Path) -> str:
    params = local_parameters(job)
    return (f"{sys.executable} -u -m submitit.core._submit {folder}  ({params['tasks_per_node']} task(s), "
            f"time limit {params['timeout_min']} min)")
