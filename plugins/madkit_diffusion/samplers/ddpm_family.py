"""Constructor arguments shared by the DDPM-family samplers (ddpm, ddim, dpm-solver++)."""

from __future__ import annotations

from typing import Any

import torch

from madkit.interfaces import NoiseSchedule
from madkit_diffusion.samplers.base import DDPM_FAMILY, mismatch

# what a DDPM-family scheduler must take from the schedule, never from its own defaults
REQUIRED_KEYS = ("num_train_timesteps", "trained_betas", "prediction_type")


def scheduler_kwargs(kind: str, schedule: NoiseSchedule, spacing: str) -> dict[str, Any]:
    """The schedule's betas and prediction type plus the options every DDPM-family sampler wants.

    Raises ValueError when the schedule is not a DDPM-family one or does not expose its betas.
    """
    if (why := mismatch(kind, DDPM_FAMILY, schedule)) is not None:
        raise ValueError(why)
    config = schedule.diffusers_config()
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(
            f"sampler {kind!r}: {schedule!r}.diffusers_config() lacks {missing}; a DDPM-family schedule must "
            f"give the exact betas it trains with (trained_betas) so sampling uses the same noise levels"
        )
    return {
        **{key: config[key] for key in REQUIRED_KEYS},
        # "trailing" starts at t = N-1, the noise level closest to the N(0, I) the loop starts from;
        # "leading" would start at N - N/S and skip the noisiest levels, which hurts most at the
        # few-step budgets MADFormer's compute study is about (Lin et al., 2024, "Common diffusion
        # noise schedules and sample steps are flawed").
        "timestep_spacing": spacing,
        "steps_offset": 0,
        "thresholding": False,
    }


def discrete_times(scheduler: Any) -> torch.Tensor:
    """DDPM-family schedules use the scheduler's own integer timesteps as their t."""
    return scheduler.timesteps.to(torch.int64)
