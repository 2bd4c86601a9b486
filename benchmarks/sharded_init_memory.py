"""Peak resident memory per rank of a sharded run's model set-up: built on the meta device and filled
slice by slice (what ``train.strategy = "fsdp"`` does) vs built whole on every rank and then sharded
(the former way, ``setup.build_on_meta = False``).

    python benchmarks/sharded_init_memory.py                       # FFHQ geometry, 2 gloo ranks, model + EMA
    python benchmarks/sharded_init_memory.py --no-ema --variants meta,whole
    python benchmarks/sharded_init_memory.py --ranks 1 --variants whole

Each variant runs under torchrun on the CPU, one after the other (never at the same time), and does
what the trainer does before its first step: seed, build the model, make the EMA copy, shard both with
FSDP2, give them their values (rank 0's initial weights), create the AdamW optimizer (its moments are
made at the first step, so they are not counted). No training step. Each rank reports its peak
resident set size (VmHWM in /proc/self/status, which includes the interpreter and torch, ~0.5 GB) and
its resident size at the end. The whole build needs about 2 x 4 bytes x parameters per rank with the
EMA (10.4 GB at FFHQ's 1.3 B): run it with 2 ranks only on a machine with room for both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
FFHQ = ROOT / "experiments/madformer_ffhq.toml"


def status_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    raise RuntimeError(f"no {field} in /proc/self/status")


def one_rank(spec_path: str, variant: str, with_ema: bool) -> None:
    """Runs on every torchrun rank; rank 0 prints one JSON line with every rank's figures."""
    import torch

    from madkit import rng
    from madkit.build import build_experiment
    from madkit.engine import distributed
    from madkit.engine.distributed import fsdp
    from madkit.engine.training import sharded_build
    from madkit.engine.training.ema import EMA
    from madkit.engine.training.optim import build_optimizer
    from madkit.experiment_spec import load_spec
    from madkit.registry import Registry

    torch.set_num_threads(1)
    env = distributed.setup("cpu", group_when_alone=True)
    registry = Registry.load()
    spec = load_spec(Path(spec_path), ["train.precision=fp32"], registry, check_resources=False).spec
    cfg, device = spec.train, torch.device("cpu")
    start, rss_before = time.perf_counter(), status_gb("VmRSS")
    rng.seed_globals(spec.seed, env.rank)
    if variant == "meta":
        experiment, program = sharded_build.build(spec, registry, device, env.is_main)
        assert program is not None, "the model could not be built on the meta device"
    else:
        experiment, program = build_experiment(spec, registry, device="cpu"), None
    model = experiment.model
    model.train()
    if program is None and env.distributed:
        fsdp.broadcast_from_rank0(model)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup) if with_ema else None
    fsdp.shard_for_training(model, ema.module if ema else None, cfg, env.world_size, device, "fp32")
    if program is not None:
        trainer = SimpleNamespace(device=device, init_program=program, ema=ema, model=model, env=env, cfg=cfg)
        sharded_build.materialise(trainer, None, False)
    build_optimizer(model, cfg)
    n = sum(p.numel() for p in model.parameters())
    figures = {"rank": env.rank, "peak_gb": status_gb("VmHWM"), "end_gb": status_gb("VmRSS"),
               "start_gb": rss_before, "seconds": time.perf_counter() - start, "params": n}  # fmt: skip
    everyone = distributed.gather_objects(env, figures)
    if env.is_main:
        print("RESULT " + json.dumps(everyone), flush=True)
    distributed.teardown(env)


def launch(spec: Path, variant: str, ranks: int, with_ema: bool) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           __file__, "--rank-job", variant, "--spec", str(spec)] + ([] if with_ema else ["--no-ema"])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{variant}: torchrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[0][len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", type=Path, default=FFHQ)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--variants", default="meta", help="comma-separated: meta, whole (run one after the other)")
    p.add_argument("--no-ema", action="store_true", help="the model alone, without the EMA copy")
    p.add_argument("--rank-job", choices=["meta", "whole"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_job:
        one_rank(str(args.spec), args.rank_job, not args.no_ema)
        return
    what = "model" if args.no_ema else "model + EMA"
    print(f"{args.spec.name}: {what}, {args.ranks} gloo rank(s) on the CPU, fp32; {os.cpu_count()} CPU(s)")
    for variant in args.variants.split(","):
        for r in launch(args.spec, variant, args.ranks, not args.no_ema):
            print(f"  {variant:<5} rank {r['rank']}: peak RSS {r['peak_gb']:6.2f} GiB, at the end {r['end_gb']:6.2f} GiB "
                  f"(after imports {r['start_gb']:.2f} GiB), {r['seconds']:6.1f} s, {r['params']:,} parameters")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
