"""benchmarks/compare.py: sections by name, and a clear refusal before anything runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks/compare.py"


@pytest.fixture()
def compare(monkeypatch):
    spec = importlib.util.spec_from_file_location("compare_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # a section whose module is not in the checkout (as generate was before its branch landed)
    monkeypatch.setitem(module.SECTIONS, "absent", "compare_absent_for_test")
    return module


def test_a_missing_section_module_is_refused_before_any_section_runs(compare, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["train", "absent", "--quick"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()[-1]
    assert "benchmarks/compare_absent_for_test.py is not in this checkout" in err
    assert err.endswith("python benchmarks/compare.py train")
    assert "== train ==" not in captured.out


def test_an_unknown_section_is_refused(compare, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--only", "train,nope"])
    assert exit_info.value.code == 2
    assert "unknown section(s) ['nope']" in capsys.readouterr().err


def test_the_train_section_counts_both_steps_flops_on_the_meta_device(monkeypatch):
    """The FLOP count runs the real training step (per-example generators included) with no data."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from step import build_step
    from timing import measured_flops

    step, info = build_step("tiny", device="meta")
    flops = measured_flops(step)
    # training = forward + backward: at least the 6 x parameters x tokens rule's order of magnitude
    tokens = info["batch"] * info["cost"]["train_sequence_length_computed"]
    assert flops > 2 * sum(p.numel() for p in info["model"].parameters() if p.requires_grad) * tokens
