"""What the model needs from an embedder (the ``embedder`` interface).

An embedder maps the cells of a block to tokens and back. A *cell* is the latent footprint of one
token: ``cell x cell`` latent pixels of ``c`` channels, so ``cell_dim = c * cell * cell``. The model
space-to-depths the latent [n, c, h, w] into a token grid [n, cell_dim, h/cell, w/cell] which the
partitioner splits into blocks. Notation: N = flattened (batch x blocks), B tokens per block.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Embedder(nn.Module):
    cell_dim: int

    def embed(self, cells: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """cells [N, B, cell_dim], model time t [N] -> tokens [N, B, d] and aux (e.g. U-Net skips)."""
        raise NotImplementedError

    def unembed(self, tokens: torch.Tensor, t: torch.Tensor, aux: Any) -> torch.Tensor:
        """tokens [N, B, d] -> cells [N, B, cell_dim]; ``aux`` from ``embed`` of the same input."""
        raise NotImplementedError

    def blank_aux(self, aux: Any) -> Any:
        """aux carrying no information about its input (used by the hidden loss to avoid leaks)."""
        return aux


def timestep_sinusoids(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t [N] float -> [N, dim] sin/cos features (the DiT/ADM convention)."""
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(max_period)) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features -> MLP -> width (for embedders and heads without their own)."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_sinusoids(t, self.freq_dim).to(self.mlp[0].weight.dtype))
