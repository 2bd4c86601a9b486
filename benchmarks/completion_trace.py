"""What completion and a trace cost beside plain generation, on a trained run (CPU by default):

    python benchmarks/completion_trace.py runs/quickstart [--num 8] [--keep 2] [--rounds 5]

Interleaved rounds (timing.py): generate(num), generate(num, trace=True), generate(num,
trace="steps") and complete(num images, keep=K, num=1), each as a ratio to plain generation in the
same round. Completion generates only the T - K blocks it does not keep (plus one AR pass per kept
block), so it should take about (T - K) / T of generation; a block trace decodes T + 1 frames per
image, a steps trace one per denoising step as well. CPU time of this process (one thread), so
other jobs on a shared machine slow the figures little.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import describe, describe_ratio, interleaved, ratio

import madkit
from madkit.generation import num_blocks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default="runs/quickstart")
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    pipe = madkit.load(args.run_dir, device=args.device)
    real = pipe.generate(args.num, seed=123, output="tensor")  # stand-ins for real images of the right size
    cases = {
        "generate": lambda: pipe.generate(args.num, seed=0, output="tensor"),
        "trace blocks": lambda: pipe.generate(args.num, seed=0, output="tensor", trace=True),
        "trace steps": lambda: pipe.generate(args.num, seed=0, output="tensor", trace="steps"),
        "complete": lambda: pipe.complete(real, keep=args.keep, num=1, seed=0),
    }
    times = interleaved(cases, rounds=args.rounds, warmup=1, clock=time.process_time)
    total = num_blocks(pipe.model)
    print(f"{pipe.source}: {args.num} images of {pipe.image_shape}, {total} blocks, "
          f"{pipe.experiment.sampler.steps} steps per block, {args.device}, 1 thread, CPU time, {args.rounds} rounds")
    for name, values in times.items():
        vs = "" if name == "generate" else f"   {describe_ratio(ratio(values, times['generate']))} of generate"
        print(f"  {name:13s} {describe(values, 1.0, 's')}{vs}")
    print(f"  (completion keeps {args.keep} of {total} blocks: {(total - args.keep) / total:.2f} of the blocks to generate)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
