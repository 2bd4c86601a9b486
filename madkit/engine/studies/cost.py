"""What a study costs before it runs (``madkit study DIR --cost``): FLOPs from the models' closed-form
costs (the ones ``madkit flops`` prints, on the meta device) and accelerator hours at a stated MFU.

    training  = per setting: train_flops_per_image x train.steps x train.batch x seeds
    sampling  = per setting and evaluated step count (the grid and the budget-matched counts):
                sample_flops_per_image x num x seeds

The MFU is an assumption the caller states (the printout says so); ``benchmarks/train.py`` measures
the real figure on the accelerator in a minute.
"""

from __future__ import annotations

from typing import Any

from madkit.engine.studies.runner import Study, budgets_and_matches, evaluated_steps, setting_costs


def study_cost(study: Study, registry, mfu: float, peak_flops: float) -> dict[str, Any]:
    """FLOPs per setting (training, sampling) and the whole study's hours at ``mfu`` of ``peak_flops``."""
    costs = setting_costs(study, registry)
    _, matches = budgets_and_matches(study, costs)
    config, seeds = study.config, len(study.config.seeds)
    rows = []
    for setting in study.settings:
        spec = next(r.loaded.spec for r in study.runs if r.setting == setting)
        train = costs[setting].cost(1)["train_flops_per_image"] * spec.train.steps * spec.train.batch * seeds
        steps = evaluated_steps(config, matches[setting])
        sample = sum(costs[setting].cost(s)["sample_flops_per_image"] for s in steps) * config.num * seeds
        rows.append({"setting": setting, "label": costs[setting].label, "runs": seeds,
                     "train_steps": spec.train.steps, "batch": spec.train.batch, "eval_steps": steps,
                     "train_flops": train, "sample_flops": sample})
    total = sum(r["train_flops"] + r["sample_flops"] for r in rows)
    return {"settings": rows, "total_flops": total, "mfu": mfu, "peak_flops": peak_flops,
            "hours": total / (mfu * peak_flops) / 3600}


def format_cost(cost: dict[str, Any]) -> str:
    lines = [f"{'setting':<28} {'runs':>4} {'steps x batch':>14} {'training FLOPs':>15} {'sampling FLOPs':>15}"]
    for r in cost["settings"]:
        lines.append(f"{r['setting']:<28} {r['runs']:>4} {r['train_steps']:>7,} x {r['batch']:<5,} "
                     f"{r['train_flops']:>15.3e} {r['sample_flops']:>15.3e}")
    lines.append(
        f"total {cost['total_flops']:.3e} FLOPs = {cost['hours']:.3g} accelerator-hours at an assumed "
        f"{cost['mfu']:.0%} MFU of {cost['peak_flops'] / 1e12:g} TFLOP/s (the MFU is an assumption; "
        "python benchmarks/train.py SPEC measures it)"
    )
    return "\n".join(lines)
