"""Reading spec files: TOML, ``extends`` chains, ``--set`` overrides, and where each value came from.

Precedence: defaults < ``extends`` base (recursively) < the file < ``--set key=value``.
Tables deep-merge, except that a table whose ``kind`` differs from the base's replaces it whole
(a raster partitioner must not inherit a tiles partitioner's keys).
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

Path_ = tuple[str, ...]

DEFAULTS_SOURCE = "(madkit defaults)"  # how errors name a value nobody wrote


class SpecLoadError(Exception):
    """A spec file cannot be read at all (missing, bad TOML, bad extends, bad --set)."""


class Provenance:
    """Which source (file or ``--set``) set each TOML path; used to prefix error messages."""

    def __init__(self, default: str):
        self.default = default
        self._origin: dict[Path_, str] = {}

    def mark(self, data: dict[str, Any], source: str, prefix: Path_ = ()) -> None:
        for key, value in data.items():
            path = prefix + (key,)
            self._origin[path] = source
            if isinstance(value, dict):
                self.mark(value, source, path)

    def source_of(self, path: Path_) -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in self._origin:
                return self._origin[path[:n]]
        return self.default


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and old.get("kind", value.get("kind")) == value.get(
            "kind", old.get("kind")
        ):
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SpecLoadError(f"{path}: spec file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecLoadError(f"{path}: not valid TOML: {exc}") from None


def load_with_extends(path: Path, provenance: Provenance, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise SpecLoadError(f"{path}: extends forms a cycle: {cycle}")
    data = read_toml(path)
    base_name = data.pop("extends", None)
    merged: dict[str, Any] = {}
    if base_name is not None:
        if not isinstance(base_name, str):
            raise SpecLoadError(f"{path}: extends: must be a string path, got {type(base_name).__name__}")
        base_path = (path.parent / base_name).resolve()
        if not base_path.exists():
            raise SpecLoadError(f"{path}: extends: base spec {base_name!r} not found (looked at {base_path})")
        merged = load_with_extends(base_path, provenance, (*_chain, path))
    provenance.mark(data, str(path))
    return deep_merge(merged, data)


def parse_set(assignment: str) -> tuple[Path_, Any]:
    """``a.b.c=value`` with a TOML value; a value that is not TOML is taken as a bare string."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecLoadError(f"--set {assignment!r}: expected KEY=VALUE such as train.steps=100")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # `--set data.kind=folder` should not need shell-quoted TOML strings
    return tuple(key.split(".")), value


def apply_sets(data: dict[str, Any], sets: list[str], provenance: Provenance) -> dict[str, Any]:
    for assignment in sets:
        path, value = parse_set(assignment)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        provenance.mark(nested, f"--set {assignment}")
        data = deep_merge(data, nested)
    return data


def load_raw(
    path: str | Path, sets: list[str] | None = None, defaults: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Provenance]:
    """The merged raw spec dict and its provenance."""
    path = Path(path)
    provenance = Provenance(str(path))
    if defaults:
        # marked first so that every path a file sets is re-marked with that file
        provenance.mark(defaults, DEFAULTS_SOURCE)
    data = load_with_extends(path, provenance)
    if defaults:
        data = deep_merge(defaults, data)
    data = apply_sets(data, list(sets or []), provenance)
    return data, provenance
