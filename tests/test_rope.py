"""The rope kinds: the contract suite for both built-ins, each formula checked dimension by dimension,
and what sets them apart (the axial kind rotates; the released variant does not)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: tiny models, one thread)
from hypothesis import strategies as st
from madkit_layers.rope import AxialRopeConfig, ReferenceRopeConfig, reference_axis_base
from model_helpers import build, registry

from madkit.testing import InvalidRopeCase, RopeContract, grid_positions, rope_cases


class TestAxialRope(RopeContract):
    def valid_cases(self):
        return st.one_of(rope_cases(AxialRopeConfig(), head_dims=(4, 8, 12, 64)), rope_cases(AxialRopeConfig(100.0)))

    def invalid_cases(self):
        return st.sampled_from([6, 10, 2]).map(
            lambda e: InvalidRopeCase((4, 4), e, AxialRopeConfig(), mentions=(f"got {e}", "divisible by 4"))
        )


class TestReferenceRope(RopeContract):
    def valid_cases(self):
        return rope_cases(ReferenceRopeConfig(), head_dims=(8, 16, 64))  # sides to 16; the formula test: 64

    def invalid_cases(self):
        return st.sampled_from([4, 6, 18]).map(
            lambda e: InvalidRopeCase((8, 8), e, ReferenceRopeConfig(), mentions=(f"got {e}", "madformer-reference"))
        )


def _documented_kind():
    """The RoPE kind docs/writing-plugins.md shows third parties, executed as written."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md").read_text()
    code = re.search(r"^<!-- snippet: rope-kind -->\n```python\n(.*?)^```$", text, flags=re.M | re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "writing-plugins.md (rope-kind)", "exec"), namespace)
    return namespace["TwoThetaRopeConfig"]


class TestDocumentedRopeKind(RopeContract):
    def valid_cases(self):
        return rope_cases(_documented_kind()(), head_dims=(4, 8, 64))


# --------------------------------------------------------------------------- the formulas, one dim at a time
GRID = (8, 64)  # rows: 8 tokens -> base 100; columns: 64 tokens -> base 200 (the FFHQ grid)


def _explicit(x: torch.Tensor, positions: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos table, rotated x) computed per token and per dim in float64, straight from the definitions."""
    tokens, e = x.shape
    half, quarter = e // 2, e // 4
    cos = torch.empty(tokens, e, dtype=torch.float64)
    out = torch.empty(tokens, e, dtype=torch.float64)
    for i in range(tokens):
        for m in range(e):
            axis = m // half  # the first half of the head follows the row, the second the column
            j = m % quarter
            if kind == "reference":
                base = {0: 100.0, 1: 200.0}[axis]
                angle = positions[i, axis].item() * base ** (-j / (quarter - 1))  # exponents 0..1 inclusive
                partner, sign = (m + half, -1.0) if m < half else (m - half, 1.0)  # across the whole head
            else:
                angle = positions[i, axis].item() * 10000.0 ** (-j / quarter)
                k = m % half  # pairs stay inside the axis' half
                partner, sign = (m + quarter, -1.0) if k < quarter else (m - quarter, 1.0)
            cos[i, m] = math.cos(angle)
            out[i, m] = x[i, m].item() * math.cos(angle) + sign * x[i, partner].item() * math.sin(angle)
    return cos, out


@pytest.mark.parametrize("kind, config", [("reference", ReferenceRopeConfig()), ("axial", AxialRopeConfig())])
@pytest.mark.parametrize("head_dim", [8, 16])
def test_formula_matches_an_explicit_per_dimension_computation(kind, config, head_dim):
    rope = config.build(grid=GRID, head_dim=head_dim)
    positions = grid_positions(GRID)
    x = torch.randn(positions.shape[0], head_dim, generator=torch.Generator().manual_seed(0))
    cos, sin = rope.tables(positions)
    want_cos, want = _explicit(x.double(), positions, kind)
    assert (cos.double() - want_cos).abs().max().item() < 1e-5
    assert (rope.apply(x, cos, sin).double() - want).abs().max().item() < 1e-4


def test_reference_bases_follow_the_axis_length():
    assert reference_axis_base(8) == 100 and reference_axis_base(64) == 200 and reference_axis_base(16) == 100
    assert ReferenceRopeConfig().build(grid=GRID, head_dim=64).bases == (100, 200)


def _norm_change(config) -> float:
    rope = config.build(grid=GRID, head_dim=16)
    positions = grid_positions(GRID)
    x = torch.randn(positions.shape[0], 16, generator=torch.Generator().manual_seed(1))
    out = rope.apply(x, *rope.tables(positions))
    return ((out.norm(dim=-1) - x.norm(dim=-1)).abs() / x.norm(dim=-1)).max().item()


def test_the_default_kind_is_a_rotation_and_the_reference_kind_is_not():
    assert _norm_change(AxialRopeConfig()) < 1e-5
    assert _norm_change(ReferenceRopeConfig()) > 0.05  # pairs a row angle with a column angle


def test_the_default_kind_scores_depend_only_on_relative_position():
    rope = AxialRopeConfig().build(grid=(16, 16), head_dim=16)
    q, k = torch.randn(2, 16, dtype=torch.float64).unbind(0)

    def score(p, r):
        cos, sin = (t.double() for t in rope.tables(torch.tensor([p, r])))
        a, b = rope.apply(torch.stack([q, k]), cos, sin)
        return (a * b).sum().item()

    assert score((2, 3), (5, 1)) == pytest.approx(score((9, 7), (12, 5)), abs=1e-6)


# --------------------------------------------------------------------------- in the model and the spec
def test_the_model_uses_its_rope_kinds_tables_and_pairing():
    model = build("tiles", rope={"kind": "madformer-reference"})
    cos, sin = model.rope.tables(model.partitioner.positions.flatten(0, 1))
    assert torch.equal(model.rope_cos.flatten(0, 1), cos) and torch.equal(model.rope_sin.flatten(0, 1), sin)
    assert all(layer.clean.rotate is model.rope.rotate for layer in model.layers)
    default = build("tiles")
    assert not torch.equal(default.rope_cos, model.rope_cos)


def test_rope_problems_are_reported_at_the_rope_or_heads_key():
    from model_helpers import config

    context = {"latent_shape": (3, 8, 8), "num_classes": 0, "registry": registry()}
    reference = config("tiles", rope={"kind": "madformer-reference"}, width=16, heads=4)  # head dim 4 < 8
    assert [(p.path, "madformer-reference" in p.message) for p in reference.check(context)] == [("rope.kind", True)]
    axial = config("tiles", width=24, heads=4)  # head dim 6
    assert [p.path for p in axial.check(context)] == ["heads"]


def test_a_spec_stored_before_rope_kinds_existed_still_loads():
    from model_helpers import config

    legacy = config("tiles", rope_theta=500.0)  # what old run folders' resolved specs hold
    assert legacy.rope_config(registry()) == AxialRopeConfig(theta=500.0)
    both = config("tiles", rope_theta=500.0, rope={"kind": "axial"})
    context = {"latent_shape": (3, 8, 8), "num_classes": 0, "registry": registry()}
    assert any(p.path == "rope_theta" for p in both.check(context))
