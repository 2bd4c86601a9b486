"""``RopeContract``: the property suite every ``rope`` kind must pass.

A RoPE plugin's test module subclasses it and says which configs must build on which token grids and
head dims (and, optionally, which must be refused); hypothesis then draws cases and checks the
contract of ``madkit.interfaces.RotaryEmbedding``::

    from madkit.testing import RopeContract, rope_cases

    class TestMyRope(RopeContract):
        def valid_cases(self):
            return rope_cases(MyRopeConfig(), head_dims=(8, 16, 64))

Shapes: L tokens, e head dim, n batch, h heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import torch

from madkit.interfaces import RotaryEmbedding, apply_rotary
from madkit.testing.config_checks import ConfigContract, given, property_settings, st

_settings = property_settings(15)


@attrs.frozen
class RopeCase:
    """A config that must build for an h x w token ``grid`` and ``head_dim``."""

    grid: tuple[int, int]
    head_dim: int
    config: Any


@attrs.frozen
class InvalidRopeCase:
    """A config that must be refused for ``grid`` and ``head_dim``; ``mentions`` must all appear in the error."""

    grid: tuple[int, int]
    head_dim: int
    config: Any
    mentions: tuple[str, ...] = ()


def rope_cases(config: Any, head_dims: Iterable[int] = (8, 16, 32, 64), max_side: int = 16) -> st.SearchStrategy:
    """``RopeCase``s of one config on token grids with sides in [1, max_side] and the given head dims."""
    side = st.integers(1, max_side)
    return st.builds(RopeCase, st.tuples(side, side), st.sampled_from(list(head_dims)), st.just(config))


def grid_positions(grid: tuple[int, int], device="cpu") -> torch.Tensor:
    """long [h * w, 2]: (row, col) of every cell, raster order."""
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack((rows.flatten(), cols.flatten()), dim=-1)


class RopeContract(ConfigContract):
    """Subclass in a ``Test*`` class; implement ``valid_cases`` (and ``invalid_cases`` if any exist)."""

    table = "rope"

    # valid_cases(): a strategy of RopeCase (rope_cases helps); invalid_cases() (optional): of InvalidRopeCase

    def case_problems(self, case) -> list:
        return case.config.problems(case.grid, case.head_dim)

    def build_case(self, case) -> RotaryEmbedding:
        return case.config.build(grid=case.grid, head_dim=case.head_dim)

    def _build(self, case: RopeCase) -> RotaryEmbedding:
        rope = self.build_case(case)
        assert isinstance(rope, RotaryEmbedding), f"build() returned {type(rope).__name__}, not a RotaryEmbedding"
        return rope

    # ------------------------------------------------------------------ the tables
    @_settings
    @given(data=st.data())
    def test_tables_are_float32_per_token_and_finite(self, data):
        case = data.draw(self.valid_cases())
        positions = grid_positions(case.grid)
        cos, sin = self._build(case).tables(positions)
        for table in (cos, sin):
            assert table.shape == (positions.shape[0], case.head_dim), "tables are [L, head_dim]"
            assert table.dtype == torch.float32, "RoPE tables are fp32 (bf16 angles blur positions)"
            assert torch.isfinite(table).all()

    @_settings
    @given(data=st.data())
    def test_tables_build_on_the_meta_device(self, data):
        # `madkit flops` builds models on the meta device: shapes without memory
        case = data.draw(self.valid_cases())
        cos, sin = self._build(case).tables(grid_positions(case.grid, device="meta"))
        assert cos.device.type == sin.device.type == "meta" and cos.shape == sin.shape

    @_settings
    @given(data=st.data(), seed=st.integers(0, 2**31 - 1), count=st.integers(1, 24))
    def test_a_token_rows_depend_only_on_its_position(self, data, seed, count):
        # cached == uncached: tables of a few tokens (a block, in any order, a clean block and its noised
        # twin at the same place) are exactly those tokens' rows of the whole grid's tables
        case = data.draw(self.valid_cases())
        rope = self._build(case)
        everything = grid_positions(case.grid)
        cos, sin = rope.tables(everything)
        generator = torch.Generator().manual_seed(seed)
        pick = torch.randint(everything.shape[0], (count,), generator=generator)
        some = everything[pick].repeat(2, 1)  # each picked position twice
        some_cos, some_sin = rope.tables(some)
        assert torch.equal(some_cos, cos[pick].repeat(2, 1)) and torch.equal(some_sin, sin[pick].repeat(2, 1))

    @_settings
    @given(data=st.data())
    def test_build_is_deterministic(self, data):
        # a resumed run or a loaded checkpoint rebuilds the tables: no hidden state, no randomness
        case = data.draw(self.valid_cases())
        positions = grid_positions(case.grid)
        a, b = self._build(case).tables(positions), self._build(case).tables(positions)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    # ------------------------------------------------------------------ the pairing
    @_settings
    @given(data=st.data())
    def test_rotate_is_a_signed_pairing_of_head_dims(self, data):
        case = data.draw(self.valid_cases())
        rope, e = self._build(case), case.head_dim
        matrix = rope.rotate(torch.eye(e))  # row i = rotate(basis vector i)
        assert matrix.shape == (e, e)
        one_each = (matrix.abs().sum(0) == 1).all() and (matrix.abs().sum(1) == 1).all()
        assert ((matrix == 0) | (matrix.abs() == 1)).all() and one_each, (
            "rotate must send every head dim to exactly one dim, with a sign (a signed permutation)"
        )
        assert torch.equal(rope.rotate(matrix), -torch.eye(e)), "rotate(rotate(x)) must be -x (dims pair up)"

    @_settings
    @given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
    def test_rotate_keeps_shape_and_dtype(self, data, dtype):
        case = data.draw(self.valid_cases())
        x = torch.randn(2, 3, 5, case.head_dim).to(dtype)  # [n, h, L, e]
        out = self._build(case).rotate(x)
        assert out.shape == x.shape and out.dtype == dtype

    @_settings
    @given(data=st.data(), seed=st.integers(0, 2**31 - 1))
    def test_applying_to_a_slice_of_tokens_matches_the_whole_sequence(self, data, seed):
        # what the KV cache relies on: rotating one block's q/k with its own rows gives the same numbers
        # as rotating the whole sequence, in bf16 as in fp32
        case = data.draw(self.valid_cases())
        rope = self._build(case)
        positions = grid_positions(case.grid)
        cos, sin = rope.tables(positions)
        x = torch.randn(2, 3, positions.shape[0], case.head_dim, generator=torch.Generator().manual_seed(seed))
        for dtype in (torch.float32, torch.bfloat16):
            whole = rope.apply(x.to(dtype), cos, sin)
            assert whole.dtype == dtype
            start = positions.shape[0] // 2
            part = apply_rotary(x[:, :, start:].to(dtype), cos[start:], sin[start:], rope.rotate)
            assert torch.equal(part, whole[:, :, start:])
