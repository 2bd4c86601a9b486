"""``madkit fid-stats DATA_SPEC --out stats.npz [--extractor KIND] [--num N]``: reference statistics.

Builds the data source of the spec's [data] table (the same preprocessing training sees), embeds
its images with the chosen extractor and writes mu, sigma, the extractor's name, the image count
and a content hash to an .npz that ``compute_metrics`` (and ``madkit eval``) accept as a reference.
"""

from madkit.commands import UsageError, add_assignments_arg, add_threads_arg, apply_threads_arg, kind_table


def add_parser(sub) -> None:
    p = sub.add_parser("fid-stats", help="write FID reference statistics (.npz) of a spec's [data]")
    p.add_argument("data_spec", metavar="DATA_SPEC", help="spec (TOML) whose [data] table names the data source")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument(
        "--extractor",
        default="inception",
        help="extractor kind: inception (standard FID; needs its weights) or proxy (offline, trained on this data)",
    )
    add_assignments_arg(
        p,
        "--extractor-set",
        "extractor_sets",
        "an extractor config key, e.g. weights=/models/inception.pth or epochs=20 (TOML value syntax)",
    )
    p.add_argument("--num", type=int, default=0, help="use a seeded random subset of N images (default: all)")
    p.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=64, help="images per extractor call (default 64)")
    p.add_argument(
        "--keep-features", action="store_true", help="store the features too (KID and precision/recall need them)"
    )
    add_assignments_arg(
        p, "--set", "sets", "override a spec value, e.g. --set data.resolution=32 (TOML value syntax)"
    )
    add_threads_arg(p)


def run(args) -> int:
    apply_threads_arg(args)
    from madkit.engine.evaluation.evaluate import (
        data_images,
        extract,
        load_data_config,
        resolve_extractor,
        save_reference,
        with_proxy_data,
    )
    from madkit.registry import Registry

    if args.num < 0:
        raise UsageError(f"--num must be >= 0 (0 = every image), got {args.num}")
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be > 0, got {args.batch_size}")
    if not args.out.endswith(".npz"):
        raise UsageError(f"--out {args.out!r}: statistics files end in .npz")
    table = kind_table(args.extractor, args.extractor_sets, "--extractor-set")

    registry = Registry.load()
    data = load_data_config(args.data_spec, args.sets, registry)
    extractor = resolve_extractor(with_proxy_data(table, data, registry), registry, data)
    features = extract(extractor, data_images(data, args.num), args.batch_size)
    save_reference(args.out, features, keep_features=args.keep_features)
    print(
        f"{args.out}: {features.count} images of {features.source}; extractor {features.extractor}; "
        f"sha256 {features.content_hash[:16]}"
    )
    return 0
