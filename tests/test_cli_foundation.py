"""The command line over the foundation: `madkit validate` reports every problem located and exits 2,
`--debug` shows the traceback instead, a plugin installation problem exits 2 in one line, `madkit
plugins` lists attributions. (Every user mistake of every command: tests/test_user_errors.py.)

Plugins come from real entry points: the fake ``test-*`` kinds are installed as a distribution in a
temporary site (see the ``fakes_installed`` fixture), and MADKIT_PLUGINS keeps other plugins out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fake_plugins import TINY_SPEC

from madkit.cli import main
from madkit.spec import SpecError

VALID = TINY_SPEC.read_text()


def edit(text: str, *replacements: tuple[str, str]) -> str:
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    return text


# One spec, four problems of four kinds: a typo key, a float where an int belongs, an unknown kind,
# and a tile that does not divide the token grid (a cross-field check that needs the other tables).
FOUR_PROBLEMS = edit(
    VALID,
    ("steps = 5", "stpes = 5"),
    ("seed = 3", "seed = 1.5"),
    ('kind = "test-euler"', 'kind = "test-eulr"'),
    ("tile = [4, 4]", "tile = [3, 4]"),
)
FOUR_PROBLEM_LINES = [
    "seed: expected int, got float 1.5",
    "train.stpes: unknown key; did you mean 'steps'?",
    "sampler.kind: unknown sampler kind 'test-eulr'; did you mean 'test-euler'? (installed: 'test-euler')",
    "model.partitioner.tile: a 3x4 tile does not divide the 16x16 token grid (16 % 3 = 1, 16 % 4 = 0); "
    "choose sides that divide 16 and 16",
]


@pytest.fixture
def bad_spec(tmp_path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(FOUR_PROBLEMS)
    return path


@pytest.fixture
def good_spec(tmp_path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text(VALID)
    return path


def assert_four_problems(stderr: str, path: Path) -> None:
    lines = stderr.strip().splitlines()
    assert lines[-1] == "4 problem(s) found", stderr
    prefix = f"{path.resolve()}: "
    assert all(line.startswith(prefix) for line in lines[:-1]), stderr
    assert sorted(line[len(prefix) :] for line in lines[:-1]) == sorted(FOUR_PROBLEM_LINES)
    assert "Traceback" not in stderr


def test_validate_reports_every_problem_and_exits_2(fakes_installed, bad_spec, capsys):
    assert main(["validate", str(bad_spec)]) == 2
    assert_four_problems(capsys.readouterr().err, bad_spec)


def test_validate_in_a_real_process(fakes_installed, bad_spec):
    result = subprocess.run(
        [sys.executable, "-m", "madkit", "validate", str(bad_spec)],
        env=fakes_installed,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert_four_problems(result.stderr, bad_spec)


def test_debug_shows_the_traceback_in_a_real_process(fakes_installed, bad_spec):
    result = subprocess.run(
        [sys.executable, "-m", "madkit", "validate", "--debug", str(bad_spec)],
        env=fakes_installed,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1  # an uncaught exception
    assert "Traceback (most recent call last)" in result.stderr
    assert "madkit.spec.SpecError" in result.stderr and "train.stpes: unknown key" in result.stderr


def test_debug_reraises_in_process(fakes_installed, bad_spec):
    with pytest.raises(SpecError) as info:
        main(["validate", str(bad_spec), "--debug"])
    assert len(info.value.lines) == 4


def test_validate_accepts_a_valid_spec(fakes_installed, good_spec, capsys):
    assert main(["validate", str(good_spec)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (
        f"{good_spec}: valid: 'tiny' (data=test-blank, codec=test-pixels, model=test-tiny, sampler=test-euler; "
        "images 3x16x16, latents 3x16x16; 5 steps, global batch 8)"
    )


def test_validate_set_problems_name_the_assignment(fakes_installed, good_spec, capsys):
    assert (
        main(["validate", str(good_spec), "--set", "train.batch=8.0", "--set", "model.partitioner.tile=[16, 5]"]) == 2
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[:-1] == [
        "--set train.batch=8.0: train.batch: expected int, got float 8.0",
        "--set model.partitioner.tile=[16, 5]: model.partitioner.tile: a 16x5 tile does not divide the 16x16 "
        "token grid (16 % 16 = 0, 16 % 5 = 1); choose sides that divide 16 and 16",
    ]


def test_set_can_repair_a_spec(fakes_installed, bad_spec, capsys):
    # --set wins over the file: fixing each value from the command line makes the spec valid
    repairs = ["seed=1", "sampler.kind=test-euler", "model.partitioner.tile=[4, 4]"]
    args = ["validate", str(bad_spec), *(a for r in repairs for a in ("--set", r))]
    assert main(args) == 2  # the typo key cannot be removed by --set
    assert capsys.readouterr().err.strip().splitlines()[0].endswith("train.stpes: unknown key; did you mean 'steps'?")


def test_missing_spec_exits_2(fakes_installed, tmp_path, capsys):
    assert main(["validate", str(tmp_path / "absent.toml")]) == 2
    assert capsys.readouterr().err.startswith(f"{tmp_path / 'absent.toml'}: spec file not found")


def test_plugin_selection_mistake_exits_2_in_one_line(fakes_installed, good_spec, monkeypatch, capsys):
    monkeypatch.setenv("MADKIT_PLUGINS", "partitioners,not-installed")
    assert main(["validate", str(good_spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("madkit validate: MADKIT_PLUGINS names ['not-installed']")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_run_refuses_a_bad_spec_before_doing_anything(fakes_installed, bad_spec, capsys):
    assert main(["run", str(bad_spec)]) == 2
    assert_four_problems(capsys.readouterr().err, bad_spec)


def test_plugins_lists_each_plugin_with_its_distribution(fakes_installed, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "partitioners  (madkit " in out and "  partitioner  raster, tiles" in out
    assert "test-fakes  (madkit-test-fakes 0.0.1)" in out
    assert "  sampler      test-euler" in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["vaildate"])
    assert info.value.code == 2
    assert "invalid choice: 'vaildate'" in capsys.readouterr().err
