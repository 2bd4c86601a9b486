"""The quickstart MADFormer's first optimizer step, through the real trainer: loss and gradients.

Used in-process (micro-batch splits) and as a torchrun script (ranks)::

    torchrun --standalone --nproc_per_node=2 tests/quickstart_step.py OUT MICRO [--set K=V ...]

which writes OUT/step.pt on rank 0: the global loss and every parameter's gradient after DDP's
all-reduce (the gradients the optimizer would apply). The spec is experiments/quickstart.toml at
global batch 4 on 8 emoji, its noise and timestep sampling untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.toml"
SMALL = [
    "train.batch=4",
    "train.steps=4",
    "train.device=cpu",
    "train.precision=fp32",
    "train.sample_num=1",
    "train.sample_steps=2",
    "data.limit=8",
    "data.disk_cache=false",
    "log.sinks=[]",
    "log.progress=false",
]


def first_step(out: Path, micro: int, sets: list[str] = ()) -> dict:
    """{"loss": the global mean loss of step 1, "grads": {name: gradient}} (on every rank)."""
    from madkit.engine import distributed
    from madkit.engine.training.loop import Trainer
    from madkit.experiment_spec import load_spec
    from madkit.registry import Registry

    registry = Registry.load()
    loaded = load_spec(QUICKSTART, [*SMALL, f"train.micro_batch={micro}", *sets], registry)
    env = distributed.setup("cpu")
    try:
        trainer = Trainer(loaded, registry, Path(out), env)
        try:
            terms = trainer._forward_backward(trainer.data_stream)
            loss = distributed.all_reduce_mean(env, terms["loss"].detach().reshape(1)).item()
            grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        finally:
            trainer.reporter.close()
            trainer.lock.release()
    finally:
        distributed.teardown(env)
    return {"loss": loss, "grads": grads}


def relative_difference(a: dict, b: dict) -> tuple[float, float]:
    """(|loss_a - loss_b| / |loss_a|, ||grad_a - grad_b|| / ||grad_a|| over all parameters)."""
    assert a["grads"].keys() == b["grads"].keys()
    names = sorted(a["grads"])
    ga = torch.cat([a["grads"][n].flatten().double() for n in names])
    gb = torch.cat([b["grads"][n].flatten().double() for n in names])
    return abs(a["loss"] - b["loss"]) / abs(a["loss"]), float((ga - gb).norm() / ga.norm())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("micro", type=int)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = first_step(Path(args.out), args.micro, args.sets)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(result, Path(args.out) / "step.pt")
    sys.exit(0)
