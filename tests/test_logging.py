"""Console output through logging: -q / -v and MADKIT_VERBOSITY on the command line, a quiet library
by default, and a run's train.log that keeps every line whatever the console shows."""

from __future__ import annotations

import logging

import pytest
from eval_helpers import TINY, environment  # noqa: F401 (environment: autouse fixture for this module)

from madkit import logs
from madkit.cli import main

QUIET_RUN = ["train.steps=2", "train.ckpt_every=2", "train.sample_every=0", "train.log_every=1", "log.sinks=[]",
             "train.threads=1"]


@pytest.fixture(autouse=True)
def restore_verbosity():
    yield
    logs.set_verbosity("warning")  # the library's default, as a fresh import leaves it


def run(out, *flags: str) -> int:
    return main(["run", str(TINY), "--out", str(out), *(a for s in QUIET_RUN for a in ("--set", s)), *flags])


def test_quiet_hides_the_progress_lines_but_the_run_log_keeps_them(tmp_path, capsys):
    assert run(tmp_path / "quiet", "-q") == 0
    out = capsys.readouterr().out
    assert "step 2/2 | loss" not in out and "madformer model" not in out
    assert f"run folder: {tmp_path / 'quiet'}" in out  # what the command was asked for is always shown
    log = (tmp_path / "quiet" / "train.log").read_text()
    assert "step 1/2 | loss" in log and "step 2/2 | loss" in log and "madformer model" in log


def test_the_default_shows_progress_on_stdout_and_verbose_adds_nothing_lost(tmp_path, capsys):
    assert run(tmp_path / "plain") == 0
    plain = capsys.readouterr()
    assert "step 2/2 | loss" in plain.out and "madkit:" not in plain.out  # report lines, unprefixed
    assert main(["-v", "validate", str(TINY), "--no-data"]) == 0
    assert logging.getLogger("madkit").getEffectiveLevel() == logging.DEBUG


def test_a_misspelt_verbosity_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("MADKIT_VERBOSITY", "loud")
    assert main(["validate", str(TINY), "--no-data"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "madkit validate: MADKIT_VERBOSITY: verbosity 'loud': use one of debug, info, warning, error"


def test_the_library_is_quiet_until_asked(capsys):
    logs.set_verbosity("warning")
    logs.get_logger("madkit.test").info("working on it")
    logs.get_logger("madkit.test").warning("something to know")
    assert capsys.readouterr().err == "madkit: something to know\n"
    logs.set_verbosity("info")
    logs.get_logger("a_plugin.module").info("working on it")  # a plugin's module logs under madkit too
    assert capsys.readouterr().err == "madkit: working on it\n"
