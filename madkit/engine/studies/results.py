"""A study's results: mean and spread over training seeds per setting and step count, the
compute-versus-FID plot with error bars, and the verdict at each sampling budget.

    points.csv   every run x step count: one eval record each (FID with its bootstrap spread)
    study.csv    per setting and step count: the mean FID over the seeds, their standard deviation
                 (the spread plotted and tested; a single seed falls back to its bootstrap spread),
                 the mean bootstrap spread of one run, the seeds, images and cost
    study.png    mean FID against sampling FLOPs per image, ±1 std error bars, budgets marked
    verdict.md   per budget: every setting at its largest affordable step count, the winner, its
                 margin over the runner-up and whether that exceeds 2 standard errors; the trend
    study.json   the design, budgets, verdict, trend and this invocation's wall time
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

import madkit
from madkit.atomic_files import atomic_write
from madkit.engine.evaluation.records import COST_KEYS
from madkit.engine.evaluation.spread import difference_threshold, format_number, summarize
from madkit.engine.evaluation.sweep import plot_sweep, write_csv

Z = 2.0  # standard errors a winner's margin must exceed to count as beyond the spread


def aggregate(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, step count): the mean FID over the seeds and its spread."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for point in points:
        groups.setdefault((point["setting"], point["steps"]), []).append(point)
    rows = []
    for (setting, steps), group in groups.items():
        fids = summarize([p["fid"] for p in group])
        bootstrap = [p["fid_std"] for p in group if p.get("fid_std") is not None]
        bootstrap_mean = sum(bootstrap) / len(bootstrap) if bootstrap else None
        over_seeds = fids.n > 1
        first = group[0]
        rows.append({
            "label": first["label"], "setting": setting, "steps": steps,
            **{k: first.get(k) for k in ("depth", "diffusion_depth", "blocks", *COST_KEYS)},
            "seeds": fids.n, "fid": fids.mean,
            "fid_std": fids.std if over_seeds else bootstrap_mean,
            "spread_of": "seeds" if over_seeds else "bootstrap",
            "fid_sem": fids.sem if over_seeds else bootstrap_mean,
            "fid_bootstrap_std": bootstrap_mean,
            "fid_values": ";".join(format_number(v, 6) for v in fids.values),
            "seed_list": ";".join(str(p["seed"]) for p in group),
            "num": first["num"], "num_reference": first.get("num_reference"), "extractor": first["extractor"],
            "sampler": first["sampler"], "weights": first["weights"], "budget_matched": first["budget_matched"],
        })
    return rows


def verdict(rows: Sequence[dict[str, Any]], budgets: Sequence[dict[str, Any]], matches: dict[str, list],
            settings: Sequence[str]) -> list[dict[str, Any]]:
    """Per budget: each setting at its matched step count, the winner (lowest mean FID) and whether its
    margin over the runner-up exceeds ``Z`` standard errors of the difference."""
    by_point = {(r["setting"], r["steps"]): r for r in rows}
    out = []
    for j, budget in enumerate(budgets):
        entries = []
        for setting in settings:
            steps = matches[setting][j]
            row = by_point.get((setting, steps)) if steps else None
            entries.append({"setting": setting, "steps": steps, **({
                "label": row["label"], "fid": row["fid"], "spread": row["fid_std"], "n": row["seeds"],
                "spread_of": row["spread_of"], "flops": row["sample_flops_per_image"],
            } if row else {"label": setting})})
        ranked = sorted((e for e in entries if "fid" in e), key=lambda e: e["fid"])
        result: dict[str, Any] = {"budget_flops": budget["flops"], "budget_steps": budget["steps"],
                                  "budget_setting": budget["setting"], "entries": entries}
        if ranked:
            result["winner"] = ranked[0]["setting"]
        if len(ranked) > 1:
            best, second = ranked[0], ranked[1]
            threshold = difference_threshold(best["spread"] or math.nan, best["n"], second["spread"] or math.nan,
                                             second["n"], Z)
            margin = second["fid"] - best["fid"]
            result.update(runner_up=second["setting"], margin=margin, threshold=threshold,
                          beyond_spread=bool(math.isfinite(threshold) and margin > threshold))
        out.append(result)
    return out


def trend(verdicts: Sequence[dict[str, Any]], depth_of: dict[str, int | None]) -> str:
    """The paper's claim in one sentence: does the winning diffusion depth grow with the budget?"""
    winners = [v for v in verdicts if "winner" in v]
    depths = [depth_of.get(v["winner"]) for v in winners]
    beyond = sum(v.get("beyond_spread", False) for v in winners)
    significance = (f"the winner's margin exceeds {Z:g} standard errors of the difference at {beyond} of "
                    f"{len(winners)} budget(s)")
    if len(winners) < 2 or None in depths or len(set(depth_of.values())) < 2:
        return f"Winners by budget: {', '.join(v['winner'] for v in winners) or 'none'}; {significance}."
    path = " -> ".join(f"D={d}" for d in depths)
    rising = all(a <= b for a, b in itertools.pairwise(depths)) and depths[0] < depths[-1]
    claim = ("consistent with the paper's trend (AR-heavy settings win small budgets, diffusion-heavy ones large "
             "budgets)" if rising else "not the paper's trend (the winning diffusion depth does not grow with the "
             "budget)")
    return f"The winning diffusion depth as the budget grows: {path}: {claim}; {significance}."


def verdict_markdown(study, verdicts: Sequence[dict[str, Any]], trend_text: str, rows: Sequence[dict[str, Any]],
                     wall: dict[str, Any]) -> str:
    config = study.config
    labels = {s: next((r["label"] for r in rows if r["setting"] == s), s) for s in study.settings}
    first = rows[0] if rows else {}
    extractor = str(first.get("extractor", "?"))
    proxy_note = (" (a proxy extractor: compare only with figures of the same name, never with Inception FIDs)"
                  if "proxy" in extractor else "")
    spread_kinds = {r["spread_of"] for r in rows}
    spread = ("std over training seeds" if spread_kinds == {"seeds"} else
              "bootstrap std over the generated images (one seed)" if spread_kinds == {"bootstrap"} else
              "std over seeds where there are several, else the bootstrap std")
    measured = (
        f"FID by `{extractor}`{proxy_note}; {config.num} generated images per point against "
        f"{first.get('num_reference', '?')} reference images; {first.get('weights', '?')} weights, sampler "
        f"{first.get('sampler', '?')}, image seed {config.eval_seed}. Training seeds "
        f"{', '.join(map(str, config.seeds))} per setting; cells: mean FID ± {spread} (steps per block in brackets)."
    )
    compared = (
        f"Budgets: the sampling FLOPs per image of the costliest setting at "
        f"{', '.join(map(str, config.budget_steps))} step(s); each setting is compared at the largest step count "
        f"that fits (its cost from `madkit flops`). The winner has the lowest mean; its margin over the runner-up "
        f'is "beyond the spread" when it exceeds {Z:g} standard errors of the difference.'
    ) if config.budget_steps else (
        "No budgets: study.toml's budget_steps is empty, so no setting is compared at equal sampling cost; the "
        "grid's points are in points.csv and study.png. List step counts in budget_steps for a verdict."
    )
    header = ["budget (FLOPs/image)", *(labels[s] for s in study.settings), "winner", "margin", f"{Z:g} s.e.",
              "beyond the spread"]
    lines = [f"# Study `{study.folder}`: the best setting at each sampling budget", "", measured, "", compared, "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for v in verdicts:
        lines.append("| " + " | ".join(_verdict_cells(v, labels)) + " |")
    lines += ["", trend_text, "", wall_text(wall), ""]
    return "\n".join(lines)


def _verdict_cells(v: dict[str, Any], labels: dict[str, str]) -> list[str]:
    cells = [f"{v['budget_flops']:.3g} ({labels[v['budget_setting']]} at {v['budget_steps']})"]
    for e in v["entries"]:
        if "fid" not in e:
            cells.append("—")
            continue
        spread = "" if e["spread"] is None else f" ± {e['spread']:.2f}"
        cell = f"{e['fid']:.2f}{spread} ({e['steps']})"
        cells.append(f"**{cell}**" if e["setting"] == v.get("winner") else cell)
    cells.append(labels.get(v.get("winner"), "—"))
    if "margin" not in v:
        return [*cells, "—", "—", "—"]
    threshold = f"{v['threshold']:.2f}" if math.isfinite(v["threshold"]) else "n/a"
    return [*cells, f"{v['margin']:.2f}", threshold, "yes" if v["beyond_spread"] else "no"]


def wall_text(wall: dict[str, Any]) -> str:
    return (f"Wall time of the command that wrote this: {wall['total']:.0f} s ({wall['train']:.0f} s training "
            f"{wall['trained']} run(s), {wall['skipped']} already trained and skipped; {wall['evaluate']:.0f} s "
            f"evaluating; process CPU time {wall['train_cpu']:.0f} s and {wall['evaluate_cpu']:.0f} s) on "
            f"{wall['device']}, {wall['threads']} intra-op thread(s).")


def write_results(study, out: Path, training: dict[str, Any], evaluation: dict[str, Any],
                  wall: dict[str, Any]) -> dict[str, Path]:
    """Write every result file into ``out``; returns their paths by kind."""
    points = evaluation["points"]
    rows = aggregate(points)
    verdicts = verdict(rows, evaluation["budgets"], evaluation["matches"], study.settings)
    depth_of = {r["setting"]: r["diffusion_depth"] for r in rows}
    trend_text = trend(verdicts, depth_of)
    paths = {kind: out / name for kind, name in (("points", "points.csv"), ("study", "study.csv"),
                                                  ("plot", "study.png"), ("verdict", "verdict.md"),
                                                  ("json", "study.json"))}
    write_csv(points, paths["points"])
    write_csv(rows, paths["study"])
    seeds = sorted({r["seeds"] for r in rows})
    spread = (f"std over {seeds[0]} training seeds" if seeds and seeds[0] > 1 and len(seeds) == 1
              else "std over training seeds (bootstrap where one)")
    plot_sweep(rows, paths["plot"], metric="fid", budget=[b["flops"] for b in evaluation["budgets"]], spread=spread)
    atomic_write(paths["verdict"], verdict_markdown(study, verdicts, trend_text, rows, wall).encode())
    record = {
        "study": str(study.folder), "out": str(study.out),
        "design": {"specs": {s: str(p) for s, p in study.specs.items()}, **attrs.asdict(study.config)},
        "budgets": evaluation["budgets"], "matched_steps": evaluation["matches"], "verdict": verdicts,
        "trend": trend_text, "wall_seconds": wall, "runs_trained": training["trained"],
        "runs_skipped": training["skipped"], "madkit_version": madkit.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(paths["json"], (json.dumps(record, indent=2, default=str) + "\n").encode())
    return paths

