"""Block-wise generation with and without the KV cache: images/s and FLOPs per image, measured
(torch's FlopCounterMode around real generation) against the analytic count of the cost model.

    python benchmarks/generate.py [--steps 10] [--num 4]

The model is a small MADFormer with T = 16 blocks (8x8 tokens in 2x2 tiles, 4 tokens per block) on
random weights: speed and FLOPs do not depend on training. The analytic minimum is the cached count:
AR layers once per block, diffusion layers on the block's B tokens per step, one clean pass per block.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from madkit.build import build_experiment
from madkit.engine.generate import generate_latents
from madkit.experiment_spec import load_spec
from madkit.registry import Registry

SPEC = Path(__file__).resolve().parents[1] / "experiments/tiny/madformer.toml"
SETS = ["model.partitioner.tile=[2,2]", "model.width=64", "model.mlp_hidden=192", "model.depth=6",
        "model.diffusion_depth=3"]


def run(model, sampler, num: int, steps: int, use_cache: bool) -> tuple[float, int]:
    def go():
        for _ in generate_latents(model, sampler, range(num), seed=0, batch=num, steps=steps, use_cache=use_cache):
            pass

    go()  # warm-up
    start = time.perf_counter()
    go()
    seconds = time.perf_counter() - start
    counter = FlopCounterMode(display=False)
    with counter:
        go()
    return num / seconds, counter.get_total_flops() // num


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--num", type=int, default=4)
    args = p.parse_args()
    registry = Registry.load()
    spec = load_spec(SPEC, SETS, registry).spec
    experiment = build_experiment(spec, registry)
    model = experiment.model.eval()
    cost = model.compute_cost(args.steps)
    print(f"T = {model.T} blocks of B = {model.B} tokens, N = {len(model.layers)}, D = {cost['diffusion_depth']}, "
          f"{args.steps} steps, {args.num} images, {torch.get_num_threads()} threads")
    results = {}
    for use_cache in (True, False):
        ips, measured = run(model, experiment.sampler, args.num, args.steps, use_cache)
        analytic = cost["sample_flops_per_image" if use_cache else "sample_flops_per_image_uncached"]
        results[use_cache] = ips
        print(f"  {'cached  ' if use_cache else 'uncached'}  {ips:8.2f} img/s  measured {measured / 1e6:10.2f} MFLOP/img"
              f"  analytic {analytic / 1e6:10.2f} MFLOP/img")
    print(f"  cache speed-up {results[True] / results[False]:.2f}x; "
          f"uncached/cached analytic FLOPs {cost['sample_flops_per_image_uncached'] / cost['sample_flops_per_image']:.2f}x")


if __name__ == "__main__":
    main()
