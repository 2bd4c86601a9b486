"""``patch`` embedder: a linear map per cell of p x p latent pixels, plus a timestep embedding."""

from __future__ import annotations

import attrs
import torch
from torch import nn

from madkit.validators import positive
from madkit_models.embedder_base import Embedder, TimestepEmbedder


@attrs.frozen
class PatchEmbedderConfig:
    patch: int = attrs.field(default=1, validator=positive)
    requires_rectangular = False

    @property
    def cell(self) -> int:
        return self.patch

    def build(self, latent_channels: int, width: int, block_shape: tuple[int, int] | None) -> PatchEmbedder:
        return PatchEmbedder(latent_channels * self.patch**2, width)


class PatchEmbedder(Embedder):
    def __init__(self, cell_dim: int, width: int):
        super().__init__()
        self.cell_dim = cell_dim
        self.proj = nn.Linear(cell_dim, width)
        self.time = TimestepEmbedder(width)
        self.out_norm = nn.RMSNorm(width, eps=1e-5)
        self.out = nn.Linear(width, cell_dim)

    def embed(self, cells: torch.Tensor, t: torch.Tensor):
        return self.proj(cells) + self.time(t)[:, None, :], None

    def unembed(self, tokens: torch.Tensor, t: torch.Tensor, aux) -> torch.Tensor:
        return self.out(self.out_norm(tokens))
