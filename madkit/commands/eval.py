"""``madkit eval RUN_DIR --num N [--steps S] [--last K] ...``: sample checkpoints and measure FID (and more).

Writes RUN_DIR/eval/<name>.json with the metric values under their names (each with its spread,
``fid_std``), the extractor's name, and everything needed to reproduce them (see
madkit.engine.evaluation.sweep). ``--last K`` (or ``--checkpoints``) is the FID protocol: one record per
checkpoint and a summary of their mean and spread (madkit.engine.evaluation.protocol); records already up to
date are reused.

Several processes: ``torchrun --nproc_per_node=K -m madkit eval ...`` splits the images over the
ranks and rank 0 writes the record (madkit.engine.evaluation.ranks). By hand, ``--shard i/k`` makes each of
k processes generate every k-th image and store its features; the shard that completes the set
computes the metrics, so ``for i in 0..k-1: madkit eval RUN --shard i/k`` (in parallel or not) ends
with the same JSON an unsharded call writes.
"""

from __future__ import annotations

from pathlib import Path

from madkit.commands import UsageError, add_assignments_arg, add_threads_arg, apply_threads_arg, kind_table


def add_eval_args(p, default_num: int | None) -> None:
    """The options ``eval`` and ``sweep`` share: how to sample and how to measure."""
    # --num-images: the same option under a name torchrun's own parser leaves alone (it would take
    # `--num` for an abbreviation of its --numa-binding and stop: "ambiguous option")
    if default_num is None:
        p.add_argument("--num", "--num-images", dest="num", type=int, required=True,
                       help="images to generate (the FID protocol: 8000); under torchrun write --num-images")
    else:
        p.add_argument("--num", "--num-images", dest="num", type=int, default=default_num,
                       help=f"images per point (default {default_num}); under torchrun write --num-images")
    p.add_argument("--sampler", default=None, help="sampler kind, e.g. ddim or dpm-solver++ (default: the run's)")
    p.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (default: the sampler's)"
    )
    p.add_argument("--metrics", default="fid", help="comma-separated metric kinds, e.g. fid,kid (default fid)")
    add_assignments_arg(
        p,
        "--metric-set",
        "metric_sets",
        "a metric config key, e.g. fid.bootstrap=20 (FID's bootstrap replicates; 0 = no spread)",
    )
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
    add_threads_arg(p)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="generate images from a run and compute FID/KID/... into RUN/eval/<name>.json")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per block (default: the run's sampler)")
    add_eval_args(p, default_num=None)
    p.add_argument("--shard", default="0/1", help="i/k: generate every k-th image starting at i (multi-process)")
    p.add_argument("--name", default=None, help="JSON name under RUN/eval (default: from the settings)")
    p.add_argument("--last", type=int, default=None, metavar="K",
                   help="the FID protocol: evaluate the run's last K checkpoints, one record each, and write their "
                   "mean and spread (the paper: --last 5 --num 8000)")
    p.add_argument("--checkpoints", default=None, metavar="STEPS",
                   help="like --last, for the checkpoints at these comma-separated steps")


def build_request(args):
    """The parsed shared options as an ``evaluation.points.Request``; bad values are a UsageError."""
    from madkit.engine.evaluation.points import Request

    if args.num < 2:
        raise UsageError(f"--num must be at least 2 (FID compares covariances), got {args.num}")
    if args.batch <= 0 or args.num_reference < 0:
        raise UsageError("--batch must be positive and --num-reference >= 0")
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if not metrics:
        raise UsageError("--metrics names no metric; e.g. --metrics fid,kid")
    metric_config = _metric_config(args.metric_sets, metrics)
    extractor = None
    if args.extractor or args.extractor_sets:
        if not args.extractor:
            raise UsageError("--extractor-set needs --extractor KIND")
        extractor = kind_table(args.extractor, args.extractor_sets, "--extractor-set")
    return Request(
        num=args.num, seed=args.seed, sampler=args.sampler, guidance=args.guidance, use_ema=not args.raw,
        batch=args.batch, metrics=metrics, metric_config=metric_config, extractor=extractor, reference=args.reference,
        num_reference=args.num_reference,
    )


def _metric_config(assignments: list[str], metrics: tuple[str, ...]) -> dict:
    """``--metric-set fid.bootstrap=20`` ... as {"fid": {"bootstrap": 20}}."""
    per_kind: dict[str, list[str]] = {}
    for assignment in assignments:
        kind, dot, rest = assignment.partition(".")
        if not dot or kind not in metrics:
            raise UsageError(
                f"--metric-set {assignment!r}: name a metric of --metrics ({', '.join(metrics)}) and a key, "
                f"e.g. fid.bootstrap=20"
            )
        per_kind.setdefault(kind, []).append(rest)
    return {
        kind: {k: v for k, v in kind_table(kind, sets, "--metric-set").items() if k != "kind"}
        for kind, sets in per_kind.items()
    }


def check_kinds(registry, request) -> None:
    """Unknown sampler/metric/extractor kinds as usage errors, before any model is loaded."""
    wanted = [("sampler", request.sampler), ("extractor", (request.extractor or {}).get("kind"))]
    wanted += [("metric", m) for m in request.metrics]
    for interface, kind in wanted:
        if kind is not None and kind not in registry.kinds(interface):
            raise UsageError(f"no {interface} kind {kind!r}; installed: {', '.join(registry.kinds(interface))}")


def print_record(record) -> None:
    """One line: every value with its spread, the extractor, and both sample counts."""
    from madkit.engine.evaluation.caveats import describe_floor
    from madkit.engine.evaluation.spread import describe

    sampling, reference = record["sampling"], record.get("reference") or {}
    print(f"step {record['checkpoint']['step']}: {describe(record['metric_values'])} ({record['extractor']}; "
          f"{sampling['num']} generated vs {reference.get('num', '?')} reference images; {sampling['sampler']} "
          f"{sampling['steps']} steps, {record['checkpoint']['weights']} weights){describe_floor(record.get('floor'))}")


def print_summary(summary) -> None:
    """The protocol's result: per metric the mean over checkpoints, their spread and each one's own."""
    from madkit.engine.evaluation.spread import format_number

    steps = [c["step"] for c in summary["checkpoints"]]
    values = []
    for key, entry in summary["summary"].items():
        within = entry["mean_within_checkpoint_std"]
        values.append(f"{key} {format_number(entry['mean'])} ± {format_number(entry['std'])} over checkpoints"
                      + ("" if within is None else f" (± {format_number(within)} within one)"))
    sampling, reference = summary["sampling"], summary.get("reference") or {}
    print(f"mean of {len(steps)} checkpoints (steps {', '.join(map(str, steps))}): {'; '.join(values)} "
          f"({summary['extractor']}; {sampling['num']} generated vs {reference.get('num', '?')} reference images "
          f"per checkpoint)")


def parse_checkpoint_steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--checkpoints {text!r}: expected comma-separated steps such as 200000,210000") from None
    if not steps:
        raise UsageError(f"--checkpoints {text!r}: names no step")
    return steps


def run(args) -> int:
    apply_threads_arg(args)
    from madkit.engine import distributed
    from madkit.engine.checkpoints.run_lock import run_folder_of, writing_into
    from madkit.engine.evaluation.caveats import sample_size_note
    from madkit.engine.evaluation.points import Evaluator, load_run
    from madkit.engine.evaluation.protocol import evaluate_checkpoints, select_checkpoints
    from madkit.engine.evaluation.ranks import evaluate_point
    from madkit.engine.training.reporting import log_eval_record
    from madkit.generation import GuidanceError, parse_shard
    from madkit.registry import Registry

    request = build_request(args)
    if args.steps is not None and args.steps <= 0:
        raise UsageError(f"--steps must be positive, got {args.steps}")
    shard = parse_shard(args.shard)
    if distributed.under_torchrun() and shard != (0, 1):
        raise UsageError("--shard splits the images by hand, but under torchrun the ranks split them; drop --shard")
    protocol = args.last is not None or args.checkpoints is not None
    if args.last is not None and args.checkpoints is not None:
        raise UsageError("give --last K or --checkpoints STEPS, not both")
    if args.last is not None and args.last < 1:
        raise UsageError(f"--last must be at least 1, got {args.last}")
    if protocol and (args.name or shard != (0, 1)):
        raise UsageError("--last/--checkpoints write one record per checkpoint, named from its settings, and split "
                         "images over torchrun's ranks: drop --name and --shard")
    steps_wanted = parse_checkpoint_steps(args.checkpoints) if args.checkpoints is not None else ()
    registry = Registry.load()
    check_kinds(registry, request)
    evaluator = Evaluator(registry, request)
    checkpoints = []
    if protocol:
        checkpoints = select_checkpoints(args.run_dir, args.last, steps_wanted)

    def report(record, run) -> None:
        print_record(record)
        log_eval_record(record, run.spec.log.sinks, registry, run.run_dir)

    env = distributed.setup(args.device)
    try:
        with writing_into(run_folder_of(args.run_dir), "madkit eval"):  # never beside a training run
            if protocol:
                summary = evaluate_checkpoints(checkpoints, evaluator, env, args.steps, args.force, on_record=report)
                if summary is not None:
                    print_summary(summary)
                    print(f"wrote {Path(summary['run']['dir']) / 'eval' / (summary['name'] + '.json')}")
            else:
                loaded = load_run(args.run_dir, registry, request.use_ema, env.device)
                record = evaluate_point(evaluator, loaded, args.steps, env, name=args.name, force=args.force, shard=shard)
                if record is not None and env.is_main:
                    report(record, loaded)  # the run's sinks (event files in the run folder) too, under the lock
                    print(f"wrote {loaded.run_dir / 'eval' / (record['name'] + '.json')}")
        if env.is_main and (note := sample_size_note(request.num)):
            print(note)
        # every rank leaves together: a rank that tore its process group down while rank 0 was still
        # merging the shards was seen to abort in gloo (SIGABRT, "terminate called") on a loaded machine
        distributed.barrier(env)
        return 0
    except GuidanceError as exc:
        raise UsageError(f"--guidance: {exc}") from None
    finally:
        distributed.teardown(env)
