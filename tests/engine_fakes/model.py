"""``test-engine-tiny``: a small denoiser that honours the GenerativeModel contract.

    latents [n, c, h, w] -> flatten -> Linear -> + time and label embeddings
    -> blocks (pre-norm residual MLPs, an nn.ModuleList: what compile targets) -> Linear -> eps [n, c, h, w]

Its loss draws example i's timestep and noise from ``generators[i]``, as the GenerativeModel contract
asks (so micro-batching and ranks must not change it). Switches for engine tests: ``nan_after = k``
returns a NaN loss from the (k+1)-th loss call of the process on; ``sleep_s`` slows each loss call
and ``sample_sleep_s`` each generate call (for kill tests).
"""

from __future__ import annotations

import time

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from madkit import per_example
from madkit.interfaces import GenerativeModel


@attrs.frozen
class TinyModelConfig:
    width: int = 16
    depth: int = 2
    nan_after: int = 0
    sleep_s: float = 0.0
    sample_sleep_s: float = 0.0

    def build(self, latent_shape, num_classes, registry=None) -> TinyModel:
        return TinyModel(self, tuple(latent_shape), num_classes)


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h))))


class TinyModel(GenerativeModel):
    def __init__(self, cfg: TinyModelConfig, latent_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.cfg, self.latent_shape, self.num_classes = cfg, latent_shape, num_classes
        dim = latent_shape[0] * latent_shape[1] * latent_shape[2]
        self.inp = nn.Linear(dim, cfg.width)
        self.time = nn.Linear(1, cfg.width)
        self.label = nn.Embedding(max(1, num_classes), cfg.width)
        self.blocks = nn.ModuleList(_Block(cfg.width) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, dim)
        self.checkpointing = False
        self.loss_calls = 0

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.checkpointing = enabled

    def predict(self, x: torch.Tensor, time_: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        n = x.shape[0]
        labels = labels if labels is not None else torch.zeros(n, dtype=torch.long, device=x.device)
        h = self.inp(x.flatten(1)) + self.time(time_.reshape(n, 1).float() / 100) + self.label(labels)
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=False) if self.checkpointing and self.training else block(h)
        return self.out(self.out_norm(h)).view(x.shape)

    def loss(self, latents, labels, schedule, generators):
        self.loss_calls += 1
        if self.cfg.sleep_s:
            time.sleep(self.cfg.sleep_s)
        t = per_example.timesteps(schedule, generators, (), latents.device)
        noise = per_example.randn(generators, latents.shape[1:], latents.device)
        x_t = schedule.add_noise(latents, noise, t)
        pred = self.predict(x_t, schedule.model_time(t), labels)
        mse = (pred.float() - schedule.target(latents, noise, t)).pow(2).mean()
        loss = mse
        if self.cfg.nan_after and self.loss_calls > self.cfg.nan_after:
            loss = loss * float("nan")
        return {"loss": loss, "mse": mse.detach(), "pred_rms": pred.detach().float().pow(2).mean().sqrt()}

    @torch.no_grad()
    def generate(self, sampler, generators, labels=None, steps=None, guidance=None, use_cache=True):
        if self.cfg.sample_sleep_s:
            time.sleep(self.cfg.sample_sleep_s)
        device = next(self.parameters()).device
        x = torch.stack([torch.randn(self.latent_shape, generator=g, device=device) for g in generators])
        x = x * sampler.init_noise_sigma
        run = sampler.start(steps, device=device)
        for t in run.timesteps:
            eps = self.predict(run.scale_input(x, t), run.model_time(t).expand(x.shape[0]), labels)
            x = run.step(eps.float(), t, x, generators)
        return x

    def compute_cost(self, steps: int):
        params = sum(p.numel() for p in self.parameters())
        # forward ~ 2 flops per parameter per image, backward twice that
        return {"params": params, "train_flops_per_image": 6 * params, "sample_flops_per_image": 2 * params * steps}
