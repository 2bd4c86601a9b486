"""Side-by-side timing on a shared, noisy machine: interleaved repetitions, medians and spread.

Absolute times on a machine other jobs share drift by tens of percent within a minute; the ratio of
two cases measured in alternation does not. ``interleaved`` runs every case once per round, in a
rotating order, so a slow phase of the machine hits all cases alike; ``ratio`` compares two cases
round by round and reports the median of those per-round ratios with its interquartile range.

    times = interleaved({"madkit": step_a, "dit": step_b}, rounds=15, warmup=2)
    print(describe(times["madkit"]), ratio(times["madkit"], times["dit"]))
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from torch.utils.flop_counter import FlopCounterMode


def interleaved(
    cases: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of every case, ``rounds`` samples each, measured in alternation.

    ``warmup`` untimed rounds come first (allocator, caches, lazy compilation). ``sync`` runs before
    and after each timed call (e.g. ``torch.cuda.synchronize``) so asynchronous work is counted.
    ``clock``: wall time by default; ``time.process_time`` counts the CPU time this process used, which
    on a machine whose cores other jobs share leaves out the time spent waiting for a core (CPU-only
    work on one thread: with more threads it sums them).
    """
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)  # rotate the order: no case always runs right after another
        for name in names[shift:] + names[:shift]:
            if sync:
                sync()
            start = clock()
            cases[name]()
            if sync:
                sync()
            if r >= warmup:
                times[name].append(clock() - start)
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    if len(values) < 2:
        v = values[0]
        return v, v, v
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Quartiles of a[i] / b[i] over rounds: how many times b's time a takes, with its spread."""
    if len(a) != len(b) or not a:
        raise ValueError(f"ratio needs paired samples, got {len(a)} and {len(b)}")
    return quartiles([x / y for x, y in zip(a, b)])


def describe(values: list[float], unit: float = 1e-3, suffix: str = "ms") -> str:
    """'12.3 ms [11.9, 12.8]': median and interquartile range."""
    q1, q2, q3 = quartiles(values)
    return f"{q2 / unit:.4g} {suffix} [{q1 / unit:.4g}, {q3 / unit:.4g}]"


def describe_ratio(values: tuple[float, float, float]) -> str:
    """'0.82x [0.80, 0.85]'."""
    q1, q2, q3 = values
    return f"{q2:.3g}x [{q1:.3g}, {q3:.3g}]"


def measured_flops(fn: Callable[[], object]) -> int:
    """The FLOPs torch's FlopCounterMode counts while ``fn`` runs (a multiply-add counts 2)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()
