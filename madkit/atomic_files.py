"""Files appear whole or not at all: every file madkit writes goes through ``writing_atomically``.

The content is written to a hidden temp file beside the target (same folder, so the rename stays on
one filesystem) and renamed over the target only once complete: a kill or a full disk mid-write
leaves the previous file (or none), never a torn one, and on any failure the temp file is removed,
so nothing half-written is left behind either. Folders (checkpoints, exports) follow the same rule
with their own temp folders (madkit.engine.checkpoints.saving).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def writing_atomically(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write ``path``'s content to; renamed to ``path`` when the block succeeds,
    removed when it raises (the exception propagates)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``writing_atomically``)."""
    with writing_atomically(path) as tmp:
        tmp.write_bytes(data)
