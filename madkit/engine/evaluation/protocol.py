"""The FID protocol over checkpoints: evaluate the last K checkpoints of a run (or the ones named), one
ordinary eval record each, and a summary of their mean and spread.

The paper's FFHQ figure is the mean FID-8K of the last 5 checkpoints (EMA weights): one checkpoint's
FID moves with where training happened to stop, and the mean over a stretch of training does not.

    RUN/eval/<step>-<settings>.json                   one record per checkpoint (madkit eval's)
    RUN/eval/mean<K>-<first>-<last>-<settings>.json   the summary: per metric the mean over the K
                                                      checkpoints, their standard deviation, and the
                                                      mean of each checkpoint's own spread (for FID, its
                                                      bootstrap over the generated images)

Resumable: a checkpoint whose record is up to date (same settings) is neither loaded nor generated
again, so a killed protocol continues where it stopped and a finished one only rewrites its summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import madkit
from madkit.atomic_files import atomic_write
from madkit.engine.checkpoints import list_checkpoints, step_dir_name
from madkit.engine.distributed import DistEnv
from madkit.engine.evaluation.points import Evaluator, LoadedRun, load_run
from madkit.engine.evaluation.ranks import evaluate_point
from madkit.engine.evaluation.records import EVAL_DIR
from madkit.engine.evaluation.spread import SUMMARY_KIND, is_spread, spread_key, summarize
from madkit.errors import ConfigError


def select_checkpoints(run_dir: str | Path, last: int | None = None, steps: Sequence[int] = ()) -> list[Path]:
    """The last ``last`` complete checkpoints of a run, or those at ``steps``, oldest first."""
    found = dict(list_checkpoints(run_dir))
    have = ", ".join(str(s) for s in found) or "none"
    if steps:
        missing = [s for s in steps if s not in found]
        if missing:
            raise ConfigError(f"{run_dir} has no complete checkpoint at step(s) {missing}; it has: {have}")
        return [found[s] for s in sorted(set(steps))]
    if last is None or last < 1:
        raise ConfigError("name the checkpoints: the last K (K >= 1) or a list of steps")
    if len(found) < last:
        raise ConfigError(
            f"{run_dir} holds {len(found)} complete checkpoint(s) ({have}), fewer than the {last} asked for; "
            f"train with train.keep_ckpts >= {last}, or ask for fewer"
        )
    return [found[s] for s in sorted(found)[-last:]]


def summary_name(records: Sequence[dict[str, Any]]) -> str:
    """``mean5-00190000-00210000-ema-dpm-solver++-s250-n8000-seed0-inception``: the records' shared settings."""
    settings = records[0]["name"].split("-", 1)[1]  # record names start with the 8-digit step
    first, last = records[0]["checkpoint"]["step"], records[-1]["checkpoint"]["step"]
    return f"mean{len(records)}-{step_dir_name(first)}-{step_dir_name(last)}-{settings}"


def summarize_records(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary record of one metric setting over several checkpoints."""
    values_by_key: dict[str, list[float]] = {}
    for record in records:
        for key, value in record["metric_values"].items():
            # counts (fid_bootstrap, kid_subset_size) are settings, not measurements: not averaged
            if not is_spread(key, record["metric_values"]) and isinstance(value, float):
                values_by_key.setdefault(key, []).append(value)
    summary: dict[str, Any] = {}
    for key, values in values_by_key.items():
        s = summarize(values)
        inner = [r["metric_values"][spread_key(key)] for r in records if spread_key(key) in r["metric_values"]]
        summary[key] = {
            "mean": s.mean, "std": s.std, "sem": s.sem, "n": s.n, "values": list(s.values),
            "mean_within_checkpoint_std": sum(inner) / len(inner) if inner else None,
        }
    first = records[0]
    return {
        "kind": SUMMARY_KIND,
        **{key: entry["mean"] for key, entry in summary.items()},
        **{spread_key(key): entry["std"] for key, entry in summary.items()},
        "summary": summary,
        "extractor": first["extractor"],
        "name": summary_name(records),
        "run": first["run"],
        "checkpoints": [
            {"step": r["checkpoint"]["step"], "path": r["checkpoint"]["path"],
             "record": str(Path(r["run"]["dir"]) / EVAL_DIR / f"{r['name']}.json")}
            for r in records
        ],
        "weights": first["checkpoint"]["weights"],
        "sampling": first["sampling"],
        "reference": first["reference"],
        "madkit_version": madkit.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def evaluate_checkpoints(
    checkpoints: Sequence[Path],
    evaluator: Evaluator,
    env: DistEnv,
    steps: int | None = None,
    force: bool = False,
    on_record: Callable[[dict[str, Any], LoadedRun], None] = lambda record, run: None,
) -> dict[str, Any] | None:
    """One record per checkpoint (each handed to ``on_record`` with its run on rank 0), then the
    summary in the run's eval folder; returns the summary (on rank 0; None on the other ranks)."""
    records = []
    for ckpt in checkpoints:
        run = load_run(ckpt, evaluator.registry, evaluator.request.use_ema, env.device)
        record = evaluate_point(evaluator, run, steps, env, force=force)
        if record is not None and env.is_main:
            on_record(record, run)
            records.append(record)
        del run  # free the model before loading the next
    if not env.is_main:
        return None
    summary = summarize_records(records)
    out = Path(summary["run"]["dir"]) / EVAL_DIR / f"{summary['name']}.json"
    atomic_write(out, (json.dumps(summary, indent=2) + "\n").encode())
    return summary
