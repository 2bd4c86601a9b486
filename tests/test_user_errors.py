"""Every user mistake the reliability review met as a traceback now exits 2 with one line on stderr
that names the file, key or flag (madkit.cli's rule: a ``UserError`` exits 2, anything else 1).

Through ``madkit.cli.main`` (the ``madkit`` command minus an interpreter start-up;
tests/test_cli_foundation.py runs the real process) with a registry of the test plugin plus the real
data plugin (folder, webdataset).
"""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile

import engine_fakes as fakes
import pytest
from engine_fakes import one_thread  # noqa: F401  (autouse fixture)
from madkit_data import plugin as data_plugin
from PIL import Image

from madkit import cli
from madkit.experiment_spec import dumps_toml


@pytest.fixture
def registry(monkeypatch):
    registry = fakes.make_registry()
    registry.add_plugin(data_plugin, "data")
    return fakes.serve_registry(monkeypatch, registry)


def one_line_exit_2(capsys, *args) -> str:
    """Run ``madkit ARGS``; assert exit 2 and exactly one stderr line without a traceback; return it."""
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def spec_with_data(folder, data: dict, name: str = "spec.toml"):
    """The engine-test spec with its [data] table replaced (not merged) by ``data``."""
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in fakes.BASE_SPEC.items()}
    spec["data"] = data
    spec["log"] = {"sinks": [], "progress": False}
    path = folder / name
    path.write_text(dumps_toml(spec))
    return path


def png(path, colour=(200, 30, 30)):
    Image.new("RGB", (8, 8), colour).save(path)


def tar_shard(path, n=4):
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(buffer, format="PNG")
            info = tarfile.TarInfo(f"{i:05d}.png")
            info.size = buffer.tell()
            tar.addfile(info, io.BytesIO(buffer.getvalue()))


def test_a_corrupt_image_is_named_before_a_run_folder_exists(tmp_path, registry, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in "abc":
        png(images / f"{name}.png")
    (images / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nothing
    spec = spec_with_data(tmp_path, {"kind": "folder", "root": str(images), "resolution": 8})
    line = one_line_exit_2(capsys, "run", spec, "--out", tmp_path / "run")
    assert f"{images / 'd.png'}: cannot decode image" in line and 'data.on_bad_image = "skip"' in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_broken_shard_is_named_before_a_run_folder_exists(tmp_path, registry, capsys, damage):
    pytest.importorskip("webdataset")
    shard = tmp_path / "shard-000.tar"
    tar_shard(shard)
    data = shard.read_bytes()
    # cut inside the third member (each is a 512-byte header and one block of PNG bytes)
    shard.write_bytes(b"not a tar file at all" * 40 if damage == "garbage" else data[: 2 * 1024 + 700])
    spec = spec_with_data(tmp_path, {"kind": "webdataset", "shards": str(shard), "resolution": 8})
    line = one_line_exit_2(capsys, "run", spec, "--out", tmp_path / "run")
    want = "not a readable tar archive" if damage == "garbage" else "ends early"
    assert line.startswith(f"madkit run: shard {shard}: {want}") and 'data.on_bad_image = "skip"' in line
    assert not (tmp_path / "run").exists()


def test_validate_names_the_extra_a_missing_package_comes_from(tmp_path, registry, capsys, monkeypatch):
    shard = tmp_path / "shard-000.tar"
    tar_shard(shard)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "webdataset" else real(name, *a))
    spec = spec_with_data(tmp_path, {"kind": "webdataset", "shards": str(shard), "resolution": 8})
    line = one_line_exit_2(capsys, "validate", spec)
    assert line == (
        f"{spec}: data.kind: the webdataset data source needs the webdataset package, which is not installed: "
        "pip install 'madkit[webdataset]'"
    )


def test_a_sampler_typo_is_a_flag_error(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, train={"steps": 1}, log={"sinks": []})
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    line = one_line_exit_2(capsys, "sample", tmp_path / "run", "--sampler", "test-engine-ddmi")
    assert line.startswith("madkit sample: --sampler: unknown sampler kind 'test-engine-ddmi'; did you mean")


def test_a_plugin_build_that_raises_names_the_table_and_plugin(tmp_path, registry, capsys):
    spec = fakes.write_spec(tmp_path, codec={"fail_build": "cannot open /dev/vae0"}, log={"sinks": []})
    line = one_line_exit_2(capsys, "run", spec, "--out", tmp_path / "run")
    assert line.startswith("madkit run: [codec] kind 'test-engine-pool' (plugin test-engine")
    assert line.endswith("could not be built: RuntimeError: cannot open /dev/vae0")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"metric_values": {"fid": 1.0}, "extractor": "x"}', "checkpoint.step: expected int, found missing"),
        ('{"metric_values": {"fid": 1.0', "not valid JSON"),
    ],
    ids=["missing-key", "torn"],
)
def test_a_malformed_eval_record_is_named_by_report(tmp_path, registry, capsys, content, message):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.resolved.toml").write_text('name = "r"\n')
    (run / "eval" / "bad.json").write_text(content)
    line = one_line_exit_2(capsys, "report", run)
    assert line.startswith(f"madkit report: {run / 'eval' / 'bad.json'}: {message}")
    assert not (run / "report.html").exists()


def test_a_binary_spec_file_is_named(tmp_path, registry, capsys):
    spec = tmp_path / "weights.toml"
    spec.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 10)
    line = one_line_exit_2(capsys, "validate", spec)
    assert line == f"{spec}: not a text file (byte 0 is not UTF-8); a spec is a TOML text file"


def test_a_folder_given_as_the_spec_is_named(tmp_path, registry, capsys):
    line = one_line_exit_2(capsys, "run", tmp_path)
    assert line == f"{tmp_path}: is a folder, not a spec file; pass the .toml file itself"


def test_an_eval_record_that_is_not_json_of_a_record_is_ignored(tmp_path, registry, capsys):
    """Notes a person keeps next to the records are not records; only damaged records are errors."""
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.resolved.toml").write_text('name = "r"\n')
    (run / "eval" / "notes.json").write_text(json.dumps({"todo": "compare with the paper"}))
    assert cli.main(["report", str(run)]) == 0


def test_an_unreachable_hub_id_for_init_from_is_named(tmp_path, registry, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the id is looked up in the (empty) hub cache only
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    spec = fakes.write_spec(tmp_path, train={"steps": 1, "init_from": "nobody/no-such-model"}, log={"sinks": []})
    line = one_line_exit_2(capsys, "run", spec, "--out", tmp_path / "run")
    assert line.startswith("madkit run: nobody/no-such-model: ")
    assert not (tmp_path / "run").exists()
