"""``madkit validate SPEC [--set K=V ...]``: exit 0 with a summary, or 2 with every problem."""

from madkit.commands import add_spec_args
from madkit.experiment_spec import load_spec
from madkit.registry import Registry


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check a spec and report every problem")
    add_spec_args(p)
    p.add_argument(
        "--no-data", action="store_true", help="do not look for files the spec names (data folders, VAE weights)"
    )


def run(args) -> int:
    registry = Registry.load()
    s = load_spec(args.spec, args.sets, registry, check_resources=not args.no_data).spec
    kinds = ", ".join(
        f"{iface}={registry.kind_of(iface, getattr(s, iface))}" for iface in ("data", "codec", "model", "sampler")
    )
    print(f"{args.spec}: valid: {s.name!r} ({kinds}; {s.train.steps} steps, global batch {s.train.batch})")
    return 0
