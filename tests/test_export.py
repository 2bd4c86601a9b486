"""The export format (madkit/engine/packaging/export.py writes it, madkit/engine/checkpoints/export_format.py
reads it): self-describing weights, versioned, written atomically, read by the one inference loader;
refusals that say what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: tiny models, one thread)
from safetensors.torch import save_file

from madkit.cli import main
from madkit.engine.checkpoints import export_format
from madkit.engine.checkpoints.weights import resolve_weights
from madkit.engine.packaging import export

SPEC = {"name": "x", "model": {"kind": "madformer"}}


def _write(tmp_path, name="out"):
    weights = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(4)}
    return export.write_export(tmp_path / name, weights, SPEC, {"source": "madkit run", "step": 7}, "# card\n"), weights


def test_weights_carry_their_spec_provenance_and_format_version(tmp_path):
    out, weights = _write(tmp_path)
    manifest = export_format.read_export(out)
    assert manifest.format_version == export_format.FORMAT_VERSION and manifest.spec == SPEC and manifest.step == 7
    assert manifest.shapes == {"a": (2, 3), "b": (4,)}
    loaded = export_format.load_export_weights(out)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert export_format.is_export(out) and (out / export_format.SPEC_FILE).read_text().startswith('name = "x"')
    source = resolve_weights(out)
    assert (source.kind, source.step, source.label) == ("export", 7, "export")
    assert source.home == Path("runs") / "exports" / out.name  # outputs never go into the export itself
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())  # the temp folder is gone


def test_a_checkpoint_folder_is_not_an_export(tmp_path):
    save_file({"a": torch.zeros(1)}, tmp_path / export_format.WEIGHTS_FILE, metadata={"format": "pt"})
    assert not export_format.is_export(tmp_path)
    with pytest.raises(export_format.ExportError, match="not a madkit export"):
        export_format.read_export(tmp_path)


def test_a_newer_format_is_refused_naming_the_fix(tmp_path):
    metadata = {export_format.FORMAT_KEY: str(export_format.FORMAT_VERSION + 1), "spec": json.dumps(SPEC)}
    save_file({"a": torch.zeros(1)}, tmp_path / export_format.WEIGHTS_FILE, metadata=metadata)
    with pytest.raises(export_format.ExportError, match="newer than this madkit reads .*; upgrade madkit"):
        export_format.read_export(tmp_path)


def test_an_occupied_destination_is_a_usage_error_and_stays_untouched(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(tmp_path / "no-run"), "--out", str(out)]) == 2
    assert "already exists and is not an empty folder; choose another --out" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    with pytest.raises(export_format.ExportError):
        _write(tmp_path, "taken")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_format.is_export(_write(tmp_path, "empty")[0])  # an empty folder is fine
