"""What every built-in sampler shares: a diffusers scheduler per denoising loop, and its checks.

A ``DiffusersSampler`` holds a scheduler *class* and its constructor arguments (the schedule's
``diffusers_config()`` plus the sampler's own options). ``start()`` builds a fresh scheduler for
every loop, because schedulers are stateful (DPM-Solver keeps the previous model outputs) and
block-wise generation runs one independent loop per block.

Timestep conventions. ``SamplerRun.timesteps`` are in the *schedule's* convention (int64 steps for
DDPM-family schedules, t in [0, 1] for flow), so ``schedule.add_noise(x0, noise, t)`` describes the
noise level the model sees at that step and ``run.model_time(t) == schedule.model_time(t)``. The
diffusers timestep each one corresponds to is kept privately (on the CPU, where the scheduler's
tables live) and handed to ``scheduler.step``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from madkit.interfaces import NoiseSchedule, Sampler, SpecProblem
from madkit.validators import at_least, one_of

DDPM_FAMILY = frozenset({"epsilon", "v", "x0"})
FLOW = frozenset({"velocity"})
SPACINGS = ("trailing", "leading", "linspace")


# --------------------------------------------------------------------------- config validators
validate_steps = at_least(1)
validate_guidance = at_least(0, note="1.0 turns classifier-free guidance off")
validate_spacing = one_of(*SPACINGS)


# --------------------------------------------------------------------------- compatibility
def mismatch(kind: str, accepts: frozenset[str], schedule: NoiseSchedule) -> str | None:
    """Why sampler ``kind`` cannot sample a model trained with ``schedule``, or None if it can.

    The prediction decides the family: 'velocity' only comes from the rectified-flow path, and
    epsilon / v / x0 only from the variance-preserving DDPM path that DDPM-family schedulers assume.
    """
    prediction = getattr(schedule, "prediction", None)
    if prediction in accepts:
        return None
    if accepts == FLOW:
        return (
            f"sampler {kind!r} integrates a flow-matching velocity, but the schedule predicts {prediction!r} "
            f"(a DDPM-family schedule); use sampler kind 'ddpm', 'ddim' or 'dpm-solver++', or schedule kind 'flow'"
        )
    if prediction in FLOW:
        return (
            f"sampler {kind!r} needs a DDPM-family schedule (prediction epsilon, v or x0), but the schedule "
            f"predicts 'velocity' (flow matching); use sampler kind 'euler' with schedule kind 'flow'"
        )
    return f"sampler {kind!r} supports predictions {sorted(accepts)}, but the schedule predicts {prediction!r}"


def check_against_spec(kind: str, accepts: frozenset[str], context: dict[str, Any]) -> Iterable[SpecProblem]:
    """``check(context)`` body shared by sampler configs: is the spec's schedule one we can sample?"""
    spec = context.get("spec")
    guidance = getattr(getattr(spec, "sampler", None), "guidance", 1.0)
    num_classes = context.get("num_classes") or 0
    # a model config says whether it uses labels (is_class_conditional); without it, labelled data is taken as yes
    conditional = getattr(getattr(spec, "model", None), "is_class_conditional", lambda n: n > 0)
    if guidance != 1.0 and not num_classes:
        yield SpecProblem(
            "guidance",
            f"guidance = {guidance:g} needs a class-conditional model, but the data has no labels; "
            "set it to 1.0 (off)",
        )
    elif guidance != 1.0 and not conditional(num_classes):
        yield SpecProblem(
            "guidance",
            f"guidance = {guidance:g} needs a class-conditional model, but the [model] config does not use the "
            "labels (for madformer: model.conditioning = \"class\"); set guidance to 1.0 (off)",
        )
    schedule_config = getattr(spec, "schedule", None)
    if schedule_config is None:
        return  # no schedule, or a broken one whose own problems are already reported
    try:
        schedule = schedule_config.build()
    except (ValueError, TypeError):
        return  # the schedule's own validation reports this
    if (why := mismatch(kind, accepts, schedule)) is not None:
        yield SpecProblem("kind", why)


# --------------------------------------------------------------------------- sampler
class DiffusersSampler(Sampler):
    """A ``Sampler`` backed by one diffusers scheduler class.

    ``to_schedule_time(scheduler)`` maps a scheduler after ``set_timesteps`` to the per-step times in
    the schedule's convention (one per ``scheduler.timesteps`` entry).
    """

    def __init__(
        self,
        kind: str,
        schedule: NoiseSchedule,
        scheduler_cls: type,
        scheduler_kwargs: dict[str, Any],
        steps: int,
        guidance: float,
        max_steps: int | None,
        to_schedule_time: Callable[[Any], torch.Tensor],
        step_kwargs: dict[str, Any] | None = None,
    ):
        self.kind = kind
        self.schedule = schedule
        self.steps = int(steps)
        self.guidance = float(guidance)
        self.max_steps = max_steps
        self._scheduler_cls = scheduler_cls
        self._scheduler_kwargs = dict(scheduler_kwargs)
        self._to_schedule_time = to_schedule_time
        self._step_kwargs = dict(step_kwargs or {})
        # build one now so a bad configuration fails at build time, not mid-generation
        self._init_noise_sigma = _init_noise_sigma(self._new_scheduler())
        self._check_steps(self.steps)

    @property
    def init_noise_sigma(self) -> float:
        return self._init_noise_sigma

    def start(self, steps: int | None = None, device: torch.device | str = "cpu") -> DiffusersRun:
        steps = self.steps if steps is None else steps
        self._check_steps(steps)
        scheduler = self._new_scheduler()
        with warnings.catch_warnings():
            # DPMSolverMultistepScheduler.set_timesteps trips a numpy 2 DeprecationWarning (harmless)
            warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy keyword.*")
            scheduler.set_timesteps(steps)  # on the CPU, where diffusers keeps alphas_cumprod / sigmas
        times = self._to_schedule_time(scheduler)
        return DiffusersRun(self.kind, scheduler, times, self.schedule, torch.device(device), self._step_kwargs)

    def _new_scheduler(self) -> Any:
        return self._scheduler_cls(**self._scheduler_kwargs)

    def _check_steps(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"sampler {self.kind!r}: steps must be a positive int, got {steps!r}")
        if self.max_steps is not None and steps > self.max_steps:
            raise ValueError(
                f"sampler {self.kind!r}: {steps} steps exceed the schedule's {self.max_steps} training "
                f"timesteps; use at most {self.max_steps}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind}, steps={self.steps}, guidance={self.guidance}, {self.schedule!r})"


def _init_noise_sigma(scheduler: Any) -> float:
    # flow-matching schedulers have no attribute: their loop starts from unit Gaussian noise too
    return float(getattr(scheduler, "init_noise_sigma", 1.0))


class DiffusersRun:
    """One denoising loop: a fresh diffusers scheduler, stepped strictly in order.

    ``timesteps`` is a list of 0-d tensors on the device ``start`` was given. Pass those same tensor
    objects back to ``step``: an identical object is accepted without a device sync; any other tensor
    is compared by value (one sync on a GPU).
    """

    def __init__(
        self,
        kind: str,
        scheduler: Any,
        times: torch.Tensor,
        schedule: NoiseSchedule,
        device: torch.device,
        step_kwargs: dict[str, Any],
    ):
        native = scheduler.timesteps
        if len(times) != len(native):
            raise RuntimeError(f"{kind}: {len(times)} schedule times for {len(native)} scheduler timesteps")
        self.kind = kind
        self.scheduler = scheduler  # exposed for inspection (tests compare its tables with the schedule's)
        self._schedule = schedule
        self._native = [t.cpu() for t in native]
        self._cpu_times = [t.cpu() for t in times]
        self.timesteps: list[torch.Tensor] = [t.to(device) for t in times]
        self._step_kwargs = step_kwargs
        self._index = 0

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def init_noise_sigma(self) -> float:
        return _init_noise_sigma(self.scheduler)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The float the model's timestep embedding receives: the schedule's own convention."""
        return self._schedule.model_time(t)

    def scale_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = getattr(self.scheduler, "scale_model_input", None)
        return x if scale is None else scale(x, self._native[self._position(t)])

    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        x: torch.Tensor,
        generators: list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """x at the next (less noisy) timestep; same shape and dtype as ``x``.

        ``model_output`` [n, ...] is cast to ``x``'s dtype first (a bf16 model output must not
        drag the sampling state down to bf16). ``generators``: one per batch element (dim 0) for
        the stochastic samplers' noise, so each image's randomness is independent of the batch it
        is in; None uses the global RNG.
        """
        i = self._position(t)
        if i != self._index:
            raise ValueError(
                f"{self.kind}: steps must run in order; expected timestep {self._cpu_times[self._index].item()} "
                f"(step {self._index}), got {self._cpu_times[i].item()} (step {i})"
            )
        if model_output.shape != x.shape:
            raise ValueError(f"{self.kind}: model output {tuple(model_output.shape)} does not match x {tuple(x.shape)}")
        if generators is not None and len(generators) != x.shape[0]:
            raise ValueError(
                f"{self.kind}: got {len(generators)} generators for a batch of {x.shape[0]}; pass one per batch element"
            )
        out = self.scheduler.step(
            model_output.to(x.dtype), self._native[i], x, generator=generators, return_dict=False, **self._step_kwargs
        )[0]
        self._index += 1
        return out.to(x.dtype)

    def _position(self, t: torch.Tensor) -> int:
        if self._index >= len(self.timesteps):
            raise RuntimeError(
                f"{self.kind}: this run has finished its {len(self.timesteps)} steps; "
                "call sampler.start() for a new denoising loop"
            )
        if t is self.timesteps[self._index]:
            return self._index
        value = torch.as_tensor(t).detach().cpu().reshape(())
        for i, candidate in enumerate(self._cpu_times):
            if bool(value == candidate):
                return i
        raise ValueError(
            f"{self.kind}: {value.item()} is not one of this run's timesteps; pass the entries of run.timesteps"
        )
