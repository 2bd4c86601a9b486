"""Telling a hub id (``owner/name``, optionally ``@revision``) from a local path, without the hub.

Kept apart from the hub client (madkit.engine.packaging.hub) so the spec checks can use it.
"""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def split_revision(source: str) -> tuple[str, str | None]:
    """``owner/name@rev`` -> (``owner/name``, ``rev``)."""
    repo, _, revision = source.partition("@")
    return repo, revision or None


def looks_like_hub_id(source: str | Path) -> bool:
    return isinstance(source, str) and bool(HUB_ID.match(split_revision(source)[0]))
