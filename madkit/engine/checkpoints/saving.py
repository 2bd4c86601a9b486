"""Writing checkpoints: the folder rules every layout follows, and the whole (safetensors) layout.

A checkpoint is written into ``checkpoints/.tmp-<step>-<pid>/``, each file fsynced, then renamed to
its final name and the parent folder fsynced, so a folder named by its step is always complete and a
crash mid-write leaves only a temp folder, which the next save sweeps. Pruning renames a folder back
to a temp name before deleting it. Sharded checkpoints (sharded.py) reuse these rules.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from madkit.engine.checkpoints.disk_space import SaveFailedError, describe_failure, ensure_free, tensor_bytes
from madkit.engine.checkpoints.layout import (
    CHECKPOINTS,
    EMA_FILE,
    FORMAT_VERSION,
    MODEL_FILE,
    STATE_FILE,
    TMP_PREFIX,
    is_complete,
    latest_checkpoint,
    list_checkpoints,
    step_dir_name,
    unwrapped_name,
)
from madkit.engine.checkpoints.read_lease import unless_leased


def unwrapped_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with torch.compile wrapper segments removed from every name.

    Pass the bare model, never its DDP wrapper (whose names all start with ``module.``)."""
    return {unwrapped_name(k): v for k, v in model.state_dict().items()}


def load_unwrapped(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict with unwrapped names into ``model``, whatever wrappers it holds (strict)."""
    actual = {unwrapped_name(k): k for k in model.state_dict()}
    model.load_state_dict({actual.get(k, k): v for k, v in state.items()}, strict=True)


def _to_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # copy=True: tied weights become independent tensors (safetensors refuses shared storage)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:  # some filesystems cannot fsync directories; the rename is still atomic
        pass


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int,
    metadata: dict[str, str] | None = None,
    protect: Path | None = None,
) -> Path:
    """Write one checkpoint atomically, then keep only the newest ``keep`` (and ``protect``).

    ``metadata`` goes into the header of ``model.safetensors`` (readable without loading tensors).
    The disk's free space is checked first; a failed write leaves no temp folder behind and raises
    ``SaveFailedError`` saying "disk full" (or the OS error) and which checkpoint is still the latest.
    Returns the new folder."""
    final = checkpoint_folder(run_dir, step)
    if is_complete(final):
        return final  # already written (e.g. the run resumed at its last step)
    sweep_temp_folders(run_dir)
    model_cpu, ema_cpu = _to_cpu(model_state), _to_cpu(ema_state)
    ensure_free_for(run_dir, step, tensor_bytes([model_cpu, ema_cpu, state]))
    with writing_into(run_dir, step, final) as tmp:
        save_file(model_cpu, tmp / MODEL_FILE, metadata={"format": "pt", **(metadata or {})})
        save_file(ema_cpu, tmp / EMA_FILE, metadata={"format": "pt"})
        write_state(tmp, state)
    prune(run_dir, keep, protect)
    return final


def ensure_free_for(run_dir: str | Path, step: int, need: int) -> None:
    """``SaveFailedError`` ("disk full", what is still the latest) unless the checkpoint disk has ``need`` bytes."""
    ensure_free(Path(run_dir) / CHECKPOINTS, need, f"the checkpoint of step {step}", _still_latest(run_dir))


@contextlib.contextmanager
def writing_into(run_dir: str | Path, step: int, final: Path):
    """A temp folder beside ``final`` to write into, renamed to ``final`` when the block succeeds; when
    it fails the folder is removed and ``SaveFailedError`` says why and what is still the latest."""
    tmp = temp_folder(final)
    try:
        yield tmp
        commit_folder(tmp, final)
    except Exception as exc:  # safetensors raises SafetensorError, torch's zip writer RuntimeError
        raise discard_failed_save(run_dir, step, tmp, exc) from exc


def discard_failed_save(run_dir: str | Path, step: int, tmp: Path, exc: BaseException) -> SaveFailedError:
    """Remove the temp folder of a save that failed; the error to raise says why and what is still the latest."""
    shutil.rmtree(tmp, ignore_errors=True)
    return SaveFailedError(
        f"the checkpoint of step {step} could not be written to {tmp.parent}: "
        f"{describe_failure(exc, tmp.parent)}; the partial files were removed; {_still_latest(run_dir)}"
    )


def checkpoint_folder(run_dir: str | Path, step: int) -> Path:
    """``RUN/checkpoints/<step>`` (its parent is created)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    return root / step_dir_name(step)


def temp_folder(final: Path) -> Path:
    """A fresh folder beside ``final`` to write into; ``commit_folder`` renames it to ``final``."""
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}-{os.getpid()}")
    tmp.mkdir(parents=True)
    return tmp


def write_state(folder: Path, state: dict[str, Any]) -> None:
    with open(folder / STATE_FILE, "wb") as f:
        torch.save({"format": FORMAT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())


def commit_folder(tmp: Path, final: Path) -> None:
    """fsync what ``tmp`` holds, then rename it to ``final`` atomically."""
    for path in tmp.rglob("*"):
        if path.is_file():
            _fsync_file(path)
    _fsync_dir(tmp)
    if final.exists():  # an incomplete folder under the final name (not written by us): replace it
        _remove(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _still_latest(run_dir: str | Path) -> str:
    latest = latest_checkpoint(run_dir)
    return f"the latest checkpoint is still {latest}" if latest else "no checkpoint had been written yet"


def _remove(folder: Path) -> None:
    doomed = folder.with_name(f"{TMP_PREFIX}del-{folder.name}-{os.getpid()}")
    os.replace(folder, doomed)  # first leave the valid namespace, atomically
    shutil.rmtree(doomed, ignore_errors=True)


def prune(run_dir: str | Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints, never ``protect`` (the newest
    checkpoint that passed the health check) nor one a reader holds a lease on; returns what was deleted."""
    found = list_checkpoints(run_dir)
    doomed = [p for _, p in found[: max(0, len(found) - keep)] if protect is None or p != Path(protect)]
    removed = []
    for folder in doomed:
        with unless_leased(folder) as free:
            if free:  # a folder a reader holds (sample, eval, export) goes at the next prune
                _remove(folder)
                removed.append(folder)
    return removed


def sweep_temp_folders(run_dir: str | Path) -> None:
    """Remove what interrupted saves and prunes left behind."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
