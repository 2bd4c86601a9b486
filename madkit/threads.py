"""How many CPU threads torch's intra-op pool uses: one rule for every command that computes.

``madkit run`` (``train.threads``), ``sample``, ``eval``, ``sweep``, ``fid-stats`` and ``study`` take
``--threads N``; ``madkit.load(..., threads=N)`` does the same for the Python API. The rule:

- ``N > 0``: exactly N;
- auto (``0``, or no flag) with ``OMP_NUM_THREADS`` in the environment (torchrun sets 1): that value;
- auto otherwise: the physical cores this process may run on (hyper-threads are not counted, as
  torch counts them), at most ``AUTO_MAX``.

The rule is deterministic: the same command on the same machine always gets the same count. An
earlier rule followed the load average, so a first run started right after ``pip install`` got one
thread of two and identical runs got different counts. On a machine other jobs keep busy, contending
threads can be much slower than one (a small run measured 30x): pass ``--threads 1`` there.

Thread counts do not change what is computed beyond floating-point summation order; fix N for runs
whose resumption must repeat the original bit for bit on a CPU. A process forked from one whose
intra-op pool has run with more than one thread must compute with one (GNU OpenMP's pool does not
survive a fork; the child hangs): set ``train.threads = 1`` or ``OMP_NUM_THREADS=1`` there.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

AUTO_MAX = 8  # more intra-op threads rarely help the models a CPU trains
MAX_THREADS = 4096  # an explicit count beyond any machine's cores is a typo (torch overflows far above it)


def usable_cores() -> list[int]:
    """The logical CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int] | None = None, sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """Distinct (package, core) pairs among ``cpus`` (default: the usable ones); their count when the
    topology cannot be read."""
    cpus = usable_cores() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            package, core = (topology / "physical_package_id").read_text(), (topology / "core_id").read_text()
            cores.add((package.strip(), core.strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def count_problem(value: object) -> str | None:
    """Why ``value`` is not an explicit thread count (--threads, threads=), or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_THREADS:
        return f"must be a positive thread count (at most {MAX_THREADS}), got {value!r}"
    return None


def choose_threads(requested: int | None, flag: str = "--threads") -> tuple[int, str]:
    """(threads, why) under the rule above; ``flag`` names where an explicit count came from."""
    if requested is not None and not 0 <= requested <= MAX_THREADS:
        raise ValueError(f"{flag} must be within [0, {MAX_THREADS}] (0 = auto), got {requested}")
    if requested:
        return requested, flag
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = physical_cores()
    return max(1, min(cores, AUTO_MAX)), f"auto: {cores} physical core{'s' if cores != 1 else ''}"


def apply_threads(requested: int | None, flag: str = "--threads") -> str:
    """Set torch's intra-op thread count; returns a short description for banners and logs."""
    threads, why = choose_threads(requested, flag)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return f"{threads} CPU thread{'s' if threads != 1 else ''} ({why})"
