"""``ddpm-linear``: DDPM (Ho et al., 2020) with betas linear in [beta_start, beta_end].

The MADFormer reference trains with N = 1000 and betas 1e-4 .. 0.02, epsilon prediction; those are
the defaults. At t = N-1 the signal left is sqrt(abar) ~ 6e-3, so sampling from pure noise is a
close (not exact) match of the last training noise level.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from madkit.validators import within
from madkit_diffusion.schedules.discrete import (
    DiscreteSchedule,
    validate_num_train_timesteps,
    validate_prediction,
)

_beta = within(0, 1, open_low=True, open_high=True)


def _beta_end(inst: Any, attribute: attrs.Attribute, value: float) -> None:
    _beta(inst, attribute, value)
    if value < inst.beta_start:
        raise ValueError(f"must be >= beta_start ({inst.beta_start}), got {value}")


@attrs.frozen
class DDPMLinearConfig:
    num_train_timesteps: int = attrs.field(default=1000, validator=validate_num_train_timesteps)
    beta_start: float = attrs.field(default=1e-4, validator=_beta)
    beta_end: float = attrs.field(default=0.02, validator=_beta_end)
    prediction: str = attrs.field(default="epsilon", validator=validate_prediction)  # epsilon | v | x0

    def build(self) -> DiscreteSchedule:
        betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)
        return DiscreteSchedule(betas, self.prediction, name="ddpm-linear")
