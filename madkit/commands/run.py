"""``madkit run SPEC [--set K=V ...] [--out DIR] [--stop-after N]``: train.

Running the same command again with the same run folder continues from its newest checkpoint
(``train.resume = "auto"``); ``--from STEP`` continues from an older one instead (the newer ones are
moved to RUN/set-aside/). The run folder is locked while the run lives: a second writer is refused.
Under ``torchrun --nproc_per_node=K -m madkit run SPEC`` it trains with DDP; only rank 0 prints.
"""

import os
from pathlib import Path

from madkit.commands import UsageError, add_spec_args, check_threads_arg
from madkit.logs import get_logger

logger = get_logger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="train the experiment a spec describes (resumes when run again)")
    add_spec_args(p)
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop (with a checkpoint) after optimizer step N; schedules still span train.steps",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch (the same as --set train.threads=N; default: auto, see docs/spec.md)",
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="resume even though the spec's training values (train.lr, train.steps, ...) differ from the checkpoint's",
    )
    p.add_argument(
        "--from",
        dest="from_step",
        type=int,
        metavar="STEP",
        help="continue from the run folder's checkpoint of STEP (e.g. the last healthy one) instead of its newest; "
        "newer checkpoints are moved to RUN/set-aside/",
    )


def run(args) -> int:
    from madkit.experiment_spec import load_spec
    from madkit.registry import Registry

    if args.threads is not None:
        check_threads_arg(args.threads)
        args.sets.append(f"train.threads={args.threads}")
    registry = Registry.load()
    loaded = load_spec(args.spec, args.sets, registry)
    if int(os.environ.get("RANK", "0")) == 0:
        for note in loaded.notes:
            logger.info(f"note: {note}")
    if args.stop_after is not None and args.stop_after <= 0:
        raise UsageError(f"--stop-after must be a positive step count, got {args.stop_after}")
    if args.from_step is not None and args.from_step < 0:
        raise UsageError(f"--from must be a checkpoint's step (>= 0), got {args.from_step}")
    out = Path(args.out) if args.out else Path("runs") / loaded.spec.name
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file of that name exists, and a run needs a folder; choose another --out")

    # torch and the engine are imported only now: `madkit --help` and `validate` stay fast
    from madkit.engine.training.loop import train

    # checkpoint and resume-change refusals are UserErrors: the CLI prints them as one line, exit 2
    result = train(
        loaded, registry, out, stop_after=args.stop_after, allow_changes=args.allow_changes, from_step=args.from_step
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {result.run_dir}")
        if result.checkpoint:
            print(f"checkpoint: {result.checkpoint}")
        if result.samples:
            print(f"samples:    {result.samples}")
    return 0
