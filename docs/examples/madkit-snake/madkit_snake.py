"""madkit-snake: the ``snake`` partitioner (serpentine, or boustrophedon, order).

Cells are visited row by row, left to right on even rows and right to left on odd rows, then cut
into blocks of ``block_len`` consecutive cells. Unlike raster order, the last cell of one block and
the first cell of the next are always grid neighbours, even across a row boundary.
"""

from __future__ import annotations

import attrs
import torch

from madkit.hookspecs import hookimpl
from madkit.interfaces import Partitioner, SpecProblem


@attrs.frozen
class SnakeConfig:
    """The spec table ``[model.partitioner]`` with ``kind = "snake"``."""

    block_len: int = 1  # cells per block; must divide the number of cells h * w

    def build(self, grid: tuple[int, int]) -> SnakePartitioner:
        return SnakePartitioner(grid, self.block_len)

    def problems(self, grid: tuple[int, int]) -> list[SpecProblem]:
        """What ``madkit validate`` reports for this config on an h x w token grid (paths are keys here)."""
        h, w = grid
        if h <= 0 or w <= 0:
            return [SpecProblem("", f"grid sides must be > 0, got {h}x{w}")]
        if self.block_len <= 0 or (h * w) % self.block_len:
            return [
                SpecProblem(
                    "block_len",
                    f"block_len {self.block_len} must be a positive divisor of the {h}x{w} = {h * w} cell grid",
                )
            ]
        return []


class SnakePartitioner(Partitioner):
    def __init__(self, grid: tuple[int, int], block_len: int):
        super().__init__(grid)
        if problems := SnakeConfig(block_len).problems(self.grid):
            raise ValueError(problems[0].message)
        self.block_len = block_len

    def _order(self) -> torch.Tensor:
        h, w = self.grid
        cells = torch.arange(h * w).view(h, w)  # flat raster index of each cell
        cells[1::2] = cells[1::2].flip(-1)  # odd rows run right to left
        return cells.flatten().view(-1, self.block_len)  # [t, b]

    @property
    def block_shape(self) -> tuple[int, int] | None:
        # Blocks are raster-ordered rectangles only where no row is walked right to left: single
        # cells, a one-row grid, or a one-column grid (flipping a one-cell row changes nothing).
        h, w = self.grid
        if self.block_len == 1:
            return (1, 1)
        if h == 1:
            return (1, self.block_len)
        if w == 1:
            return (self.block_len, 1)
        return None


@hookimpl
def madkit_register(registry):
    registry.register("partitioner", "snake", SnakeConfig)
