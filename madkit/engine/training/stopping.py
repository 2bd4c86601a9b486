"""Stopping a run early, at a step boundary, with a checkpoint: what a scheduler's warning asks for.

SLURM signals a job (submitit asks for SIGUSR2, 90 s ahead) before its time limit or when it is
preempted. Handled where it lands, mid-step, the only safe reaction is to exit, losing every step
since the last checkpoint (and, with checkpoints further apart than the time limit, never making
progress). ``watch(signal)`` replaces that reaction, for the duration of a training job, by a
request: the training loop ends after the step in progress (every rank at the same step, as rank 0
decides), saves a checkpoint and returns; ``hand_over()`` then passes the signal to the handler it
replaced (submitit's, which requeues the job), so the requeued job resumes from that very step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

_requested = threading.Event()
_watched: dict[int, Any] = {}  # signal number -> the handler watch() replaced


def request() -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def watching() -> bool:
    """Whether a stop can be requested at all (the loop asks its ranks only then: ordinary runs pay nothing)."""
    return bool(_watched) or requested()


def watch(signum: int) -> None:
    """Turn ``signum`` into a stop request (main thread only, as every signal handler)."""
    previous = signal.signal(signum, lambda *_: request())
    _watched.setdefault(signum, previous)


def hand_over() -> None:
    """Restore the replaced handlers and pass each watched signal to the one it replaced (once a stopped
    run has saved); clears the request."""
    handlers, _ = dict(_watched), _watched.clear()
    _requested.clear()
    for signum, previous in handlers.items():
        signal.signal(signum, previous)
    for signum, previous in handlers.items():
        if callable(previous):
            previous(signum, None)


def release() -> None:
    """Restore the replaced handlers without calling them (the run ended on its own)."""
    for signum, previous in _watched.items():
        signal.signal(signum, previous)
    _watched.clear()
    _requested.clear()


def stop_now(decide_on_main: Callable[[Callable[[], bool]], bool]) -> bool:
    """Whether every rank stops after this step: rank 0's answer (``decide_on_main`` shares it)."""
    return watching() and decide_on_main(requested)
