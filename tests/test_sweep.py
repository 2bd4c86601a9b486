"""``madkit sweep`` (madkit/commands/sweep.py, madkit/engine/evaluation/sweep.py): step-count grids, the
compute-matched budget, the CSV and the Figure-4 plot."""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from eval_helpers import environment  # noqa: F401 (autouse fixture for this module)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from madkit.cli import main
from madkit.commands import UsageError
from madkit.commands.sweep import parse_flops, parse_steps
from madkit.engine.evaluation.sweep import plot_sweep, steps_within_budget, write_csv

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny" / "madformer.toml"


# --------------------------------------------------------------------------- pure logic
@settings(max_examples=200, deadline=None)
@given(
    base=st.integers(1, 10**6),
    per_step=st.integers(1, 10**5),
    curve=st.integers(0, 50),
    budget=st.integers(1, 3 * 10**6),
    max_steps=st.integers(1, 1000),
)
def test_the_budget_picks_the_largest_step_count_that_fits(base, per_step, curve, budget, max_steps):
    def cost(s: int) -> dict:
        return {"sample_flops_per_image": base + per_step * s + curve * s * s}

    brute = [s for s in range(1, max_steps + 1) if cost(s)["sample_flops_per_image"] <= budget]
    assert steps_within_budget(cost, budget, max_steps) == (max(brute) if brute else None)


@pytest.mark.parametrize(
    "text, value",
    [("2.1e15", 2.1e15), ("2.1P", 2.1e15), ("500G", 5e11), ("3e7 FLOPs", 3e7), ("1.5 TFLOP", 1.5e12), ("42", 42.0)],
)
def test_budgets_read_plain_and_si_prefixed_numbers(text, value):
    assert parse_flops(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "fast", "-5", "0", "2.1Q", "1e"])
def test_bad_budgets_say_what_is_expected(text):
    with pytest.raises(UsageError, match="--budget"):
        parse_flops(text)


def test_step_lists():
    assert parse_steps("8,2, 4,2") == [2, 4, 8]
    assert parse_steps(None) == []
    for bad in ("2,x", "0,4", ","):
        with pytest.raises(UsageError, match="--steps"):
            parse_steps(bad)


def _row(label, steps, flops, fid, matched=False, **extra):
    return {"label": label, "steps": steps, "sample_flops_per_image": flops, "fid": fid, "extractor": "proxy-x",
            "budget_matched": matched, **extra}


def test_csv_takes_every_column_once_and_writes_missing_values_empty(tmp_path):
    rows = [_row("a", 1, 10.0, 3.0), _row("b", 2, None, 2.0, kid=0.1)]
    write_csv(rows, tmp_path / "s.csv")
    with open(tmp_path / "s.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == ["label", "steps", "sample_flops_per_image", "fid", "extractor", "budget_matched", "kid"]
    assert read[0]["kid"] == "" and read[1]["sample_flops_per_image"] == "" and read[1]["kid"] == "0.1"


def test_the_plot_is_a_png_even_for_odd_inputs(tmp_path):
    rows = [_row("D=1/N=4, T=4", s, 1e7 * s, 10.0 / s, matched=s == 2) for s in (1, 2, 4)]
    rows += [_row("D=3/N=4, T=4", 1, 3e7, 5.0), _row("no cost", 1, None, 4.0)]
    plot_sweep(rows, tmp_path / "a.png", budget=2.5e7)
    plot_sweep([], tmp_path / "empty.png")
    with_bars = [{**r, "fid_std": 0.5, "num": 100} for r in rows[:3]] + rows[3:]  # bars on some curves only
    plot_sweep(with_bars, tmp_path / "bars.png", budget=[1.5e7, 3.5e7], spread="std over 3 seeds")
    for name in ("a.png", "empty.png", "bars.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] > 500


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    """Two 3-step runs of the tiny spec that differ only in D (2 and 1 of N = 4)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for depth in (2, 1):
        out[depth] = root / f"d{depth}"
        sets = [f"model.diffusion_depth={depth}", "train.steps=3", "train.ckpt_every=3", "train.sample_num=2",
                "train.sample_steps=1", "log.sinks=[]"]
        assert main(["run", str(TINY), "--out", str(out[depth]), *(a for s in sets for a in ("--set", s))]) == 0
    return out


def flops(depth: int, steps: int) -> int:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["flops", str(TINY), "--set", f"model.diffusion_depth={depth}", "--steps", str(steps), "--json"])
    assert code == 0
    return json.loads(buffer.getvalue())["sample_flops_per_image"]


def test_sweep_writes_the_grid_and_the_points_at_equal_compute(runs, tmp_path):
    budget = flops(2, 3)  # the D = 2 model's cost at 3 steps: the AR-heavy D = 1 model affords more
    args = ["sweep", str(runs[2]), str(runs[1]), "--steps", "1,2", "--num", "8", "--batch", "8",
            "--budget", str(budget), "--out", str(tmp_path)]
    assert main(args) == 0
    with open(tmp_path / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with Image.open(tmp_path / "sweep.png") as image:
        assert image.format == "PNG"
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    assert set(by_label) == {"D=2/N=4, T=4", "D=1/N=4, T=4"}
    matched = {}
    for label, model_rows in by_label.items():
        depth = int(label[2])
        assert [int(r["steps"]) for r in model_rows if r["budget_matched"] == "False"] == [1, 2]
        (point,) = [r for r in model_rows if r["budget_matched"] == "True"]
        steps = int(point["steps"])
        assert float(point["sample_flops_per_image"]) == flops(depth, steps) <= budget < flops(depth, steps + 1)
        matched[depth] = steps
        for r in model_rows:  # every point is an eval record of its own run, with the same numbers
            rec = json.loads(Path(r["eval_json"]).read_text())
            assert Path(r["eval_json"]).parent == runs[depth] / "eval"
            assert rec["fid"] == pytest.approx(float(r["fid"]))
            # the spread and both sample counts travel with every number
            assert float(r["fid_std"]) == pytest.approx(rec["fid_std"]) and rec["fid_std"] > 0
            assert int(r["num"]) == 8 and int(r["num_reference"]) == rec["reference"]["num"] == 64
            assert int(r["nfe"]) == rec["cost"]["nfe"] == 4 * int(r["steps"])  # T = 4 blocks
            assert float(r["seconds_per_image"]) > 0 and r["extractor"].startswith("openmoji-proxy-")
    assert matched == {2: 3, 1: matched[1]} and matched[1] > 3


def test_several_runs_need_an_output_folder(runs, capsys):
    assert main(["sweep", str(runs[2]), str(runs[1]), "--steps", "1", "--num", "8"]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_sweep_needs_steps_or_a_budget(runs, capsys):
    assert main(["sweep", str(runs[2]), "--num", "8"]) == 2
    assert "--steps" in capsys.readouterr().err
