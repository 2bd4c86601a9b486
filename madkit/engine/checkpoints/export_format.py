"""The export folder format, read side: what ``madkit export`` writes and every sampling command reads.

    DIR/model.safetensors     the EMA weights (unwrapped names). Its safetensors metadata holds
                              "madkit_export" (the format version, a decimal string), "spec" (the
                              resolved spec, JSON) and "provenance" (JSON: where the weights came from)
    DIR/config.resolved.toml  the same spec as TOML, for people (the metadata's copy is what loads)
    DIR/README.md             a model card: the model, its size and cost, its provenance, known results

``is_export``, ``read_export`` (metadata only, no tensor data) and ``load_export_weights``; the writer
is madkit.engine.packaging.export.
"""


from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors import safe_open
from safetensors.torch import load_file

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
