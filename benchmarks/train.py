"""Training throughput of a spec: images/s through the real training loop (and MFU on CUDA).

    python benchmarks/train.py experiments/quickstart.toml --steps 20 --warmup 5 [--set k=v ...]
    torchrun --nproc_per_node=8 benchmarks/train.py SPEC ...      # the DDP throughput

It runs ``madkit.engine.training.loop.train`` for warmup + steps optimizer steps into a temporary folder
(no sinks, one tiny sample grid at the end, a checkpoint only at the end) and reads the per-step
records of metrics.jsonl: the figure is the median images/s over the steps after warmup, so
compilation, cache warm-up, checkpointing and sampling are not counted. MFU is the model's own
``compute_cost(steps)["train_flops_per_image"]`` x images/s over the accelerators' peak dense bf16
FLOP/s (from a table of known GPUs, or --peak-tflops per device).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

# peak dense bf16 tensor-core TFLOP/s per device, by a substring of torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,  # SXM; the PCIe card is lower: pass --peak-tflops 756
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("spec", help="experiment spec (TOML)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="spec override")
    p.add_argument("--steps", type=int, default=20, help="measured optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="optimizer steps before measuring")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="per-device peak for MFU (default: table)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p.parse_args(argv)


def peak_flops(override_tflops: float) -> float | None:
    import torch

    if override_tflops:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from madkit.engine.checkpoints.run_folder import read_metrics
    from madkit.engine.training.loop import train
    from madkit.experiment_spec import load_spec
    from madkit.registry import Registry

    total = args.warmup + args.steps
    overrides = [
        f"train.steps={total}",
        "train.log_every=1",
        f"train.ckpt_every={total}",
        "train.sample_every=0",
        "train.sample_num=1",
        "train.sample_steps=1",
        "train.resume=never",
        "log.sinks=[]",
        "log.progress=false",
    ]
    registry = Registry.load()
    loaded = load_spec(args.spec, [*args.sets, *overrides], registry)
    rank = int(os.environ.get("RANK", "0"))
    with tempfile.TemporaryDirectory(prefix="madkit-bench-") as tmp:
        # each rank may name its own folder: only rank 0 reads or writes the run folder
        out = Path(tmp) / "run"
        result = train(loaded, registry, out)
        records = [r for r in read_metrics(out / "metrics.jsonl") if r["step"] > args.warmup]
    if rank != 0:
        return 0
    if not records:
        print("no measured steps: raise --steps", file=sys.stderr)
        return 1
    images_per_s = statistics.median(r["images_per_s"] for r in records)
    report = {
        "spec": args.spec,
        "model": registry.kind_of("model", loaded.spec.model),
        "global_batch": loaded.spec.train.batch,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "images_per_s": images_per_s,
        "steps_per_s": images_per_s / loaded.spec.train.batch,
        "peak_mem_gb": max(r["mem_gb"] for r in records),
        "final_loss": result.metrics.get("loss"),
    }
    peak = peak_flops(args.peak_tflops)
    if peak:
        cost = _train_flops_per_image(loaded, registry)
        if cost:
            report["train_flops_per_image"] = cost
            report["mfu"] = cost * images_per_s / (peak * report["world_size"])
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['spec']} ({report['model']}): {images_per_s:.1f} images/s "
            f"({report['steps_per_s']:.2f} steps/s at global batch {report['global_batch']}, "
            f"{report['world_size']} process(es)), peak memory {report['peak_mem_gb']:.2f} GB"
            + (f", MFU {100 * report['mfu']:.1f}%" if "mfu" in report else "")
        )
    return 0


def _train_flops_per_image(loaded, registry) -> float | None:
    """The model's analytic training FLOPs per image, from a shape-only (meta) build."""
    from madkit.build import build_experiment

    model = build_experiment(loaded.spec, registry, meta=True).model
    try:
        cost = model.compute_cost(getattr(loaded.spec.sampler, "steps", 1))
    except NotImplementedError:
        return None
    return cost.get("train_flops_per_image")


if __name__ == "__main__":
    raise SystemExit(main())
