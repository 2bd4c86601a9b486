"""Attention-free denoising layer: an adaLN-modulated MLP residual block applied per token.

Stacked as the diffusion layers of a pure-AR model it forms the per-token diffusion head of
raster-order MAR: each continuous token is denoised on its own, conditioned (through adaLN) on the
AR condition for that token plus the timestep embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MlpDenoisingLayer(nn.Module):
    role = "diffusion"
    pattern = "none"
    attends_clean = False

    def __init__(self, width: int, mlp_hidden: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=eps)
        self.fc1 = nn.Linear(width, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, width)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        # start as the identity: a zero gate makes a fresh head a no-op (DiT/MAR adaLN-Zero)
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, xc, xn: torch.Tensor, plan, cond: torch.Tensor | None = None):
        """xn [n, L, d]; cond [n, L, d] (AR condition + timestep embedding) drives the modulation."""
        if cond is None:
            raise ValueError("an mlp denoising layer needs its adaLN condition")
        shift, scale, gate = self.ada(cond).chunk(3, dim=-1)
        h = self.norm(xn) * (1 + scale) + shift
        return xc, xn + gate * self.fc2(F.silu(self.fc1(h)))
