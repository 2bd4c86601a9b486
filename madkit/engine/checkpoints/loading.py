"""Reading checkpoints of either layout (whole safetensors or sharded): state, spec, weights,
shapes, and whether they fit a model built from the current spec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from madkit.engine.checkpoints import sharded
from madkit.engine.checkpoints.layout import (
    EMA_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    IncompatibleCheckpointError,
    is_sharded,
    latest_checkpoint,
)
from madkit.engine.checkpoints.read_lease import FolderMoved, read_lease
from madkit.engine.checkpoints.saving import unwrapped_state_dict
from madkit.engine.checkpoints.verify import choose_checkpoint
from madkit.spec_loading import flatten

_SHAPE_INSENSITIVE = ("train", "log", "name", "seed")  # spec sections that cannot change tensor shapes
LIVE_READ_ATTEMPTS = 10
T = TypeVar("T")


def resolve_checkpoint(run_dir_or_ckpt: str | Path) -> Path:
    """A checkpoint folder itself (whole or sharded), or a run folder's newest checkpoint; verified
    either way (see verify.py: a damaged newest checkpoint is skipped with a warning)."""
    return choose_checkpoint(run_dir_or_ckpt)



def load_state(ckpt: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    path = Path(ckpt) / STATE_FILE
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a madkit checkpoint state: {exc}") from exc


def stored_state_value(ckpt: str | Path, key: str) -> Any:
    """One entry of a checkpoint's ``state.pt`` (None if absent), without reading its tensors (the state
    file is memory-mapped, so a 1B-parameter model's optimizer state costs nothing here)."""
    path = Path(ckpt) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a madkit checkpoint state: {exc}") from exc
    return state.get(key) if isinstance(state, dict) else None


def stored_spec(ckpt: str | Path) -> dict[str, Any]:
    """The resolved spec a checkpoint was trained with, without reading its tensors."""
    spec = stored_state_value(ckpt, "spec")
    if spec is None:
        raise CheckpointError(f"{Path(ckpt) / STATE_FILE} holds no resolved spec; it was not written by madkit")
    return spec


def load_weights(ckpt: str | Path, use_ema: bool, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(ckpt) / (EMA_FILE if use_ema else MODEL_FILE)
    if not path.is_file() and is_sharded(ckpt):
        return {k: v.to(device) for k, v in sharded.read_full(ckpt, "ema" if use_ema else "model").items()}
    try:
        return load_file(path, device=str(device))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as safetensors: {exc}") from exc


def stored_shapes(ckpt: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes in a checkpoint's ``model.safetensors`` or sharded model (or in a given
    .safetensors file, e.g. an export's) without reading the data."""
    path = Path(ckpt)
    if path.suffix != ".safetensors" and not (path / MODEL_FILE).is_file() and is_sharded(path):
        return sharded.stored_shapes(path, "model")
    with safe_open(path if path.suffix == ".safetensors" else path / MODEL_FILE, framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118  (a safetensors handle, not a dict)


def check_compatible(
    ckpt: str | Path, model: nn.Module, spec: dict[str, Any], spec_source: str, stored_spec: dict[str, Any]
) -> None:
    """Raise ``IncompatibleCheckpointError`` naming both sides and what differs when ``ckpt``'s
    tensors do not fit ``model`` (built from ``spec``, read from ``spec_source``)."""
    have = {k: tuple(v.shape) for k, v in unwrapped_state_dict(model).items()}
    want = stored_shapes(ckpt)
    missing = sorted(set(have) - set(want))
    unexpected = sorted(set(want) - set(have))
    reshaped = [k for k in have if k in want and have[k] != want[k]]  # in the model's own order
    if not (missing or unexpected or reshaped):
        return
    lines = [f"checkpoint {ckpt} does not fit the model built from {spec_source}:"]
    for k in reshaped[:8]:
        lines.append(f"  {k}: checkpoint {list(want[k])} vs spec {list(have[k])}")
    if missing:
        lines.append(f"  the spec's model has {len(missing)} tensor(s) the checkpoint lacks, e.g. {missing[:3]}")
    if unexpected:
        lines.append(f"  the checkpoint has {len(unexpected)} tensor(s) the spec's model lacks, e.g. {unexpected[:3]}")
    if len(reshaped) > 8:
        lines.append(f"  ... and {len(reshaped) - 8} more reshaped tensors")
    diffs = spec_differences(stored_spec, spec)
    if diffs:
        lines.append("the specs differ at:")
        lines.extend(f"  {key}: checkpoint {old!r} vs spec {new!r}" for key, old, new in diffs[:12])
    lines.append(
        "nothing was changed; train into another folder (--out), or restore the spec the checkpoint was trained with"
    )
    raise IncompatibleCheckpointError("\n".join(lines))


def spec_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every value that differs outside the shape-insensitive sections."""
    return [d for d in all_spec_differences(old, new) if d[0].split(".")[0] not in _SHAPE_INSENSITIVE]


def all_spec_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every value that differs, sorted by key; a missing one is "(absent)"."""
    a, b = flatten(old), flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "(absent)"), b.get(key, "(absent)")
        if _plain(va) != _plain(vb):
            out.append((key, va, vb))
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def reading_newest(path: str | Path, resolve: Callable[[Path], Any], read: Callable[[Any], T]) -> T:
    """``read(resolve(path))`` under a read lease (read_lease.py), where ``path`` may be a live run.

    A run prunes its older checkpoints as it saves. Once leased, the checkpoint ``resolve`` chose stays
    until ``read`` returns; when it was pruned between the choice and the lease, or the run moved on
    while ``resolve`` was checking it, the choice is made again. ``resolve`` returns a checkpoint
    folder or anything with a ``path`` attribute naming one (an export needs no lease)."""
    path = Path(path)
    for attempt in range(LIVE_READ_ATTEMPTS):
        last = attempt == LIVE_READ_ATTEMPTS - 1
        newest = latest_checkpoint(path)
        try:
            chosen = resolve(path)
        except Exception:
            if last or latest_checkpoint(path) == newest:
                raise
            continue  # the run saved (and pruned) while the choice was being checked
        folder = Path(getattr(chosen, "path", chosen))
        try:
            with read_lease(folder):
                return read(chosen)
        except FolderMoved:
            if last:
                raise CheckpointError(
                    f"{path}: its newest checkpoint was pruned {LIVE_READ_ATTEMPTS} times before it could be "
                    "read; the run saves faster than this machine reads; name one checkpoint folder instead"
                ) from None
    raise AssertionError("unreachable")
