"""``madkit complete RUN IMAGES... --keep K``: keep each image's first K blocks, generate the rest.

Per input: ``NAME-row.png`` (original | kept blocks, the rest grey | the completions), one PNG per
completion and ``grid.png`` with every row (madkit.completion).
"""

from pathlib import Path

from madkit.commands import add_sampling_args, apply_threads_arg, check_sampling_counts


def add_parser(sub) -> None:
    p = sub.add_parser("complete", help="complete images from their first K blocks (in the model's block order)")
    add_sampling_args(p)
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) at the model's size, or see --resize")
    p.add_argument("--keep", type=int, required=True, help="blocks to keep from each image, in generation order")
    p.add_argument("--num", type=int, default=4, help="completions per image")
    p.add_argument("--label", type=int, action="append", default=None,
                   help="class of each image, in order (class-conditional models; default: image i gets i mod classes)")
    p.add_argument("--seed", type=int, default=0, help="completion c of image i draws from (seed, c, i)")
    p.add_argument("--resize", action="store_true",
                   help="centre-crop and scale images of another size (default: refuse them)")
    p.add_argument("--out", default=None, help="output folder (default RUN/completions/<checkpoint>-k<K>-s<seed>)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out already holds completions made with other weights or settings: remove them first")


def run(args) -> int:
    apply_threads_arg(args)
    from madkit.engine.checkpoints.run_lock import run_folder_of, writing_into
    from madkit.engine.distributed import resolve_device
    from madkit.registry import Registry

    check_sampling_counts(args)
    registry = Registry.load()
    device = resolve_device(args.device)
    with writing_into(run_folder_of(args.checkpoint), "madkit complete", args.out):
        return _complete(args, registry, device)


def _complete(args, registry, device) -> int:
    from madkit.commands import UsageError
    from madkit.completion import CompletionError, check_keep, complete, load_images, save_completion
    from madkit.engine.checkpoints.output_folder import claim_output_folder
    from madkit.engine.checkpoints.weights import load_newest_for_inference
    from madkit.generation import GuidanceError, check_guidance, check_labels, num_blocks
    from madkit.registry import UnknownKindError

    source, experiment, model = load_newest_for_inference(args.checkpoint, registry, use_ema=not args.raw, device=device)
    try:
        sampler, kind = experiment.make_sampler(args.sampler)
        check_guidance(args.guidance, model.class_conditional)
    except UnknownKindError as exc:
        raise UsageError(f"--sampler: {exc}") from None
    except GuidanceError as exc:
        raise UsageError(f"--guidance: {exc}") from None
    try:
        total = num_blocks(model)
    except NotImplementedError as exc:
        raise UsageError(f"{args.checkpoint}: this model cannot complete images ({exc})") from None
    try:
        check_keep(args.keep, total, name="--keep")
        pixels = load_images(args.images, experiment.image_shape, args.resize, hint="--resize")
    except CompletionError as exc:
        raise UsageError(str(exc)) from None
    try:
        labels = check_labels(args.label, len(args.images), experiment.num_classes, model.class_conditional)
    except ValueError as exc:
        raise UsageError(f"--label: {exc}") from None
    out = Path(args.out) if args.out else source.home / "completions" / f"{source.label}-k{args.keep}-s{args.seed}"
    steps = args.steps or sampler.steps
    made_by = {
        "weights": str(source.path.resolve()), "step": source.step, "ema": not args.raw, "sampler": kind,
        "steps": steps, "guidance": sampler.guidance if args.guidance is None else args.guidance, "seed": args.seed,
        "keep": args.keep, "num": args.num, "images": [str(Path(p).resolve()) for p in args.images],
        "labels": args.label, "resize": args.resize, "cached": not args.no_cache,
    }
    claim_output_folder(out, made_by, overwrite=args.overwrite)
    result = complete(
        model, sampler, experiment.codec.to(device), pixels, args.keep, num=args.num, seed=args.seed,
        num_classes=experiment.num_classes, labels=labels, steps=args.steps, guidance=args.guidance,
        use_cache=not args.no_cache, batch=args.batch,
    )
    names = _names(args.images)
    save_completion(result, out, names)
    print(f"completed {len(names)} image(s) x {args.num} from {args.keep} of {total} blocks ({kind}, {steps} steps): "
          f"{out / 'grid.png'}")
    return 0


def _names(paths: list[str]) -> list[str]:
    """Output names from the inputs' file names, numbered where two inputs share one."""
    stems = [Path(p).stem for p in paths]
    return [f"{i:03d}-{stem}" if stems.count(stem) > 1 else stem for i, stem in enumerate(stems)]
