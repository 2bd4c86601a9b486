"""Run folders cannot escape or mix by name, files are written whole or not at all, and Python misuse
of the API gets Python errors that name the argument (docs/reliability.md).

The name rule (madkit.validators.folder_name_problem) is one function behind the spec's ``name``
(so ``runs/<name>`` for ``madkit run``, ``madkit.train`` and studies) and ``madkit eval --name``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import madkit
from madkit.atomic_files import atomic_write, writing_atomically
from madkit.cli import main
from madkit.validators import MAX_NAME_BYTES, folder_name_problem

TINY = Path(__file__).resolve().parent.parent / "experiments" / "tiny" / "madformer.toml"

ESCAPING = ["../../escape", "..", ".", "", "   ", "/abs/olute", "a/b", "a\\b", "a\x00b", "tab\tname", ".hidden", "-flag",
            "x" * (MAX_NAME_BYTES + 1), "é" * (MAX_NAME_BYTES // 2 + 1)]


@pytest.mark.parametrize("name", ESCAPING)
def test_the_rule_refuses_every_name_that_is_not_one_plain_folder(name):
    assert folder_name_problem(name) is not None


@pytest.mark.parametrize("name", ["quickstart", "toy_d2-seed0", "quoted name", "émoji-ü", "a.b", "x" * MAX_NAME_BYTES])
def test_the_rule_accepts_ordinary_names(name):
    assert folder_name_problem(name) is None


@pytest.mark.parametrize("name", ["../../escape", "..", "", "/tmp/abs", "a/b", "a\x00b"])
def test_run_refuses_an_escaping_name_before_writing_anything(tmp_path, monkeypatch, capsys, name):
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = sorted(p for p in tmp_path.rglob("*"))
    toml_name = name.replace("\\", "\\\\").replace("\x00", "\\u0000")
    assert main(["run", str(TINY), "--set", f'name="{toml_name}"', "--set", "train.steps=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "name:" in err[0] and "runs/<name>" in err[0], err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # no runs/, nothing above the working folder


def test_validate_refuses_an_escaping_name_and_a_device_torch_would_refuse(capsys):
    assert main(["validate", str(TINY), "--no-data", "--set", 'name="../x"', "--set", 'train.device="tpu"']) == 2
    err = capsys.readouterr().err
    assert "name: must be one folder name" in err
    assert "train.device: must be auto, cpu, cuda or cuda:N, got 'tpu'" in err


def test_the_api_refuses_an_escaping_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(madkit.SpecError, match="name: must be one folder name"):
        madkit.train({"extends": str(TINY), "name": "../escape", "train": {"steps": 1}})
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- atomic files
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "out" / "record.json"
    atomic_write(target, b"old")
    with pytest.raises(OSError, match="disk full"):
        with writing_atomically(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise OSError(28, "disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["record.json"]


def test_a_write_interrupted_by_a_keyboard_interrupt_is_cleaned_up(tmp_path):
    target = tmp_path / "grid.png"
    with pytest.raises(KeyboardInterrupt):
        with writing_atomically(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- Python misuse
@pytest.fixture(scope="module")
def experiment():
    return madkit.experiment(str(TINY))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num": 2, "batch": 0}, ValueError, "batch must be a positive int, got 0"),
        ({"num": 2, "batch": -1}, ValueError, "batch must be a positive int, got -1"),
        ({"num": "3"}, TypeError, "num must be an int or None, got str '3'"),
        ({"num": 2.0}, TypeError, "num must be an int or None, got float"),
        ({"num": True}, TypeError, "num must be an int or None, got bool"),
        ({"num": 2, "seed": "a"}, TypeError, "seed must be an int, got str 'a'"),
        ({"num": 2, "steps": 0}, ValueError, "steps must be a positive int, got 0"),
        ({"num": 0}, ValueError, "num must be a positive int, got 0"),
    ],
)
def test_generate_names_the_misused_argument(experiment, kwargs, error, message):
    with pytest.raises(error) as info:
        experiment.generate(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("source", [None, 3, ["runs/x"]])
def test_load_needs_a_path_or_a_hub_id(source):
    with pytest.raises(TypeError, match="source must be a folder path or a hub id"):
        madkit.load(source)


# --------------------------------------------------------------------------- values a later command refuses
@pytest.mark.parametrize(
    ("spec", "guidance", "message"),
    [
        ("toy_study/d2.toml", "2", "the [model] config does not use the labels"),  # labelled data, unconditional model
        ("quickstart.toml", "2", "the data has no labels"),
        ("toy_studies/blocks_class/d2_class.toml", "-1", "must be >= 0"),
    ],
)
def test_validate_refuses_guidance_that_sampling_would_refuse(capsys, spec, guidance, message):
    path = TINY.parents[1] / spec
    assert main(["validate", str(path), "--no-data", "--set", f"sampler.guidance={guidance}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sampler.guidance" in err[0] and message in err[0]


def test_guidance_on_a_class_conditional_model_is_valid():
    assert main(["validate", str(TINY.parents[1] / "toy_studies/blocks_class/d2_class.toml"), "--no-data",
                 "--set", "sampler.guidance=2"]) == 0


def test_run_into_a_file_is_a_usage_error(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("mine")
    assert main(["run", str(TINY), "--out", str(target), "--set", "train.steps=1"]) == 2
    assert "a file of that name exists" in capsys.readouterr().err
    assert target.read_text() == "mine"
    with pytest.raises(ValueError, match="is a file"):
        madkit.train(str(TINY), out=target)


# --------------------------------------------------------------------------- bounded spec reading
def test_deep_nesting_and_huge_arrays_are_refused_in_one_short_line(tmp_path, capsys):
    base = TINY.read_text()
    deep = tmp_path / "deep.toml"
    deep.write_text(base + "\n[log]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    big = tmp_path / "big.toml"
    big.write_text(base + "\n[log]\nx = [" + ", ".join(["1"] * 200_000) + "]\n")
    for spec, words in ((deep, "nested more than 32 levels deep"), (big, "an array of 200,000 items")):
        assert main(["validate", str(spec), "--no-data"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and len(err[0]) < 300, err
    assert main(["validate", str(TINY), "--no-data", "--set", "name=[" + ",".join(["1"] * 5000) + "]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) < 600 and "more characters" in err[0]
