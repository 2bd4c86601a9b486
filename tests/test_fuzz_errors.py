"""A property-based fuzz of the error path: whatever a user types, madkit answers with exit 0, or exit 2
and short lines that say what to fix; never an internal error, a traceback or a wall of text.

Two generators drive the real CLI entry point in-process: mutations of a valid spec through ``--set``
(any key of the spec or an unknown one, values of every TOML type, huge and deep ones included), and
argument lists for the commands that read user input (flags, numbers, unicode, paths that are missing,
files, folders). ``-m slow`` runs many more examples; ``MADKIT_FUZZ_REPORT=path`` writes the distinct
messages reached, for the record.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from madkit.cli import main
from madkit.experiment_spec import load_spec
from madkit.registry import Registry
from madkit.spec_loading import flatten

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny" / "madformer.toml"
MAX_LINE = 700  # one line a person reads: a problem, its key and its fix (long values are shortened)
REACHED: set[str] = set()

FAST = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))


def _keys() -> list[str]:
    raw = load_spec(TINY, [], Registry.load(), check_resources=False).raw
    return sorted(flatten(raw))


KEYS = _keys()
UNKNOWN = ["train.stepz", "model.partitioner.tiel", "nope", "data.kind", "model.kind", "sampler.kind", "log.sinks"]


def toml_literal(value) -> str:
    """``value`` as a TOML literal for ``--set`` (strings JSON-escaped: TOML basic strings accept that)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=40),
    st.sampled_from(["", ".", "..", "../x", "auto", "cpu", "cuda:7", "tiles", "raster", "ddim", "nope", "🙂" * 3]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text("abcxyz_", min_size=1, max_size=6),
                                                                         inner, max_size=3)),
    max_leaves=8,
)
assignments = st.tuples(st.sampled_from(KEYS + UNKNOWN), values).map(lambda kv: f"{kv[0]}={toml_literal(kv[1])}")
raw_assignments = st.text(max_size=30)  # not even KEY=VALUE


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: bad flags, --help
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def check_answer(argv: list[str], code: int, err: str) -> None:
    assert code in (0, 2), f"exit {code} for {argv!r}:\n{err[-2000:]}"
    assert "Traceback" not in err and "internal error" not in err, f"{argv!r}:\n{err[-2000:]}"
    for line in err.splitlines():
        assert len(line) <= MAX_LINE, f"a {len(line)}-character line for {argv!r}: {line[:200]}..."
    if code == 2:
        first = err.strip().splitlines()[0] if err.strip() else ""
        assert first, f"exit 2 without a message for {argv!r}"
        message = re.sub(r"^--set .*?: (?=[\w.\[\]]+: )", "", first)  # drop the echoed assignment
        REACHED.add(re.sub(r"\d+|'[^']*'|\"[^\"]*\"|\[.*|\{.*", "#", message)[:100])


@pytest.fixture(autouse=True)
def _in_a_scratch_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a mutated command might write lands here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    if report := os.environ.get("MADKIT_FUZZ_REPORT"):
        Path(report).write_text("\n".join(sorted(REACHED)) + "\n")


def _spec_mutations(sets: list[str]) -> None:
    argv = ["validate", str(TINY), "--no-data"] + [a for s in sets for a in ("--set", s)]
    check_answer(argv, *run_cli(argv))


@FAST
@given(st.lists(st.one_of(assignments, raw_assignments), min_size=1, max_size=3))
def test_any_spec_mutation_is_valid_or_one_line_per_problem(sets):
    _spec_mutations(sets)


@pytest.mark.slow
@SLOW
@given(st.lists(st.one_of(assignments, raw_assignments), min_size=1, max_size=4))
def test_any_spec_mutation_is_valid_or_one_line_per_problem_many(sets):
    _spec_mutations(sets)


COMMANDS = {
    "validate": ["--no-data", "--set"],
    "flops": ["--steps", "--json", "--set"],
    "sample": ["--num", "--steps", "--sampler", "--guidance", "--seed", "--out", "--batch", "--shard", "--threads",
               "--device", "--overwrite", "--grid", "--raw"],
    "eval": ["--num", "--steps", "--sampler", "--metrics", "--extractor", "--reference", "--name", "--shard",
             "--last", "--threads"],
    "export": ["--out"],
    "report": ["--out"],
    "fid-stats": ["--out", "--num", "--extractor", "--threads"],
    "study": ["--seeds", "--steps", "--budget-steps", "--num", "--cost", "--mfu", "--threads", "--train-only",
              "--launcher", "--dry-run", "--status"],
    "import-reference": ["--spec", "--out"],
}


def _paths(tmp: Path) -> list[str]:
    junk = tmp / "junk.toml"
    junk.write_bytes(b"\xff\xfe not toml [[[")
    (tmp / "folder").mkdir(exist_ok=True)
    return [str(TINY), str(junk), str(tmp / "folder"), str(tmp / "missing"), "/dev/null", "owner/name", ""]


tokens = st.one_of(st.integers(-5, 10**12).map(str), st.text(max_size=12), st.sampled_from(["0", "-1", "1/0", "3/2",
                   "nan", "ddim", "fid,kid", "auto", "cuda:9", "--", "-x", "a=b"]))


def _argument_lists(command: str, draws: list[tuple[int, str]], path_picks: list[int], tmp: Path) -> None:
    paths = _paths(tmp)
    argv = [command, paths[path_picks[0] % len(paths)]]
    flags = COMMANDS[command]
    for pick, token in draws:
        argv.append(flags[pick % len(flags)])
        argv.append(paths[pick % len(paths)] if pick % 3 == 0 else token)
    check_answer(argv, *run_cli(argv))


@FAST
@given(st.sampled_from(sorted(COMMANDS)), st.lists(st.tuples(st.integers(0, 99), tokens), max_size=3),
       st.lists(st.integers(0, 99), min_size=1, max_size=1))
def test_any_argument_list_is_answered_with_exit_0_or_one_line(command, draws, path_picks):
    _argument_lists(command, draws, path_picks, Path.cwd())


@pytest.mark.slow
@SLOW
@given(st.sampled_from(sorted(COMMANDS)), st.lists(st.tuples(st.integers(0, 99), tokens), max_size=5),
       st.lists(st.integers(0, 99), min_size=1, max_size=1))
def test_any_argument_list_is_answered_with_exit_0_or_one_line_many(command, draws, path_picks):
    _argument_lists(command, draws, path_picks, Path.cwd())
