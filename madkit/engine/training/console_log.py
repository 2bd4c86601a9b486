"""``RUN/train.log``: every note and report line of a run, through a logging handler.

``console_log(enabled)`` adds a handler to the ``madkit`` logger (and to ``py.warnings``, with
warnings captured) for the duration of a run. What is logged before the run folder exists (it is
created only once every input has been checked) waits in a ``MemoryHandler``; ``attach(path)`` then
writes it and everything after to the file, appending (a resumed run continues the same file). The
file keeps info and up whatever the console's verbosity (``-q`` quiets the terminal, not the record);
progress bars are drawn on the terminal only. An error that ends the run is written before it
propagates; the console shows it once, from the CLI.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import time
from collections.abc import Iterator
from pathlib import Path

from madkit.logs import NAME, REPORT, LineFormatter, console_handler

LOG_FILE = "train.log"
_NEVER = logging.CRITICAL + 1  # a MemoryHandler flushes on a record at or above this: never on its own


class ConsoleLog:
    def __init__(self) -> None:
        self._pending = logging.handlers.MemoryHandler(capacity=1_000_000, flushLevel=_NEVER, flushOnClose=False)
        self._file: logging.FileHandler | None = None
        self.handler: logging.Handler = self._pending

    def attach(self, path: str | Path, header: str) -> None:
        """Start writing to ``path``: the header line, then what waited in memory, then the rest."""
        file = logging.FileHandler(path, mode="a", encoding="utf-8")
        file.setFormatter(LineFormatter())
        file.setLevel(logging.INFO)
        file.stream.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n")
        self._pending.setTarget(file)
        self._pending.flush()
        for logger in _loggers():
            logger.removeHandler(self._pending)
            logger.addHandler(file)
        self._pending.close()
        self._file, self.handler = file, file

    def line(self, text: str) -> None:
        """A line for the file only (the console has shown it another way)."""
        record = logging.LogRecord(REPORT, logging.INFO, "", 0, text.rstrip("\n"), None, None)
        self.handler.handle(record)

    def close(self) -> None:
        for logger in _loggers():
            logger.removeHandler(self.handler)
        self.handler.close()


def _loggers() -> list[logging.Logger]:
    return [logging.getLogger(NAME), logging.getLogger("py.warnings")]


@contextlib.contextmanager
def console_log(enabled: bool = True) -> Iterator[ConsoleLog]:
    """Keep this run's log records in a ``ConsoleLog`` (nothing is kept when not ``enabled``)."""
    log = ConsoleLog()
    if not enabled:
        yield log
        return
    log.handler.setLevel(logging.INFO)
    for logger in _loggers():
        logger.addHandler(log.handler)
    # warnings go to the file and, as before, to the terminal (a handler on py.warnings would otherwise
    # keep logging's last-resort printer from showing them)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.addHandler(console_handler())
    logging.captureWarnings(True)
    try:
        yield log
    except BaseException as exc:
        log.line(f"run stopped: {type(exc).__name__}: {exc}")
        raise
    finally:
        logging.captureWarnings(False)
        warnings_logger.removeHandler(console_handler())
        log.close()
