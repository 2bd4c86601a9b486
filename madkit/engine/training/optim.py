"""AdamW with the usual weight-decay exemptions, and the learning-rate schedules the spec names.

Weight decay shrinks weights towards zero. That is a useful prior for the matrices of linear and
convolution layers, but it fights the job of everything else: a norm's gain should sit near 1, a
bias or an embedding table or a learned token (MADFormer's BOI block) has no reason to be small.
So only the ``weight`` of linear and convolution layers decays; a model can widen the exemption
with ``no_weight_decay() -> set of parameter names`` (the timm convention).

Schedules are pure functions of the optimizer step, so resuming needs only the step; the state we
store in checkpoints is there to say what was used, not to restore anything. torch's ``LambdaLR``
applies them to the optimizer (``lr_scheduler``): torch has no warmup-stable-decay with madkit's
halving decay, so the factor itself stays here, as a function of the step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import torch
from torch import nn

from madkit.errors import ConfigError
from madkit.experiment_spec import TrainConfig

_DECAYING_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def split_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[str]]:
    """(decayed params, exempt params, names of the decayed ones), trainable parameters only.

    A parameter shared by several modules (tied weights) is listed once, under its first name.
    """
    exempt_names = set(getattr(model, "no_weight_decay", lambda: set())())
    decayed_ids: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, _DECAYING_MODULES) and isinstance(weight, nn.Parameter):
            decayed_ids.add(id(weight))
    decay, exempt, names = [], [], []
    for name, param in model.named_parameters():  # named_parameters already skips duplicates
        if not param.requires_grad:
            continue
        if id(param) in decayed_ids and name not in exempt_names:
            decay.append(param)
            names.append(name)
        else:
            exempt.append(param)
    return decay, exempt, names


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters, two groups: decayed and exempt."""
    decay, exempt, _ = split_decay(model)
    if not decay and not exempt:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; nothing to optimise")
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": exempt, "weight_decay": 0.0, "name": "no_decay"},
    ]
    fused = fused_adamw_available(decay + exempt)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), fused=fused or None)


def fused_adamw_available(params: list[nn.Parameter]) -> bool:
    """Whether torch has a fused AdamW kernel for these parameters' device: one pass over every
    tensor instead of a chain of elementwise ops. CUDA has one since torch 2.0, the CPU since 2.4;
    elsewhere (or on an older torch) the default foreach implementation runs. Both keep the same
    state (exp_avg, exp_avg_sq, step), so a checkpoint's optimizer state loads into either."""
    devices = {p.device.type for p in params}
    if len(devices) != 1 or not all(p.is_floating_point() for p in params):
        return False
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # not in this torch: only CUDA is known to have the kernel
        return devices == {"cuda"}
    if devices == {"cpu"} and tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 4):
        return False
    return devices <= set(_get_fused_kernels_supported_devices())


def check_trained_set(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Refuse a whole checkpoint's optimizer state written for another set of trained parameters."""
    saved = [len(g["params"]) for g in state["param_groups"]]
    trained = [len(g["params"]) for g in optimizer.param_groups]
    if saved != trained:
        raise ValueError(
            f"the checkpoint's optimizer state covers {sum(saved)} trained parameter tensors {saved} but this model "
            f"trains {sum(trained)} {trained}: the set of trained parameters changed since it was written (a newer "
            "madkit freezes parameters no computation reaches); start a new run from its weights with "
            "train.init_from = <that run folder>"
        )


@contextlib.contextmanager
def keeping_implementation(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Load a checkpoint's optimizer state inside this block but keep this optimizer's implementation:
    a state saved by a fused AdamW (on a GPU, or a torch with a CPU kernel) carries ``fused=True`` in
    its groups, which would otherwise ask for a kernel this device or torch may not have."""
    implementation = {k: optimizer.defaults[k] for k in ("fused", "foreach", "capturable") if k in optimizer.defaults}
    yield
    for group in optimizer.param_groups:
        group.update(implementation)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore a whole checkpoint's optimizer state (checked, keeping this optimizer's implementation)."""
    check_trained_set(optimizer, state)
    with keeping_implementation(optimizer):
        optimizer.load_state_dict(state)


@attrs.frozen
class LRSchedule:
    """Learning rate as a function of the optimizer step (0-based index of the step being taken).

    - warmup: linear from ``base_lr / warmup_steps`` to ``base_lr`` over the first ``warmup`` fraction;
    - ``wsd`` (warmup-stable-decay): constant until ``decay_start`` of training, then
      ``base_lr * 0.5 ** (6 r)`` with r going 0 -> 1 over the rest (ends at base_lr / 64);
    - ``cosine``: half a cosine from base_lr to 0 after warmup;
    - ``constant``: base_lr after warmup.
    """

    kind: str
    base_lr: float
    total_steps: int
    warmup_steps: int
    decay_start_step: int

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> LRSchedule:
        warmup = math.ceil(cfg.warmup * cfg.steps)
        decay_start = max(warmup, round(cfg.decay_start * cfg.steps))
        return cls(cfg.lr_schedule, cfg.lr, cfg.steps, warmup, decay_start)

    def factor(self, step: int) -> float:
        """Multiplier of ``base_lr`` at ``step``; in (0, 1] for every step of training."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "wsd":
            if step < self.decay_start_step:
                return 1.0
            span = max(1, self.total_steps - self.decay_start_step)
            r = min(1.0, (step - self.decay_start_step) / span)
            return 0.5 ** (6.0 * r)
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            r = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * (1.0 + math.cos(math.pi * r))
        raise ConfigError(f"unknown train.lr_schedule {self.kind!r}; use wsd, cosine or constant")

    def lr(self, step: int) -> float:
        return self.base_lr * self.factor(step)

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, step: int) -> torch.optim.lr_scheduler.LambdaLR:
        """A ``LambdaLR`` that has set every group's lr for ``step`` (the next step to take); call its
        ``step()`` after each optimizer step.

        ``initial_lr`` comes from the spec, not from a loaded optimizer state (whose groups hold the
        last lr used), and leaves the groups once the scheduler has read it into ``base_lrs``: the
        optimizer state a checkpoint stores keeps the keys it always had, so sharded checkpoints
        written before (or by a run that never built a scheduler) still load key for key."""
        for group in optimizer.param_groups:
            group["initial_lr"] = self.base_lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor, last_epoch=step - 1)
        for group in optimizer.param_groups:
            del group["initial_lr"]
        return scheduler

    def state_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def parameters_of(optimizer: torch.optim.Optimizer) -> Iterable[nn.Parameter]:
    for group in optimizer.param_groups:
        yield from group["params"]
