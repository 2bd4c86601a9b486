"""Diffusion: the training-side noise schedule and the inference-side sampler."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import torch


class NoiseSchedule(ABC):
    """Training side of diffusion. Built with no runtime arguments.

    Timesteps ``t`` are in the schedule's own convention (int64 step indices in [0, N-1] for
    DDPM-family schedules, float t in [0, 1] for flow matching). The model never sees them raw: its
    timestep embedding gets ``model_time(t)`` (float32; N-step scale for both, e.g. flow t * 1000),
    so one model input works for discrete DDPM steps and continuous flow time alike.
    Data may have any trailing dims: x0 [n, c, h, w] with t [n], or x0 [n, t, b, c] with t [n, t].
    """

    prediction: str  # "epsilon" | "v" | "x0" | "velocity"

    @abstractmethod
    def sample_timesteps(self, shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
        """Training timesteps of the given shape (e.g. [n, t]: one per block), independent per element.

        Drawn with ``generator`` (on its device) and returned on ``device``."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for clean x0 and noise (same shape); t broadcasts from the LEFT over x0's trailing dims."""

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target of the model output (epsilon, v, x0 or velocity)."""

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The scalar fed to the model's timestep embedding (float)."""
        return t.float()

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weights, or None for uniform."""
        return None

    def path_coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(a, b, c, d) at ``t`` with x_t = a x0 + b noise and target = c x0 + d noise, shaped and typed
        like ``like``: read off ``add_noise`` and ``target`` with unit inputs, so they hold for any
        schedule whose path is affine and whose target is linear."""
        one, zero = torch.ones_like(like), torch.zeros_like(like)
        return self.add_noise(one, zero, t), self.add_noise(zero, one, t), self.target(one, zero, t), self.target(zero, one, t)

    def denoised(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean-sample estimate x0 implied by a model output at x_t (what a trace shows per step):
        the 2x2 system of ``path_coefficients`` solved; a schedule that is not linear overrides this."""
        t = torch.as_tensor(t, device=x_t.device).reshape(1)
        a, b, c, d = self.path_coefficients(t, torch.ones(1, device=x_t.device))
        return ((d * x_t.float() - b * model_output.float()) / (a * d - b * c)).to(x_t.dtype)

    @abstractmethod
    def diffusers_config(self) -> dict[str, Any]:
        """Scheduler config keys samplers must share with training: always ``num_train_timesteps`` and
        ``prediction_type``; a DDPM-family schedule (epsilon, v, x0) also its exact ``trained_betas``,
        a flow schedule (velocity) its ``shift`` (``ScheduleContract`` checks both)."""


class SamplerRun(Protocol):
    """One denoising loop for one batch (diffusers schedulers keep per-loop state)::

        run = sampler.start(steps, device)
        x = noise * sampler.init_noise_sigma
        for t in run.timesteps:
            out = model(run.scale_input(x, t), run.model_time(t))
            x = run.step(out, t, x, generators)
    """

    # 0-d tensors in the schedule's timestep convention, noisiest first; step through them in order
    timesteps: list[torch.Tensor]

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the model's timestep embedding gets; equals the schedule's ``model_time(t)``."""
        ...

    def scale_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model input for state x at t (identity for DDPM-family and flow samplers)."""
        ...

    def step(
        self, model_output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, generators: list[torch.Generator] | None
    ) -> torch.Tensor:
        """x at the next timestep, same shape and dtype as x; ``generators`` has one entry per batch
        element (dim 0) so each image's noise is independent of the batch it is in."""
        ...


class Sampler(ABC):
    """Inference side of diffusion. Built with ``schedule=NoiseSchedule``.

    ``steps`` and ``guidance`` come from the spec and may be overridden per call.
    """

    steps: int
    guidance: float

    @abstractmethod
    def start(self, steps: int | None = None, device: torch.device | str = "cpu") -> SamplerRun:
        """A fresh denoising loop (new diffusers scheduler state)."""

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def denoised(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        """The clean-sample estimate at step ``t`` (a generation trace's per-step frames): the
        ``schedule``'s, for a sampler that keeps the schedule it was built with; None when it cannot tell."""
        schedule = getattr(self, "schedule", None)
        return None if schedule is None else schedule.denoised(model_output, x_t, t)

    def apply_guidance(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """Classifier-free guidance: uncond + scale * (cond - uncond); ``scale`` defaults to ``guidance``.

        The model runs both passes (and should skip the unconditional one when the scale is 1.0).
        """
        scale = self.guidance if scale is None else scale
        return uncond + scale * (cond - uncond)
