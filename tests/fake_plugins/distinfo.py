"""Fake installed distributions: a ``*.dist-info`` folder (METADATA, entry_points.txt) plus modules.

``importlib.metadata`` finds a distribution on any ``sys.path`` entry holding such a folder, which
is exactly what ``pip install`` leaves in site-packages; madkit's registry cannot tell the difference.
"""

from __future__ import annotations

import re
from pathlib import Path

ENTRY_POINT_GROUP = "madkit.plugins"


class PluginSite:
    """A directory on ``sys.path`` into which tests install plugin distributions."""

    def __init__(self, root: Path):
        self.root = root

    def install(
        self,
        name: str,
        version: str = "1.0",
        entry_points: dict[str, str] | None = None,
        modules: dict[str, str] | None = None,
    ) -> Path:
        """Install distribution ``name``; ``entry_points`` maps plugin name -> "module[:attr]",
        ``modules`` maps a relative file path (``"pkg/mod.py"``) -> its source. Returns the dist-info."""
        dist_info = self.root / f"{_normalise(name)}-{version}.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{ep} = {target}" for ep, target in (entry_points or {}).items())]
        (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for relative, source in (modules or {}).items():
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        return dist_info


def _normalise(name: str) -> str:
    # the wheel spec's dist-info folder name: runs of -_. become one underscore
    return re.sub(r"[-_.]+", "_", name)
