"""``ddim``: DDIM (Song et al., 2021) with diffusers' ``DDIMScheduler``.

``eta = 0`` is the deterministic DDIM update (a discretisation of the probability-flow ODE);
``eta = 1`` adds noise like ancestral DDPM. The last step goes to alpha-bar = 1 (a clean sample).
Prefer step counts that divide num_train_timesteps: diffusers' DDIM steps from t to t - N // S,
which only lands exactly on the next timestep of the "trailing" grid when S divides N.
``clip_sample = true`` clips each step's x0 estimate to [-1, 1], as diffusers' default DDIM (and the
MADFormer reference's) does; madkit leaves it off because latents are not confined to [-1, 1].
"""

from __future__ import annotations

from typing import Any

import attrs

from madkit.interfaces import NoiseSchedule, SpecProblem
from madkit.validators import within
from madkit_diffusion.samplers.base import (
    DDPM_FAMILY,
    DiffusersSampler,
    check_against_spec,
    validate_guidance,
    validate_spacing,
    validate_steps,
)
from madkit_diffusion.samplers.ddpm_family import discrete_times, scheduler_kwargs

_eta = within(0.0, 1.0, note="0 deterministic DDIM, 1 DDPM-like noise")


@attrs.frozen
class DDIMSamplerConfig:
    steps: int = attrs.field(default=50, validator=validate_steps)
    guidance: float = attrs.field(default=1.0, validator=validate_guidance)  # CFG scale; 1.0 = off
    eta: float = attrs.field(default=0.0, validator=_eta)
    spacing: str = attrs.field(default="trailing", validator=validate_spacing)  # trailing | leading | linspace
    clip_sample: bool = False  # clip the x0 estimate to [-1, 1] at every step (the reference's DDIM)

    def build(self, schedule: NoiseSchedule) -> DiffusersSampler:
        from diffusers import DDIMScheduler

        kwargs = scheduler_kwargs("ddim", schedule, self.spacing)
        kwargs["set_alpha_to_one"] = True  # the final step lands on the clean sample
        kwargs["clip_sample"] = self.clip_sample  # off by default: clipping latents' x0_hat biases samples
        return DiffusersSampler(
            "ddim",
            schedule,
            DDIMScheduler,
            kwargs,
            self.steps,
            self.guidance,
            max_steps=kwargs["num_train_timesteps"],
            to_schedule_time=discrete_times,
            step_kwargs={"eta": self.eta},
        )

    def check(self, context: dict[str, Any]) -> list[SpecProblem]:
        return list(check_against_spec("ddim", DDPM_FAMILY, context))
