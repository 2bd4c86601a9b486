"""The built-in ``rope`` kinds: 2D rotary position embeddings over the token grid.

- ``axial`` (madkit's default): each axis gets half the head; inside a half, the row (or column)
  angles use frequencies theta^(-i/(e/4)) and dims pair in rotate-half layout *within the half*, so
  every pair turns by one angle: a true rotation (norms and relative-position scores are kept).
- ``madformer-reference``: the released MADFormer checkpoint's variant, which its weights were
  trained with. Per axis a base from the axis length, (floor(8 L / pi) // 100 + 1) * 100 (200 for
  64 tokens, 100 for 8), and e/4 frequencies base^(-j/(e/4 - 1)), exponents evenly spaced from 0
  to 1 inclusive; angles [row, row, col, col] by quarters, but rotate-half over the *whole* head,
  so dim m (a row angle) pairs with dim m + e/2 (a column angle). The two dims of a pair turn by
  different angles: not a rotation, but what the released weights expect.

Positions come from the partitioner, so a noised block sits exactly where its clean block sits.
"""

from __future__ import annotations

import math

import attrs
import torch

from madkit.interfaces import RotaryEmbedding, SpecProblem
from madkit.validators import positive


def _head_dim_problems(kind: str, head_dim: int, minimum: int) -> list[SpecProblem]:
    if head_dim % 4 or head_dim < minimum:
        return [
            SpecProblem(
                "kind",
                f"rope kind {kind!r} needs a head dimension (width / heads) divisible by 4 and at least "
                f"{minimum} (a quarter per axis and rotation pair), got {head_dim}; change width or heads",
            )
        ]
    return []


def _check(problems: list[SpecProblem]) -> None:
    if problems:
        raise ValueError(problems[0].message)


# --------------------------------------------------------------------------- axial (default)
@attrs.frozen
class AxialRopeConfig:
    """``[model.rope] kind = "axial"``: madkit's 2D RoPE."""

    theta: float = attrs.field(default=10000.0, validator=positive)

    def problems(self, grid: tuple[int, int], head_dim: int) -> list[SpecProblem]:
        return _head_dim_problems("axial", head_dim, 4)

    def build(self, grid: tuple[int, int], head_dim: int) -> AxialRope:
        _check(self.problems(grid, head_dim))
        return AxialRope(grid, head_dim, self.theta)


class AxialRope(RotaryEmbedding):
    def __init__(self, grid: tuple[int, int], head_dim: int, theta: float):
        super().__init__(grid, head_dim)
        self.theta = float(theta)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quarter = self.head_dim // 4
        freqs = self.theta ** (-torch.arange(quarter, dtype=torch.float64, device=positions.device) / quarter)
        pos = positions.to(torch.float64)
        row, col = pos[:, :1] * freqs, pos[:, 1:] * freqs  # [L, e/4] each
        angles = torch.cat([row, row, col, col], dim=-1)  # rotate-half layout inside each axis' half
        return angles.cos().float(), angles.sin().float()

    @staticmethod
    def rotate(x: torch.Tensor) -> torch.Tensor:
        r1, r2, c1, c2 = x.chunk(4, dim=-1)
        return torch.cat([-r2, r1, -c2, c1], dim=-1)


# --------------------------------------------------------------------------- the released variant
def reference_axis_base(length: int) -> int:
    """The released code's per-axis base for an axis of ``length`` tokens (200 for 64, 100 for 8)."""
    return (math.floor(8 * length / math.pi) // 100 + 1) * 100


@attrs.frozen
class ReferenceRopeConfig:
    """``[model.rope] kind = "madformer-reference"``: the released checkpoint's 2D RoPE (no options:
    the bases follow from the grid)."""

    def problems(self, grid: tuple[int, int], head_dim: int) -> list[SpecProblem]:
        # two or more frequencies per axis: the exponents j / (e/4 - 1) need e/4 >= 2
        return _head_dim_problems("madformer-reference", head_dim, 8)

    def build(self, grid: tuple[int, int], head_dim: int) -> ReferenceRope:
        _check(self.problems(grid, head_dim))
        return ReferenceRope(grid, head_dim)


class ReferenceRope(RotaryEmbedding):
    def __init__(self, grid: tuple[int, int], head_dim: int):
        super().__init__(grid, head_dim)
        self.bases = tuple(reference_axis_base(side) for side in self.grid)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e, n = self.head_dim, self.head_dim // 4
        # fp32, in the order the released code evaluates it: exponents linspace(0, e, n) / e = j / (n - 1)
        exponents = torch.linspace(0, e, n, dtype=torch.float32, device=positions.device) / e
        halves = []
        for axis, base in enumerate(self.bases):
            inverse = 1.0 / (base**exponents)
            angles = positions[:, axis].to(torch.float32)[:, None] * inverse  # [L, e/4]
            halves += [angles, angles]
        angles = torch.cat(halves, dim=-1)  # [row, row, col, col]
        return angles.cos(), angles.sin()

    @staticmethod
    def rotate(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)  # across the whole head: row dims pair with column dims
        return torch.cat([-second, first], dim=-1)
