"""The training section of benchmarks/compare.py: madkit's step against diffusers' DiT, the attention
backends, and the attention work executed at the FFHQ geometry.

1. Step time at the medium geometry (experiments/quickstart.toml: width 128, 4 heads, 6 layers, batch
   16, 112 tokens per image through the trunk) against diffusers' DiT built from its own modules
   (``DiTTransformer2DModel``: patch projection, adaLN-Zero transformer blocks, final adaLN layer) at the
   same width, heads, depth and tokens. Both sides: fp32, the thread count compare.py sets, the same
   fused AdamW, forward + backward + optimizer step; eager, then regionally compiled (each transformer
   block compiled on both sides). FLOPs per step are counted with FlopCounterMode on the meta device.
2. The CPU attention backends in the whole training step (dense masks against block-sparse groups)
   as blocks grow, and the block-sparse group size at small blocks (attention forward + backward only).
3. Executed / useful attention FLOPs of one FFHQ-geometry training forward pass: each backend's calls
   counted by FlopCounterMode on the meta device (FlexAttention's tiles counted from its block masks),
   useful = the allowed pairs of ``cost.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from step import build_step
from timing import describe, describe_ratio, interleaved, measured_flops, ratio
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from madkit.build import build_experiment
from madkit.engine.training.model_setup import compile_blocks, compile_cache_dir
from madkit.engine.training.optim import fused_adamw_available
from madkit.experiment_spec import load_spec
from madkit.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
# CPU seconds of this process: the runs are one-threaded, and on a shared machine the wall time also
# counts the time other jobs hold the cores, which widens the spread more than anything measured here
CLOCK = time.process_time
FFHQ = ROOT / "experiments/madformer_ffhq.toml"
# (label, spec overrides, batch): the quickstart model on larger images -> more and larger blocks
GEOMETRIES = [
    ("T=4, B=16 (medium)", [], 16),
    ("T=16, B=16", ["data.resolution=64"], 4),
    ("T=16, B=64", ["data.resolution=128", "model.partitioner.tile=[8,8]"], 2),
]


def run(quick: bool) -> None:
    rounds, warmup = (3, 1) if quick else (15, 3)
    step_against_dit(rounds, warmup, compiled=not quick)
    backends_in_the_step(rounds, warmup)
    group_sizes(rounds, warmup)
    ffhq_attention_flops()


# --------------------------------------------------------------------------- 1. against DiT
class DiTOnTokens(nn.Module):
    """diffusers' DiT on a token sequence: its modules in its order, minus the final un-patchify (which
    needs a square token grid; the madkit trunk's 112 tokens are not one). The patch projection is
    DiT's own convolution weight applied to the flattened patches; positions come from a fixed table."""

    def __init__(self, width: int, heads: int, depth: int, patch: int, channels: int, tokens: int):
        super().__init__()
        from diffusers import DiTTransformer2DModel

        self.dit = DiTTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=width // heads,
            in_channels=channels,
            out_channels=channels,
            num_layers=depth,
            patch_size=patch,
            sample_size=patch * 8,
            num_embeds_ada_norm=1,
        )
        self.register_buffer("positions", torch.randn(tokens, width) * 0.02)

    def forward(self, patches: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dit = self.dit
        proj = dit.pos_embed.proj
        h = F.linear(patches, proj.weight.flatten(1), proj.bias) + self.positions
        for block in dit.transformer_blocks:
            h = block(h, timestep=t, class_labels=labels)
        conditioning = dit.transformer_blocks[0].norm1.emb(t, labels, hidden_dtype=h.dtype)
        shift, scale = dit.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        h = dit.norm_out(h) * (1 + scale[:, None]) + shift[:, None]
        return dit.proj_out_2(h)


def dit_step(model_cfg, tokens: int, batch: int, device: str = "cpu", compile: bool = False):
    """(step, model) for the DiT at the madkit model's geometry."""
    patch = model_cfg.embedder.patch
    with torch.device(device):
        dit = DiTOnTokens(model_cfg.width, model_cfg.heads, model_cfg.depth, patch, 3, tokens).train()
        patches = torch.randn(batch, tokens, 3 * patch * patch)
        target = torch.randn_like(patches)
        t = torch.randint(0, 1000, (batch,))
        labels = torch.zeros(batch, dtype=torch.long)
    if compile:
        compile_blocks(dit.dit)  # the transformer blocks, as madkit's layers
    params = list(dit.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, fused=fused_adamw_available(params) or None) if device != "meta" else None

    def step() -> None:
        loss = F.mse_loss(dit(patches, t, labels), target)
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step, dit


def step_against_dit(rounds: int, warmup: int, compiled: bool) -> None:
    mad_step, info = build_step("medium")
    model, batch = info["model"], info["batch"]
    tokens = info["cost"]["train_sequence_length_computed"]
    cfg = info["spec"].model
    dit_eager, dit = dit_step(cfg, tokens, batch)
    flops = {
        "madkit": measured_flops(build_step("medium", device="meta")[0]),  # the optimizer step counts no FLOPs
        "dit": measured_flops(dit_step(cfg, tokens, batch, device="meta")[0]),
    }
    trainable = {
        "madkit": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "dit": sum(p.numel() for p in dit.parameters()),
    }
    print(
        f"step vs diffusers DiT: width {cfg.width}, {cfg.heads} heads, {cfg.depth} layers, {tokens} tokens, "
        f"batch {batch}; fp32, fused AdamW = {fused_adamw_available(list(model.parameters()))} on both sides"
    )
    for side in ("madkit", "dit"):
        print(f"  {side:<7} {trainable[side]:>10,} trained parameters  {flops[side] / 1e9:7.2f} GFLOP per step")
    cases = {"madkit": mad_step, "dit": dit_eager}
    if compiled:
        cases.update(_compiled_cases(cfg, tokens, batch))
    times = interleaved(cases, rounds=rounds, warmup=warmup, clock=CLOCK)
    for name, values in times.items():
        side = name.split()[0]
        gflops = flops[side] / sorted(values)[len(values) // 2] / 1e9
        print(f"  {name:<16} {describe(values):<28} {gflops:6.2f} GFLOP/s")
    pairs = [("madkit", "dit", "eager both")]
    if compiled:
        pairs += [("madkit compiled", "dit compiled", "compiled both"), ("madkit compiled", "dit", "asymmetric")]
        pairs += [("madkit compiled", "madkit", "madkit compiled/eager")]
    for a, b, label in pairs:
        print(f"  {a} / {b} ({label}): {describe_ratio(ratio(times[a], times[b]))}")


def _compiled_cases(cfg, tokens: int, batch: int) -> dict:
    """Compiled madkit and DiT steps; the first call (compilation, or loading it from the cache) is
    timed here so the interleaved rounds measure only the compiled steps."""
    cases = {}
    for name, make in (
        ("madkit compiled", lambda: build_step("medium", compile=True)[0]),
        ("dit compiled", lambda: dit_step(cfg, tokens, batch, compile=True)[0]),
    ):
        step = make()
        start = time.perf_counter()
        step()
        print(f"  {name}: first step (compiles, or loads {compile_cache_dir()}) {time.perf_counter() - start:.1f} s")
        cases[name] = step
    return cases


# --------------------------------------------------------------------------- 2. CPU backends
def backends_in_the_step(rounds: int, warmup: int) -> None:
    print("\nattention backend in the whole training step (fp32), block-sparse / dense masks:")
    for label, sets, batch in GEOMETRIES:
        cases = {
            backend: build_step("medium", batch=batch, sets=[*sets, f"model.attention={backend}"])[0]
            for backend in ("sdpa", "block-sparse")
        }
        times = interleaved(cases, rounds=rounds, warmup=warmup, clock=CLOCK)
        print(
            f"  {label:<20} batch {batch}: sdpa {describe(times['sdpa'])}, block-sparse "
            f"{describe(times['block-sparse'])}; ratio {describe_ratio(ratio(times['block-sparse'], times['sdpa']))}"
        )


def group_sizes(rounds: int, warmup: int) -> None:
    """Attention forward + backward of one skip-causal layer at T = 16, B = 16 (the geometry where
    groups matter): dense masks against block-sparse groups of at least N queries."""
    from madkit_layers import block_sparse
    from madkit_layers.attention import FullPlan

    label, sets, batch = GEOMETRIES[1]
    model = build_step("medium", batch=batch, sets=sets)[1]["model"]
    plan = model.training_plan()
    d, heads = model.cfg.width, model.cfg.heads
    gen = torch.Generator().manual_seed(0)

    def qkv(length):
        return [
            torch.randn(batch, length, heads, d // heads, generator=gen).transpose(1, 2).requires_grad_() for _ in "qkv"
        ]

    clean, noised = qkv(plan.clean.length), qkv(plan.noised.length)

    def case(backend: str, min_tokens: int):
        fresh = FullPlan(plan.clean, plan.noised, backend)
        saved = block_sparse.MIN_GROUP_TOKENS
        block_sparse.MIN_GROUP_TOKENS = min_tokens
        try:
            attention = fresh.prepare("skip-causal", torch.device("cpu"), True)
        finally:
            block_sparse.MIN_GROUP_TOKENS = saved

        def go():
            out_c, out_n = attention(clean, noised)
            (out_c.sum() + out_n.sum()).backward()

        return go

    cases = {"sdpa": case("sdpa", 0)} | {f"groups>={n}": case("block-sparse", n) for n in (1, 32, 64, 128)}
    times = interleaved(cases, rounds=rounds, warmup=warmup, clock=CLOCK)
    print(f"\nblock-sparse group size, one layer's attention forward + backward at {label}, batch {batch}:")
    for name, values in times.items():
        print(f"  {name:<12} {describe(values):<28} vs sdpa {describe_ratio(ratio(values, times['sdpa']))}")


# --------------------------------------------------------------------------- 3. FFHQ attention FLOPs
def ffhq_attention_flops() -> None:
    from madkit_layers.attention import FullPlan
    from madkit_layers.block_sparse import tile_pairs
    from madkit_models.cost import CostModel

    registry = Registry.load()
    spec = load_spec(FFHQ, [], registry, check_resources=False).spec
    model = build_experiment(spec, registry, meta=True).model
    layout = model.training_plan()
    heads, head_dim = model.cfg.heads, model.cfg.width // model.cfg.heads
    executed = {}
    for backend in ("sdpa", "block-sparse"):
        plan = FullPlan(layout.clean, layout.noised, backend)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            for i, layer in enumerate(model.layers):
                with_clean = i <= model.last_clean_layer
                q_clean = layer.clean_output_needed and with_clean
                clean = _meta_qkv(heads, plan.clean.length, head_dim, q_clean) if with_clean else None
                plan.attend(layer.pattern, clean, _meta_qkv(heads, plan.noised.length, head_dim, True))
        executed[backend] = counter.get_total_flops()  # SDPA on the meta device counts as batched matmuls
    # FlexAttention computes every 128 x 128 tile holding an allowed pair of each call's dense mask
    dense = FullPlan(layout.clean, layout.noised, "sdpa")
    flex_pairs = 0
    for i, layer in enumerate(model.layers):
        attention = dense.prepare(layer.pattern, torch.device("cpu"), i <= model.last_clean_layer)
        calls = [attention.noised_mask] + ([attention.clean_mask] if layer.clean_output_needed else [])
        flex_pairs += sum(tile_pairs(mask[1]) for mask in calls if mask is not None)
    executed["flex (tiles of 128)"] = 4 * model.cfg.width * flex_pairs
    useful = CostModel(model).train_attention_forward()
    print(f"\nattention FLOPs of one FFHQ training forward pass per image (T = {model.T}, B = {model.B}):")
    print(f"  useful (allowed pairs only)   {useful / 1e9:10.1f} GFLOP")
    for backend, flops in executed.items():
        print(f"  {backend:<29} {flops / 1e9:10.1f} GFLOP  executed / useful {flops / useful:.3f}")


def _meta_qkv(heads: int, length: int, head_dim: int, with_queries: bool):
    q, k, v = (torch.empty(1, heads, length, head_dim, device="meta") for _ in "qkv")
    return (q if with_queries else None), k, v
