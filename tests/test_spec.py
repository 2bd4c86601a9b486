"""Spec loading: strict types, every error class reported at once as ``FILE: toml.path: message``,
extends chains, --set overrides, provenance, and the spec reference in docs/spec.md."""

from __future__ import annotations

import re
import textwrap
import tomllib
from pathlib import Path

import attrs
import pytest
from fake_plugins import TINY_SPEC
from fake_plugins.kinds import Built

from madkit.build import build_experiment
from madkit.experiment_spec import LogConfig, TrainConfig, load_spec, structure_spec
from madkit.spec import SpecError
from madkit.spec_loading import DEFAULTS_SOURCE

DOCS = Path(__file__).resolve().parents[1] / "docs"

# A complete, valid spec over the fake test-* kinds (a 16x16 token grid); cases below edit its text.
VALID = TINY_SPEC.read_text()


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, registry, sets: list[str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, sets, registry)
    return info.value.lines


# --------------------------------------------------------------------------- a valid spec
def test_valid_spec_resolves_every_default(tmp_path, fake_registry):
    loaded = load_spec(write(tmp_path, "ok.toml", VALID), registry=fake_registry)
    spec = loaded.spec
    assert (spec.name, spec.seed, spec.train.steps, spec.train.batch) == ("tiny", 3, 5, 8)
    assert spec.model.partitioner.tile == (4, 4)
    assert loaded.raw["train"]["lr"] == TrainConfig().lr  # defaults spelled out in the resolved spec
    assert loaded.raw["model"]["partitioner"] == {"kind": "tiles", "tile": (4, 4)}


def test_resolved_spec_round_trips_through_toml(tmp_path, fake_registry):
    # run folders and checkpoints store the resolved spec as TOML text and rebuild from it
    loaded = load_spec(write(tmp_path, "ok.toml", VALID), registry=fake_registry)
    assert structure_spec(tomllib.loads(loaded.to_toml()), fake_registry) == loaded.spec


def test_int_is_accepted_where_a_float_belongs(tmp_path, fake_registry):
    spec = load_spec(write(tmp_path, "ok.toml", VALID + "lr = 1\n"), registry=fake_registry).spec
    assert spec.train.lr == 1.0 and isinstance(spec.train.lr, float)


def test_build_passes_each_interface_its_runtime_arguments(tmp_path, fake_registry):
    spec = load_spec(write(tmp_path, "ok.toml", VALID), registry=fake_registry).spec
    experiment = build_experiment(spec, fake_registry)
    assert experiment.model.runtime == {"latent_shape": (3, 16, 16), "num_classes": 0, "registry": fake_registry}
    assert isinstance(experiment.sampler, Built) and experiment.sampler.runtime == {"schedule": experiment.schedule}
    assert (experiment.image_shape, experiment.latent_shape) == ((3, 16, 16), (3, 16, 16))


# --------------------------------------------------------------------------- one error class at a time
def replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


ERROR_CASES = {
    "unknown key, close match": (
        VALID.replace("steps = 5", "stpes = 5"),
        "train.stpes: unknown key; did you mean 'steps'?",
    ),
    "unknown key inside a kind's table": (
        VALID.replace("tile = [4, 4]", "tiel = [4, 4]"),
        "model.partitioner.tiel: unknown key; did you mean 'tile'?",
    ),
    "unknown key, no close match": (
        VALID.replace("[train]", "[train]\nzzz = 1"),
        "train.zzz: unknown key; allowed keys: steps, batch, micro_batch",
    ),
    "unknown top-level key": (VALID.replace("seed = 3", "sede = 3"), "sede: unknown key; did you mean 'seed'?"),
    "float where an int belongs": (
        VALID.replace("steps = 5", "steps = 1.7"),
        "train.steps: expected int, got float 1.7",
    ),
    "string 'false' where a bool belongs": (
        VALID + 'compile = "false"\n',
        "train.compile: expected bool, got str 'false'",
    ),
    "bool where an int belongs": (VALID.replace("seed = 3", "seed = true"), "seed: expected int, got bool True"),
    "int where a str belongs": (VALID.replace('name = "tiny"', "name = 3"), "name: expected str, got int 3"),
    "string where an array belongs": (
        VALID.replace("sinks = []", 'sinks = "tensorboard"'),
        "log.sinks: expected an array, got str 'tensorboard'",
    ),
    "array of the wrong length": (
        VALID.replace("tile = [4, 4]", "tile = [4, 4, 4]"),
        "model.partitioner.tile: expected an array of 2 items, got 3: [4, 4, 4]",
    ),
    "wrong type inside an array": (
        VALID + 'betas = [0.9, "high"]\n',
        "train.betas[1]: expected float, got str 'high'",
    ),
    "scalar where a table belongs": ("train = 3\n" + VALID.split("[train]")[0], "train: expected a table, got int 3"),
    "unknown kind": (
        VALID.replace('kind = "test-tiny"', 'kind = "test-tiyn"'),
        "model.kind: unknown model kind 'test-tiyn'; did you mean 'test-tiny'? (installed: 'test-tiny')",
    ),
    # (a codec, schedule or sampler table without kind inherits the default kind instead)
    "missing kind": (
        VALID.replace('kind = "test-blank"', "classes = 2"),
        "data.kind: missing; choose one of the installed data kinds: test-blank",
    ),
    "kind that is not a string": (
        VALID.replace('kind = "test-euler"', "kind = 4"),
        "sampler.kind: expected a string, got int",
    ),
    "missing required key": (VALID.replace("size = 16", "classes = 2"), "data.size: required key is missing"),
    "missing required table": (
        re.sub(r"\[model\].*?(?=\[log\])", "", VALID, flags=re.S),
        'model: required table is missing; add it with kind = "..."',
    ),
    "validator": (VALID.replace("steps = 5", "steps = -5"), "train.steps: must be > 0, got -5"),
    "choice validator": (
        VALID + 'lr_schedule = "cos"\n',
        "train.lr_schedule: 'lr_schedule' must be in ('wsd', 'cosine', 'constant') (got 'cos')",
    ),
    "cross-field: micro_batch does not divide batch": (
        VALID + "micro_batch = 3\n",
        "train.micro_batch: global batch 8 is not a multiple of micro_batch 3",
    ),
    "cross-field: tile does not divide the grid": (
        VALID.replace("tile = [4, 4]", "tile = [3, 4]"),
        "model.partitioner.tile: a 3x4 tile does not divide the 16x16 token grid",
    ),
    "cross-field across tables: codec factor vs image size": (
        VALID.replace('kind = "test-pixels"', 'kind = "test-pixels"\nfactor = 3').replace("[4, 4]", "[1, 1]"),
        "codec.factor: factor 3 does not divide the image size 16",
    ),
    "cross-field inside a kind": (
        VALID.replace('kind = "test-tiny"', 'kind = "test-tiny"\ndepth = 2\ndiffusion_depth = 3'),
        "model.diffusion_depth: 3 diffusion layers > depth 2",
    ),
}


@pytest.mark.parametrize("text, expected", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_each_error_is_one_located_line(tmp_path, fake_registry, text, expected):
    path = write(tmp_path, "bad.toml", text)
    lines = problems_of(path, fake_registry)
    assert len(lines) == 1, lines
    if expected is None:  # only the location is pinned
        assert lines[0].startswith(f"{path.resolve()}: train: expected a table"), lines
    else:
        assert lines[0].startswith(f"{path.resolve()}: {expected}"), lines


def test_all_problems_are_reported_at_once(tmp_path, fake_registry):
    text = VALID.replace("steps = 5", "stpes = 5").replace("seed = 3", "seed = 0.5")
    text = text.replace('kind = "test-euler"', 'kind = "test-eulr"').replace("tile = [4, 4]", "tile = [5, 4]")
    text = text.replace('kind = "test-linear"', 'kind = "test-linear"\nsteps = "many"')
    lines = problems_of(write(tmp_path, "bad.toml", text), fake_registry)
    paths = sorted(line.split(": ")[1] for line in lines)
    assert paths == ["model.partitioner.tile", "sampler.kind", "schedule.steps", "seed", "train.stpes"], lines


def test_checks_that_depend_on_a_broken_part_are_skipped_not_crashed(tmp_path, fake_registry):
    # data does not structure, so there is no latent shape: the model check cannot run, and says nothing
    text = VALID.replace("size = 16", 'size = "16"').replace("tile = [4, 4]", "tile = [5, 5]")
    lines = problems_of(write(tmp_path, "bad.toml", text), fake_registry)
    assert [line.split(": ")[1] for line in lines] == ["data.size"]


# --------------------------------------------------------------------------- extends
def test_extends_deep_merges_through_a_relative_chain(tmp_path, fake_registry):
    write(tmp_path, "root.toml", VALID)
    write(tmp_path, "bases/mid.toml", 'extends = "../root.toml"\n[train]\nlr = 0.01\nsteps = 50\n')
    child = write(tmp_path, "exp/child.toml", 'extends = "../bases/mid.toml"\nname = "child"\n[train]\nsteps = 7\n')
    spec = load_spec(child, registry=fake_registry).spec
    assert (spec.name, spec.seed) == ("child", 3)  # seed from the root, two files up
    assert (spec.train.steps, spec.train.lr, spec.train.batch) == (7, 0.01, 8)  # one key each from each file
    assert spec.model.partitioner.tile == (4, 4)


def test_extends_with_the_same_kind_merges_the_table(tmp_path, fake_registry):
    write(tmp_path, "base.toml", VALID.replace('kind = "test-tiny"', 'kind = "test-tiny"\nwidth = 32'))
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[model]\nkind = "test-tiny"\ndepth = 6\n')
    model = load_spec(child, registry=fake_registry).spec.model
    assert (model.width, model.depth, model.partitioner.tile) == (32, 6, (4, 4))


def test_extends_with_another_kind_replaces_the_table(tmp_path, fake_registry):
    # a raster partitioner must not inherit the tiles partitioner's `tile` key
    write(tmp_path, "base.toml", VALID)
    child = write(
        tmp_path, "child.toml", 'extends = "base.toml"\n[model.partitioner]\nkind = "raster"\nblock_len = 16\n'
    )
    loaded = load_spec(child, registry=fake_registry)
    assert loaded.raw["model"]["partitioner"] == {"kind": "raster", "block_len": 16}


def test_extends_cycle_is_detected(tmp_path, fake_registry):
    write(tmp_path, "a.toml", 'extends = "b.toml"\n' + VALID)
    write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    (line,) = problems_of(tmp_path / "a.toml", fake_registry)
    assert "extends forms a cycle" in line
    assert re.search(r"a\.toml -> .*b\.toml -> .*a\.toml$", line), line


def test_extends_missing_base_is_named(tmp_path, fake_registry):
    path = write(tmp_path, "child.toml", 'extends = "nope.toml"\n' + VALID)
    (line,) = problems_of(path, fake_registry)
    assert line.startswith(f"{path.resolve()}: extends: base spec 'nope.toml' not found (looked at ")


def test_extends_must_be_a_string(tmp_path, fake_registry):
    (line,) = problems_of(write(tmp_path, "child.toml", "extends = 3\n" + VALID), fake_registry)
    assert "extends: must be a string path, got int" in line


def test_missing_file_and_bad_toml_are_one_line_each(tmp_path, fake_registry):
    (line,) = problems_of(tmp_path / "absent.toml", fake_registry)
    assert line == f"{tmp_path / 'absent.toml'}: spec file not found"
    (line,) = problems_of(write(tmp_path, "broken.toml", VALID + "steps = = 1\n"), fake_registry)
    bad_line = len(VALID.splitlines()) + 1
    assert "broken.toml: not valid TOML: " in line and f"line {bad_line}" in line, line


# --------------------------------------------------------------------------- --set
def test_set_takes_toml_values(tmp_path, fake_registry):
    sets = [
        "train.steps=7",
        "train.lr=1e-3",
        "train.compile=true",
        "log.sinks=[]",
        'name="quoted name"',
        "train.betas=[0.8, 0.9]",
    ]
    spec = load_spec(write(tmp_path, "ok.toml", VALID), sets, fake_registry).spec
    assert (spec.train.steps, spec.train.lr, spec.train.compile) == (7, 1e-3, True)
    assert (spec.log.sinks, spec.name, spec.train.betas) == ([], "quoted name", (0.8, 0.9))


def test_set_takes_bare_words_as_strings(tmp_path, fake_registry):
    spec = load_spec(write(tmp_path, "ok.toml", VALID), ["name=hello", "train.device=cpu"], fake_registry).spec
    assert (spec.name, spec.train.device) == ("hello", "cpu")


def test_set_of_another_kind_replaces_the_table(tmp_path, fake_registry):
    path = write(tmp_path, "ok.toml", VALID)
    spec = load_spec(path, ["model.partitioner.kind=raster", "model.partitioner.block_len=4"], fake_registry).spec
    assert spec.model.partitioner == fake_registry.get("partitioner", "raster").config_cls(4)
    spec = load_spec(path, ['model.partitioner={kind="raster", block_len=8}'], fake_registry).spec
    assert spec.model.partitioner.block_len == 8


@pytest.mark.parametrize("assignment", ["train.steps", "=5", "train..steps=5", ".steps=5", "train.=5"])
def test_set_with_bad_syntax_is_explained(tmp_path, fake_registry, assignment):
    (line,) = problems_of(write(tmp_path, "ok.toml", VALID), fake_registry, [assignment])
    assert line == f"--set {assignment!r}: expected KEY=VALUE such as train.steps=100"


def test_set_values_are_typed_strictly(tmp_path, fake_registry):
    (line,) = problems_of(write(tmp_path, "ok.toml", VALID), fake_registry, ["train.steps=2.5"])
    assert line == "--set train.steps=2.5: train.steps: expected int, got float 2.5"


# --------------------------------------------------------------------------- provenance
def test_errors_name_the_source_that_set_the_value(tmp_path, fake_registry):
    base = write(tmp_path, "base.toml", VALID.replace("seed = 3", "seed = 1.5"))
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[schedule]\nsteps = "many"\n')
    lines = problems_of(child, fake_registry, ["model.partitioner.tile=[5, 5]", "train.steps=0"])
    assert sorted(lines) == sorted(
        [
            f"{base.resolve()}: seed: expected int, got float 1.5",
            f"{child.resolve()}: schedule.steps: expected int, got str 'many'",
            "--set train.steps=0: train.steps: must be > 0, got 0",
            "--set model.partitioner.tile=[5, 5]: model.partitioner.tile: a 5x5 tile does not divide the 16x16 "
            "token grid (16 % 5 = 1, 16 % 5 = 1); choose sides that divide 16 and 16",
        ]
    )


def test_errors_from_defaults_name_the_defaults(tmp_path, fake_registry):
    # the default codec kind is not installed in this registry: nobody wrote it, so no file is blamed
    path = write(tmp_path, "nocodec.toml", VALID.replace('[codec]\nkind = "test-pixels"\n', ""))
    (line,) = problems_of(path, fake_registry)
    assert line.startswith(f"{DEFAULTS_SOURCE}: codec.kind: unknown codec kind 'identity'")
    assert "installed: 'test-pixels'" in line


# --------------------------------------------------------------------------- the reference doc
def _documented_defaults() -> dict[str, str]:
    """``key -> default`` from the rows of docs/spec.md's tables (| `key` | `default` | ... |)."""
    rows = re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", (DOCS / "spec.md").read_text(), flags=re.M)
    return dict(rows)


@pytest.mark.parametrize("section, config_cls", [("train", TrainConfig), ("log", LogConfig)])
def test_every_key_is_documented_with_its_default(section, config_cls):
    documented = _documented_defaults()
    for field in attrs.fields(config_cls):
        key = f"{section}.{field.name}"
        default = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default
        if attrs.has(type(default)):  # a nested table (train.health): each of its keys has a row
            test_every_key_is_documented_with_its_default(key, type(default))
            continue
        assert key in documented, f"docs/spec.md does not document {key}; add a row | `{key}` | `...` | ... |"
        assert tomllib.loads(f"v = {documented[key]}")["v"] == _toml_equivalent(default), (
            f"docs/spec.md gives {key} the default {documented[key]}, the code has {default!r}"
        )


def _toml_equivalent(value):
    return list(value) if isinstance(value, tuple) else value
