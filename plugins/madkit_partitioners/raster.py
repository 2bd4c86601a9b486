"""``raster``: block j is cells [j*L, (j+1)*L) of the grid in raster order."""

from __future__ import annotations

import attrs
import torch

from madkit.interfaces import Partitioner, SpecProblem


@attrs.frozen
class RasterConfig:
    block_len: int = attrs.field(default=1)  # cells per block; 0 = the whole grid (one block)

    def build(self, grid: tuple[int, int]) -> RasterPartitioner:
        return RasterPartitioner(grid, self.block_len)

    def problems(self, grid: tuple[int, int]) -> list[SpecProblem]:
        h, w = grid
        if h <= 0 or w <= 0:
            return [SpecProblem("", f"grid sides must be > 0, got {h}x{w}")]
        if self.block_len < 0:
            return [SpecProblem("block_len", f"block_len must be >= 0 (0 = one block), got {self.block_len}")]
        if self.block_len and (h * w) % self.block_len:
            return [
                SpecProblem(
                    "block_len",
                    f"block_len {self.block_len} does not divide the {h}x{w} = {h * w} cell grid; "
                    f"use a divisor of {h * w}",
                )
            ]
        return []


class RasterPartitioner(Partitioner):
    def __init__(self, grid: tuple[int, int], block_len: int):
        super().__init__(grid)
        if problems := RasterConfig(block_len).problems(self.grid):
            raise ValueError(problems[0].message)
        self.block_len = block_len or self.grid[0] * self.grid[1]

    def _order(self) -> torch.Tensor:
        h, w = self.grid
        return torch.arange(h * w).view(-1, self.block_len)

    @property
    def block_shape(self) -> tuple[int, int] | None:
        # a run of cells is a rectangle when it is part of one row, or whole rows
        h, w = self.grid
        if self.block_len <= w and w % self.block_len == 0:
            return (1, self.block_len)
        if self.block_len % w == 0:
            return (self.block_len // w, w)
        return None
