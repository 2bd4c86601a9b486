"""``ddpm``: ancestral sampling (Ho et al., 2020) with diffusers' ``DDPMScheduler``.

Each step draws x_{t'} from the Gaussian posterior q(x_{t'} | x_t, x0_hat) with the "fixed_small"
variance (beta-tilde). With fewer steps than training timesteps the posterior spans the skipped
levels. Stochastic: uses the per-image generators. Needs many steps (hundreds) to be accurate.
"""

from __future__ import annotations

from typing import Any

import attrs

from madkit.interfaces import NoiseSchedule, SpecProblem
from madkit_diffusion.samplers.base import (
    DDPM_FAMILY,
    DiffusersSampler,
    check_against_spec,
    validate_guidance,
    validate_spacing,
    validate_steps,
)
from madkit_diffusion.samplers.ddpm_family import discrete_times, scheduler_kwargs


@attrs.frozen
class DDPMSamplerConfig:
    steps: int = attrs.field(default=1000, validator=validate_steps)
    guidance: float = attrs.field(default=1.0, validator=validate_guidance)  # CFG scale; 1.0 = off
    spacing: str = attrs.field(default="trailing", validator=validate_spacing)  # trailing | leading | linspace

    def build(self, schedule: NoiseSchedule) -> DiffusersSampler:
        from diffusers import DDPMScheduler

        kwargs = scheduler_kwargs("ddpm", schedule, self.spacing)
        kwargs["variance_type"] = "fixed_small"
        kwargs["clip_sample"] = False  # latents are not confined to [-1, 1]: clipping x0_hat would bias samples
        return DiffusersSampler(
            "ddpm",
            schedule,
            DDPMScheduler,
            kwargs,
            self.steps,
            self.guidance,
            max_steps=kwargs["num_train_timesteps"],
            to_schedule_time=discrete_times,
        )

    def check(self, context: dict[str, Any]) -> list[SpecProblem]:
        return list(check_against_spec("ddpm", DDPM_FAMILY, context))
