"""``madkit eval RUN_DIR --num N [--steps S] ...``: sample a checkpoint and measure FID (and more).

Writes RUN_DIR/eval/<name>.json with the metric values under their names, the extractor's name, and
everything needed to reproduce them (see madkit.engine.sweep). With ``--shard i/k`` each of k
processes generates every k-th image and stores its features; the shard that completes the set
computes the metrics, so ``for i in 0..k-1: madkit eval RUN --shard i/k`` (in parallel or not) ends
with the same JSON an unsharded call writes.
"""

from __future__ import annotations

from madkit.commands import UsageError, add_assignments_arg, kind_table


def add_eval_args(p, default_num: int | None) -> None:
    """The options ``eval`` and ``sweep`` share: how to sample and how to measure."""
    if default_num is None:
        p.add_argument("--num", type=int, required=True, help="images to generate (the FID protocol: 8000)")
    else:
        p.add_argument("--num", type=int, default=default_num, help=f"images per point (default {default_num})")
    p.add_argument("--sampler", default=None, help="sampler kind, e.g. ddim or dpm-solver++ (default: the run's)")
    p.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (default: the sampler's)"
    )
    p.add_argument("--metrics", default="fid", help="comma-separated metric kinds, e.g. fid,kid (default fid)")
    p.add_argument(
        "--extractor",
        default=None,
        help="feature extractor kind: inception (needs its weights) or proxy (offline); default: proxy for the "
        "embedded OpenMoji data, inception otherwise",
    )
    add_assignments_arg(
        p,
        "--extractor-set",
        "extractor_sets",
        "an extractor config key, e.g. weights=/models/pt_inception.pth (TOML value syntax)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="folder of images, .npz from `madkit fid-stats`, or a spec whose [data] is the reference "
        "(default: the run's own [data])",
    )
    p.add_argument("--num-reference", type=int, default=0, help="seeded subset of a data reference (default: all)")
    p.add_argument("--seed", type=int, default=0, help="image i's noise comes from (seed, i)")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass (does not change the images)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--force", action="store_true", help="evaluate again even if an up-to-date JSON exists")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="generate images from a run and compute FID/KID/... into RUN/eval/<name>.json")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per block (default: the run's sampler)")
    add_eval_args(p, default_num=None)
    p.add_argument("--shard", default="0/1", help="i/k: generate every k-th image starting at i (multi-process)")
    p.add_argument("--name", default=None, help="JSON name under RUN/eval (default: from the settings)")


def build_request(args):
    """The parsed shared options as an ``engine.sweep.Request``; bad values are a UsageError."""
    from madkit.engine.sweep import Request

    if args.num < 2:
        raise UsageError(f"--num must be at least 2 (FID compares covariances), got {args.num}")
    if args.batch <= 0 or args.num_reference < 0:
        raise UsageError("--batch must be positive and --num-reference >= 0")
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if not metrics:
        raise UsageError("--metrics names no metric; e.g. --metrics fid,kid")
    extractor = None
    if args.extractor or args.extractor_sets:
        if not args.extractor:
            raise UsageError("--extractor-set needs --extractor KIND")
        extractor = kind_table(args.extractor, args.extractor_sets, "--extractor-set")
    return Request(
        num=args.num, seed=args.seed, sampler=args.sampler, guidance=args.guidance, use_ema=not args.raw,
        batch=args.batch, metrics=metrics, extractor=extractor, reference=args.reference,
        num_reference=args.num_reference,
    )


def check_kinds(registry, request) -> None:
    """Unknown sampler/metric/extractor kinds as usage errors, before any model is loaded."""
    wanted = [("sampler", request.sampler), ("extractor", (request.extractor or {}).get("kind"))]
    wanted += [("metric", m) for m in request.metrics]
    for interface, kind in wanted:
        if kind is not None and kind not in registry.kinds(interface):
            raise UsageError(f"no {interface} kind {kind!r}; installed: {', '.join(registry.kinds(interface))}")


def print_record(record) -> None:
    """One line: every value with its spread, the extractor, and both sample counts."""
    from madkit.engine.spread import describe

    sampling, reference = record["sampling"], record.get("reference") or {}
    print(f"step {record['checkpoint']['step']}: {describe(record['metric_values'])} ({record['extractor']}; "
          f"{sampling['num']} generated vs {reference.get('num', '?')} reference images; {sampling['sampler']} "
          f"{sampling['steps']} steps, {record['checkpoint']['weights']} weights)")


def run(args) -> int:
    from madkit.engine.distributed import resolve_device
    from madkit.engine.generate import GuidanceError, parse_shard
    from madkit.engine.logs import log_eval_record
    from madkit.engine.sweep import Evaluator, load_run, sample_size_note
    from madkit.registry import Registry

    request = build_request(args)
    if args.steps is not None and args.steps <= 0:
        raise UsageError(f"--steps must be positive, got {args.steps}")
    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    registry = Registry.load()
    check_kinds(registry, request)
    evaluator = Evaluator(registry, request)
    loaded = load_run(args.run_dir, registry, request.use_ema, resolve_device(args.device))
    try:
        record = evaluator.evaluate(loaded, args.steps, shard=shard, name=args.name, force=args.force)
    except GuidanceError as exc:
        raise UsageError(f"--guidance: {exc}") from None
    if record is not None:
        print_record(record)
        print(f"wrote {loaded.run_dir / 'eval' / (record['name'] + '.json')}")
        if note := sample_size_note(request.num):
            print(note)
        log_eval_record(record, loaded.experiment.spec.log.sinks, registry, loaded.run_dir)
    return 0
