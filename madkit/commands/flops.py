"""``madkit flops SPEC [--steps S] [--json]``: parameters and FLOPs, with the model on the meta device."""

import json

from madkit.commands import add_spec_args


def add_parser(sub) -> None:
    p = sub.add_parser("flops", help="parameter count, training FLOPs and sampling cost per image (no memory used)")
    add_spec_args(p)
    p.add_argument("--steps", type=int, default=None, help="denoising steps per block (default: the sampler's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from madkit.build import build_experiment
    from madkit.experiment_spec import load_spec
    from madkit.registry import Registry

    registry = Registry.load()
    spec = load_spec(args.spec, args.sets, registry, check_resources=False).spec  # no data, no weights
    experiment = build_experiment(spec, registry, meta=True)
    steps = args.steps if args.steps is not None else experiment.sampler.steps
    cost = experiment.model.compute_cost(steps)
    cost = {"spec": args.spec, "latent_shape": list(experiment.latent_shape), **cost}
    if args.json:
        print(json.dumps(cost, indent=2))
        return 0
    for key, value in cost.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:,}" for k, v in value.items())
        elif isinstance(value, int):
            value = f"{value:,}"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{key:<34} {value}")
    return 0
