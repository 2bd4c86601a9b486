"""attrs validators shared by madkit's and the plugins' config classes.

Each raises ``ValueError("must be ..., got <value>")``; spec loading puts the dotted key in front
(``train.steps: must be > 0, got -5``). A ``note`` adds a parenthesised hint after the condition
(``must be >= 0 (0 = no limit), got -1``). Comparisons are written so that NaN fails every range.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _hint(note: str) -> str:
    return f" ({note})" if note else ""


def greater_than(low: float, note: str = "") -> Validator:
    """Values strictly above ``low``."""

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not value > low:
            raise ValueError(f"must be > {low}{_hint(note)}, got {value}")

    return check


def at_least(low: float, note: str = "") -> Validator:
    """Values ``>= low``."""

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not value >= low:
            raise ValueError(f"must be >= {low}{_hint(note)}, got {value}")

    return check


def within(
    low: float, high: float, *, open_low: bool = False, open_high: bool = False, note: str = ""
) -> Validator:
    """Values in the interval from ``low`` to ``high``; each end is included unless marked open."""
    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        above = value > low if open_low else value >= low
        below = value < high if open_high else value <= high
        if not (above and below):
            raise ValueError(f"must be within {interval}{_hint(note)}, got {value}")

    return check


def one_of(*options: Any) -> Validator:
    """Values equal to one of ``options``; the message lists them all."""
    listed = ", ".join(repr(o) for o in options)

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in options:
            raise ValueError(f"must be one of {listed}, got {value!r}")

    return check


positive = greater_than(0)  # counts, sizes, rates: must be > 0, got ...
non_negative = at_least(0)  # counts where 0 means "off" or "default": must be >= 0, got ...
unit_interval = within(0, 1)  # fractions and decays: must be within [0, 1], got ...


MAX_NAME_BYTES = 128  # run and eval names become folder and file names (with suffixes) on every filesystem


def folder_name_problem(value: Any) -> str | None:
    """Why ``value`` cannot name a run folder or an eval record, or None when it can.

    A name is one path component under its parent (``runs/<name>``, ``RUN/eval/<name>.json``): it must
    never reach another folder (separators, ``.``, ``..``, an absolute path), hide itself or look like
    a temporary folder (a leading ``.``), read as a command-line flag (a leading ``-``), or hold
    control characters (a NUL ends a path in the OS's eyes)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if "/" in value or "\\" in value:
        return f"must be one folder name, without '/' or '\\', got {value[:60]!r}"
    if value.startswith((".", "-")):
        return f"must not start with '.' or '-', got {value[:60]!r}"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"must not contain control characters, got {value[:60]!r}"
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        return f"must be at most {MAX_NAME_BYTES} bytes of UTF-8, got {len(value.encode('utf-8'))}"
    return None


def folder_name(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: ``value`` names one folder (``folder_name_problem``)."""
    if (problem := folder_name_problem(value)) is not None:
        raise ValueError(f"{problem} (it names the run folder runs/<name>)")
