"""Checkpoints: atomic folders of plain state, found, validated and pruned (``madkit.engine.inference``
loads them, and exports, for sampling).

Layout: ``RUN/checkpoints/<step, 8 digits>/`` holding

- ``model.safetensors``: the raw weights, unwrapped names (no ``module.`` / ``_orig_mod.``);
- ``ema.safetensors``: the fp32 EMA weights, same names;
- ``state.pt``: everything else as plain data, readable with ``torch.load(weights_only=True)``:
  step, optimizer, lr schedule, grad scaler, data position, RNG states per rank, EMA update count,
  the resolved spec (a dict) and the versions of madkit, torch and every plugin.

A sharded checkpoint (``train.strategy = "fsdp"`` or ``"hsdp"``) holds ``state.pt`` without the
optimizer and a ``sharded/`` folder of ``torch.distributed.checkpoint`` files (model, EMA, optimizer;
see sharded_checkpoint.py). ``load_weights`` and ``stored_shapes`` read either layout.

Atomicity: a checkpoint is written into ``checkpoints/.tmp-<step>-<pid>/``, each file fsynced, then
renamed to its final name and the parent folder fsynced. A folder whose name is all digits is
therefore complete; temp folders (a crash mid-write) are ignored and swept by the next save.
Pruning renames a folder back to a temp name before deleting it, so a kill during deletion never
leaves a half-deleted folder under a valid name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from madkit.engine.disk_space import SaveFailedError, describe_failure, ensure_free, tensor_bytes
from madkit.errors import UserError
from madkit.spec_loading import flatten

CHECKPOINTS = "checkpoints"
MODEL_FILE, EMA_FILE, STATE_FILE = "model.safetensors", "ema.safetensors", "state.pt"
FILES = (MODEL_FILE, EMA_FILE, STATE_FILE)
SHARDED_DIR = "sharded"  # a sharded checkpoint's DCP files; complete once DCP wrote its .metadata
FORMAT_VERSION = 1
_TMP_PREFIX = ".tmp-"
# torch.compile(submodule) wraps it as `_orig_mod`; the trainer never saves through a DDP wrapper,
# so a `module.` segment is a real attribute name and is left alone
_WRAPPER_PARTS = re.compile(r"(^|\.)_orig_mod\.")
_SHAPE_INSENSITIVE = ("train", "log", "name", "seed")  # spec sections that cannot change tensor shapes


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable or not what the caller needs."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint's tensors do not fit the model the current spec builds."""


# --------------------------------------------------------------------------- finding
def step_dir_name(step: int) -> str:
    return f"{step:08d}"


def is_sharded(folder: Path) -> bool:
    return (Path(folder) / SHARDED_DIR / ".metadata").is_file()


def has_all_files(folder: Path) -> bool:
    """``state.pt`` and the weights: both safetensors files, or the sharded folder."""
    if not (folder / STATE_FILE).is_file():
        return False
    return is_sharded(folder) or all((folder / f).is_file() for f in FILES)


def is_complete(folder: Path) -> bool:
    """A checkpoint of a run's ``checkpoints/`` (named by its step) with all its files."""
    return folder.name.isdigit() and has_all_files(folder)


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as (step, folder)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(p.name), p) for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None when it has none."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(run_dir_or_ckpt: str | Path) -> Path:
    """A checkpoint folder itself (whole or sharded), or a run folder's newest checkpoint; verified
    either way (see madkit.engine.checkpoint_verify: a damaged newest checkpoint is skipped with a warning)."""
    from madkit.engine.checkpoint_verify import choose_checkpoint

    return choose_checkpoint(run_dir_or_ckpt)


# --------------------------------------------------------------------------- writing
def unwrapped_name(name: str) -> str:
    return _WRAPPER_PARTS.sub(r"\1", name)


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
    tmp = final.with_name(f"{_TMP_PREFIX}{final.name}-{os.getpid()}")
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
    doomed = folder.with_name(f"{_TMP_PREFIX}del-{folder.name}-{os.getpid()}")
    os.replace(folder, doomed)  # first leave the valid namespace, atomically
    shutil.rmtree(doomed, ignore_errors=True)


def prune(run_dir: str | Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints, never ``protect`` (the newest
    checkpoint that passed the health check); returns what was deleted."""
    found = list_checkpoints(run_dir)
    doomed = [p for _, p in found[: max(0, len(found) - keep)] if protect is None or p != Path(protect)]
    for folder in doomed:
        _remove(folder)
    return doomed


def sweep_temp_folders(run_dir: str | Path) -> None:
    """Remove what interrupted saves and prunes left behind."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- reading
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
        from madkit.engine.sharded_checkpoint import read_full

        return {k: v.to(device) for k, v in read_full(ckpt, "ema" if use_ema else "model").items()}
    try:
        return load_file(path, device=str(device))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as safetensors: {exc}") from exc


def stored_shapes(ckpt: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes in a checkpoint's ``model.safetensors`` or sharded model (or in a given
    .safetensors file, e.g. an export's) without reading the data."""
    path = Path(ckpt)
    if path.suffix != ".safetensors" and not (path / MODEL_FILE).is_file() and is_sharded(path):
        from madkit.engine.sharded_checkpoint import stored_shapes as sharded_shapes

        return sharded_shapes(path, "model")
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
