"""The built-in partitioners, raster and tiles: the shared contract plus what is specific to each.

The contract (madkit.testing.PartitionerContract) checks the round trip, permutation, positions,
exact block_shape and error behaviour; the tests here pin each partitioner's own order against an
oracle written with plain loops.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from madkit_partitioners.raster import RasterConfig
from madkit_partitioners.tiles import TilesConfig

from madkit.testing import InvalidPartitionCase, PartitionCase, PartitionerContract, divisors, grids, non_divisors


def _raster_case(grid: tuple[int, int]) -> st.SearchStrategy[PartitionCase]:
    # 0 means one block holding the whole grid
    return st.sampled_from([0, *divisors(grid[0] * grid[1])]).map(lambda n: PartitionCase(grid, RasterConfig(n)))


def _tiles_case(grid: tuple[int, int]) -> st.SearchStrategy[PartitionCase]:
    tiles = st.tuples(st.sampled_from(divisors(grid[0])), st.sampled_from(divisors(grid[1])))
    return tiles.map(lambda tile: PartitionCase(grid, TilesConfig(tile)))


class TestRaster(PartitionerContract):
    def valid_cases(self):
        return grids().flatmap(_raster_case)

    def invalid_cases(self):
        def not_dividing(grid):
            h, w = grid
            return st.sampled_from(non_divisors(h * w)).map(
                lambda n: InvalidPartitionCase(grid, RasterConfig(n), mentions=(f"block_len {n}", f"{h}x{w}"))
            )

        negative = st.tuples(grids(), st.integers(-9, -1)).map(
            lambda gn: InvalidPartitionCase(gn[0], RasterConfig(gn[1]), mentions=("block_len", str(gn[1])))
        )
        return st.one_of(grids().flatmap(not_dividing), negative)

    @settings(deadline=None)
    @given(data=st.data())
    def test_blocks_are_consecutive_runs_in_raster_order(self, data):
        case = data.draw(self.valid_cases())
        h, w = case.grid
        length = case.config.block_len or h * w
        p = case.config.build(grid=case.grid)
        cells = [row * w + col for row in range(h) for col in range(w)]
        expected = [cells[j : j + length] for j in range(0, h * w, length)]
        assert p.order.tolist() == expected

    @pytest.mark.parametrize(
        "grid, block_len, shape",
        [
            ((4, 6), 1, (1, 1)),
            ((4, 6), 3, (1, 3)),  # part of one row
            ((4, 6), 6, (1, 6)),  # exactly one row
            ((4, 6), 12, (2, 6)),  # whole rows
            ((4, 6), 0, (4, 6)),  # the whole grid
            ((4, 6), 4, None),  # runs of 4 wrap across rows of 6
            ((4, 6), 8, None),  # more than a row, not whole rows
            ((1, 5), 5, (1, 5)),
        ],
    )
    def test_block_shape(self, grid, block_len, shape):
        assert RasterConfig(block_len).build(grid=grid).block_shape == shape

    def test_error_names_the_numbers(self):
        with pytest.raises(ValueError, match=r"block_len 7 does not divide the 4x6 = 24 cell grid"):
            RasterConfig(7).build(grid=(4, 6))
        with pytest.raises(ValueError, match=r"grid sides must be > 0, got 0x6"):
            RasterConfig(1).build(grid=(0, 6))


class TestTiles(PartitionerContract):
    def valid_cases(self):
        return grids().flatmap(_tiles_case)

    def invalid_cases(self):
        def not_dividing(grid):
            h, w = grid
            # at least one side must not divide; the other may or may not
            bad_rows = st.tuples(st.sampled_from(non_divisors(h)), st.integers(1, w))
            bad_cols = st.tuples(st.integers(1, h), st.sampled_from(non_divisors(w)))
            return st.one_of(bad_rows, bad_cols).map(
                lambda t: InvalidPartitionCase(grid, TilesConfig(t), mentions=(f"{t[0]}x{t[1]} tile", f"{h}x{w}"))
            )

        non_positive = st.tuples(grids(), st.integers(-2, 0), st.integers(-2, 3)).map(
            lambda g: InvalidPartitionCase(g[0], TilesConfig((g[2], g[1])), mentions=(f"{g[2]}x{g[1]}",))
        )
        return st.one_of(grids().flatmap(not_dividing), non_positive)

    @settings(deadline=None)
    @given(data=st.data())
    def test_tiles_are_rectangles_in_raster_order(self, data):
        case = data.draw(self.valid_cases())
        (h, w), (th, tw) = case.grid, case.config.tile
        p = case.config.build(grid=case.grid)
        expected = [
            [(tile_row + r) * w + (tile_col + c) for r in range(th) for c in range(tw)]  # raster inside the tile
            for tile_row in range(0, h, th)  # tiles in raster order
            for tile_col in range(0, w, tw)
        ]
        assert p.order.tolist() == expected
        assert p.block_shape == (th, tw)

    def test_reference_geometry(self):
        # MADFormer on FFHQ-1024: a 128x128 latent grid in 16 tiles of 32x32 (docs/method.md)
        p = TilesConfig((32, 32)).build(grid=(128, 128))
        assert (p.num_blocks, p.block_size, p.block_shape) == (16, 1024, (32, 32))
        assert p.positions[5, 0].tolist() == [32, 32]  # tile 5 is row 1, column 1 of the 4x4 tiling
        x = torch.randn(2, 4, 128, 128)
        assert torch.equal(p.merge(p.partition(x)), x)

    def test_error_names_the_numbers(self):
        with pytest.raises(ValueError, match=r"a 3x4 tile does not divide the 8x8 token grid \(8 % 3 = 2, 8 % 4 = 0\)"):
            TilesConfig((3, 4)).build(grid=(8, 8))
        with pytest.raises(ValueError, match=r"tile sides must be > 0, got 0x2"):
            TilesConfig((0, 2)).build(grid=(8, 8))
