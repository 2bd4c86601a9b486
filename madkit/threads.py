"""How many CPU threads torch's intra-op pool uses for a run (``train.threads``, ``madkit run --threads``).

torch starts one thread per core. On a machine other jobs keep busy that is a trap: the threads of
one parallel region wait for each other at every operator, and a descheduled one stalls the rest (a
small quickstart-sized run measured 30x slower than with one thread). ``torchrun`` avoids it by
setting ``OMP_NUM_THREADS=1``; a plain process gets this rule instead:

- ``train.threads = N`` (N > 0): exactly N;
- ``0`` (auto) with ``OMP_NUM_THREADS`` in the environment (torchrun, or the user): that value;
- ``0`` (auto) otherwise: the cores this process may use that the load average says are idle, at
  most ``AUTO_MAX``, at least 1; a quiet machine gets all of its (up to 8) cores, a busy one gets 1.

Thread counts do not change what is computed beyond floating-point summation order; set a fixed N
for runs whose resumption must repeat the original bit for bit on a CPU.
"""

from __future__ import annotations

import os

import torch

AUTO_MAX = 8  # more intra-op threads rarely help the models a CPU trains


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Cores the 1-minute load average leaves idle (all usable cores where there is no load average)."""
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cores
    return max(0, min(cores, round(cores - load)))


def choose_threads(requested: int) -> tuple[int, str]:
    """(threads, why) for ``train.threads = requested`` under the rule above."""
    if requested > 0:
        return requested, "train.threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    idle = idle_cores()
    return max(1, min(idle, AUTO_MAX)), f"auto: {idle} of {usable_cores()} cores idle"


def apply_threads(requested: int) -> str:
    """Set torch's intra-op thread count; returns a short description for the run's banner."""
    threads, why = choose_threads(requested)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return f"{threads} CPU thread{'s' if threads != 1 else ''} ({why})"
