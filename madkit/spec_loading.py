"""Reading spec files: TOML, ``extends`` chains, ``--set`` overrides, and where each value came from.

Precedence: defaults < ``extends`` base (recursively) < the file < ``--set key=value``.
Tables deep-merge, except that a table whose ``kind`` differs from the base's replaces it whole
(a raster partitioner must not inherit a tiles partitioner's keys).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from madkit.errors import UserError

Path_ = tuple[str, ...]

DEFAULTS_SOURCE = "(madkit defaults)"  # how errors name a value nobody wrote
DICT_SOURCE = "(dict)"  # how errors name a spec given as a Python dict


class SpecLoadError(UserError):
    """A spec file cannot be read at all (missing, bad TOML, bad extends, bad --set)."""


class Provenance:
    """Which source (file or ``--set``) set each TOML path; used to prefix error messages."""

    def __init__(self, default: str):
        self.default = default
        self._origin: dict[Path_, str] = {}
        self.notes: list[str] = []  # what a reader might not expect, e.g. keys a kind change dropped

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


Replaced = list[tuple[Path_, Any, Any, list[str]]]  # (table path, old kind, new kind, keys dropped)


def deep_merge(
    base: dict[str, Any], over: dict[str, Any], replaced: Replaced | None = None, _prefix: Path_ = ()
) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; tables of another kind replace, and are listed in ``replaced``."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and old.get("kind", value.get("kind")) == value.get(
            "kind", old.get("kind")
        ):
            out[key] = deep_merge(old, value, replaced, (*_prefix, key))
        else:
            if replaced is not None and isinstance(value, dict) and isinstance(old, dict):
                dropped = [k for k in old if k != "kind" and k not in value]
                if dropped:
                    replaced.append(((*_prefix, key), old.get("kind"), value.get("kind"), dropped))
            out[key] = copy.deepcopy(value)
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (arrays stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


# A spec is a few dozen short values; far past these it is a mistake (or an attack), not a spec, and
# deeper nesting would exhaust Python's recursion in the TOML reader itself.
MAX_DEPTH = 32
MAX_ITEMS = 10_000


def check_bounds(value: Any, where: str, path: str = "", depth: int = 0) -> None:
    """Refuse tables and arrays nested deeper than ``MAX_DEPTH`` or arrays longer than ``MAX_ITEMS``."""
    if depth > MAX_DEPTH:
        raise SpecLoadError(f"{where}: {path or '(top level)'}: nested more than {MAX_DEPTH} levels deep; "
                            "a spec's values are tables of scalars and short arrays")
    if isinstance(value, dict):
        for key, item in value.items():
            check_bounds(item, where, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise SpecLoadError(f"{where}: {path}: an array of {len(value):,} items (at most {MAX_ITEMS:,}); "
                                "a spec holds settings, not data")
        for i, item in enumerate(value):
            check_bounds(item, where, f"{path}[{i}]", depth + 1)


def _parse(read, where: str) -> Any:
    """``read()`` (tomllib), with nesting too deep for the reader reported like any bound."""
    try:
        return read()
    except RecursionError:
        raise SpecLoadError(f"{where}: nested more than {MAX_DEPTH} levels deep; a spec's values are tables "
                            "of scalars and short arrays") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = _parse(lambda: tomllib.load(f), str(path))
        check_bounds(data, str(path))
        return data
    except FileNotFoundError:
        raise SpecLoadError(f"{path}: spec file not found") from None
    except IsADirectoryError:
        raise SpecLoadError(f"{path}: is a folder, not a spec file; pass the .toml file itself") from None
    except UnicodeDecodeError as exc:
        raise SpecLoadError(
            f"{path}: not a text file (byte {exc.start} is not UTF-8); a spec is a TOML text file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecLoadError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SpecLoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def load_with_extends(path: Path, provenance: Provenance, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise SpecLoadError(f"{path}: extends forms a cycle: {cycle}")
    return merge_with_base(read_toml(path), str(path), path.parent, provenance, (*_chain, path))


def merge_with_base(
    data: dict[str, Any], source: str, folder: Path, provenance: Provenance, chain: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """``data`` (read from ``source``) over its ``extends`` base, which is looked up in ``folder``."""
    data = dict(data)
    base_name = data.pop("extends", None)
    merged: dict[str, Any] = {}
    if base_name is not None:
        if not isinstance(base_name, str):
            raise SpecLoadError(f"{source}: extends: must be a string path, got {type(base_name).__name__}")
        base_path = (folder / base_name).resolve()
        if not base_path.exists():
            raise SpecLoadError(f"{source}: extends: base spec {base_name!r} not found (looked at {base_path})")
        merged = load_with_extends(base_path, provenance, chain)
    provenance.mark(data, source)
    return deep_merge(merged, data)


def parse_set(assignment: str) -> tuple[Path_, Any]:
    """``a.b.c=value`` with a TOML value; a value that is not TOML is taken as a bare string."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecLoadError(f"--set {assignment!r}: expected KEY=VALUE such as train.steps=100")
    try:
        value = _parse(lambda: tomllib.loads(f"v = {raw}")["v"], f"--set {key}")
    except tomllib.TOMLDecodeError:
        value = raw  # `--set data.kind=folder` should not need shell-quoted TOML strings
    check_bounds(value, f"--set {key}", key, depth=key.count(".") + 1)
    return tuple(key.split(".")), value


def apply_sets(data: dict[str, Any], sets: list[str], provenance: Provenance) -> dict[str, Any]:
    for assignment in sets:
        path, value = parse_set(assignment)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        replaced: Replaced = []
        data = deep_merge(data, nested, replaced)
        for table, old_kind, new_kind, dropped in replaced:
            # `--set data.kind=folder` silently losing `resolution` surprised users: say so
            by_source: dict[str, list[str]] = {}
            for k in dropped:
                by_source.setdefault(provenance.source_of((*table, k)), []).append(k)
            keys = "; ".join(f"{', '.join(ks)} (from {source})" for source, ks in by_source.items())
            provenance.notes.append(
                f"--set {assignment}: [{'.'.join(table)}] changed kind ({old_kind!r} -> {new_kind!r}) and was "
                f"replaced whole, so {keys} no longer apply and the new kind's defaults do; set them again "
                f"with --set {'.'.join(table)}.KEY=VALUE"
            )
        provenance.mark(nested, f"--set {assignment}")
    return data


def load_raw(
    path: str | Path | Mapping[str, Any], sets: list[str] | None = None, defaults: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Provenance]:
    """The merged raw spec dict and its provenance. ``path`` is a TOML file, or the spec itself as a
    dict (errors then name ``(dict)``; its ``extends`` is relative to the current folder)."""
    provenance = Provenance(DICT_SOURCE if isinstance(path, Mapping) else str(path))
    if defaults:
        # marked first so that every path a file sets is re-marked with that file
        provenance.mark(defaults, DEFAULTS_SOURCE)
    if isinstance(path, Mapping):
        data = merge_with_base(copy.deepcopy(dict(path)), DICT_SOURCE, Path.cwd(), provenance)
    else:
        data = load_with_extends(Path(path), provenance)
    if defaults:
        data = deep_merge(defaults, data)
    data = apply_sets(data, list(sets or []), provenance)
    return data, provenance
