"""Free space before a save, and a plain message when a write fails anyway.

torch.save reports a full disk as ``[enforce fail at inline_container.cc:...]`` and safetensors as
an I/O error; neither says what happened or what is still safe. Savers check the space first
(``ensure_free``) and turn a failed write into a ``SaveFailedError`` that says "disk full" (or the
operating system's error) and what the caller names as still intact.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from madkit.errors import UserError

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# the words torch's zip writer and safetensors use when the underlying write came up short
_SHORT_WRITE = ("file write failed", "enforce fail", "No space left", "os error 28", "unexpected pos")


class SaveFailedError(RuntimeError):
    """A save did not happen (no space, or the write failed); nothing half-written was kept."""


class DiskFullError(UserError):
    """An output file could not be written for lack of space (exit 2, one line); no partial file was kept."""


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor inside nested dicts, lists and tuples (what a save will write, roughly)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def free_bytes(folder: str | Path) -> int:
    return shutil.disk_usage(folder).free


def ensure_free(folder: str | Path, need: int, what: str, still_safe: str) -> None:
    """Raise ``SaveFailedError`` before writing anything when ``folder``'s disk lacks ``need`` bytes
    (plus 5% and 256 KiB for pickle and file-system overhead, and for the metrics lines that follow)."""
    want = int(need * 1.05) + (256 << 10)
    free = free_bytes(folder)
    if free < want:
        raise SaveFailedError(
            f"disk full: {what} needs about {_human(want)} but {folder} has {_human(free)} free; nothing was "
            f"written; {still_safe}. Free some space (or lower train.keep_ckpts) and run the same command again"
        )


def is_disk_full(exc: BaseException, folder: str | Path | None = None) -> bool:
    """Whether a failed write ran out of space: by its errno, or (torch's zip writer gives none) by
    its words together with a disk that is now nearly full."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    if folder is not None and any(word in str(exc) for word in _SHORT_WRITE):
        try:
            return free_bytes(folder) < (64 << 20)
        except OSError:
            return False
    return False


def describe_failure(exc: BaseException, folder: str | Path) -> str:
    """"disk full (...)" or the OS error, in one line."""
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0][:200]
    return f"disk full ({detail})" if is_disk_full(exc, folder) else f"write failed ({type(exc).__name__}: {detail})"


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
