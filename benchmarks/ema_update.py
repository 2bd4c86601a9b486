"""Cost of one EMA update: madkit's EMA (torch's AveragedModel with madkit's update) against the
same fused lerp written out by hand, which is what madkit ran before AveragedModel held the copy.

    python benchmarks/ema_update.py [--width 1024] [--layers 12] [--rounds 15]

The model is a stack of transformer-sized linear layers (about 12 x 8 x width^2 parameters); each
round updates both averages once from the same live weights, alternating which goes first.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import describe, describe_ratio, interleaved, ratio

from madkit.engine.training.ema import EMA


def model(width: int, layers: int) -> nn.Module:
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(width, 3 * width), nn.Linear(width, width), nn.Linear(width, 4 * width),
                   nn.Linear(4 * width, width), nn.LayerNorm(width)]
    return nn.Sequential(*blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    live = model(args.width, args.layers).requires_grad_(False)
    ema = EMA(live, decay=0.9999, warmup=100)
    by_hand = [p.clone() for p in copy.deepcopy(live).parameters()]

    def written_out() -> None:
        torch._foreach_lerp_(by_hand, list(live.parameters()), 1.0 - ema.decay_at(ema.updates + 1))

    times = interleaved({"AveragedModel": lambda: ema.update(live), "by hand": written_out}, args.rounds)
    n = sum(p.numel() for p in live.parameters())
    print(f"{n / 1e6:.1f}M parameters, {torch.get_num_threads()} thread(s), {args.rounds} rounds")
    for name, values in times.items():
        print(f"  {name:<14} {describe(values)}")
    print(f"  AveragedModel / by hand: {describe_ratio(ratio(times['AveragedModel'], times['by hand']))}")


if __name__ == "__main__":
    main()
