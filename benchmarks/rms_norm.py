"""Eager training step with madkit's RMSNorm (closed-form backward) against the same model with
``nn.RMSNorm``'s autograd backward: the medium configuration, fp32, interleaved rounds.

    OMP_NUM_THREADS=1 python benchmarks/rms_norm.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import time

import torch
from step import build_step
from timing import describe, describe_ratio, interleaved, ratio
from torch import nn

from madkit_layers.rms_norm import RMSNorm


def composite_norms(model: nn.Module) -> int:
    """Turn every madkit RMSNorm of ``model`` back into a plain ``nn.RMSNorm`` (same parameters)."""
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    for m in norms:
        m.__class__ = nn.RMSNorm
    return len(norms)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    torch.manual_seed(0)
    closed_form, _ = build_step("medium")
    composite, info = build_step("medium")
    swapped = composite_norms(info["model"])
    cases = {"closed-form": closed_form, "nn.RMSNorm": composite}
    times = interleaved(cases, rounds=args.rounds, warmup=3, clock=time.process_time)
    print(f"medium eager step, fp32, {torch.get_num_threads()} thread(s), {swapped} norms, CPU time of this process:")
    for name, values in times.items():
        print(f"  {name:<12} {describe(values)}")
    print(f"  closed-form / nn.RMSNorm: {describe_ratio(ratio(times['closed-form'], times['nn.RMSNorm']))}")


if __name__ == "__main__":
    main()
