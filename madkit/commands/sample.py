"""``madkit sample RUN_DIR_OR_CHECKPOINT_OR_EXPORT --num N --steps S ...``: PNG files from a trained model."""

from pathlib import Path

from madkit.commands import add_sampling_args, apply_threads_arg, check_sampling_counts


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate PNG images from a run, checkpoint or export (EMA weights by default)")
    add_sampling_args(p)
    p.add_argument("--num", type=int, default=16, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="image i's noise comes from (seed, i)")
    p.add_argument("--out", default=None, help="output folder (default RUN/samples/<checkpoint>-<sampler>-<steps>)")
    p.add_argument(
        "--grid", action="store_true", help="also write grid.png with every image (grid-IofK.png per --shard I/K)"
    )
    p.add_argument("--trace", nargs="?", const="blocks", default=None, choices=("blocks", "steps"),
                   help="also write trace/NNNNNN.gif (the image appearing block by block; 'steps': and each block's "
                   "estimate per denoising step) and trace/NNNNNN-strip.png")
    p.add_argument("--shard", default="0/1", help="i/k: generate every k-th image starting at i (multi-process)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out already holds images made with other weights or settings: remove them first")


def run(args) -> int:
    apply_threads_arg(args)
    from madkit.engine.checkpoints.run_lock import run_folder_of, writing_into
    from madkit.engine.distributed import resolve_device
    from madkit.generation import parse_shard
    from madkit.registry import Registry

    check_sampling_counts(args)
    shard = parse_shard(args.shard)
    registry = Registry.load()
    device = resolve_device(args.device)
    # the default output lies inside the run folder: never write there beside a training run
    with writing_into(run_folder_of(args.checkpoint), "madkit sample", args.out):
        return _sample(args, registry, device, shard)


def _sample(args, registry, device, shard) -> int:
    import torch

    from madkit.commands import UsageError
    from madkit.engine.checkpoints.output_folder import claim_output_folder
    from madkit.engine.checkpoints.weights import load_newest_for_inference
    from madkit.engine.training.sample_grids import save_grid
    from madkit.generation import GuidanceError, check_guidance, generate_images, shard_indices, to_uint8_hwc
    from madkit.registry import UnknownKindError
    from madkit.trace import TraceCollector

    use_ema = not args.raw
    source, experiment, model = load_newest_for_inference(args.checkpoint, registry, use_ema=use_ema, device=device)
    # another algorithm keeps the spec's step count and guidance unless the flags say otherwise
    try:
        sampler, kind = experiment.make_sampler(args.sampler)
    except UnknownKindError as exc:
        raise UsageError(f"--sampler: {exc}") from None
    steps = args.steps or sampler.steps
    guidance = sampler.guidance if args.guidance is None else args.guidance
    try:
        check_guidance(args.guidance, model.class_conditional)
    except GuidanceError as exc:
        raise UsageError(f"--guidance: {exc}") from None
    # everything that changes the pixels is in the folder name, so runs with other settings never overwrite
    name = f"{source.label}-{kind}-{steps}-g{guidance:g}-{'raw' if args.raw else 'ema'}-s{args.seed}"
    out = Path(args.out) if args.out else source.home / "samples" / name
    made_by = {
        "weights": str(source.path.resolve()), "step": source.step, "ema": not args.raw, "sampler": kind,
        "steps": steps, "guidance": guidance, "seed": args.seed, "cached": not args.no_cache,
    }
    claim_output_folder(out, made_by, overwrite=args.overwrite)
    if args.overwrite:  # the traces of the images --overwrite removed go with them (once the folder is ours)
        for old in (out / "trace").glob("*") if (out / "trace").is_dir() else ():
            if old.suffix in (".gif", ".png"):
                old.unlink()
    codec = experiment.codec.to(device)
    indices = shard_indices(args.num, shard)
    written = []
    collector = TraceCollector(model, codec, experiment.image_shape[1:], args.trace) if args.trace else None
    for idx, images in generate_images(
        model, sampler, codec, indices, args.seed, num_classes=experiment.num_classes,
        batch=args.batch, steps=steps, guidance=guidance, use_cache=not args.no_cache, progress=True,
        observer_for=collector and collector.observer_for,
    ):
        for i, image in zip(idx, images):
            path = out / f"{i:06d}.png"
            _write_png(path, to_uint8_hwc(image).numpy(), len(written))
            written.append((path, image))
        if collector is not None:
            _write_traces(out / "trace", idx, collector.pop(idx))
    if args.grid and written:
        grid = "grid.png" if shard == (0, 1) else f"grid-{shard[0]}of{shard[1]}.png"
        try:
            save_grid(torch.stack([img for _, img in written]), out / grid)
        except OSError as exc:
            _raise_if_full(exc, out / grid, len(written))
            raise
    print(f"wrote {len(written)} images ({'EMA' if not args.raw else 'raw'} weights, {kind}, {steps} steps) to {out}")
    return 0


def _write_traces(folder: Path, indices: list[int], traces) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, trace in zip(indices, traces):
        try:
            trace.save_gif(folder / f"{i:06d}.gif")
            trace.save_strip(folder / f"{i:06d}-strip.png")
        except OSError as exc:
            _raise_if_full(exc, folder / f"{i:06d}.gif", i)
            raise


def _write_png(path: Path, pixels, done: int) -> None:
    """One image, whole or not at all; a full disk is a one-line error (exit 2)."""
    from PIL import Image

    from madkit.atomic_files import writing_atomically

    try:
        with writing_atomically(path) as tmp:
            Image.fromarray(pixels).save(tmp, format="png")
    except OSError as exc:
        _raise_if_full(exc, path, done)
        raise


def _raise_if_full(exc: OSError, path: Path, done: int) -> None:
    from madkit.engine.checkpoints.disk_space import DiskFullError, is_disk_full

    if is_disk_full(exc, path.parent):
        raise DiskFullError(
            f"disk full: could not write {path}; the {done} image(s) before it are complete and no partial file "
            "was left; free some space and run the same command again (it writes the same images)"
        ) from None
