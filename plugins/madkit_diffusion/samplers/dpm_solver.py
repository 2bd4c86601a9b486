"""``dpm-solver++``: multistep DPM-Solver++ (Lu et al., 2022), diffusers' ``DPMSolverMultistepScheduler``.

The MADFormer reference samples with DPM-Solver++ (2M): second order, data (x0) prediction,
250 steps. It reuses the previous step's model output, so a run is stateful: one run per block.
Deterministic. The last step is first order and lands on sigma = 0 (final_sigmas_type "zero").
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
class DPMSolverSamplerConfig:
    steps: int = attrs.field(default=250, validator=validate_steps)
    guidance: float = attrs.field(default=1.0, validator=validate_guidance)  # CFG scale; 1.0 = off
    order: int = attrs.field(default=2, validator=attrs.validators.in_((1, 2, 3)))  # 2 = the reference's 2M
    spacing: str = attrs.field(default="trailing", validator=validate_spacing)  # trailing | leading | linspace

    def build(self, schedule: NoiseSchedule) -> DiffusersSampler:
        from diffusers import DPMSolverMultistepScheduler

        kwargs = scheduler_kwargs("dpm-solver++", schedule, self.spacing)
        kwargs.update(
            algorithm_type="dpmsolver++",
            solver_order=self.order,
            solver_type="midpoint",
            lower_order_final=True,  # first-order final steps: stabler below ~15 steps
            final_sigmas_type="zero",
        )
        return DiffusersSampler(
            "dpm-solver++",
            schedule,
            DPMSolverMultistepScheduler,
            kwargs,
            self.steps,
            self.guidance,
            max_steps=kwargs["num_train_timesteps"],
            to_schedule_time=discrete_times,
        )

    def check(self, context: dict[str, Any]) -> list[SpecProblem]:
        return list(check_against_spec("dpm-solver++", DDPM_FAMILY, context))
