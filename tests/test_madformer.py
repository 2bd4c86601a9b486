"""The MADFormer model: masks, causality, backends, validation, parameter counts."""

from __future__ import annotations

import pytest
import torch
from madkit_layers import masks
from madkit_layers.attention import FullPlan
from model_helpers import REFERENCE_NUMERICS, TINY_UNET, batch, build, config, registry

# docs/method.md (the attention mask), T = 4: rows are query blocks (clean 0..3, noised 0..3), columns key blocks.
PAPER_T4 = torch.tensor(
    [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0],
        [1, 0, 0, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 0],
        [1, 1, 1, 0, 0, 0, 0, 1],
    ],
    dtype=torch.bool,
)


def test_block_pattern_matches_the_paper_for_t4():
    assert torch.equal(masks.block_table("skip-causal", 4), PAPER_T4)


def test_ffhq_geometry_allows_26_5_percent_of_pairs():
    # equal-sized blocks: the token-level fraction equals the block-level one
    assert masks.block_table("skip-causal", 16).float().mean().item() == pytest.approx(0.265625)


def test_intra_block_pattern_lets_noised_blocks_see_only_themselves():
    table = masks.block_table("intra-block", 4)
    assert torch.equal(table[4:], torch.cat([torch.zeros(4, 4, dtype=torch.bool), torch.eye(4, dtype=torch.bool)], 1))
    assert torch.equal(table[:4], PAPER_T4[:4])  # the clean side is unchanged


def test_single_stream_pattern_is_block_causal():
    assert torch.equal(masks.block_table("causal", 5, two_streams=False), torch.ones(5, 5).tril().bool())


def _clean_outputs(model, x0, xt, mt):
    """Clean-stream output of the last layer that computes one, captured with a forward hook (the
    last layer whose clean keys are read computes only those keys)."""
    captured = {}
    layer = model.layers[model.last_clean_layer - 1]

    def keep(module, args, out):
        captured["xc"] = out[0]  # returning None keeps the layer's output unchanged

    handle = layer.register_forward_hook(keep)
    try:
        model.forward_blocks(x0, xt, mt)
    finally:
        handle.remove()
    return captured["xc"].unflatten(1, (-1, model.B))


@pytest.mark.parametrize("partitioner", ["tiles", "raster"])
@pytest.mark.parametrize("context", ["clean+condition", "condition"])
def test_changing_clean_block_k_leaves_earlier_outputs_alone(partitioner, context):
    model = build(partitioner, context=context)
    x0, xt, mt = batch(model)
    with torch.no_grad():
        base, _, _ = model.forward_blocks(x0, xt, mt)
        base_clean = None if context == "condition" else _clean_outputs(model, x0, xt, mt)
        for k in range(model.T - 1):
            changed = x0.clone()
            changed[:, k] += torch.randn_like(changed[:, k])
            out, _, _ = model.forward_blocks(changed, xt, mt)
            assert torch.equal(out[:, : k + 1], base[:, : k + 1]), f"noised blocks <= {k} saw clean block {k}"
            assert not torch.allclose(out[:, k + 1], base[:, k + 1]), "block k+1 must depend on clean block k"
            if base_clean is not None:
                clean = _clean_outputs(model, changed, xt, mt)
                assert torch.equal(clean[:, :k], base_clean[:, :k]), f"clean blocks < {k} saw clean block {k}"


def test_noised_block_sees_only_its_own_noise():
    model = build("tiles")
    x0, xt, mt = batch(model)
    with torch.no_grad():
        base, _, _ = model.forward_blocks(x0, xt, mt)
        changed = xt.clone()
        changed[:, 1] += 1.0
        out, _, _ = model.forward_blocks(x0, changed, mt)
    others = [j for j in range(model.T) if j != 1]
    assert torch.equal(out[:, others], base[:, others])
    assert not torch.allclose(out[:, 1], base[:, 1])


@pytest.mark.parametrize(
    "overrides",
    [{}, {"embedder": TINY_UNET, "latent_shape": (4, 8, 8), **REFERENCE_NUMERICS}],
    ids=["default", "reference-numerics"],
)
def test_flex_and_sdpa_backends_agree_on_cpu_forward(overrides):
    model = build("tiles", **overrides)
    x0, xt, mt = batch(model)
    with torch.no_grad():
        sdpa, _, _ = model.forward_blocks(x0, xt, mt)
        object.__setattr__(model.cfg, "attention", "flex")  # frozen config: switch backend for this test only
        try:
            flex, _, _ = model.forward_blocks(x0, xt, mt)
        finally:
            object.__setattr__(model.cfg, "attention", "auto")
    assert (sdpa - flex).abs().max().item() < 1e-5


def test_full_plan_masks_never_leave_a_query_without_keys():
    model = build("tiles", conditioning="class", num_classes=3)
    clean = FullPlan(model.layout(masks.CLEAN, [0, 1, 2]), model.layout(masks.NOISED, [0]))
    layout = FullPlan(model.layout(masks.CLEAN, [0, 1, 2]), model.layout(masks.NOISED, [0, 1, 2, 3]))
    for pattern in ("skip-causal", "intra-block"):
        streams = torch.cat([model.context_layout().streams, layout.clean.streams, layout.noised.streams])
        blocks = torch.cat([model.context_layout().blocks, layout.clean.blocks, layout.noised.blocks])
        assert masks.dense_mask(pattern, streams, blocks).any(dim=1).all()
    assert clean.clean.length == 3 * model.B


def test_unet_embedder_round_trip_shapes_and_rectangular_requirement():
    model = build("tiles", embedder=TINY_UNET, latent_shape=(4, 8, 8))
    x0, xt, mt = batch(model)
    with torch.no_grad():
        pred, cond, _ = model.forward_blocks(x0, xt, mt)
    assert pred.shape == x0.shape and cond.shape == (*x0.shape[:3], 32)
    problems = list(
        config({"kind": "raster", "block_len": 4}, TINY_UNET).check(
            {"latent_shape": (4, 12, 12), "num_classes": 0, "registry": registry()}
        )
    )
    assert any("rectangular" in p.message for p in problems)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"diffusion_depth": 5}, "exceed depth"),
        ({"diffusion_depth": 0}, "D = 0"),
        ({"ar_layer": {"kind": "diffusion"}}, "AR layers cannot come after diffusion layers"),
        ({"diffusion_layer": {"kind": "ar"}}, "must denoise"),
        ({"heads": 3}, "not divisible by heads"),
        ({"conditioning": "class"}, "labelled data"),
        ({"partitioner": {"kind": "tiles", "tile": [3, 3]}}, "does not divide"),
    ],
)
def test_validation_rejects_nonsense(overrides, fragment):
    part = overrides.pop("partitioner", "tiles")
    cfg = config(part, **overrides)
    problems = list(cfg.check({"latent_shape": (3, 8, 8), "num_classes": 0, "registry": registry()}))
    assert any(fragment in p.message for p in problems), problems


def test_training_drops_work_nobody_uses():
    model = build("tiles")
    assert model.compute_cost(4)["train_sequence_length_computed"] == (2 * model.T - 1) * model.B
    pure = build({"kind": "tiles", "tile": [4, 4]}, diffusion_depth=4)
    cost = pure.compute_cost(4)
    assert pure.T == 1 and cost["train_sequence_length_computed"] == pure.B


def test_reference_ffhq_configuration_has_the_released_parameter_count():
    cfg = config({"kind": "tiles", "tile": [16, 16]}, {"kind": "unet"}, width=1152, heads=18, mlp_hidden=4096,
                 depth=28, diffusion_depth=14)
    with torch.device("meta"):
        model = cfg.build(latent_shape=(4, 128, 128), num_classes=0, registry=registry())
    cost = model.compute_cost(250)
    assert cost["parameters"] == 1_300_243_844
    assert cost["parameters_breakdown"] == {
        "transformer": 1_090_388_992,
        "embedder": 64_820_480 + 144_739_460,
        "embedder_down": 64_820_480,
        "embedder_up": 144_739_460,
        "boi": 294_912,
    }
    assert cost["train_sequence_length"] == 8192
    assert cost["attention_allowed_fraction"] == pytest.approx(0.265625)
    assert cost["nfe"] == 250 * 16


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"shared_towers": True},
        {"context": "condition"},
        {"context": "clean"},
        {"diffusion_layer": {"kind": "local-diffusion"}},
        {"conditioning": "class"},
    ],
    ids=["default", "shared", "condition-only", "clean-only", "local", "class"],
)
def test_loss_backward_reaches_every_parameter(overrides):
    from madkit_diffusion.schedules.ddpm_linear import DDPMLinearConfig

    ncls = 3 if overrides.get("conditioning") == "class" else 0
    model = build("tiles", num_classes=ncls, **overrides).train()
    latents = torch.randn(2, *model.latent_shape)
    labels = torch.tensor([0, 2]) if ncls else None
    losses = model.loss(latents, labels, DDPMLinearConfig().build(), [torch.Generator().manual_seed(i) for i in range(2)])
    assert set(losses) == {"loss", "image", "hidden"}
    losses["loss"].backward()
    unused = {name for name, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert not unused, unused


def test_shared_towers_halve_the_layer_parameters():
    separate, shared = build("tiles"), build("tiles", shared_towers=True)
    count = lambda m: sum(p.numel() for p in m.layers.parameters())  # noqa: E731
    assert count(separate) == 2 * count(shared)


@pytest.mark.parametrize("pattern", ["skip-causal", "intra-block", "causal"])
@pytest.mark.parametrize("c", [0, 1])
def test_closed_form_attention_pairs_match_the_mask(pattern, c):
    from madkit_models.cost import attention_pairs, mask_pairs

    B = 3
    for T in (1, 2, 5):
        for lo, hi, tc in ([(0, T, T - 1)] + [(j, j + 1, j) for j in range(T)]) if pattern != "causal" else [(0, T, 0)]:
            for with_clean in (True, False):
                streams, blocks, sizes = [], [], []
                if with_clean and c:
                    streams, blocks, sizes = [masks.CONTEXT], [-1], [c]
                if with_clean:
                    streams += [masks.CLEAN] * tc
                    blocks += list(range(tc))
                    sizes += [B] * tc
                streams += [masks.NOISED] * (hi - lo)
                blocks += list(range(lo, hi))
                sizes += [B] * (hi - lo)
                expected = mask_pairs(pattern, streams, blocks, sizes)
                assert attention_pairs(pattern, B, c, tc, lo, hi, with_clean) == expected, (T, lo, hi, with_clean)
                keys_only = mask_pairs(pattern, streams, blocks, sizes, noised_queries_only=True)
                assert attention_pairs(pattern, B, c, tc, lo, hi, with_clean, clean_queries=False) == keys_only
