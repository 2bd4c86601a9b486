"""``madkit sweep RUN_DIR... --steps 2,4,8 [--budget FLOPS] [--out DIR]``: quality against compute.

Evaluates every run (folder or checkpoint) at every step count, like ``madkit eval`` (each point's
JSON lands in that run's eval/ folder and is reused when its settings have not changed), then writes
``sweep.csv`` (metric, NFE, layer passes, sampling FLOPs and seconds per image) and ``sweep.png``
(the paper's Figure 4: metric against sampling FLOPs per image, one curve per model). ``--budget F``
adds, for each model, the largest step count whose sampling FLOPs per image are <= F: quality at
equal compute, flagged ``budget_matched`` in the CSV and starred on the plot.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from madkit.commands import UsageError, apply_threads_arg
from madkit.commands.eval import add_eval_args, build_request, check_kinds

_SI = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def parse_flops(text: str) -> float:
    """``2.1e15``, ``2.1P`` or ``500G`` (an optional SI prefix, optionally followed by FLOP/FLOPs)."""
    number = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
    match = re.fullmatch(rf"\s*({number})\s*([KMGTPE]?)(?:FLOPS?|FLOPs?|flops?)?\s*", text)
    if not match:
        raise UsageError(f"--budget {text!r}: expected FLOPs per image such as 2.1e15, 2.1P or 500G")
    value = float(match.group(1)) * _SI[match.group(2)]
    if value <= 0:
        raise UsageError(f"--budget must be positive, got {text!r}")
    return value


def parse_steps(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        steps = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--steps {text!r}: expected comma-separated step counts such as 2,4,8") from None
    if not steps or steps[0] <= 0:
        raise UsageError(f"--steps {text!r}: step counts must be positive")
    return steps


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="FID (etc.) against sampling compute for runs x step counts: CSV and plot")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (latest checkpoint) or checkpoint folders")
    p.add_argument("--steps", default=None, help="comma-separated denoising steps per block, e.g. 2,4,8,16")
    p.add_argument("--budget", default=None, help="sampling FLOPs per image to match, e.g. 2.1e15 or 2.1P")
    p.add_argument("--out", default=None, help="folder for sweep.csv and sweep.png (default: RUN/eval for one run)")
    add_eval_args(p, default_num=1000)


def run(args) -> int:
    apply_threads_arg(args)
    from madkit.engine.checkpoints.run_lock import run_folder_of, writing_into
    from madkit.engine.distributed import resolve_device
    from madkit.engine.evaluation.caveats import sample_size_note
    from madkit.engine.evaluation.points import Evaluator
    from madkit.engine.evaluation.spread import with_spread
    from madkit.engine.evaluation.sweep import plot_sweep, run_sweep, write_csv
    from madkit.generation import GuidanceError
    from madkit.registry import Registry

    steps = parse_steps(args.steps)
    budget = parse_flops(args.budget) if args.budget is not None else None
    if not steps and budget is None:
        raise UsageError("give --steps (e.g. 2,4,8), --budget FLOPS, or both")
    if args.out is None and len(args.runs) > 1:
        raise UsageError("a sweep over several runs needs --out DIR for sweep.csv and sweep.png")
    request = build_request(args)
    registry = Registry.load()
    check_kinds(registry, request)
    evaluator = Evaluator(registry, request)
    with contextlib.ExitStack() as writing:  # into every run's eval/: never beside a training run
        for path in args.runs:
            writing.enter_context(writing_into(run_folder_of(path), "madkit sweep"))
        try:
            result = run_sweep(
                args.runs, steps, evaluator, resolve_device(args.device), budget=budget, force=args.force
            )
        except GuidanceError as exc:
            raise UsageError(f"--guidance: {exc}") from None
    rows, metric = result.rows, result.metric_keys[0]
    out = Path(args.out) if args.out else Path(rows[0]["run"]) / "eval"
    write_csv(rows, out / "sweep.csv")
    plot_sweep(rows, out / "sweep.png", metric=metric, budget=budget)
    for row in rows:
        flops = row["sample_flops_per_image"]
        print(
            f"{row['label']:<26} steps {row['steps']:>4}  {metric} {with_spread(row, metric):>17}  n {row['num']}  "
            f"FLOPs/image {'n/a' if flops is None else format(flops, '.3g')}  s/image {row['seconds_per_image']:.3g}"
            + ("  <- at the budget" if row["budget_matched"] else "")
        )
    print(f"wrote {out / 'sweep.csv'} and {out / 'sweep.png'}")
    if note := sample_size_note(request.num):
        print(note)
    return 0
