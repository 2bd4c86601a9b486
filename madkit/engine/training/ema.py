"""Exponential moving average of the weights, kept in fp32, sampled from and evaluated.

The EMA is a full copy of the (unwrapped) model: it can ``generate`` directly, and its
``state_dict()`` has exactly the model's names, so ``ema.safetensors`` loads into a fresh model.
Parameters are averaged; buffers (running statistics, cached tables) are copied.

Decay warmup. A 0.9999 EMA remembers ~10k steps, so early in training it is mostly the random
initialisation. With ``warmup`` W > 0 the averaging horizon 1 / (1 - decay) grows linearly with the
step s and reaches the full horizon at s = W:

    decay(s) = min(decay, max(0, 1 - W * (1 - decay) / s))

(decay 0, i.e. a plain copy, while s <= W * (1 - decay)). W = 0 uses ``decay`` from the first step.

torch's ``AveragedModel`` holds the copy and walks the parameter pairs; madkit gives it the update
(``multi_avg_fn``) because torch's EMA helper has a fixed decay, and counts updates itself so that
the decay of each step is known without reading a device tensor (a GPU sync per step). The averaged
model is seeded with one update (a copy of the model as it starts), which is what the average
holds before training: torch's first update would otherwise replace it by the weights after step 1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EMA:
    """fp32 moving average of a model's parameters. ``module`` is the averaged model (eval mode)."""

    def __init__(self, model: nn.Module, decay: float, warmup: int = 0):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be within [0, 1], got {decay}")
        self.decay, self.warmup = float(decay), int(warmup)
        self._averaged = AveragedModel(model, multi_avg_fn=self._move)  # it copies the model itself
        self._averaged.module.to(torch.float32)
        self._averaged.update_parameters(self._averaged.module)  # the seed: a copy, no averaging
        self.module = self._averaged.module.eval()
        self.module.requires_grad_(False)
        self.updates = 0
        self._decay_now = self.decay
        self._count = sum(1 for _ in self.module.parameters())

    def decay_at(self, updates: int) -> float:
        """The decay used for update number ``updates`` (1-based)."""
        if self.warmup <= 0:
            return self.decay
        return min(self.decay, max(0.0, 1.0 - self.warmup * (1.0 - self.decay) / max(1, updates)))

    def _move(self, averaged: list[torch.Tensor], live: list[torch.Tensor], _count: torch.Tensor) -> None:
        # ema <- ema + (1 - decay) * (live - ema), one fused kernel per dtype/device group
        live = [p if p.dtype == torch.float32 else p.float() for p in live]
        torch._foreach_lerp_(averaged, live, 1.0 - self._decay_now)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the average towards ``model`` (the unwrapped one); returns the decay used."""
        n_live = sum(1 for _ in model.parameters())
        if n_live != self._count:
            raise ValueError(
                f"EMA holds {self._count} parameters but the model has {n_live}; "
                "the EMA must be made from the model it tracks"
            )
        self.updates += 1
        self._decay_now = self.decay_at(self.updates)
        self._averaged.update_parameters(model)  # which also copies the buffers (use_buffers=False)
        return self._decay_now

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = int(updates)
