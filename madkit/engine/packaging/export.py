"""Inference-only exports: one folder with what sampling needs and nothing else.

    DIR/model.safetensors     the EMA weights (unwrapped names). Its safetensors metadata holds
                              "madkit_export" (the format version, a decimal string), "spec" (the
                              resolved spec, JSON) and "provenance" (JSON: where the weights came from)
    DIR/config.resolved.toml  the same spec as TOML, for people (the metadata's copy is what loads)
    DIR/README.md             a model card: the model, its size and cost, its provenance, known results

A training checkpoint also carries the raw weights and the optimizer state (about 3x the weights for
Adam); an export is the EMA weights plus a few kB. ``madkit sample``, ``eval`` and ``sweep`` accept
an export folder wherever they accept a run folder (see madkit.engine.checkpoints.weights).

Write: ``write_export`` (from tensors and plain data) or ``export_checkpoint`` (from a run folder or a
checkpoint folder, what ``madkit export`` does); writing is atomic, a temp folder renamed into place.
Reading lives with the other weight formats: madkit.engine.checkpoints.export_format.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from madkit.build import build_experiment
from madkit.engine import checkpoints
from madkit.engine.checkpoints.export_format import (
    CARD_FILE,
    FORMAT_KEY,
    FORMAT_VERSION,
    SPEC_FILE,
    WEIGHTS_FILE,
    ExportError,
)
from madkit.engine.evaluation.records import read_eval_records
from madkit.engine.packaging.model_card import model_card
from madkit.experiment_spec import dumps_toml, structure_spec
from madkit.spec import iter_configs


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
    check_destination(out)
    # a live run may prune the checkpoint while it is read: then the newer one is exported
    return checkpoints.reading_newest(
        run_or_ckpt, checkpoints.resolve_checkpoint, lambda ckpt: _export_folder(ckpt, out, registry)
    )


def _export_folder(ckpt: Path, out: str | Path, registry) -> Path:
    state = checkpoints.load_state(ckpt)
    if "spec" not in state:
        raise checkpoints.CheckpointError(f"{ckpt / checkpoints.STATE_FILE} holds no resolved spec")
    spec = structure_spec(state["spec"], registry)
    experiment = build_experiment(spec, registry, meta=True)  # for the card's numbers: shapes, no memory
    step = int(state.get("step", 0))
    run_dir = ckpt.parent.parent if ckpt.parent.name == checkpoints.CHECKPOINTS else ckpt
    provenance = {
        **(state.get("provenance") or {"source": "madkit run"}),
        "run": run_dir.name,
        "step": step,
        "checkpoint": ckpt.name,
        "weights": "ema",
        "madkit_version": (state.get("versions") or {}).get("madkit"),
        "plugins": plugins_needed(spec, registry),
    }
    try:
        cost = experiment.model.compute_cost(experiment.sampler.steps)
    except NotImplementedError:
        cost = None
    records = [
        r for r in read_eval_records(run_dir) if r["checkpoint"]["step"] == step and r["checkpoint"]["weights"] == "ema"
    ]
    card = model_card(state["spec"], experiment, provenance, cost, records)
    return write_export(out, checkpoints.load_weights(ckpt, use_ema=True), state["spec"], provenance, card)


def plugins_needed(spec: Any, registry) -> dict[str, dict[str, str]]:
    """``{"<interface> <kind>": {"distribution", "version", "plugin"}}`` for every component kind the
    structured ``spec`` uses: what an export records, so loading it elsewhere can name what to install."""
    owners = {reg.config_cls: reg for reg in registry.registrations()}
    needed = {}
    for _, config in iter_configs(spec):
        if (reg := owners.get(type(config))) is not None:
            needed[f"{reg.interface} {reg.kind}"] = {
                "distribution": reg.distribution, "version": reg.version, "plugin": reg.plugin,
            }
    return dict(sorted(needed.items()))
