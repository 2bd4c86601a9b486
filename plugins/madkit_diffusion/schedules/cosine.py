"""``cosine``: the improved-DDPM cosine schedule (Nichol & Dhariwal, 2021).

abar(s) = f(s) / f(0) with f(s) = cos((s + offset) / (1 + offset) * pi / 2)^2 for s = t / N, and
beta_t = 1 - abar((t+1)/N) / abar(t/N), clipped at ``max_beta`` so the last steps stay invertible.
The signal-to-noise ratio falls more evenly than with linear betas, so fewer steps are wasted on
almost-clean or almost-pure-noise levels; the same schedule diffusers calls ``squaredcos_cap_v2``.
"""

from __future__ import annotations

import math

import attrs
import torch

from madkit.validators import within
from madkit_diffusion.schedules.discrete import (
    DiscreteSchedule,
    validate_num_train_timesteps,
    validate_prediction,
)

_offset = within(0, 1, open_high=True)
_max_beta = within(0, 1, open_low=True, open_high=True)


def cosine_alpha_bar(s: torch.Tensor, offset: float) -> torch.Tensor:
    """The unnormalised f(s) = cos((s + offset) / (1 + offset) * pi/2)^2 for s in [0, 1] (float64)."""
    return torch.cos((s + offset) / (1.0 + offset) * (math.pi / 2)) ** 2


@attrs.frozen
class CosineConfig:
    num_train_timesteps: int = attrs.field(default=1000, validator=validate_num_train_timesteps)
    offset: float = attrs.field(default=0.008, validator=_offset)  # the paper's s: keeps beta_0 from vanishing
    max_beta: float = attrs.field(default=0.999, validator=_max_beta)
    prediction: str = attrs.field(default="epsilon", validator=validate_prediction)  # epsilon | v | x0

    def build(self) -> DiscreteSchedule:
        n = self.num_train_timesteps
        f = cosine_alpha_bar(torch.arange(n + 1, dtype=torch.float64) / n, self.offset)
        betas = (1.0 - f[1:] / f[:-1]).clamp(max=self.max_beta)
        return DiscreteSchedule(betas, self.prediction, name="cosine")
