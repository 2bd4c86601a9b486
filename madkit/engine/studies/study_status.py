"""Where a launched study stands (``madkit study DIR --status``): one row per run (its training job)
and one per point (run x step count, its setting's evaluation job): state, job id, log, last
training step and FID.

The run folders decide what is done (a run trained to its ``train.steps``, a point with its eval
record), whatever the jobs say; for the rest the job's state (madkit.engine.studies.study_state).
"pending" also covers what has not been submitted yet (job id "-"): an evaluation waiting for its
training, or anything before the first launch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from madkit.engine.studies.job_plan import PlannedJob
from madkit.engine.studies.runner import PlannedRun
from madkit.engine.studies.study_state import StudyState, job_paths, job_states


def _last_step(run: PlannedRun) -> int | None:
    from madkit.engine.checkpoints.run_folder import read_metrics

    records = read_metrics(run.run_dir / "metrics.jsonl")
    return records[-1].get("step") if records else None


def final_records(run: PlannedRun, steps: list[int], evaluator, registry, trained: int) -> dict[int, dict | None]:
    """Per step count, the run's eval record of its final checkpoint written with exactly the settings
    the study's evaluation uses (``evaluator``: an evaluation.points.Evaluator of the study's request:
    sampler, extractor, guidance, weights, metrics, reference, images and seed all count), or None.
    ``trained``: the run's trained steps. The run is loaded once for all its step counts."""
    from madkit.engine.evaluation.points import load_run

    if not (run.run_dir / "eval").is_dir() or trained < run.loaded.spec.train.steps:
        return dict.fromkeys(steps)
    loaded = load_run(run.run_dir, registry, evaluator.request.use_ema, "cpu")
    return {s: evaluator.existing_record(loaded, s) for s in steps}


def status_rows(plan: list[PlannedJob], state: StudyState, folder: Path, registry,
                details: bool = True) -> list[dict[str, Any]]:
    """One row per run and per point, each with its job's ``key``; ``details=False`` leaves out what
    only the table shows (log paths, last steps), for callers that poll the states."""
    from madkit.engine.evaluation.points import Evaluator
    from madkit.engine.studies.runner import trained_steps

    ids = {job.key: state.job_id(job.key) for job in plan}
    launcher = state.launcher or "local"
    ages = {ids[key]: state.age_seconds(key) for key in ids if ids[key]}
    states = job_states(launcher, folder, [i for i in ids.values() if i], ages) if state.launcher else {}

    def job_state(key: str) -> str:
        job_id = ids[key]
        if job_id is None:
            return "pending"
        # a job that ended without leaving what it was for (its run trained, its records) failed
        return "failed" if states.get(job_id) == "done" else states.get(job_id, "pending")

    def log_of(key: str, state: str) -> str:
        """The job's stdout (madkit's progress), or its stderr when it failed (the traceback)."""
        if not ids[key] or not details:
            return "-"
        paths = job_paths(folder, ids[key])
        return str(paths.stderr if state == "failed" else paths.stdout)

    trained = {job.run.run_dir: trained_steps(job.run, registry) for job in plan if job.run is not None}
    rows, evaluators = [], {}
    for job in plan:
        if job.run is not None:
            run = job.run
            state = "done" if trained[run.run_dir] >= run.loaded.spec.train.steps else job_state(job.key)
            rows.append({"key": job.key, "kind": "run", "name": run.run_dir.name, "state": state,
                         "job": ids[job.key] or "-", "log": log_of(job.key, state),
                         "step": _last_step(run) if details else None, "fid": None})
            continue
        request = job.function.request
        if repr(request) not in evaluators:
            evaluators[repr(request)] = Evaluator(registry, request)
        for run in job.runs:
            done = trained.get(run.run_dir)
            records = final_records(run, list(job.steps), evaluators[repr(request)], registry,
                                    trained_steps(run, registry) if done is None else done)
            for steps, record in records.items():
                state = "done" if record else job_state(job.key)
                rows.append({"key": job.key, "kind": "point", "name": f"{run.run_dir.name}@{steps}", "state": state,
                             "job": ids[job.key] or "-", "log": log_of(job.key, state),
                             "step": record["checkpoint"]["step"] if record else None,
                             "fid": record["metric_values"].get("fid") if record else None})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    header = f"{'':5} {'run/point':<24} {'state':<8} {'job id':<12} {'last step':>9} {'FID':>9}  log"
    lines = [header]
    for r in rows:
        fid = "-" if r["fid"] is None else f"{r['fid']:.3f}"
        step = "-" if r["step"] is None else str(r["step"])
        lines.append(f"{r['kind']:<5} {r['name']:<24} {r['state']:<8} {r['job']:<12} {step:>9} {fid:>9}  {r['log']}")
    counts = {s: sum(r["state"] == s for r in rows) for s in ("pending", "running", "done", "failed")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
