"""A run's static HTML report: one self-contained page a person can open, archive or mail.

Sections: the run at a glance (name, versions, latest checkpoint), loss curves and learning rate
(from metrics.jsonl), sample grids over training (samples/*.png), metric tables (eval/*.json),
sweep plots and tables (eval/sweep.png, eval/sweep.csv) and the resolved config.

Self-contained: every image is inlined as a base64 ``data:`` URI (sample grids as downscaled
thumbnails, so a 1024px run's report stays small). When the page is written inside the run folder,
thumbnails also link to the full-size files by relative paths, which stay valid wherever the folder
is copied; written elsewhere, the page links to nothing at all.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from madkit.atomic_files import atomic_write
from madkit.engine.checkpoints.run_folder import RunDir, read_metrics
from madkit.engine.evaluation.spread import SUMMARY_KIND, format_number, is_spread, with_spread
from madkit.errors import UserError

THUMBNAIL_SIDE = 640  # px, longest side of an inlined sample grid
MAX_GRIDS = 8  # sample grids shown, evenly spaced over training (the last always)
_STEP = re.compile(r"(\d+)")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: .85em; } td, th { border: 1px solid #ddd; padding: .25em .5em; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: .8em; }
figure { display: inline-block; margin: .5em; vertical-align: top; } figcaption { font-size: .8em; color: #555; }
figure img { min-width: 276px; image-rendering: pixelated; }
.note { color: #666; font-size: .85em; }
"""


# --------------------------------------------------------------------------- small helpers
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _thumbnail(path: Path, side: int = THUMBNAIL_SIDE) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((side, side))  # keeps the aspect ratio; never enlarges
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{_e(_fmt(v))}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{_e(_fmt(v))}</td>" for v in row
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def evenly_spaced(items: Sequence[Any], most: int) -> list[Any]:
    """At most ``most`` items spread over ``items``, the first and the last always included."""
    if len(items) <= most:
        return list(items)
    picks = {round(i * (len(items) - 1) / (most - 1)) for i in range(most)}
    return [items[i] for i in sorted(picks)]


# --------------------------------------------------------------------------- plots
def loss_plot(records: Sequence[dict[str, Any]]) -> bytes | None:
    """PNG: every ``loss*`` term against the step (log y), and the learning rate / grad norm beside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    numeric = [r for r in records if isinstance(r.get("step"), (int, float))]
    keys = sorted({k for r in numeric for k, v in r.items() if k.startswith("loss") and isinstance(v, (int, float))})
    if not keys:
        return None
    fig = Figure(figsize=(11, 3.6))
    FigureCanvasAgg(fig)
    losses, side = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    for key in keys:
        points = [(r["step"], r[key]) for r in numeric if isinstance(r.get(key), (int, float)) and r[key] > 0]
        if points:
            losses.plot(*zip(*points, strict=True), label=key, linewidth=1.2)
    losses.set_yscale("log")
    losses.set_xlabel("step")
    losses.set_title("training losses")
    losses.grid(True, which="both", alpha=0.3)
    losses.legend(fontsize=8)
    for key, axis in (("lr", side), ("grad_norm", side.twinx())):
        points = [(r["step"], r[key]) for r in numeric if isinstance(r.get(key), (int, float))]
        if points:
            colour = "tab:blue" if key == "lr" else "tab:orange"
            axis.plot(*zip(*points, strict=True), color=colour, linewidth=1.2)
            axis.set_ylabel(key, color=colour)
    side.set_xlabel("step")
    side.set_title("learning rate and gradient norm")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


# --------------------------------------------------------------------------- sections
class _Page:
    """Collects sections; ``link(path)`` gives a relative href or None when the page lives elsewhere."""

    def __init__(self, run_dir: Path, out: Path):
        self.run_dir, self.out = run_dir.resolve(), out.resolve()
        self.inside = self.run_dir in self.out.parents
        self.parts: list[str] = []

    def link(self, path: Path) -> str | None:
        if not self.inside:
            return None
        return Path(os.path.relpath(path.resolve(), self.out.parent)).as_posix()

    def add(self, title: str, body: str) -> None:
        self.parts.append(f"<h2>{_e(title)}</h2>\n{body}")


def _overview(run: RunDir, config_text: str) -> tuple[str, str]:
    import tomllib

    from madkit.engine.checkpoints import list_checkpoints

    try:
        name = str(tomllib.loads(config_text).get("name", run.root.name))
    except tomllib.TOMLDecodeError:
        name = run.root.name
    versions = json.loads(run.versions.read_text()) if run.versions.is_file() else {}
    checkpoints = list_checkpoints(run.root)
    rows = [
        ("run folder", str(run.root)),
        ("checkpoints", ", ".join(str(step) for step, _ in checkpoints) or "none"),
        *((key, versions[key]) for key in ("madkit", "torch", "python", "cuda", "platform") if key in versions),
    ]
    plugins = versions.get("plugins") or {}
    if plugins:
        def describe(info: Any) -> str:  # {"distribution": ..., "version": ...} per plugin
            if isinstance(info, dict):
                return " ".join(str(info.get(k, "")) for k in ("distribution", "version"))
            return str(info)

        rows.append(("plugins", ", ".join(f"{k} ({describe(v)})" for k, v in sorted(plugins.items()))))
    return name, table(("", ""), rows)


def _samples(page: _Page, run: RunDir, credit: str) -> str:
    def step_of(path: Path) -> int:
        found = _STEP.findall(path.stem)
        return int(found[-1]) if found else -1

    grids = sorted((p for p in run.samples.glob("*.png") if p.is_file()), key=lambda p: (step_of(p), p.name))
    if not grids:
        return '<p class="note">No sample grids (samples/*.png) yet.</p>'
    figures = []
    for path in evenly_spaced(grids, MAX_GRIDS):
        img = f'<img src="{data_uri(_thumbnail(path))}" alt="{_e(path.name)}">'
        href = page.link(path)
        if href:
            img = f'<a href="{_e(href)}">{img}</a>'
        caption = f"step {step_of(path):,}" if step_of(path) >= 0 else path.name
        figures.append(f"<figure>{img}<figcaption>{_e(caption)}</figcaption></figure>")
    shown = f"{len(figures)} of {len(grids)}" if len(grids) > len(figures) else f"all {len(grids)}"
    return f'<p class="note">Fixed-noise grids, {shown}.{credit}</p>' + "".join(figures)


def _data_credit(config_text: str) -> str:
    """OpenMoji asks for attribution wherever images derived from it are shown."""
    import tomllib

    try:
        kind = (tomllib.loads(config_text).get("data") or {}).get("kind")
    except tomllib.TOMLDecodeError:
        return ""
    return " Trained on OpenMoji emoji (https://openmoji.org, CC BY-SA 4.0)." if kind == "openmoji" else ""


def _checkpoint_means(summaries: Sequence[dict[str, Any]]) -> str:
    """The FID protocol's summaries (``madkit eval --last K``): each metric's mean over checkpoints."""
    header = ["checkpoints", "weights", "sampler", "steps", "images each", "metric", "mean ± std over checkpoints",
              "std within one", "extractor"]
    rows = []
    for s in summaries:
        steps = ", ".join(str(c["step"]) for c in s["checkpoints"])
        for key, entry in s["summary"].items():
            rows.append([
                steps, s["weights"], s["sampling"]["sampler"], s["sampling"]["steps"], s["sampling"]["num"], key,
                f"{format_number(entry['mean'])} ± {format_number(entry['std'])} (n = {entry['n']})",
                entry.get("mean_within_checkpoint_std"), s["extractor"],
            ])
    return "<p>Means over checkpoints (the FID protocol)</p>" + table(header, rows)


def _evaluations(run: RunDir) -> str:
    from madkit.engine.evaluation.records import read_eval_jsons

    found = read_eval_jsons(run.root)
    records = [r for r in found if isinstance(r.get("metric_values"), dict)]
    summaries = [r for r in found if r.get("kind") == SUMMARY_KIND and isinstance(r.get("summary"), dict)]
    if not records:
        return '<p class="note">No evaluations yet (eval/*.json from <code>madkit eval</code>).</p>'
    records.sort(key=lambda r: (r["checkpoint"]["step"], r["sampling"]["sampler"], r["sampling"]["steps"]))
    metric_keys = list(dict.fromkeys(k for r in records for k in r["metric_values"]
                                     if not is_spread(k, r["metric_values"])))
    header = ["checkpoint", "weights", "sampler", "steps", "images", *metric_keys, "extractor", "reference",
              "FLOPs/image", "s/image"]
    rows = []
    for r in records:
        cost = r.get("cost") or {}
        reference = r.get("reference") or {}
        values = r["metric_values"]
        rows.append([
            r["checkpoint"]["step"], r["checkpoint"]["weights"], r["sampling"]["sampler"], r["sampling"]["steps"],
            r["sampling"]["num"], *(with_spread(values, k) if k in values else None for k in metric_keys),
            r["extractor"], f"{reference.get('num', '?')} images, sha256 {str(reference.get('content_hash', ''))[:12]}",
            cost.get("sample_flops_per_image"), r.get("seconds_per_image"),
        ])
    note = ('<p class="note">Metric values are named after the extractor that produced them: only '
            '"inception-v3-compat" figures are comparable to published FID. "± s" is one standard deviation: '
            'for FID a bootstrap over the generated images, for KID over its subsets.</p>')
    return note + table(header, rows) + (_checkpoint_means(summaries) if summaries else "")


def _sweeps(run: RunDir) -> str | None:
    eval_dir = run.root / "eval"
    plots = sorted(eval_dir.glob("*.png")) if eval_dir.is_dir() else []
    tables = sorted(eval_dir.glob("*.csv")) if eval_dir.is_dir() else []
    if not plots and not tables:
        return None
    parts = [f'<figure><img src="{data_uri(p.read_bytes())}" alt="{_e(p.name)}" style="max-width:100%">'
             f"<figcaption>{_e(p.name)}</figcaption></figure>" for p in plots]
    for path in tables:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if rows:
            keep = [i for i, c in enumerate(rows[0]) if c not in ("run", "eval_json")]
            parts.append(f"<p>{_e(path.name)}</p>" + table([rows[0][i] for i in keep], [[_number(r[i]) for i in keep]
                                                                                      for r in rows[1:]]))
    return "".join(parts)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# --------------------------------------------------------------------------- the page
def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default RUN/report.html); returns its path."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise UserError(f"{run.root} is not a folder; pass a run folder (what `madkit run --out` wrote)")
    if not (run.config.is_file() or run.metrics.is_file()):
        raise UserError(
            f"{run.root} is not a madkit run folder: it has neither {run.config.name} nor {run.metrics.name}"
        )
    out = Path(out) if out is not None else run.root / "report.html"
    page = _Page(run.root, out)
    config_text = run.config.read_text() if run.config.is_file() else ""
    name, overview = _overview(run, config_text)
    page.add("Run", overview)
    png = loss_plot(read_metrics(run.metrics))
    page.add("Training curves", f'<img src="{data_uri(png)}" alt="loss curves" style="max-width:100%">' if png
             else '<p class="note">No logged losses yet (metrics.jsonl).</p>')
    page.add("Samples over training", _samples(page, run, _data_credit(config_text)))
    page.add("Evaluations", _evaluations(run))
    sweeps = _sweeps(run)
    if sweeps:
        page.add("Sweeps", sweeps)
    page.add("Resolved config", f"<pre>{_e(config_text or '(no config.resolved.toml)')}</pre>")
    document = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(name)}: madkit report</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_e(name)}</h1>\n" + "\n".join(page.parts) + "\n</body></html>\n"
    )
    atomic_write(out, document.encode("utf-8"))
    return out
