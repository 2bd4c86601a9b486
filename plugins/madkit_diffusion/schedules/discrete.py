"""Discrete variance-preserving (DDPM-family) schedules: the shared math of ``ddpm-linear`` and ``cosine``.

The forward process is x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise for integer t in [0, N-1],
where abar_t = prod_{s<=t} (1 - beta_s). A concrete schedule only supplies the betas. What the
model regresses is chosen by ``prediction``:

    epsilon  noise
    v        sqrt(abar_t) noise - sqrt(1 - abar_t) x0   (Salimans & Ho, 2022)
    x0       x0

Timesteps are int64 step indices (what diffusers schedulers index their tables with); the model's
timestep embedding receives them as floats (``model_time``), i.e. the raw integer as in the reference.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from madkit.interfaces import NoiseSchedule
from madkit.validators import at_least, one_of
from madkit_diffusion.schedules.broadcast import check_pair, expand_left

# madkit name -> diffusers ``prediction_type``
DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}


def validate_prediction(_inst: Any, attribute: attrs.Attribute, value: str) -> None:
    """attrs validator for the ``prediction`` key of DDPM-family schedule configs."""
    if value == "velocity":
        raise ValueError(
            "'velocity' is the flow-matching target; DDPM-family schedules predict 'epsilon', 'v' or 'x0' "
            '(or use schedule kind = "flow")'
        )
    _known_prediction(_inst, attribute, value)


_known_prediction = one_of(*DIFFUSERS_PREDICTION)
validate_num_train_timesteps = at_least(2)


class DiscreteSchedule(NoiseSchedule):
    """A DDPM-family schedule defined by its betas [N] (float64, each in (0, 1))."""

    def __init__(self, betas: torch.Tensor, prediction: str, name: str):
        if prediction not in DIFFUSERS_PREDICTION:
            raise ValueError(f"{name}: prediction must be one of {sorted(DIFFUSERS_PREDICTION)}, got {prediction!r}")
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"{name}: betas must be a 1-d tensor with every value in (0, 1)")
        self.name = name
        self.prediction = prediction
        # The sampler's diffusers scheduler receives these exact betas and turns them into float32
        # alphas_cumprod by the same cumprod; mirroring that here makes training and sampling see
        # bit-identical noise levels (a test checks it).
        self.betas = betas.to(torch.float32)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.num_train_timesteps = int(betas.numel())
        # sqrt in float64, then float32: the coefficients x0 and noise are multiplied by
        self._signal = self.alphas_cumprod.double().sqrt().float()
        self._noise = (1.0 - self.alphas_cumprod.double()).sqrt().float()
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ NoiseSchedule
    def sample_timesteps(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Uniform integer timesteps in [0, N-1], independent per element: int64 tensor of ``shape``."""
        # draw where the generator lives (a CPU generator cannot fill a CUDA tensor), then move
        where = generator.device if generator is not None else device
        return torch.randint(0, self.num_train_timesteps, tuple(shape), generator=generator, device=where).to(device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; t [leading dims of x0], int64."""
        check_pair(x0, noise)
        signal, sigma = self.coefficients(t, x0)
        return signal * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_pair(x0, noise)
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        signal, sigma = self.coefficients(t, x0)
        return signal * noise - sigma * x0  # v

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float()

    def diffusers_config(self) -> dict[str, Any]:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "trained_betas": self.betas.tolist(),
            "prediction_type": DIFFUSERS_PREDICTION[self.prediction],
        }

    # ------------------------------------------------------------------ helpers
    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) in ``like``'s dtype, shaped to broadcast over ``like``."""
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(
                f"{self.name} timesteps are int64 step indices in [0, {self.num_train_timesteps - 1}], got a "
                f"{t.dtype} tensor; pass what sample_timesteps() or SamplerRun.timesteps return "
                f"(model_time(t) is the float the timestep embedding takes)"
            )
        signal, sigma = self._on(t.device)
        dtype = like.dtype if like.dtype.is_floating_point else torch.float32
        return (
            expand_left(signal[t].to(dtype), like),
            expand_left(sigma[t].to(dtype), like),
        )

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # one copy of the two tables per device, not a host-to-device copy every training step
        if device not in self._tables:
            self._tables[device] = (self._signal.to(device), self._noise.to(device))
        return self._tables[device]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, N={self.num_train_timesteps}, prediction={self.prediction})"
