"""Sweeps (``madkit sweep``): points for each run x step count, or under a FLOPs budget the largest
step count that fits, written as ``sweep.csv`` and ``sweep.png``: metric against sampling FLOPs per
image, one curve per model, as in the paper's Figure 4.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from madkit.atomic_files import atomic_write
from madkit.engine.evaluation.points import Evaluator, load_run
from madkit.engine.evaluation.records import COST_KEYS, EVAL_DIR
from madkit.engine.evaluation.spread import spread_key
from madkit.errors import ConfigError


def steps_within_budget(cost: Callable[[int], dict[str, Any]], budget: float, max_steps: int) -> int | None:
    """The largest step count in [1, max_steps] whose ``sample_flops_per_image`` is <= ``budget``, or
    None when even one step costs more. Sampling cost grows with the step count, so bisect."""
    def flops(steps: int) -> float:
        return cost(steps)["sample_flops_per_image"]

    if flops(1) > budget:
        return None
    lo, hi = 1, max_steps  # invariant: flops(lo) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if flops(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_sampling_steps(schedule: Any) -> int:
    """The training schedule's number of timesteps: no sampler takes more distinct steps."""
    return int(schedule.diffusers_config().get("num_train_timesteps", 1000))


def model_label(cost: dict[str, Any] | None, fallback: str) -> str:
    """The paper's way of naming a curve: D/N and T."""
    if not cost:
        return fallback
    return f"D={cost['diffusion_depth']}/N={cost['depth']}, T={cost['blocks']}"


def sweep_row(record: dict[str, Any], label: str, budget: float | None, matched: bool) -> dict[str, Any]:
    """One CSV row from an eval record."""
    cost, model = record.get("cost") or {}, record.get("model") or {}
    return {
        "label": label,
        "run": record["run"]["dir"],
        "checkpoint_step": record["checkpoint"]["step"],
        "weights": record["checkpoint"]["weights"],
        "depth": model.get("depth"),
        "diffusion_depth": model.get("diffusion_depth"),
        "blocks": model.get("blocks"),
        "sampler": record["sampling"]["sampler"],
        "steps": record["sampling"]["steps"],
        **{key: cost.get(key) for key in COST_KEYS},
        "seconds_per_image": record["seconds_per_image"],
        "num": record["sampling"]["num"],
        "num_reference": (record.get("reference") or {}).get("num"),
        "extractor": record["extractor"],
        **record["metric_values"],
        "budget_flops": budget,
        "budget_matched": matched,
        "eval_json": str(Path(record["run"]["dir"]) / EVAL_DIR / f"{record['name']}.json"),
    }


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: ("" if row.get(c) is None else row.get(c)) for c in columns} for row in rows)
    atomic_write(path, buffer.getvalue().encode())


def plot_sweep(
    rows: Sequence[dict[str, Any]],
    path: Path,
    metric: str = "fid",
    budget: float | Sequence[float] | None = None,
    spread: str = "bootstrap over the generated images",
) -> None:
    """The paper's Figure 4: ``metric`` against sampling FLOPs per image (log x), one curve per model,
    each point marked with its step count and, where rows hold ``<metric>_std``, an error bar of one
    standard deviation (``spread`` says of what); points chosen under a budget are starred."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    usable = [r for r in rows if r.get(metric) is not None and r.get("sample_flops_per_image")]
    std_key = spread_key(metric)
    with_bars = any(r.get(std_key) is not None for r in usable)
    for label in dict.fromkeys(r["label"] for r in usable):
        points = sorted(
            {(r["sample_flops_per_image"], r[metric], r["steps"], r.get(std_key) or 0.0)
             for r in usable if r["label"] == label}
        )
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if with_bars:
            line = ax.errorbar(xs, ys, yerr=[p[3] for p in points], marker="o", capsize=3, label=label).lines[0]
        else:
            (line,) = ax.plot(xs, ys, marker="o", label=label)
        for x, y, steps, _ in points:
            ax.annotate(str(steps), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=line.get_color())
        for r in usable:
            if r["label"] == label and r.get("budget_matched"):
                ax.scatter([r["sample_flops_per_image"]], [r[metric]], marker="*", s=220, color=line.get_color(),
                           edgecolors="black", zorder=3)
    budgets = [] if budget is None else [budget] if isinstance(budget, (int, float)) else list(budget)
    for i, value in enumerate(budgets):
        ax.axvline(value, linestyle="--", color="gray", alpha=0.7,
                   label=f"budget {value:.3g} FLOPs/image (stars)" if len(budgets) == 1 else
                   "budgets (stars: the points compared)" if i == 0 else None)
    extractors = sorted({r["extractor"] for r in usable})
    counts = sorted({int(r["num"]) for r in usable if r.get("num")})
    ax.set_xscale("log")
    ax.set_xlabel("sampling FLOPs per image (numbers: denoising steps per block)")
    ax.set_ylabel(f"{metric.upper()} ({', '.join(extractors)})" if extractors else metric.upper())
    images = f"{', '.join(map(str, counts))} images per point" if counts else ""
    bars = f"error bars: ±1 std, {spread}" if with_bars else ""
    ax.set_title(f"{metric.upper()} against sampling compute" + (f"\n{'; '.join(filter(None, (images, bars)))}"
                                                                 if images or bars else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if usable:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    atomic_write(path, buffer.getvalue())


@attrs.frozen
class SweepResult:
    rows: list[dict[str, Any]]  # one per (run, step count), in evaluation order: the CSV
    metric_keys: list[str]  # the metric values' names ("fid"; "kid", "kid_std", ...), first = the plotted one


def run_sweep(
    paths: Sequence[str | Path],
    steps: Sequence[int],
    evaluator: Evaluator,
    device: torch.device | str = "cpu",
    budget: float | None = None,
    force: bool = False,
) -> SweepResult:
    """Evaluate every run (folder or checkpoint) at every step count, and with ``budget`` also at the
    largest step count whose sampling FLOPs per image fit it."""
    if not steps and budget is None:
        raise ConfigError("nothing to evaluate: give step counts, a FLOPs budget, or both")
    rows: list[dict[str, Any]] = []
    metric_keys: list[str] = []
    for path in paths:
        run = load_run(path, evaluator.registry, evaluator.request.use_ema, device)
        label = model_label(run.cost(1), run.spec.name)
        matched = None
        if budget is not None:
            if run.cost(1) is None:
                raise ConfigError(f"{path}: its model reports no sampling cost, so it cannot be matched to a budget")
            matched = steps_within_budget(run.cost, budget, max_sampling_steps(run.schedule))
            if matched is None:
                evaluator.log(f"{path}: even 1 step costs {run.cost(1)['sample_flops_per_image']:.3g} FLOPs per "
                              f"image, over the budget {budget:.3g}; no point at equal compute for {label}")
            else:
                evaluator.log(f"{label}: {matched} steps fit the budget of {budget:.3g} FLOPs per image")
        for s in sorted(set(steps) | ({matched} if matched else set())):
            record = evaluator.evaluate(run, s, force=force)
            rows.append(sweep_row(record, label, budget, matched == s))
            metric_keys.extend(k for k in record["metric_values"] if k not in metric_keys)
        del run  # free the model before loading the next
    _disambiguate(rows)
    return SweepResult(rows, metric_keys)


def _disambiguate(rows: list[dict[str, Any]]) -> None:
    """Runs of the same shape share a label; name their curves after their checkpoints instead."""
    runs_per_label: dict[str, set[tuple[str, int]]] = {}
    for row in rows:
        runs_per_label.setdefault(row["label"], set()).add((row["run"], row["checkpoint_step"]))
    for row in rows:
        if len(runs_per_label[row["label"]]) > 1:
            row["label"] = f"{row['label']} ({Path(row['run']).name}@{row['checkpoint_step']})"
