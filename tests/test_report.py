"""``madkit report`` (madkit/commands/report.py, madkit/engine/evaluation/report.py): a self-contained page.

The run folder is written by hand here (config, versions, metrics, grids, an eval record, a sweep),
so the page's content can be checked exactly and without training anything.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from madkit.cli import main
from madkit.engine.evaluation.report import MAX_GRIDS, build_report, evenly_spaced

GRID_STEPS = [100 * i for i in range(1, 13)]  # 12 grids: more than the page shows


class _Page(HTMLParser):
    """Every tag, and every src/href with the tag it sits on."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links.extend((tag, value) for name, value in attrs if name in ("src", "href"))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "runs" / "toy"
    (run / "samples").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "checkpoints" / "00001200").mkdir(parents=True)
    (run / "config.resolved.toml").write_text(
        'name = "toy <run>"\nseed = 0\n\n[data]\nkind = "openmoji"\nnote = "</pre><script>alert(1)</script>"\n'
    )
    (run / "versions.json").write_text(json.dumps({"madkit": "0.1.0", "torch": "2.14", "plugins": {"models": "0.1"}}))
    lines = [json.dumps({"step": s, "loss": 1 / s, "loss/image": 0.5 / s, "lr": 1e-3, "grad_norm": 1.0})
             for s in range(10, 1210, 10)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 12')  # a torn last line, as after a kill
    for i, step in enumerate(GRID_STEPS):
        Image.new("RGB", (1200, 900), (i * 20, 100, 200)).save(run / "samples" / f"step_{step:08d}.png")
    record = {
        "fid": 12.3456, "extractor": "openmoji-proxy-abcdef12", "metric_values": {"fid": 12.3456, "fid_std": 0.4321, "fid_bootstrap": 100},
        "name": "00001200-ema-ddim-s8-n500-seed0-proxy",
        "checkpoint": {"path": str(run / "checkpoints" / "00001200"), "step": 1200, "weights": "ema"},
        "sampling": {"sampler": "ddim", "steps": 8, "num": 500, "seed": 0, "guidance": None},
        "cost": {"nfe": 32, "layer_passes": 80, "sample_flops_per_image": 8.25e7},
        "reference": {"num": 4495, "content_hash": "f" * 64}, "seconds_per_image": 0.004,
    }
    (run / "eval" / f"{record['name']}.json").write_text(json.dumps(record))
    summary = {  # what `madkit eval --last 5` writes beside the records
        "kind": "checkpoint-mean", "fid": 12.5, "fid_std": 0.25, "extractor": "openmoji-proxy-abcdef12",
        "summary": {"fid": {"mean": 12.5, "std": 0.25, "sem": 0.11, "n": 5, "values": [12.5] * 5,
                            "mean_within_checkpoint_std": 0.43}},
        "checkpoints": [{"step": s} for s in (800, 900, 1000, 1100, 1200)], "weights": "ema",
        "sampling": {"sampler": "ddim", "steps": 8, "num": 500},
    }
    (run / "eval" / "mean5-00000800-00001200-ema-ddim-s8-n500-seed0-proxy.json").write_text(json.dumps(summary))
    (run / "eval" / "notes.json").write_text("[1, 2]")  # not an eval record: ignored
    Image.new("RGB", (640, 400), "white").save(run / "eval" / "sweep.png")
    (run / "eval" / "sweep.csv").write_text("label,steps,fid,run,eval_json\nD=1/N=4,8,12.345,/x,/x/e.json\n")
    return run


def _check_links_stay_inside(page: _Page, html_path: Path, run: Path) -> list[str]:
    """Every src/href is inline PNG data or a relative path to an existing file inside the run."""
    relative = []
    for _tag, value in page.links:
        if value.startswith("data:"):
            header, payload = value.split(",", 1)
            assert header == "data:image/png;base64"
            assert base64.b64decode(payload).startswith(b"\x89PNG\r\n\x1a\n")
            continue
        assert "://" not in value and not value.startswith(("/", "\\")), value
        target = (html_path.parent / value).resolve()
        assert run.resolve() in target.parents and target.is_file(), value
        relative.append(value)
    return relative


def test_the_default_page_is_inside_the_run_and_links_only_into_it(run_dir):
    assert main(["report", str(run_dir)]) == 0
    html_path = run_dir / "report.html"
    page = _Page(html_path.read_text())
    relative = _check_links_stay_inside(page, html_path, run_dir)
    shown = evenly_spaced(GRID_STEPS, MAX_GRIDS)
    # thumbnails link to their full-size grids, first and last step included
    assert relative == [f"samples/step_{s:08d}.png" for s in shown]
    assert shown[0] == GRID_STEPS[0] and shown[-1] == GRID_STEPS[-1] and len(shown) == MAX_GRIDS
    text = "".join(page.text)
    assert "12.35" in text and "openmoji-proxy-abcdef12" in text and "8.25e+07" in text  # the eval table
    assert "12.35 ± 0.4321" in text and "fid_std" not in text  # each value with its spread beside it
    assert "Means over checkpoints" in text and "12.5 ± 0.25 (n = 5)" in text and "800, 900, 1000, 1100, 1200" in text
    assert "D=1/N=4" in text and "/x/e.json" not in text  # the sweep table, without machine paths
    assert "OpenMoji" in text  # attribution where emoji-derived images are shown
    # the config is shown as text: its markup is escaped, never interpreted
    assert "script" not in page.tags and "<script>alert(1)</script>" in text
    assert "toy <run>" in text


def test_a_page_written_elsewhere_is_fully_self_contained(run_dir, tmp_path):
    out = build_report(run_dir, tmp_path / "elsewhere" / "toy.html")
    page = _Page(out.read_text())
    assert page.links and all(value.startswith("data:") for _, value in page.links)
    assert page.tags.count("img") == MAX_GRIDS + 2  # grids, loss curves, sweep plot


def test_thumbnails_keep_the_page_small(run_dir):
    out = build_report(run_dir)
    assert out.stat().st_size < 2_000_000


def test_an_empty_run_still_reports_what_is_missing(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.resolved.toml").write_text('name = "fresh"\n')
    page = _Page(build_report(run).read_text())
    text = "".join(page.text)
    assert "No sample grids" in text and "No evaluations yet" in text and "No logged losses" in text


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a madkit run folder" in capsys.readouterr().err


@given(n=st.integers(0, 60), most=st.integers(2, 12))
def test_evenly_spaced_keeps_the_ends_and_at_most_the_count(n, most):
    items = list(range(n))
    picked = evenly_spaced(items, most)
    assert len(picked) == min(n, most) and picked == sorted(set(picked))
    if n:
        assert picked[0] == 0 and picked[-1] == n - 1
