"""Quality numbers with their spread: how records pair a value with its uncertainty, how outputs print
them, and how repeated measurements (checkpoints, training seeds) are summarised and compared.

A metric reports the spread of its value ``x`` as ``x_std`` (``fid_std``: a bootstrap over the
generated images; ``kid_std``: over KID's subsets; ``is_std``: over IS's splits). Every output that
prints ``x`` prints ``x_std`` beside it, and the sample count next to both.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

SPREAD_SUFFIX = "_std"
SUMMARY_KIND = "checkpoint-mean"  # the "kind" of a summary record over checkpoints (madkit.engine.evaluation.protocol)


def spread_key(metric: str) -> str:
    return metric + SPREAD_SUFFIX


def is_spread(key: str, values: Mapping[str, Any]) -> bool:
    """``key`` is the spread of another value present in ``values``."""
    return key.endswith(SPREAD_SUFFIX) and key[: -len(SPREAD_SUFFIX)] in values


def format_number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


def with_spread(values: Mapping[str, Any], key: str, digits: int = 4) -> str:
    """``46.85 ± 0.6231`` (``digits`` significant), or the bare value when ``values`` holds no spread for ``key``."""
    text = format_number(values[key], digits)
    spread = values.get(spread_key(key))
    return text if spread is None else f"{text} ± {format_number(spread, digits)}"


def describe(values: Mapping[str, Any], digits: int = 4) -> str:
    """``fid 46.85 ± 0.6231, fid_bootstrap 100``: every value, each spread beside its value."""
    return ", ".join(f"{key} {with_spread(values, key, digits)}" for key in values if not is_spread(key, values))


# --------------------------------------------------------------------------- repeated measurements
@attrs.frozen
class Summary:
    """Repeated measurements of one quantity: mean, sample standard deviation (NaN for one value)."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...]

    @property
    def sem(self) -> float:
        """Standard error of the mean."""
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("nothing to summarise: no values")
    values = tuple(float(v) for v in values)
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return Summary(statistics.fmean(values), std, len(values), values)


def difference_threshold(spread_a: float, n_a: int, spread_b: float, n_b: int, z: float = 2.0) -> float:
    """``z`` standard errors of the difference of two means: z * sqrt(spread_a^2 / n_a + spread_b^2 / n_b).

    ``spread_*`` is the standard deviation of one measurement on each side (over training seeds, or a
    bootstrap's when a side has one measurement), ``n_*`` the measurements averaged. A difference of
    means beyond it is "beyond the spread": with z = 2 a rough 95% test, optimistic with three seeds a
    side (Student's t with 4 degrees of freedom wants about 2.8). NaN when a spread is unknown.
    """
    return z * math.sqrt(spread_a**2 / n_a + spread_b**2 / n_b)
