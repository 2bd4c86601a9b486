"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP), for the fsdp and hsdp strategies.

Gathering a model too large for one device onto rank 0 to write safetensors would defeat sharding,
so every rank writes its own slices: ``RUN/checkpoints/<step>/sharded/`` holds DCP's per-rank files
and its ``.metadata`` (the global shape of every tensor and where each slice lives), under three
keys: ``model`` and ``ema`` (the bare model's parameter names) and ``optimizer`` (AdamW's moments
keyed by the same names). ``state.pt`` beside it holds everything else, as in a whole checkpoint.
The folder is written under a temporary name and renamed when complete, like every checkpoint.
Several nodes must write to one shared filesystem.

Resharding: DCP reads whatever slices a rank asks for, so a checkpoint resumes on any number of
ranks, with any strategy (a plain process reads the whole tensors), and ``read_full`` turns it into
whole tensors in one process without a process group: ``checkpoints.load_weights`` uses it, so
``madkit sample`` and ``eval`` read a sharded checkpoint directly and ``madkit export`` writes it as
the usual ``model.safetensors``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from madkit.engine import distributed
from madkit.engine.checkpoints import layout, saving
from madkit.engine.checkpoints.disk_space import tensor_bytes
from madkit.engine.distributed import DistEnv


def _state_dicts(model: nn.Module, ema: nn.Module | None, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    parts = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        parts["ema"] = get_model_state_dict(ema)
    return parts


def save(
    run_dir: Path,
    step: int,
    env: DistEnv,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any] | None,
    keep: int,
    protect: Path | None = None,
) -> Path:
    """Collective: every rank writes its slices; rank 0 adds ``state`` (its own; ignored elsewhere),
    renames the folder into place and prunes old checkpoints (never ``protect``). Returns the folder
    on every rank. As for a whole checkpoint, rank 0 checks the free space first (the global tensor
    sizes: a DTensor counts whole), and a failed write on any rank removes the temp folder and raises
    ``SaveFailedError`` on every rank, saying why and which checkpoint is still the latest."""
    import torch.distributed.checkpoint as dcp

    parts = _state_dicts(model, ema, optimizer)

    def begin() -> tuple[str | None, str]:
        final = saving.checkpoint_folder(run_dir, step)
        if layout.is_complete(final):
            return None, str(final)
        saving.sweep_temp_folders(run_dir)
        saving.ensure_free_for(run_dir, step, tensor_bytes([parts, state]))
        return str(saving.temp_folder(final)), str(final)

    tmp, final = distributed.decide_on_main(env, begin)
    if tmp is None:
        return Path(final)
    tmp, final = Path(tmp), Path(final)

    def commit() -> None:
        saving.write_state(tmp, {**state, "layout": "sharded"})
        saving.commit_folder(tmp, final)
        saving.prune(run_dir, keep, protect)

    try:
        # every rank's files are written before the folder is committed; a failure anywhere fails everywhere
        distributed.all_ranks_succeed(env, lambda: dcp.save(parts, checkpoint_id=tmp / layout.SHARDED_DIR))
        distributed.decide_on_main(env, commit)
    except Exception as exc:  # noqa: BLE001  (DCP wraps the OS error of whichever rank failed)
        if env.is_main:
            raise saving.discard_failed_save(run_dir, step, tmp, exc) from exc
        raise
    distributed.barrier(env)
    return final


def load(ckpt: Path, model: nn.Module, ema: nn.Module | None, optimizer: torch.optim.Optimizer, collective: bool):
    """Restore model, EMA (when given) and optimizer from a sharded checkpoint, in place.

    ``collective``: the model is sharded and every rank reads its slices together; otherwise this
    process reads whole tensors on its own (a plain or DDP model, any process group ignored).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    parts = _state_dicts(model, ema, optimizer)
    with contextlib.nullcontext() if collective else _alone():
        dcp.load(parts, checkpoint_id=Path(ckpt) / layout.SHARDED_DIR, no_dist=not collective)
    set_model_state_dict(model, parts["model"])
    set_optimizer_state_dict(model, optimizer, parts["optimizer"])
    if ema is not None:
        set_model_state_dict(ema, parts["ema"])


def load_whole_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Restore a whole checkpoint's optimizer state (``optimizer.state_dict()``, keyed by position)
    into an optimizer over sharded parameters: the positions become parameter names, which
    ``set_optimizer_state_dict`` slices for this rank. Used when a DDP run continues sharded."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(p): n for n, p in model.named_parameters()}
    ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {ordered[int(i)]: s for i, s in saved["state"].items()},
        "param_groups": [{**g, "params": [ordered[int(i)] for i in g["params"]]} for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


# --------------------------------------------------------------------------- one process, no group
@contextlib.contextmanager
def _alone():
    """DCP warns when it reads without a process group; here that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        yield


def _tensor_metadata(ckpt: str | Path, part: str) -> dict[str, Any]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        meta = FileSystemReader(str(Path(ckpt) / layout.SHARDED_DIR)).read_metadata()
    except Exception as exc:
        raise layout.CheckpointError(f"{ckpt}: cannot read the sharded checkpoint's metadata: {exc}") from exc
    prefix = f"{part}."
    return {
        key[len(prefix) :]: m
        for key, m in meta.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(m, TensorStorageMetadata)
    }


def stored_shapes(ckpt: str | Path, part: str = "model") -> dict[str, tuple[int, ...]]:
    return {name: tuple(m.size) for name, m in _tensor_metadata(ckpt, part).items()}


def read_full(ckpt: str | Path, part: str) -> dict[str, torch.Tensor]:
    """The whole tensors of ``part`` ("model" or "ema") on the CPU, assembled from every rank's slices."""
    import torch.distributed.checkpoint as dcp

    tensors = {name: torch.empty(m.size, dtype=m.properties.dtype) for name, m in _tensor_metadata(ckpt, part).items()}
    if not tensors:
        raise layout.CheckpointError(f"{ckpt}: the sharded checkpoint holds no {part!r} tensors")
    try:
        with _alone():
            dcp.load({part: tensors}, checkpoint_id=Path(ckpt) / layout.SHARDED_DIR, no_dist=True)
    except Exception as exc:
        raise layout.CheckpointError(f"{ckpt}: cannot read the sharded checkpoint: {exc}") from exc
    return tensors
