"""The ``madkit`` command line.

Exit codes: 0 success, 1 runtime failure (a message, no traceback), 2 bad input (spec, arguments).
``--debug`` anywhere on the command line shows tracebacks instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import madkit
from madkit.commands import COMMAND_MODULES, UsageError


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="madkit", description="Mixed autoregressive and diffusion generation.")
    parser.add_argument("--version", action="version", version=f"madkit {madkit.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"madkit.commands.{name}")
        module.add_parser(sub)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    parser, modules = build_parser()
    args = parser.parse_args(argv)  # --help and --version exit here, before anything imports torch
    args.debug = debug
    from madkit.registry import PluginError
    from madkit.spec import SpecError

    try:
        return modules[args.command.replace("-", "_")].run(args)
    except SpecError as exc:
        if debug:
            raise
        for line in exc.lines:
            print(line, file=sys.stderr)
        print(f"{len(exc.lines)} problem(s) found", file=sys.stderr)
        return 2
    except UsageError as exc:
        if debug:
            raise
        print(f"madkit {args.command}: {exc}", file=sys.stderr)
        return 2
    except (PluginError, OSError, ValueError, RuntimeError) as exc:
        if debug:
            raise
        print(f"madkit {args.command}: error: {exc}", file=sys.stderr)
        print("(run again with --debug for a traceback)", file=sys.stderr)
        return 1
