"""One module per ``madkit`` subcommand, each with ``add_parser(subparsers)`` and ``run(args) -> int``.

Modules are imported only when listed here; heavy imports (torch, diffusers) belong inside ``run``.
``study_launch`` is no subcommand: it is ``study``'s half for ``--launcher local|slurm`` and ``--status``.
"""

from madkit.errors import UserError

COMMAND_MODULES = (
    "plugins", "validate", "run", "flops", "sample", "complete", "fid_stats", "eval", "sweep", "study", "report", "export",
    "import_reference", "demo",
)


class UsageError(UserError):
    """Bad command-line input (exit code 2): say what was wrong and how to fix it."""


def add_assignments_arg(p, flag: str, dest: str, help: str) -> None:
    """A repeatable ``FLAG KEY=VALUE`` option collected into the list ``args.<dest>``."""
    p.add_argument(flag, dest=dest, action="append", default=[], metavar="KEY=VALUE", help=help)


def add_spec_args(p) -> None:
    p.add_argument("spec", help="experiment spec (TOML)")
    add_assignments_arg(
        p,
        "--set",
        "sets",
        "override a spec value, e.g. --set train.steps=100 (TOML value syntax; bare words are strings)",
    )


def kind_table(kind: str, assignments: list[str], flag: str) -> dict:
    """``{"kind": kind}`` with each KEY=VALUE of ``assignments`` set in it (dotted keys nest tables).

    The values use ``--set`` syntax (madkit.spec_loading.parse_set); a malformed one is a UsageError
    that names ``flag``, the option it came from.
    """
    from madkit.spec_loading import SpecLoadError, parse_set

    table: dict = {"kind": kind}
    for assignment in assignments:
        try:
            path, value = parse_set(assignment)
        except SpecLoadError as exc:
            raise UsageError(str(exc).replace("--set", flag)) from None
        node = table
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return table


def add_sampling_args(p) -> None:
    """What ``sample`` and ``complete`` share: which weights, how to sample, on what (their own flags beside)."""
    p.add_argument("checkpoint", help="run folder (its latest checkpoint), a checkpoint folder or an export folder")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per block (default: the spec's sampler)")
    p.add_argument("--sampler", default=None, help="sampler kind, e.g. ddim or dpm-solver++ (default: the spec's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--batch", type=int, default=16, help="images per forward batch (does not change the images)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix at every step (reference path)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_threads_arg(p)


def check_sampling_counts(args) -> None:
    if args.num <= 0 or args.batch <= 0 or (args.steps is not None and args.steps <= 0):
        raise UsageError("--num, --batch and --steps must be positive")


def add_threads_arg(p) -> None:
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: OMP_NUM_THREADS if "
                   "set, else the physical cores, at most 8; the same on every run)")


def apply_threads_arg(args) -> str:
    """Apply ``--threads`` (or the rule's default) to this process; returns the banner text."""
    from madkit.threads import apply_threads

    check_threads_arg(args.threads)
    return apply_threads(args.threads)


def check_threads_arg(threads: int | None) -> None:
    from madkit.threads import count_problem

    if threads is not None and (problem := count_problem(threads)):
        raise UsageError(f"--threads {problem}")
