"""madkit's console output: Python ``logging``, with one verbosity setting.

Every message madkit writes while it works goes through the ``madkit`` logger (``get_logger(__name__)``
in each module); what a command was asked to produce (a table, ``wrote PATH``, JSON) is printed, so
it stays on stdout whatever the verbosity. Two kinds of record:

- notes (``madkit.*`` loggers): stderr, as ``madkit: <message>``;
- a command's report (the ``madkit.report`` logger: a run's banner and its per-step lines): stdout,
  unprefixed, written through tqdm so a progress bar is redrawn below it rather than torn.

Verbosity, as diffusers does it: ``set_verbosity("debug" | "info" | "warning" | "error")`` or the
``MADKIT_VERBOSITY`` environment variable; the CLI's ``-v`` / ``-q`` (anywhere on the line) pick
debug / warning. The default is ``info`` for the command line and ``warning`` for the Python API (a
library stays quiet unless asked). The handler writes to the ``sys.stdout`` / ``sys.stderr`` of the
moment, so a redirect or pytest's capture made after import still sees everything. A run's
``train.log`` is another handler on the same logger (madkit.engine.training.console_log), which
keeps every note and report line whatever the console's verbosity.
"""

from __future__ import annotations

import logging
import os
import sys

NAME = "madkit"
REPORT = "madkit.report"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
ENV_VAR = "MADKIT_VERBOSITY"


def get_logger(name: str = NAME) -> logging.Logger:
    """The logger of a madkit module (``get_logger(__name__)``); plugins' modules land under madkit too."""
    return logging.getLogger(name if name == NAME or name.startswith(NAME + ".") else f"{NAME}.{name}")


def report(message: str) -> None:
    """One line of a command's own report (stdout, unprefixed)."""
    logging.getLogger(REPORT).info(message)


class LineFormatter(logging.Formatter):
    """Report lines as they are; notes prefixed ``madkit: ``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            message += "\n" + self.formatException(record.exc_info)
        return message if is_report(record) else f"madkit: {message}"


def is_report(record: logging.LogRecord) -> bool:
    return record.name == REPORT and record.levelno < logging.WARNING


class ConsoleHandler(logging.Handler):
    """Writes each record to the current sys.stdout (report lines) or sys.stderr (notes)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stdout if is_report(record) else sys.stderr
            from tqdm import tqdm  # a bar drawn on the terminal is cleared and redrawn around the line

            tqdm.write(text, file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001 (logging's own contract: a failed emit never raises)
            self.handleError(record)


_console = ConsoleHandler()
_console.setFormatter(LineFormatter())
_logger = logging.getLogger(NAME)
_logger.addHandler(_console)
_logger.propagate = False  # an application's root handlers would print every line twice


def console_handler() -> logging.Handler:
    """The handler that writes madkit's records to the terminal (a run also routes captured warnings to it)."""
    return _console


def level_of(name: str) -> int:
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"verbosity {name!r}: use one of {', '.join(LEVELS)}") from None


def set_verbosity(level: str | int) -> None:
    """The console's threshold. The logger itself passes info and up (debug when asked), so a run's
    train.log keeps its notes even under ``-q``."""
    value = level_of(level) if isinstance(level, str) else int(level)
    _console.setLevel(value)
    _logger.setLevel(min(value, logging.INFO))


def configure_for_cli(shift: int) -> None:
    """The command line's verbosity: ``MADKIT_VERBOSITY`` if set, else info; ``shift`` -1 (``-q``)
    or +1 (``-v``) overrides it."""
    if shift:
        set_verbosity(logging.WARNING if shift < 0 else logging.DEBUG)
        return
    try:
        set_verbosity(os.environ.get(ENV_VAR) or "info")
    except ValueError as exc:
        raise ValueError(f"{ENV_VAR}: {exc}") from None


def level_from_environment(default: str) -> int:
    """``MADKIT_VERBOSITY``'s level, else ``default``'s (a misspelt value falls back to the default)."""
    try:
        return level_of(os.environ.get(ENV_VAR) or default)
    except ValueError:  # importing madkit never fails on a typo; the CLI reports it (configure_for_cli)
        return LEVELS[default]


set_verbosity(level_from_environment("warning"))
