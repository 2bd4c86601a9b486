"""Random draws for ``GenerativeModel.loss``, one example at a time.

The trainer hands ``loss`` one ``torch.Generator`` per example, seeded from (seed, step, the
example's position in the global batch). Drawing each example's timesteps, noise and label dropout
from its own generator makes them a function of the example alone, so the same global batch gives
the same loss and gradient whether it is split into 1 x 4, 2 x 2 or 4 x 1 micro-batches or spread
over ranks. These helpers stack such draws into batch tensors: ``[n, *shape]`` for n generators.

Each draw happens on the generator's device (a CPU generator cannot fill a CUDA tensor) and is then
moved to ``device``. Draw in a fixed order inside ``loss`` (e.g. timesteps, then noise, then label
dropout): each draw advances every example's generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def draw(generators: Sequence[torch.Generator], one: Callable[[torch.Generator], torch.Tensor], device=None):
    """``torch.stack([one(g) for g in generators])`` on ``device`` (default: where ``one`` put them)."""
    out = torch.stack([one(g) for g in generators])
    return out if device is None else out.to(device)


def randn(generators: Sequence[torch.Generator], shape: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise [n, *shape], example i's from ``generators[i]``."""
    return draw(generators, lambda g: torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype), device)


def rand(generators: Sequence[torch.Generator], shape: Sequence[int], device) -> torch.Tensor:
    """Uniform [0, 1) values [n, *shape], example i's from ``generators[i]``."""
    return draw(generators, lambda g: torch.rand(tuple(shape), generator=g, device=g.device), device)


def timesteps(schedule, generators: Sequence[torch.Generator], shape: Sequence[int], device) -> torch.Tensor:
    """Training timesteps [n, *shape] from ``schedule.sample_timesteps``, example i's from ``generators[i]``."""
    return draw(generators, lambda g: schedule.sample_timesteps(tuple(shape), g, g.device), device)
