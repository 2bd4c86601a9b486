"""``PartitionerContract``: the property suite every partitioner must pass.

A partitioner plugin's test module subclasses it and says which configs are valid on which grids
(and, optionally, which are not); hypothesis then draws cases and checks the contract of
``madkit.interfaces.Partitioner``::

    from hypothesis import strategies as st
    from madkit.testing import PartitionCase, PartitionerContract, divisors, grids

    class TestSnake(PartitionerContract):
        def valid_cases(self):
            return grids().flatmap(
                lambda g: st.sampled_from(divisors(g[0] * g[1])).map(lambda n: PartitionCase(g, SnakeConfig(n)))
            )

Shapes: n.. leading batch dims, c channels, h w grid, t blocks, b cells per block.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from madkit.interfaces import Partitioner
from madkit.testing.config_checks import ConfigContract, given, property_settings, st

_settings = property_settings(40)


@attrs.frozen
class PartitionCase:
    """A config that must build on ``grid`` (the token grid, (h, w))."""

    grid: tuple[int, int]
    config: Any


@attrs.frozen
class InvalidPartitionCase:
    """A config that must be refused on ``grid``; ``mentions`` must all appear in the error message."""

    grid: tuple[int, int]
    config: Any
    mentions: tuple[str, ...] = ()


def divisors(n: int) -> list[int]:
    """Positive divisors of n, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def non_divisors(n: int) -> list[int]:
    """Some integers >= 2 that do not divide n (never empty: n + 1 is one)."""
    return [d for d in range(2, 2 * n + 2) if n % d]


def grids(max_side: int = 12) -> st.SearchStrategy[tuple[int, int]]:
    """Token grids (h, w) with sides in [1, max_side], square or not."""
    side = st.integers(1, max_side)
    return st.tuples(side, side)


def rectangle_shape(positions: torch.Tensor) -> tuple[int, int] | None:
    """(rows, cols) when every block is the same rows x cols rectangle listed in raster order, else None.

    ``positions`` is [t, b, 2] (row, col). Computed by brute force, independently of any partitioner.
    """
    b = positions.shape[1]
    top_left = positions.min(dim=1).values  # [t, 2]
    extent = positions.max(dim=1).values - top_left + 1  # [t, 2]: rows, cols spanned by each block
    if not (extent == extent[0]).all():
        return None
    rows, cols = int(extent[0, 0]), int(extent[0, 1])
    if rows * cols != b:
        return None
    i = torch.arange(b)
    raster = torch.stack((i // cols, i % cols), dim=-1)  # [b, 2] offsets of a rows x cols raster walk
    if not torch.equal(positions, top_left[:, None, :] + raster[None]):
        return None
    return rows, cols


class PartitionerContract(ConfigContract):
    """Subclass in a ``Test*`` class; implement ``valid_cases`` (and ``invalid_cases`` if any exist).

    Every check is a hypothesis property over the cases you provide. The class name does not start
    with ``Test``, so pytest collects only your subclass.
    """

    table = "partitioner"

    # valid_cases(): a strategy of PartitionCase; invalid_cases() (optional): of InvalidPartitionCase

    def case_problems(self, case) -> list:
        return case.config.problems(case.grid)

    def build_case(self, case) -> Partitioner:
        return case.config.build(grid=case.grid)

    # ------------------------------------------------------------------ helpers
    def _build(self, case: PartitionCase) -> Partitioner:
        partitioner = self.build_case(case)
        assert isinstance(partitioner, Partitioner), f"build() returned {type(partitioner).__name__}"
        return partitioner

    @_settings
    @given(data=st.data(), side=st.integers(-2, 0))
    def test_non_positive_grid_is_refused(self, data, side):
        case = data.draw(self.valid_cases())
        h, w = case.grid
        for grid in ((side, w), (h, side)):
            try:
                case.config.build(grid=grid)
            except ValueError:
                continue
            raise AssertionError(f"{case.config!r} built on grid {grid}; expected ValueError")

    # ------------------------------------------------------------------ the order
    @_settings
    @given(data=st.data())
    def test_order_is_a_permutation_of_the_cells(self, data):
        case = data.draw(self.valid_cases())
        p = self._build(case)
        h, w = case.grid
        assert p.order.dtype == torch.long and p.order.ndim == 2, "order is a long tensor [t, b]"
        assert p.num_blocks * p.block_size == h * w, "blocks of equal size cover the grid"
        assert torch.equal(p.order.flatten().sort().values, torch.arange(h * w)), "every cell exactly once"

    @_settings
    @given(data=st.data())
    def test_build_is_deterministic(self, data):
        # resuming a run rebuilds the partitioner: the order must not depend on hidden state
        case = data.draw(self.valid_cases())
        assert torch.equal(self._build(case).order, self._build(case).order)

    @_settings
    @given(data=st.data())
    def test_positions_are_grid_coordinates_of_the_order(self, data):
        case = data.draw(self.valid_cases())
        p = self._build(case)
        w = case.grid[1]
        expected = torch.stack((p.order // w, p.order % w), dim=-1)  # divmod(order, w)
        assert p.positions.shape == (p.num_blocks, p.block_size, 2)
        assert torch.equal(p.positions, expected)

    @_settings
    @given(data=st.data())
    def test_block_shape_is_exactly_the_rectangles(self, data):
        # a conv embedder relies on block_shape: a wrong claim corrupts images, a missing one refuses
        # a partitioner that would have worked
        case = data.draw(self.valid_cases())
        p = self._build(case)
        assert p.block_shape == rectangle_shape(p.positions)
        assert p.rectangular == (p.block_shape is not None)

    # ------------------------------------------------------------------ partition and merge
    @_settings
    @given(
        data=st.data(),
        lead=st.lists(st.integers(1, 3), max_size=2),
        channels=st.integers(1, 3),
        dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.int64]),
        seed=st.integers(0, 2**31 - 1),
    )
    def test_merge_inverts_partition(self, data, lead, channels, dtype, seed):
        case = data.draw(self.valid_cases())
        p = self._build(case)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(*lead, channels, *case.grid, generator=generator).mul(100).to(dtype)  # [n.., c, h, w]
        blocks = p.partition(x)
        assert blocks.shape == (*lead, p.num_blocks, p.block_size, channels) and blocks.dtype == dtype
        assert torch.equal(p.merge(blocks), x)

    @_settings
    @given(data=st.data(), lead=st.lists(st.integers(1, 2), max_size=2))
    def test_partition_puts_each_cell_at_its_position(self, data, lead):
        # the round trip alone would accept any invertible shuffle; pin the meaning of positions
        case = data.draw(self.valid_cases())
        p = self._build(case)
        h, w = case.grid
        x = torch.arange(math.prod(lead) * 2 * h * w).view(*lead, 2, h, w)  # [n.., c, h, w]
        blocks = p.partition(x)  # [n.., t, b, c]
        rows, cols = p.positions[..., 0], p.positions[..., 1]  # [t, b]
        assert torch.equal(blocks, x[..., rows, cols].movedim(-3, -1))

    @_settings
    @given(data=st.data())
    def test_wrong_shapes_are_refused(self, data):
        case = data.draw(self.valid_cases())
        p = self._build(case)
        h, w = case.grid
        for bad in (torch.zeros(1, h + 1, w), torch.zeros(1, h, w + 1)):
            try:
                p.partition(bad)
            except ValueError:
                continue
            raise AssertionError(f"partition accepted a {tuple(bad.shape)} tensor on a {h}x{w} grid")
        try:
            p.merge(torch.zeros(p.num_blocks + 1, p.block_size, 1))
        except ValueError:
            return
        raise AssertionError("merge accepted one block too many")
