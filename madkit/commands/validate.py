"""``madkit validate SPEC [--set K=V ...]``: exit 0 with a summary, or 2 with every problem.

A study's design (``study.toml``) or a study folder is checked as a study: the design's keys and every
spec of the folder with every seed, as ``madkit study`` would before training anything."""

from madkit.commands import add_spec_args


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check a spec and report every problem")
    add_spec_args(p)
    p.add_argument(
        "--no-data",
        action="store_true",
        help="do not look for what reading the data needs: files the spec names (data folders, shards, VAE "
        "weights) and optional packages (webdataset, datasets)",
    )


def run(args) -> int:
    from pathlib import Path

    from madkit.experiment_spec import load_spec, spec_context
    from madkit.registry import Registry

    registry = Registry.load()
    target = Path(args.spec)
    if target.name == "study.toml" or target.is_dir():
        return _validate_study(target.parent if target.name == "study.toml" else target, args, registry)
    loaded = load_spec(args.spec, args.sets, registry, check_resources=not args.no_data)
    s = loaded.spec
    context = spec_context(s, registry)
    kinds = ", ".join(
        f"{iface}={registry.kind_of(iface, getattr(s, iface))}" for iface in ("data", "codec", "model", "sampler")
    )
    # the shapes show what --set swaps changed (a new data kind brings its own default resolution)
    named = (("images", "image_shape"), ("latents", "latent_shape"))
    shapes = ", ".join(f"{what} {'x'.join(map(str, context[key]))}" for what, key in named if key in context)
    print(
        f"{args.spec}: valid: {s.name!r} ({kinds}; {shapes}; {s.train.steps} steps, "
        f"global batch {s.train.batch})"
    )
    for note in loaded.notes:
        print(f"note: {note}")
    return 0


def _validate_study(folder, args, registry) -> int:
    from madkit.engine.studies.runner import plan_study

    study = plan_study(folder, "unused", registry, sets=args.sets)  # every problem of every spec, or a SpecError
    c = study.config
    print(f"{folder}: valid study: {len(study.settings)} setting(s) ({', '.join(study.settings)}) x "
          f"{len(c.seeds)} seed(s), steps {c.steps}, budgets at {c.budget_steps or 'none'}, {c.num} images per point")
    return 0
