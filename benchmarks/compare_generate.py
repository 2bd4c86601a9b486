"""Generation side by side (a section of compare.py): the KV cache against the paths that recompute,
and throughput as the number of blocks grows.

    python benchmarks/compare.py generate [--quick]

1. Cached vs uncached at T = 16 blocks of 4 tokens (a 6-layer, D = 3, width-64 MADFormer on an 8x8 token
   grid in 2x2 tiles, DDIM 10 steps, 4 images, random weights: speed and FLOPs do not depend on
   training). Cases: the KV cache; the reference's scheme (the cache, but the newest clean block's
   keys/values in the diffusion layers recomputed at every step); uncached (the whole prefix through
   every layer at every step); and, without --quick, the cache with compiled passes. FLOPs per image are
   measured with torch's FlopCounterMode around real generation and computed by the cost model.
2. Scaling in T: the quickstart model (width 128, N = 6, D = 3) on 64x64 images, a 16x16 token grid
   cut into T = 1, 4, 16 and 64 square tiles (256 down to 4 tokens per block), 16 images (the
   quickstart's sample grid), Euler 25 steps; GFLOP/s from the cost model's analytic sampling FLOPs;
   without --quick, T = 1 and T = 64 also with compiled passes.
Every case of a table runs in alternation (timing.interleaved) and is timed in CPU time of this
process (one thread), which leaves out the time spent waiting for a core on a shared machine; ratios
are medians of per-round ratios with their interquartile range.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from timing import describe, describe_ratio, interleaved, measured_flops, quartiles, ratio

from madkit.build import build_experiment
from madkit import rng
from madkit.experiment_spec import load_spec
from madkit.registry import Registry
from madkit_models.blockwise import generate_blocks

ROOT = Path(__file__).resolve().parents[1]
SMALL_BLOCKS = (
    ROOT / "experiments/tiny/madformer.toml",
    ["model.partitioner.tile=[2,2]", "model.width=64", "model.mlp_hidden=192", "model.depth=6",
     "model.diffusion_depth=3"],
)
QUICKSTART = ROOT / "experiments/quickstart.toml"
# the quickstart model on 64x64 images: a 16x16 token grid (patch 4), cut into square tiles
TILES_FOR_T = {1: 16, 4: 8, 16: 4, 64: 2}


def build(spec_path: Path, sets: list[str]):
    registry = Registry.load()
    experiment = build_experiment(load_spec(spec_path, sets, registry).spec, registry)
    return experiment.model.eval(), experiment.sampler


def generation(model, sampler, num: int, steps: int, step: str = "eager", **options):
    """A closure generating ``num`` images (per-image generators, as madkit sample does) with the
    passes run as ``step`` (see plugins/madkit_models/passes.py)."""

    def go():
        model.denoise_step = step
        generators = [rng.generator(0, "sample", i) for i in range(num)]
        return generate_blocks(model, sampler, generators, steps=steps, **options)

    return go


def cache_table(quick: bool) -> None:
    model, sampler = build(*SMALL_BLOCKS)
    num, steps = 4, 10
    cost = model.compute_cost(steps)
    cases = {
        "cached": generation(model, sampler, num, steps),
        "reference scheme": generation(model, sampler, num, steps, recompute_clean=True),
        "uncached": generation(model, sampler, num, steps, use_cache=False),
    }
    if not quick:  # compiling takes minutes on a loaded CPU: a measurement, not a smoke run
        cases["cached, compiled"] = generation(model, sampler, num, steps, step="compiled")
        cases["cached, compiled"]()
    analytic = {"cached": cost["sample_flops_per_image"], "uncached": cost["sample_flops_per_image_uncached"]}
    print(f"T = {model.T} blocks of B = {model.B} tokens, N = {len(model.layers)}, D = {cost['diffusion_depth']}, "
          f"{steps} DDIM steps, {num} images; CPU time of this process, {_load()}")
    times = interleaved(cases, rounds=3 if quick else 9, warmup=1, clock=time.process_time)
    print(f"  {'case':<22} {'time per batch':<28} {'img/s':>7} {'measured MFLOP/img':>19} {'analytic':>9}")
    for name, fn in cases.items():
        # FlopCounterMode sees the ATen ops of eager code only
        flops = f"{measured_flops(fn) / num / 1e6:.1f}" if "compiled" not in name else "-"
        ana = f"{analytic[name] / 1e6:.1f}" if name in analytic else "-"
        print(f"  {name:<22} {describe(times[name]):<28} {num / quartiles(times[name])[1]:7.2f} {flops:>19} {ana:>9}")
    for fast in [c for c in cases if c.startswith("cached")]:
        for slow in ("reference scheme", "uncached"):
            print(f"  {slow} time / {fast} time: {describe_ratio(ratio(times[slow], times[fast]))}")
    print(f"  analytic FLOPs uncached / cached: {analytic['uncached'] / analytic['cached']:.2f}x")


def scaling_table(quick: bool) -> None:
    num, steps = (2, 3) if quick else (16, 25)
    cases, flops = {}, {}
    for t, side in TILES_FOR_T.items():
        model, sampler = build(QUICKSTART, ["data.resolution=64", f"model.partitioner.tile=[{side},{side}]"])
        assert model.T == t, (model.T, t)
        cases[f"T = {t}"] = generation(model, sampler, num, steps)
        flops[f"T = {t}"] = num * model.compute_cost(steps)["sample_flops_per_image"]
        if not quick and t in (1, max(TILES_FOR_T)):  # the ends, also with compiled passes
            name = f"T = {t}, compiled"
            cases[name], flops[name] = generation(model, sampler, num, steps, step="compiled"), flops[f"T = {t}"]
            cases[name]()  # compiles
    print(f"quickstart model on a 16x16 token grid, {num} images, {steps} Euler steps; GFLOP/s from the analytic "
          f"sampling FLOPs over CPU time, {_load()}")
    times = interleaved(cases, rounds=2 if quick else 5, warmup=1, clock=time.process_time)
    rates = {name: [flops[name] / s / 1e9 for s in times[name]] for name in cases}
    for name in cases:
        q1, q2, q3 = quartiles(rates[name])
        print(f"  {name:<16} {describe(times[name], 1.0, 's'):<26} {q2:6.2f} GFLOP/s [{q1:.2f}, {q3:.2f}]  "
              f"{flops[name] / num / 1e6:9.1f} MFLOP/img")
    last = f"T = {max(TILES_FOR_T)}"
    for suffix in ("", ", compiled"):
        if f"T = 1{suffix}" in rates:
            print(f"  GFLOP/s T = 1{suffix} / {last}{suffix}: "
                  f"{describe_ratio(ratio(rates[f'T = 1{suffix}'], rates[last + suffix]))}")


def _load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def run(quick: bool) -> None:
    torch.manual_seed(0)
    cache_table(quick)
    print()
    scaling_table(quick)
