"""Inference-only exports: one folder with what sampling needs and nothing else.

    DIR/model.safetensors     the EMA weights (unwrapped names). Its safetensors metadata holds
                              "madkit_export" (the format version, a decimal string), "spec" (the
                              resolved spec, JSON) and "provenance" (JSON: where the weights came from)
    DIR/config.resolved.toml  the same spec as TOML, for people (the metadata's copy is what loads)
    DIR/README.md             a model card: the model, its size and cost, its provenance, known results

A training checkpoint also carries the raw weights and the optimizer state (about 3x the weights for
Adam); an export is the EMA weights plus a few kB. ``madkit sample``, ``eval`` and ``sweep`` accept
an export folder wherever they accept a run folder (see ``madkit.engine.inference``).

Write: ``write_export`` (from tensors and plain data) or ``export_checkpoint`` (from a run folder or a
checkpoint folder, what ``madkit export`` does). Read: ``is_export``, ``read_export`` (metadata only,
no tensor data) and ``load_export_weights``. Writing is atomic: a temp folder renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from madkit.errors import UserError

FORMAT_VERSION = 1
FORMAT_KEY = "madkit_export"
WEIGHTS_FILE, SPEC_FILE, CARD_FILE = "model.safetensors", "config.resolved.toml", "README.md"


class ExportError(UserError, ValueError):
    """An export folder is unreadable, from a newer madkit, or cannot be written where asked."""


@attrs.frozen
class ExportManifest:
    """What an export's weights file says about itself (read without loading the tensors)."""

    folder: Path
    format_version: int
    spec: dict[str, Any]  # the resolved spec, plain data
    provenance: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]

    @property
    def weights_file(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def step(self) -> int:
        return int(self.provenance.get("step", 0))


# --------------------------------------------------------------------------- reading
def _metadata(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    with safe_open(path, framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118  (a safetensors handle)
        return dict(f.metadata() or {}), shapes


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` holds a madkit export (its weights file says so in its metadata)."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        return False
    try:
        return FORMAT_KEY in _metadata(path)[0]
    except Exception:  # not safetensors at all: not an export (read_export says why, if asked)
        return False


def read_export(folder: str | Path) -> ExportManifest:
    """The manifest of an export folder; ``ExportError`` naming the file and the fix otherwise."""
    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    try:
        metadata, shapes = _metadata(path)
    except Exception as exc:
        raise ExportError(f"{path}: cannot be read as safetensors ({exc}); export the run again") from exc
    if FORMAT_KEY not in metadata:
        raise ExportError(f"{path}: not a madkit export (no {FORMAT_KEY!r} in its metadata)")
    try:
        version = int(metadata[FORMAT_KEY])
        spec, provenance = json.loads(metadata["spec"]), json.loads(metadata.get("provenance", "{}"))
    except (KeyError, ValueError) as exc:
        raise ExportError(f"{path}: damaged export metadata ({exc}); export the run again") from exc
    if version > FORMAT_VERSION:
        raise ExportError(
            f"{path}: export format {version} is newer than this madkit reads ({FORMAT_VERSION}); upgrade madkit"
        )
    return ExportManifest(folder, version, spec, provenance, shapes)


def load_export_weights(folder: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS_FILE
    try:
        return load_file(path, device=str(device))
    except Exception as exc:
        raise ExportError(f"{path}: cannot be read as safetensors: {exc}") from exc


# --------------------------------------------------------------------------- writing
def check_destination(out: str | Path) -> Path:
    """``out`` as a Path when an export may be written there (absent, or an empty folder)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty folder; choose another --out")
    return out


def write_export(
    out: str | Path, weights: dict[str, torch.Tensor], spec: dict[str, Any], provenance: dict[str, Any], card: str
) -> Path:
    """Write an export folder atomically from EMA weights, the resolved spec and provenance (plain data)."""
    from madkit.experiment_spec import dumps_toml

    out = check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        metadata = {
            "format": "pt",
            FORMAT_KEY: str(FORMAT_VERSION),
            "spec": json.dumps(spec, sort_keys=True),
            "provenance": json.dumps(provenance, sort_keys=True),
        }
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
        save_file(tensors, tmp / WEIGHTS_FILE, metadata=metadata)
        (tmp / SPEC_FILE).write_text(dumps_toml(spec))
        (tmp / CARD_FILE).write_text(card)
        if out.exists():
            out.rmdir()  # empty (checked above): rename onto its name
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_checkpoint(run_or_ckpt: str | Path, out: str | Path, registry) -> Path:
    """``madkit export``: the EMA weights of a run folder's latest checkpoint (or of a checkpoint
    folder) with their spec, provenance and a model card, written to ``out``."""
    from madkit.build import build_experiment
    from madkit.engine import checkpoint
    from madkit.engine.model_card import model_card
    from madkit.engine.sweep import read_eval_records
    from madkit.experiment_spec import structure_spec

    check_destination(out)
    ckpt = checkpoint.resolve_checkpoint(run_or_ckpt)
    state = checkpoint.load_state(ckpt)
    if "spec" not in state:
        raise checkpoint.CheckpointError(f"{ckpt / checkpoint.STATE_FILE} holds no resolved spec")
    spec = structure_spec(state["spec"], registry)
    experiment = build_experiment(spec, registry, meta=True)  # for the card's numbers: shapes, no memory
    step = int(state.get("step", 0))
    run_dir = ckpt.parent.parent if ckpt.parent.name == checkpoint.CHECKPOINTS else ckpt
    provenance = {
        **(state.get("provenance") or {"source": "madkit run"}),
        "run": run_dir.name,
        "step": step,
        "checkpoint": ckpt.name,
        "weights": "ema",
        "madkit_version": (state.get("versions") or {}).get("madkit"),
    }
    try:
        cost = experiment.model.compute_cost(experiment.sampler.steps)
    except NotImplementedError:
        cost = None
    records = [
        r for r in read_eval_records(run_dir) if r["checkpoint"]["step"] == step and r["checkpoint"]["weights"] == "ema"
    ]
    card = model_card(state["spec"], experiment, provenance, cost, records)
    return write_export(out, checkpoint.load_weights(ckpt, use_ema=True), state["spec"], provenance, card)
