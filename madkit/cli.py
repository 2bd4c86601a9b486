"""The ``madkit`` command line.

One rule maps every failure of every command to an exit code and a message:

- 0: success.
- 2: a mistake the user can fix: any ``madkit.errors.UserError`` (``UsageError`` for flags,
  ``SpecError`` for specs, ``CheckpointError``, ``DataError`` for images and shards, ``PluginError``
  for an installation, ``MissingPackageError``, ``RunFolderBusyError`` ...). stderr gets the
  message alone, one line that names the file, key or flag and the fix (a spec error: one line
  per problem), never a traceback. Nothing is written before the inputs are checked.
  A full disk is one too (``disk full ...; nothing older was touched``): every file is written whole
  or not at all, so running the same command again after freeing space is safe.
- 1: anything else: a runtime failure (training diverged, a checkpoint save of ``madkit run`` that
  found no space, a collective timed out) or a bug. stderr gets the message and a pointer to ``--debug``.

New commands follow the rule by raising ``UserError`` subclasses for user mistakes; they need no
code here. ``--debug`` anywhere on the command line shows tracebacks instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import madkit
from madkit import logs
from madkit.commands import COMMAND_MODULES
from madkit.errors import UserError

USER_ERROR, FAILURE = 2, 1
VERBOSITY_FLAGS = {"-q": -1, "--quiet": -1, "-v": 1, "--verbose": 1}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="madkit",
        description="Mixed autoregressive and diffusion generation.",
        epilog="A mistake you can fix exits 2 with one line that says how; anything else exits 1. "
        "--debug anywhere on a command line prints the traceback instead. -q (warnings only) and -v (debug), "
        "anywhere on the line, set how much madkit says on the console (or MADKIT_VERBOSITY=debug|info|warning|error); "
        "results and errors are always shown, and a run's train.log keeps every note.",
    )
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
    shift = 0
    for flag, step in VERBOSITY_FLAGS.items():
        while flag in argv:
            argv.remove(flag)
            shift += step
    parser, modules = build_parser()
    args = parser.parse_args(argv)  # --help and --version exit here, before anything imports torch
    args.debug = debug
    try:
        logs.configure_for_cli(shift)
    except ValueError as exc:
        print(f"madkit {args.command}: {exc}", file=sys.stderr)
        return USER_ERROR
    try:
        return modules[args.command.replace("-", "_")].run(args)
    except Exception as exc:
        if debug:
            raise
        return report_failure(args.command, exc)


# what a write that ran out of space says when it is not an OSError with ENOSPC (safetensors, torch's zip writer)
_FULL_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return any(word in str(exc) for word in _FULL_WORDS)


def report_failure(command: str, exc: Exception) -> int:
    """Print ``exc`` the way the exit-code rule says and return the exit code."""
    from madkit.spec import SpecError  # imports torch: not before a command runs (--help stays fast)

    if isinstance(exc, SpecError):
        for line in exc.lines:
            print(line, file=sys.stderr)
        if len(exc.lines) > 1:
            print(f"{len(exc.lines)} problem(s) found", file=sys.stderr)
        return USER_ERROR
    if isinstance(exc, UserError):
        print(f"madkit {command}: {exc}", file=sys.stderr)
        return USER_ERROR
    if is_disk_full(exc) and not isinstance(exc, RuntimeError):  # SaveFailedError: run's own message, exit 1
        where = getattr(exc, "filename", None)
        print(f"madkit {command}: disk full{f' writing {where}' if where else ''}; nothing older was touched "
              "(madkit writes every file whole or not at all); free some space and run the same command again",
              file=sys.stderr)
        return USER_ERROR
    if isinstance(exc, (OSError, RuntimeError)):  # the environment or the run itself failed
        print(f"madkit {command}: error: {exc}", file=sys.stderr)
    else:  # nothing madkit expects: most likely a bug, so say what it was
        print(f"madkit {command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    print("(run again with --debug for a traceback)", file=sys.stderr)
    return FAILURE
