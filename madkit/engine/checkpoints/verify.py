"""Verifying checkpoint folders before trusting them, and falling back past the broken ones.

A checkpoint folder that has all its files can still be unusable: truncated by a full disk or a
copy that stopped, overwritten with garbage, damaged on the way from another machine. Every
checkpoint madkit loads is verified first, without reading the tensors themselves:

- each ``.safetensors`` file: its header parses, every tensor's dtype and shape match its byte
  range, and the ranges fill the file exactly (a truncated file describes more bytes than it holds);
- ``model.safetensors`` and ``ema.safetensors`` hold the same tensor names;
- a sharded checkpoint's ``sharded/.metadata`` reads and every slice it lists lies inside an
  existing rank file (``verify_shards``);
- ``state.pt`` opens as a plain-data checkpoint (``weights_only=True``, memory-mapped: the zip
  directory at its end must be intact) and its step matches the folder name.

``newest_verified(run)`` returns the newest checkpoint that passes, with every newer one it skipped
and why; the trainer moves skipped ones aside (``set_aside``) so that a resumed run never mistakes
them for its own saves, and sampling only warns.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import torch

from madkit.engine.checkpoints.layout import (
    CHECKPOINTS,
    EMA_FILE,
    FILES,
    MODEL_FILE,
    SHARDED_DIR,
    STATE_FILE,
    CheckpointError,
    is_sharded,
    list_checkpoints,
)
from madkit.logs import get_logger

logger = get_logger(__name__)

SET_ASIDE = "set-aside"  # RUN/set-aside/<time>-<why>/<step>: checkpoints a run stopped trusting
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
    "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8,
}


class CorruptCheckpointError(CheckpointError):
    """A checkpoint folder has all its files, but one of them is damaged; the message says which and how."""


# --------------------------------------------------------------------------- one file
def safetensors_header(path: Path) -> dict[str, Any]:
    """The parsed header of a safetensors file, checked against the file's size.

    Raises ``CorruptCheckpointError`` naming the file and what is wrong with it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CorruptCheckpointError(f"{path}: {size} bytes, too short for a safetensors file")
            (length,) = struct.unpack("<Q", head)
            if length > min(_MAX_HEADER, size - 8):
                raise CorruptCheckpointError(
                    f"{path}: not a safetensors file, or truncated (its header claims {length:,} bytes; the file "
                    f"holds {size:,})"
                )
            raw = f.read(length)
    except OSError as exc:
        raise CorruptCheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        raise CorruptCheckpointError(f"{path}: damaged safetensors header ({exc})") from None
    data_bytes = size - 8 - length
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            numel = 1
            for dim in info["shape"]:
                numel *= int(dim)
            want = numel * _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise CorruptCheckpointError(f"{path}: damaged safetensors header entry for tensor {name!r}") from None
        if end - begin != want or begin < 0:
            raise CorruptCheckpointError(f"{path}: tensor {name!r} spans {end - begin} bytes, its shape needs {want}")
        end_max = max(end_max, end)
    if end_max != data_bytes:
        state = "truncated" if end_max > data_bytes else "longer than its header describes"
        raise CorruptCheckpointError(
            f"{path}: {state}: the header describes {end_max:,} bytes of tensor data, the file holds {data_bytes:,}"
        )
    return header


def tensor_names(header: dict[str, Any]) -> set[str]:
    return {k for k in header if k != "__metadata__"}


def header_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file (empty if it has none)."""
    return dict(safetensors_header(path).get("__metadata__") or {})


# --------------------------------------------------------------------------- one folder
def verify_checkpoint(folder: str | Path) -> None:
    """Raise ``CheckpointError`` (``CorruptCheckpointError`` for damage) unless ``folder`` is a
    complete checkpoint whose files all pass the checks in the module docstring."""
    folder = Path(folder)
    if is_sharded(folder) and (folder / STATE_FILE).is_file():
        verify_shards(folder)
    else:
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint {folder} is incomplete: missing {', '.join(missing)}")
        model, ema = safetensors_header(folder / MODEL_FILE), safetensors_header(folder / EMA_FILE)
        if tensor_names(model) != tensor_names(ema):
            differ = sorted(tensor_names(model) ^ tensor_names(ema))
            raise CorruptCheckpointError(
                f"checkpoint {folder}: {MODEL_FILE} and {EMA_FILE} hold different tensors (e.g. {differ[:3]})"
            )
    state_path = folder / STATE_FILE
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001  (torch reports damage as RuntimeError, OSError, pickle errors ...)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptCheckpointError(f"{state_path}: damaged or not a madkit state file ({first_line[:200]})") from None
    step = state.get("step") if isinstance(state, dict) else None
    if folder.name.isdigit() and step != int(folder.name):
        raise CorruptCheckpointError(f"{state_path}: records step {step!r}, but its folder is named {folder.name}")


def verify_shards(folder: Path) -> None:
    """A sharded checkpoint: DCP's ``.metadata`` reads, names model, EMA and optimizer tensors, and
    every byte range it points to lies inside an existing file (a truncated or missing rank file fails)."""
    from torch.distributed.checkpoint import FileSystemReader

    shards = folder / SHARDED_DIR
    try:
        meta = FileSystemReader(str(shards)).read_metadata()
    except Exception as exc:  # noqa: BLE001  (a damaged pickle raises anything)
        raise CorruptCheckpointError(f"{shards / '.metadata'}: damaged ({type(exc).__name__}: {exc})"[:300]) from None
    parts = {key.split(".", 1)[0] for key in meta.state_dict_metadata}
    if not {"model", "ema", "optimizer"} <= parts:
        raise CorruptCheckpointError(f"{shards}: holds {sorted(parts)}, not model, ema and optimizer")
    ends: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), int(info.offset) + int(info.length))
    for name, end in sorted(ends.items()):
        path = shards / name
        size = path.stat().st_size if path.is_file() else None
        if size is None or size < end:
            state = "is missing" if size is None else f"is truncated ({size:,} bytes; its slices need {end:,})"
            raise CorruptCheckpointError(f"{path} {state}")


# --------------------------------------------------------------------------- a run folder
def newest_verified(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest checkpoint of ``run_dir`` that verifies, [(newer folder skipped, why), ...] newest first).

    Numbered folders with missing files count as skipped too, when they are newer than the one chosen."""
    root = Path(run_dir) / CHECKPOINTS
    numbered = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) \
        if root.is_dir() else []
    skipped: list[tuple[Path, str]] = []
    for folder in reversed(numbered):
        try:
            verify_checkpoint(folder)
        except CheckpointError as exc:
            skipped.append((folder, str(exc)))
            continue
        return folder, skipped
    return None, skipped


def warn_skipped(skipped: list[tuple[Path, str]], chosen: Path | None) -> None:
    """Tell the user, on stderr, which checkpoints were passed over and which one is used instead."""
    for folder, why in skipped:
        instead = f"using {chosen} instead" if chosen else "no older checkpoint verifies"
        logger.warning(f"skipping checkpoint {folder}: {why}; {instead}")


def choose_checkpoint(path: str | Path) -> Path:
    """What ``sample``/``eval`` load: a checkpoint folder, verified, or a run folder's newest verified
    checkpoint (warning about newer ones that fail). Raises ``CheckpointError`` with the reasons."""
    path = Path(path)
    if (path / STATE_FILE).is_file():  # a checkpoint folder (is_complete needs state.pt too)
        try:
            verify_checkpoint(path)
        except CheckpointError as exc:
            run = path.parent.parent
            older = [p for step, p in list_checkpoints(run) if path.name.isdigit() and step < int(path.name)]
            hint = f"; the run folder {run} holds older checkpoints, e.g. {older[-1]}" if older else ""
            raise CheckpointError(f"{exc}{hint}") from None
        return path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder or a checkpoint folder")
    chosen, skipped = newest_verified(path)
    if chosen is None:
        if skipped:
            reasons = "; ".join(why for _, why in skipped[:3])
            raise CheckpointError(f"{path} holds no usable checkpoint: {reasons}")
        raise CheckpointError(
            f"{path} holds no complete checkpoint (looked for {path / CHECKPOINTS}/<step>/ with {', '.join(FILES)})"
        )
    warn_skipped(skipped, chosen)
    return chosen


def set_aside(run_dir: str | Path, folders: list[Path], why: str) -> Path | None:
    """Move checkpoint folders out of ``checkpoints/`` into ``RUN/set-aside/<time>-<why>/`` (a rename:
    nothing is deleted, and a resumed run can never take them for its own). Returns that folder."""
    if not folders:
        return None
    target = Path(run_dir) / SET_ASIDE / f"{time.strftime('%Y%m%d-%H%M%S')}-{why}"
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{target.name.rsplit('.', 1)[0]}.{n}")
    target.mkdir(parents=True)
    for folder in folders:
        os.replace(folder, target / folder.name)
    return target
