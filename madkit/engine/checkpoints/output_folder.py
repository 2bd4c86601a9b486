"""Output folders that never mix two sets of images (``madkit sample --out``).

A folder of generated images records what made them in ``madkit-output.json``: the weights (which
checkpoint or export, EMA or raw) and every setting that changes a pixel. Writing into a folder is
allowed when it is empty or absent, or when its record names the same weights and settings (the
same command again, or another ``--shard`` of it: the files it writes are the same images). Any
other folder holding files is refused with a one-line error, so a second checkpoint's images never
land beside the first's under the same names; ``--overwrite`` removes what the earlier command
wrote (its images and its record, nothing else) and starts afresh.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from madkit.atomic_files import atomic_write
from madkit.errors import UserError

RECORD = "madkit-output.json"
OWN_SUFFIXES = (".png",)  # what a sampling command writes; --overwrite removes only these and the record


class OutputFolderError(UserError):
    """An output folder holds files from something else (exit 2, one line)."""


def claim_output_folder(out: Path, made_by: dict[str, Any], overwrite: bool = False) -> None:
    """Make ``out`` ready for the images ``made_by`` describes (plain, JSON-able data), or refuse."""
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out}: a file of that name exists; choose another --out")
    record = out / RECORD
    present = list(out.iterdir()) if out.is_dir() else []
    if present:
        earlier = _read(record)
        if earlier != made_by:
            if not overwrite:
                why = (
                    f"its images were made by {_describe(earlier, made_by)}"
                    if earlier is not None
                    else f"it holds {len(present)} file(s) madkit did not write there"
                )
                raise OutputFolderError(
                    f"--out {out} is not empty and {why}; use --overwrite (removes its images) or another --out"
                )
            if earlier is None:
                raise OutputFolderError(
                    f"--out {out} holds files madkit did not write there, so --overwrite will not delete them; "
                    "choose another --out"
                )
            for path in present:
                if path.is_file() and (path.suffix in OWN_SUFFIXES or path.name == RECORD):
                    path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(record, (json.dumps(made_by, indent=2, sort_keys=True) + "\n").encode())


def _read(record: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _describe(earlier: dict[str, Any], now: dict[str, Any]) -> str:
    """The first settings that differ, as ``key=earlier (now: value)``."""
    keys = sorted(set(earlier) | set(now))
    diffs = [f"{k}={earlier.get(k)!r} (now {now.get(k)!r})" for k in keys if earlier.get(k) != now.get(k)]
    return "other settings: " + ", ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "")
