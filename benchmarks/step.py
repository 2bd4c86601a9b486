"""Training step time of the bare model: forward + backward + AdamW on random latents.

    python benchmarks/step.py                       # tiny and medium configurations on the CPU
    python benchmarks/step.py --ffhq                # + the FFHQ-1024 geometry (CUDA only, bf16)

Unlike benchmarks/train.py (the whole loop with data, EMA and logging) this isolates the model, so
it shows what the masks, the two towers and the dropped clean block cost. Tokens/s counts the tokens
the training pass computes (``train_sequence_length_computed``) per image.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from madkit.build import build_experiment
from madkit.engine import rng
from madkit.engine.model_setup import compile_blocks, enable_activation_checkpointing
from madkit.engine.optim import build_optimizer
from madkit.experiment_spec import load_spec
from madkit.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiny": (ROOT / "experiments/tiny/madformer.toml", [], 8),
    "medium": (ROOT / "experiments/quickstart.toml", [], 16),
    "ffhq": (ROOT / "experiments/madformer_ffhq.toml", [], 8),
}


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
    """Median step time over ``steps`` after ``warmup`` steps (compilation happens in the warmup).

    ``compile`` and ``activation_checkpointing`` prepare the model as the trainer does
    (``train.compile``, ``train.activation_checkpointing``); peak memory is reported on CUDA."""
    spec_path, sets, default_batch = CONFIGS[name]
    batch = batch or default_batch
    registry = Registry.load()
    spec = load_spec(spec_path, sets, registry, check_resources=False).spec
    experiment = build_experiment(spec, registry, device=device)
    model = experiment.model.to(device).train()
    cost = model.compute_cost(1)
    if activation_checkpointing:
        enable_activation_checkpointing(model, registry.kind_of("model", spec.model))
    if compile:
        compile_blocks(model)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    opt = build_optimizer(model, spec.train)  # the trainer's AdamW (fused where torch has it)
    latents = torch.randn(batch, *experiment.latent_shape, device=device)
    times = []
    for i in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        # one generator per example, as the trainer hands them (their cost is part of a step)
        generators = rng.indexed_generators(0, "loss", (i,), range(batch), device)
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = model.loss(latents, None, experiment.schedule, generators)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {
        "config": name,
        "device": device,
        "dtype": str(dtype).replace("torch.", "") if dtype else "fp32",
        "batch": batch,
        "compiled": compile,
        "activation_checkpointing": activation_checkpointing,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None,
        "parameters": cost["parameters"],
        "step_s": step,
        "images_per_s": batch / step,
        "tokens_per_s": batch * cost["train_sequence_length_computed"] / step,
        "train_tflops_per_s": batch * cost["train_flops_per_image"] / step / 1e12,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ffhq", action="store_true", help="also the FFHQ-1024 geometry (needs CUDA)")
    args = p.parse_args()
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
