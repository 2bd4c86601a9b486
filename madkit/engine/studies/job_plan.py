"""A study as jobs (``madkit study DIR --launcher local|slurm``): one training job per run and one
evaluation job per setting (every run of the setting at every step count it is evaluated at), which
waits for the training jobs of its runs (SLURM's afterok).

Keys: ``train/<spec>-seed<s>`` (the run folder's name, so studies sharing an --out share the runs
of a common baseline) and ``eval/<spec>@<step counts>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from madkit.engine.studies.jobs import EvalJob, TrainJob
from madkit.engine.studies.launcher_config import time_minutes
from madkit.engine.studies.runner import (
    PlannedRun,
    Study,
    budgets_and_matches,
    eval_request,
    evaluated_steps,
    setting_costs,
)


@attrs.frozen
class PlannedJob:
    key: str  # "train/d1-seed0", "eval/d1@1-2-6": the state file's and the table's name for it
    function: Any  # TrainJob or EvalJob
    after: tuple[str, ...]  # the keys of the jobs it waits for
    nodes: int
    gpus_per_node: int
    minutes: int
    run: PlannedRun | None = None  # a training job's run
    runs: tuple[PlannedRun, ...] = ()  # an evaluation job's runs
    steps: tuple[int, ...] = ()  # an evaluation job's step counts

    @property
    def kind(self) -> str:
        return self.key.split("/")[0]


def train_key(run: PlannedRun) -> str:
    return f"train/{run.run_dir.name}"


def plan_jobs(study: Study, registry, sets: Sequence[str], device: str = "auto", threads: int = 0) -> list[PlannedJob]:
    """Every job of the study, training jobs first; paths are absolute (jobs start wherever the scheduler likes)."""
    launcher = study.config.launcher
    jobs = []
    for run in study.runs:
        spec = Path(study.specs[run.setting]).resolve()
        function = TrainJob(str(spec), (*sets, f"seed={run.seed}"), str(run.run_dir.resolve()))
        jobs.append(PlannedJob(train_key(run), function, (), launcher.nodes, launcher.gpus_per_node,
                               time_minutes(launcher.time), run=run))
    _, matches = budgets_and_matches(study, setting_costs(study, registry))
    request = eval_request(study.config)
    for setting in study.settings:
        runs = tuple(r for r in study.runs if r.setting == setting)
        steps = tuple(evaluated_steps(study.config, matches[setting]))
        function = EvalJob(request, tuple(str(r.run_dir.resolve()) for r in runs), steps, device, threads)
        # the step counts name the job: studies sharing an --out (and a baseline's runs) each get their points
        jobs.append(PlannedJob(f"eval/{setting}@{'-'.join(map(str, steps))}", function, tuple(train_key(r) for r in runs), 1,
                               launcher.evaluation_gpus, time_minutes(launcher.eval_time or launcher.time),
                               runs=runs, steps=steps))
    return jobs
