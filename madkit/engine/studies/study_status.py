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


def find_record(run: PlannedRun, steps: int, evaluator, registry) -> dict[str, Any] | None:
    """The run's eval record of its final checkpoint at ``steps``, written with exactly the settings
    the study's evaluation uses (``evaluator``: an evaluation.points.Evaluator of the study's request:
    sampler, extractor, guidance, weights, metrics, reference, images and seed all count)."""
    from madkit.engine.evaluation.points import load_run
    from madkit.engine.studies.runner import trained_steps

    if not (run.run_dir / "eval").is_dir() or trained_steps(run, registry) < run.loaded.spec.train.steps:
        return None
    loaded = load_run(run.run_dir, registry, evaluator.request.use_ema, "cpu")
    return evaluator.existing_record(loaded, steps)


def status_rows(plan: list[PlannedJob], state: StudyState, folder: Path, registry) -> list[dict[str, Any]]:
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
        if not ids[key]:
            return "-"
        paths = job_paths(folder, ids[key])
        return str(paths.stderr if state == "failed" else paths.stdout)

    from madkit.engine.evaluation.points import Evaluator

    rows, evaluators = [], {}
    for job in plan:
        if job.run is not None:
            run, done = job.run, trained_steps(job.run, registry) >= job.run.loaded.spec.train.steps
            state = "done" if done else job_state(job.key)
            rows.append({"kind": "run", "name": run.run_dir.name, "state": state, "job": ids[job.key] or "-",
                         "log": log_of(job.key, state), "step": _last_step(run), "fid": None})
            continue
        for run in job.runs:
            for steps in job.steps:
                request = job.function.request
                evaluator = evaluators.setdefault(repr(request), Evaluator(registry, request))
                record = find_record(run, steps, evaluator, registry)
                state = "done" if record else job_state(job.key)
                rows.append({"kind": "point", "name": f"{run.run_dir.name}@{steps}", "state": state,
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
