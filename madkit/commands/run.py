"""``madkit run SPEC [--set K=V ...] [--out DIR]``: train."""

import sys

from madkit.commands import add_spec_args
from madkit.experiment_spec import load_spec


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="train the experiment a spec describes")
    add_spec_args(p)
    p.add_argument("--out", help="run folder (default runs/<name>)")


def run(args) -> int:
    load_spec(args.spec, args.sets)
    print(f"{args.spec}: valid, but training is not built yet in this version of madkit", file=sys.stderr)
    return 1
