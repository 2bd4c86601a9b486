"""Where checkpoints live and what makes one complete: names, the listing of a run's checkpoints.

Layout: ``RUN/checkpoints/<step, 8 digits>/`` holding

- ``model.safetensors``: the raw weights, unwrapped names (no ``module.`` / ``_orig_mod.``);
- ``ema.safetensors``: the fp32 EMA weights, same names;
- ``state.pt``: everything else as plain data, readable with ``torch.load(weights_only=True)``:
  step, optimizer, lr schedule, grad scaler, data position, RNG states per rank, EMA update count,
  the resolved spec (a dict) and the versions of madkit, torch and every plugin.

A sharded checkpoint (``train.strategy = "fsdp"`` or ``"hsdp"``) holds ``state.pt`` without the
optimizer and a ``sharded/`` folder of ``torch.distributed.checkpoint`` files (model, EMA, optimizer;
see sharded.py). saving.py writes both layouts atomically; loading.py reads either; verify.py checks
a checkpoint before anything trusts it.
"""

from __future__ import annotations

import re
from pathlib import Path

from madkit.errors import UserError

CHECKPOINTS = "checkpoints"
MODEL_FILE, EMA_FILE, STATE_FILE = "model.safetensors", "ema.safetensors", "state.pt"
FILES = (MODEL_FILE, EMA_FILE, STATE_FILE)
SHARDED_DIR = "sharded"  # a sharded checkpoint's DCP files; complete once DCP wrote its .metadata
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
# torch.compile(submodule) wraps it as `_orig_mod`; the trainer never saves through a DDP wrapper,
# so a `module.` segment is a real attribute name and is left alone
_WRAPPER_PARTS = re.compile(r"(^|\.)_orig_mod\.")


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


def unwrapped_name(name: str) -> str:
    """A parameter name without torch.compile's ``_orig_mod.`` segments (the name checkpoints store)."""
    return _WRAPPER_PARTS.sub(r"\1", name)
