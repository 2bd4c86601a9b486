"""``euler``: Euler integration of a flow-matching velocity, diffusers' ``FlowMatchEulerDiscreteScheduler``.

x_{t'} = x_t + (t' - t) v(x_t, t), from t = 1 (pure noise) down to 0, on a uniform grid of t
(shift 1). Deterministic. Only for the ``flow`` schedule.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from madkit.interfaces import NoiseSchedule, SpecProblem
from madkit_diffusion.samplers.base import (
    FLOW,
    DiffusersSampler,
    check_against_spec,
    mismatch,
    validate_guidance,
    validate_steps,
)

REQUIRED_KEYS = ("num_train_timesteps", "shift")


def flow_times(scheduler: Any) -> torch.Tensor:
    """The flow schedule's t of each step is the scheduler's sigma (its timestep is sigma * N)."""
    return scheduler.sigmas[: len(scheduler.timesteps)].to(torch.float32)


@attrs.frozen
class EulerSamplerConfig:
    steps: int = attrs.field(default=50, validator=validate_steps)
    guidance: float = attrs.field(default=1.0, validator=validate_guidance)  # CFG scale; 1.0 = off

    def build(self, schedule: NoiseSchedule) -> DiffusersSampler:
        from diffusers import FlowMatchEulerDiscreteScheduler

        if (why := mismatch("euler", FLOW, schedule)) is not None:
            raise ValueError(why)
        config = schedule.diffusers_config()
        if missing := [key for key in REQUIRED_KEYS if key not in config]:
            raise ValueError(f"sampler 'euler': {schedule!r}.diffusers_config() lacks {missing}")
        kwargs = {key: config[key] for key in REQUIRED_KEYS}
        return DiffusersSampler(
            "euler",
            schedule,
            FlowMatchEulerDiscreteScheduler,
            kwargs,
            self.steps,
            self.guidance,
            max_steps=None,
            to_schedule_time=flow_times,
        )

    def check(self, context: dict[str, Any]) -> list[SpecProblem]:
        return list(check_against_spec("euler", FLOW, context))
