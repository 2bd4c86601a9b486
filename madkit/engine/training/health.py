"""Training health: stop (or warn) before a diverging run overwrites its good checkpoints.

A NaN is the loud end of a divergence; a learning rate that is too high usually first drives the
loss and the weights up through finite but absurd values (weights of 1e8, 1e30), and checkpoints
of that state look as complete as healthy ones. So, after every optimizer step, the guard
(``train.health``) compares:

- the median loss of the last ``window`` steps with the lowest such median of the run so far
  (``loss_factor``: a rise by that factor is divergence; losses only fall in healthy training);
- the same for the gradient norm (``grad_factor``; off by default: gradient norms drift upwards in
  healthy runs too);
- and, at every log step and before every checkpoint, the largest |weight| (``max_weight``; a
  non-finite weight always fails).

With ``action = "stop"`` (default) the run stops with a message naming the newest healthy
checkpoint; the failing state is never written. With ``"warn"`` it goes on, and its checkpoints
record that they failed. The median makes the stop robust to one noisy step, so a checkpoint is
judged more strictly: it *passes* only if no single step of the window went beyond the factor
either (a divergence shows in single steps before it moves the median). Every checkpoint records
its figures (loss, grad norm, max |weight|, passed, problems) in the metadata of its
``model.safetensors``; pruning (``train.keep_ckpts``) never removes the newest checkpoint that
passed, and the NaN and divergence stops name that one.

The guard's history is saved in the checkpoint state, so a resumed run decides exactly as an
uninterrupted one would. ``madkit run --from STEP`` (restarting from an older checkpoint, usually
with other settings) keeps the lowest medians but starts a fresh window: the losses that led up to
a divergence must not stop the new attempt before it has taken a step.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from pathlib import Path
from typing import Any

import torch

from madkit.engine import distributed
from madkit.engine.checkpoints import MODEL_FILE, is_sharded, list_checkpoints, stored_state_value
from madkit.engine.checkpoints.verify import CheckpointError, header_metadata
from madkit.logs import get_logger

logger = get_logger(__name__)

HEALTH_KEY = "madkit_health"  # the safetensors metadata key


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the step was not applied."""


class DivergenceError(RuntimeError):
    """The loss, gradient norm or weights left the healthy range (``train.health``); nothing was saved."""


# --------------------------------------------------------------------------- reading records
def recorded_health(ckpt: str | Path) -> dict[str, Any] | None:
    """The health figures a checkpoint recorded, or None (written before madkit recorded them).
    A whole checkpoint keeps them in its ``model.safetensors`` header, a sharded one in ``state.pt``."""
    try:
        if is_sharded(Path(ckpt)):
            return stored_state_value(ckpt, "health")
        raw = header_metadata(Path(ckpt) / MODEL_FILE).get(HEALTH_KEY)
        return json.loads(raw) if raw else None
    except (CheckpointError, ValueError):
        return None


def newest_healthy(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that passed the health check (one without a record counts as healthy:
    it was written before madkit kept records, under the NaN guard alone)."""
    for _, folder in reversed(list_checkpoints(run_dir)):
        record = recorded_health(folder)
        if record is None or record.get("passed"):
            return folder
    return None


def max_abs_weight(params: list[torch.Tensor], env: distributed.DistEnv | None = None) -> float:
    """The largest |value| over ``params`` (NaN if any is NaN). Sharded parameters (DTensors) are
    measured on this rank's slices and the maximum taken over ``env``'s ranks (a collective)."""
    from torch.distributed.tensor import DTensor

    sharded = any(isinstance(p, DTensor) for p in params)
    local = [p.to_local() if isinstance(p, DTensor) else p for p in params]
    peaks = [t.detach().abs().amax().float() for t in local if t.numel()]
    peak = torch.stack(peaks).amax() if peaks else torch.zeros(())
    if sharded and env is not None and env.distributed:
        # NaN would be lost in a MAX reduction: reduce "is NaN" alongside the value
        both = torch.stack([torch.nan_to_num(peak, nan=0.0), peak.isnan().float()]).to(env.device)
        torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
        peak = torch.tensor(math.nan) if both[1].item() else both[0]
    return float(peak)


# --------------------------------------------------------------------------- the guard
class HealthGuard:
    """One per trainer. ``after_step`` once per optimizer step (one host sync), ``check_weights`` at
    log steps, ``before_save`` before every checkpoint; each raises when the run must stop. Every rank
    decides alike: the step figures are all-reduced, and the weights are the same on every rank."""

    def __init__(self, cfg, env: distributed.DistEnv, run_dir: Path, skip_inf_grads: bool):
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self.skip_inf_grads = skip_inf_grads  # fp16: the grad scaler skips such steps by design
        self.losses: deque[float] = deque(maxlen=cfg.window)
        self.grads: deque[float] = deque(maxlen=cfg.window)
        self.best: dict[str, tuple[float, int]] = {}  # "loss"/"grad_norm" -> (lowest median, its step)
        self.trend_problems: list[str] = []  # found by the last step check
        self.weight_problems: list[str] = []  # found by the last weight check
        self._weight_at: tuple[int, float] | None = None  # (step, largest |weight|) of the last weight check
        self._warned = False

    @property
    def problems(self) -> list[str]:
        return self.trend_problems + self.weight_problems

    # ---------------------------------------------------------------- state (checkpoints)
    def state_dict(self) -> dict[str, Any]:
        best = {k: list(v) for k, v in self.best.items()}
        return {"losses": list(self.losses), "grads": list(self.grads), "best": best}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:  # a checkpoint from before the guard: start its history afresh
            return
        self.losses.extend(float(v) for v in state["losses"])
        self.grads.extend(float(v) for v in state["grads"])
        self.best = {k: (float(v[0]), int(v[1])) for k, v in state["best"].items()}

    def forget_recent(self) -> None:
        """Start a fresh window (``--from``): keep the lowest medians, drop the recent steps."""
        self.losses.clear()
        self.grads.clear()
        self.trend_problems, self.weight_problems = [], []

    # ---------------------------------------------------------------- checks
    def after_step(self, step: int, terms: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> None:
        """Check optimizer step ``step`` (1-based, not yet applied): NaN/inf, then the trends."""
        local = torch.stack([terms["loss"].detach().float().reshape(()), grad_norm.detach().float().reshape(())])
        loss, grad = distributed.all_reduce_mean(self.env, local).tolist()  # the one host sync of a step
        grad_bad = not math.isfinite(grad)
        if not math.isfinite(loss) or (grad_bad and not self.skip_inf_grads):
            values = ", ".join(f"{k}={v.item():.6g}" for k, v in terms.items())
            raise NonFiniteLossError(
                f"step {step}: non-finite loss on rank {self.env.rank} ({values}; grad norm "
                f"{grad_norm.item():.6g}); the step was not applied and {self._kept()}. Try a lower train.lr, "
                "train.precision = 'fp32', or check the data"
            )
        if grad_bad:
            return  # fp16 overflow: the scaler skips this step, so it says nothing about health
        self.losses.append(loss)
        self.grads.append(grad)
        self.trend_problems = self._trends(step)
        self._judge(step)

    def check_weights(self, step: int, params: list[torch.Tensor]) -> float:
        """Stop (or warn) when the weights left the healthy range; returns the largest |weight|."""
        weight = max_abs_weight(params, self.env)
        if not math.isfinite(weight):
            self.weight_problems = [f"a weight is {weight}"]
        elif self.cfg.max_weight > 0 and weight > self.cfg.max_weight:
            self.weight_problems = [
                f"the largest |weight| is {weight:.4g} (train.health.max_weight = {self.cfg.max_weight:g})"
            ]
        else:
            self.weight_problems = []
        self._judge(step)
        self._weight_at = (step, weight)
        return weight

    def _peaks(self) -> list[str]:
        """What makes a checkpoint fail although the medians are fine: one step of the window beyond the factor."""
        problems = []
        for name, values, factor in (
            ("loss", self.losses, self.cfg.loss_factor),
            ("grad_norm", self.grads, self.cfg.grad_factor),
        ):
            best = self.best.get(name)
            if factor > 0 and values and best is not None and best[0] > 0 and max(values) > factor * best[0]:
                problems.append(
                    f"a {name} of the last {len(values)} steps reached {max(values):.4g}, over {factor:g}x its lowest "
                    f"median ({best[0]:.4g})"
                )
        return problems

    def _trends(self, step: int) -> list[str]:
        problems = []
        for name, values, factor in (
            ("loss", self.losses, self.cfg.loss_factor),
            ("grad_norm", self.grads, self.cfg.grad_factor),
        ):
            if len(values) < self.cfg.window:
                continue
            median = statistics.median(values)
            best = self.best.get(name)
            if best is None or median < best[0]:
                self.best[name] = best = (median, step)
            if factor > 0 and best[0] > 0 and median > factor * best[0]:
                key = "loss_factor" if name == "loss" else "grad_factor"
                problems.append(
                    f"the median {name} of the last {len(values)} steps is {median:.4g}, {median / best[0]:.1f}x its "
                    f"lowest ({best[0]:.4g}, at step {best[1]}; train.health.{key} = {factor:g})"
                )
        return problems

    def _judge(self, step: int) -> None:
        problems = self.problems
        if not problems:
            if self._warned and self.env.is_main:
                logger.info(f"step {step}: training looks healthy again")
            self._warned = False
            return
        if self.cfg.action == "stop":
            ckpt = newest_healthy(self.run_dir)
            restart = f"`madkit run SPEC --from {int(ckpt.name)} --allow-changes`" if ckpt else "a new run folder"
            raise DivergenceError(
                f"step {step}: training is diverging: {'; '.join(problems)}. This state was not checkpointed and "
                f"{self._kept()}. Lower train.lr (or loosen train.health if this is expected) and continue with "
                f"{restart}"
            )
        if not self._warned and self.env.is_main:
            logger.warning(f"step {step}: warning: training looks unhealthy: {'; '.join(problems)}; its "
                           f"checkpoints are marked as failing the health check until it recovers")
        self._warned = True

    # ---------------------------------------------------------------- checkpoints
    def before_save(self, step: int, params: list[torch.Tensor]) -> tuple[dict[str, Any], Path | None]:
        """(the figures the checkpoint records, the checkpoint pruning must keep); under ``stop`` a
        failing state raises here, before anything is written."""
        # a step that logged has just scanned these very weights (a full pass, a sync, under sharding
        # an all-reduce); every rank takes the same branch, so the collectives stay matched
        if self._weight_at is not None and self._weight_at[0] == step:
            weight = self._weight_at[1]
        else:
            weight = self.check_weights(step, params)
        problems = self.problems + self._peaks()
        figures = {
            "step": step,
            "loss": statistics.median(self.losses) if self.losses else None,
            "grad_norm": statistics.median(self.grads) if self.grads else None,
            "max_abs_weight": weight if math.isfinite(weight) else str(weight),
            "passed": not problems,
            "problems": problems,
        }
        return figures, newest_healthy(self.run_dir) if self.env.is_main else None

    @staticmethod
    def metadata(figures: dict[str, Any]) -> dict[str, str]:
        return {HEALTH_KEY: json.dumps(figures)}

    def _kept(self) -> str:
        ckpt = newest_healthy(self.run_dir)
        return f"the newest healthy checkpoint is {ckpt}" if ckpt else "no healthy checkpoint had been written yet"
