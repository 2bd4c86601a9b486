"""``tiles``: rectangular th x tw tiles, tiles in raster order, cells raster inside each tile."""

from __future__ import annotations

import attrs
import torch
from einops import rearrange

from madkit.interfaces import Partitioner, SpecProblem


@attrs.frozen
class TilesConfig:
    tile: tuple[int, int] = (1, 1)  # (rows, cols) of cells per tile

    def build(self, grid: tuple[int, int]) -> TilesPartitioner:
        return TilesPartitioner(grid, self.tile)

    def problems(self, grid: tuple[int, int]) -> list[SpecProblem]:
        (h, w), (th, tw) = grid, self.tile
        if h <= 0 or w <= 0:
            return [SpecProblem("", f"grid sides must be > 0, got {h}x{w}")]
        if th <= 0 or tw <= 0:
            return [SpecProblem("tile", f"tile sides must be > 0, got {th}x{tw}")]
        if h % th or w % tw:
            return [
                SpecProblem(
                    "tile",
                    f"a {th}x{tw} tile does not divide the {h}x{w} token grid "
                    f"({h} % {th} = {h % th}, {w} % {tw} = {w % tw}); choose sides that divide {h} and {w}",
                )
            ]
        return []


class TilesPartitioner(Partitioner):
    def __init__(self, grid: tuple[int, int], tile: tuple[int, int]):
        super().__init__(grid)
        if problems := TilesConfig(tuple(tile)).problems(self.grid):
            raise ValueError(problems[0].message)
        self.tile = (int(tile[0]), int(tile[1]))

    def _order(self) -> torch.Tensor:
        (h, w), (th, tw) = self.grid, self.tile
        cells = torch.arange(h * w).view(h // th, th, w // tw, tw)
        return rearrange(cells, "gh th gw tw -> (gh gw) (th tw)")

    @property
    def block_shape(self) -> tuple[int, int]:
        return self.tile
