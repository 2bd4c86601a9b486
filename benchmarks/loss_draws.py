"""What split-invariant randomness costs: the loss's random draws per optimizer step, per example vs one generator.

    python benchmarks/loss_draws.py            # quickstart and FFHQ geometries, on the CPU (and CUDA if present)

Since the loss draws example i's timesteps and noise from its own generator seeded by (seed, step, i),
a step creates one generator per example and makes 2 small draws per example instead of 2 batch
draws. This times exactly those draws (generator creation included) for one micro-batch, both ways
side by side (benchmarks/timing.py), at the model's real block geometry; compare with the step time
of benchmarks/step.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from timing import describe, interleaved, ratio

from madkit import per_example
from madkit.build import build_experiment
from madkit import rng
from madkit.experiment_spec import load_spec
from madkit.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"quickstart": (ROOT / "experiments/quickstart.toml", 16), "ffhq": (ROOT / "experiments/madformer_ffhq.toml", 8)}


def geometry(spec_path: Path):
    registry = Registry.load()
    spec = load_spec(spec_path, registry=registry, check_resources=False).spec
    experiment = build_experiment(spec, registry, meta=True)
    model = experiment.model
    cells = experiment.latent_shape[0] * model.cell * model.cell  # latent values per token
    return experiment.schedule, (model.T, model.B, cells)


def measure(name: str, device: str, rounds: int) -> None:
    spec_path, batch = CONFIGS[name]
    schedule, (t, b, k) = geometry(spec_path)
    step = iter(range(10**9))

    def one_generator():
        g = rng.generator(0, "loss", next(step), device=device)
        schedule.sample_timesteps((batch, t), g, device)
        torch.randn((batch, t, b, k), generator=g, device=device)

    def per_example_generators():
        s = next(step)
        gens = rng.indexed_generators(0, "loss", (s,), range(batch), device)
        per_example.timesteps(schedule, gens, (t,), device)
        per_example.randn(gens, (t, b, k), device)

    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    times = interleaved({"one": one_generator, "per-example": per_example_generators}, rounds, warmup=3, sync=sync)
    q1, med, q3 = ratio(times["per-example"], times["one"])
    print(
        f"{name:<10} {device:<5} batch {batch:>3}, noise [{t}, {b}, {k}] per example: one generator "
        f"{describe(times['one'])}, per example {describe(times['per-example'])}, ratio {med:.2f} [{q1:.2f}, {q3:.2f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for name in CONFIGS:
            measure(name, device, args.rounds)


if __name__ == "__main__":
    main()
