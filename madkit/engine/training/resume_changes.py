"""Resuming with a different spec: say what changed, and refuse unless the user allows it.

A resumed run restores the optimizer, the step and the learning-rate schedule's position; a new
``train.lr`` or ``train.steps`` would silently make the learning rate jump mid-run, and the run
folder's config.resolved.toml would no longer describe the weights before the change. Keys that
cannot change what is learned (where records go, how often, speed knobs, the sampler, which only
makes sample grids) may change freely; every other difference needs ``allow_changes``
(``madkit run --allow-changes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from madkit.engine.checkpoints import all_spec_differences
from madkit.errors import ConfigError

# dotted keys (or whole sections) whose change leaves the optimisation itself as it was
NEUTRAL = (
    "name",
    "log",
    "sampler",
    "train.ckpt_every",
    "train.keep_ckpts",
    "train.log_every",
    "train.sample_every",
    "train.sample_num",
    "train.sample_steps",
    "train.resume",
    "train.init_from",
    "train.threads",
    "train.num_workers",
    "train.device",
    "train.compile",
    "train.activation_checkpointing",
    "train.deterministic",
    "train.latent_cache",
    "train.ddp_find_unused",
    "train.health",  # when to stop or warn, not what is learned
    "train.strategy",  # a sharded checkpoint resumes whole and a whole one sharded, on any number of ranks
    "train.shard_ranks",
)


class ResumeChangeError(ConfigError):
    """The spec given to a resumed run changes what is being learned."""


def is_neutral(key: str) -> bool:
    return any(key == n or key.startswith(n + ".") for n in NEUTRAL)


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    """``train.lr 0.001 -> 0.0005, train.steps 450 -> 600``."""
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes)


def check_resume(
    ckpt: Path, stored: dict[str, Any], current: dict[str, Any], source: str, allow: bool
) -> list[tuple[str, Any, Any]]:
    """Every difference between the checkpoint's spec and the current one; raises ``ResumeChangeError``
    when one of them changes the optimisation and ``allow`` is false."""
    changes = all_spec_differences(stored, current)
    decisive = [c for c in changes if not is_neutral(c[0])]
    if decisive and not allow:
        raise ResumeChangeError(
            f"resuming from {ckpt} with changed training values ({describe(decisive)}; from {source}); nothing "
            "was written. Pass --allow-changes to continue with the new values (the step and optimizer carry on, "
            "the learning-rate schedule follows the new values), or train into another folder with --out"
        )
    return changes
