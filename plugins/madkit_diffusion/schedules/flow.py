"""``flow``: rectified flow / flow matching (Liu et al., 2022; Lipman et al., 2022).

    x_t = (1 - t) x0 + t noise,   t in [0, 1]  (t = 0 clean, t = 1 pure noise)
    target (velocity) = d x_t / dt = noise - x0

Samplers integrate dx/dt = v from t = 1 down to 0. The model's timestep embedding receives
``t * 1000`` so a model built for 1000-step DDPM timesteps sees numbers on the same scale (this is
also the timestep diffusers' FlowMatchEulerDiscreteScheduler hands out: sigma * 1000).

Training timesteps: ``logit-normal`` (t = sigmoid(m + s z), z ~ N(0, 1); Esser et al., 2024 found
it beats uniform because mid-range t, where the velocity is hardest to predict, get more weight)
or ``uniform``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from madkit.interfaces import NoiseSchedule
from madkit.validators import positive
from madkit_diffusion.schedules.broadcast import check_pair, expand_left

TIME_SCALE = 1000.0  # model_time = t * TIME_SCALE; also the diffusers scheduler's num_train_timesteps
TIMESTEP_SAMPLING = ("logit-normal", "uniform")


def _velocity_only(_inst: Any, attribute: attrs.Attribute, value: str) -> None:
    if value != "velocity":
        raise ValueError(
            f"the flow schedule predicts 'velocity' (noise - x0), got {value!r}; 'epsilon', 'v' and 'x0' "
            'belong to the DDPM-family schedules (kind = "ddpm-linear" or "cosine")'
        )


@attrs.frozen
class FlowConfig:
    prediction: str = attrs.field(default="velocity", validator=_velocity_only)
    timestep_sampling: str = attrs.field(default="logit-normal", validator=attrs.validators.in_(TIMESTEP_SAMPLING))
    logit_mean: float = 0.0  # logit-normal only: m; > 0 puts more training on noisier t
    logit_std: float = attrs.field(default=1.0, validator=positive)  # logit-normal only: s

    def build(self) -> FlowSchedule:
        return FlowSchedule(self.timestep_sampling, self.logit_mean, self.logit_std)


class FlowSchedule(NoiseSchedule):
    prediction = "velocity"

    def __init__(self, timestep_sampling: str = "logit-normal", logit_mean: float = 0.0, logit_std: float = 1.0):
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLING}, got {timestep_sampling!r}")
        self.timestep_sampling = timestep_sampling
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)

    def sample_timesteps(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """float32 t in [0, 1] of ``shape``, independent per element."""
        where = generator.device if generator is not None else device
        if self.timestep_sampling == "uniform":
            t = torch.rand(tuple(shape), generator=generator, device=where)
        else:
            z = torch.randn(tuple(shape), generator=generator, device=where)
            t = torch.sigmoid(self.logit_mean + self.logit_std * z)
        return t.to(device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_pair(x0, noise)
        t = self._time(t, x0)
        return (1.0 - t) * x0 + t * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_pair(x0, noise)
        self._time(t, x0)  # validates the shape even though the velocity does not depend on t
        return noise - x0

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() * TIME_SCALE

    def diffusers_config(self) -> dict[str, Any]:
        # shift 1.0: the sampler's time grid is uniform in t, the same t the model was trained on
        return {"num_train_timesteps": int(TIME_SCALE), "shift": 1.0, "prediction_type": "flow_prediction"}

    def _time(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if not t.dtype.is_floating_point:
            raise TypeError(f"flow timesteps are floats in [0, 1], got a {t.dtype} tensor")
        dtype = like.dtype if like.dtype.is_floating_point else torch.float32
        return expand_left(t.to(dtype), like)

    def __repr__(self) -> str:
        extra = f", m={self.logit_mean}, s={self.logit_std}" if self.timestep_sampling == "logit-normal" else ""
        return f"FlowSchedule({self.timestep_sampling}{extra})"
