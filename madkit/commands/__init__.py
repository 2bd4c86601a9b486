"""One module per ``madkit`` subcommand, each with ``add_parser(subparsers)`` and ``run(args) -> int``.

Modules are imported only when listed here; heavy imports (torch, diffusers) belong inside ``run``.
"""

COMMAND_MODULES = ("plugins", "validate", "run", "flops", "sample", "fid_stats", "eval", "sweep", "report")


class UsageError(Exception):
    """Bad command-line input (exit code 2): say what was wrong and how to fix it."""


def add_spec_args(p) -> None:
    p.add_argument("spec", help="experiment spec (TOML)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. --set train.steps=100 (TOML value syntax; bare words are strings)",
    )
