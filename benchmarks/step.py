"""Training step time of the bare model: forward + backward + AdamW on random latents.

    python benchmarks/step.py                       # tiny and medium configurations on the CPU
    python benchmarks/step.py --ffhq                # + the FFHQ-1024 geometry (CUDA only, bf16)

Unlike benchmarks/train.py (the whole loop with data, EMA and logging) this isolates the model, so
it shows what the masks, the two towers and the dropped clean block cost. Tokens/s counts the tokens
the training pass computes (``train_sequence_length_computed``) per image.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
from pathlib import Path

import torch

from madkit.build import build_experiment
from madkit import rng
from madkit.engine.training.model_setup import compile_blocks, enable_activation_checkpointing
from madkit.engine.training.optim import build_optimizer
from madkit.experiment_spec import load_spec
from madkit.registry import Registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiny": (ROOT / "experiments/tiny/madformer.toml", [], 8),
    "medium": (ROOT / "experiments/quickstart.toml", [], 16),
    "ffhq": (ROOT / "experiments/madformer_ffhq.toml", [], 8),
}


def build_step(
    name: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    batch: int | None = None,
    compile: bool = False,
    activation_checkpointing: bool = False,
    sets: list[str] | None = None,
):
    """(step, info): ``step()`` runs one training step of configuration ``name`` on random latents:
    forward under autocast to ``dtype`` (None: fp32), backward, and the trainer's AdamW (fused where
    torch has it). ``compile`` and ``activation_checkpointing`` prepare the model as the trainer does
    (``train.compile``, ``train.activation_checkpointing``); ``sets`` are spec overrides. ``info``
    holds the model, spec, batch and analytic cost."""
    spec_path, base_sets, default_batch = CONFIGS[name]
    batch = batch or default_batch
    registry = Registry.load()
    spec = load_spec(spec_path, [*base_sets, *(sets or [])], registry, check_resources=False).spec
    experiment = build_experiment(spec, registry, device=device)
    model = experiment.model.to(device).train()
    if activation_checkpointing:
        enable_activation_checkpointing(model, registry.kind_of("model", spec.model))
    if compile:
        compile_blocks(model)
    opt = build_optimizer(model, spec.train)
    latents = torch.randn(batch, *experiment.latent_shape, device=device)
    labels = torch.randint(0, max(1, experiment.num_classes), (batch,), device=device)
    labels = labels if experiment.num_classes else None

    counter = itertools.count()

    def step() -> None:
        # one generator per example, as the trainer hands them (their cost is part of a step); the meta
        # device (FLOP counting) has no generators: draws are made on the CPU and moved, as for CUDA
        gen_device = "cpu" if torch.device(device).type == "meta" else device
        generators = rng.indexed_generators(0, "loss", (next(counter),), range(batch), gen_device)
        autocast = torch.autocast(device.split(":")[0], dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            loss = model.loss(latents, labels, experiment.schedule, generators)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    info = {"model": model, "spec": spec, "experiment": experiment, "batch": batch, "cost": model.compute_cost(1)}
    return step, info


def measure(
    name: str,
    device: str,
    steps: int,
    warmup: int,
    dtype: torch.dtype | None,
    batch: int | None = None,
    compile: bool = False,
    activation_checkpointing: bool = False,
) -> dict:
    """Median step time over ``steps`` after ``warmup`` steps (compilation happens in the warmup);
    peak memory on CUDA."""
    step, info = build_step(name, device, dtype, batch, compile, activation_checkpointing)
    cost, batch = info["cost"], info["batch"]
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = interleaved({name: step}, rounds=steps, warmup=warmup, sync=torch.cuda.synchronize if cuda else None)
    step_s = statistics.median(times[name])
    return {
        "config": name,
        "device": device,
        "dtype": str(dtype).replace("torch.", "") if dtype else "fp32",
        "batch": batch,
        "compiled": compile,
        "activation_checkpointing": activation_checkpointing,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "parameters": cost["parameters"],
        "step_s": step_s,
        "images_per_s": batch / step_s,
        "tokens_per_s": batch * cost["train_sequence_length_computed"] / step_s,
        "train_tflops_per_s": batch * cost["train_flops_per_image"] / step_s / 1e12,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ffhq", action="store_true", help="also the FFHQ-1024 geometry (needs CUDA)")
    args = p.parse_args()
    # one intra-op thread unless the caller chose: a shared machine's default threads crawl
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    runs = [("tiny", "cpu", None), ("medium", "cpu", None), ("medium", "cpu", torch.bfloat16)]
    if torch.cuda.is_available():
        runs += [("medium", "cuda", torch.bfloat16)]
        if args.ffhq:
            runs += [("ffhq", "cuda", torch.bfloat16)]
    for name, device, dtype in runs:
        r = measure(name, device, args.steps, args.warmup, dtype)
        print(
            f"{r['config']:<7} {r['device']:<5} {r['dtype']:<9} batch {r['batch']:>3}  params {r['parameters']:>13,}  "
            f"step {r['step_s'] * 1e3:8.1f} ms  {r['images_per_s']:8.1f} img/s  {r['tokens_per_s']:10.0f} tok/s  "
            f"{r['train_tflops_per_s']:.3f} TFLOP/s"
        )


if __name__ == "__main__":
    main()
