"""``RUN/train.log``: a copy of what a run showed on the console.

``console_log(enabled)`` wraps ``sys.stdout`` and ``sys.stderr`` for the duration of a run. What is
written before the run folder exists (it is created only once every input has been checked) waits
in memory; ``attach(path)`` then appends it and everything after to the file. Progress-bar redraws
(carriage returns) are reduced to what the terminal finally shows on that line, so the file holds
lines, not thousands of bar states. An error that ends the run is appended before it propagates.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

LOG_FILE = "train.log"


class ConsoleLog:
    def __init__(self) -> None:
        self._pending: list[str] = []
        self._file: TextIO | None = None

    def attach(self, path: str | Path, header: str) -> None:
        """Start writing to ``path`` (appending: a resumed run continues the same file)."""
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (open for the whole run; see close)
        self._file.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n")
        for line in self._pending:
            self._file.write(line)
        self._pending.clear()
        self._file.flush()

    def line(self, text: str) -> None:
        """One finished console line, newline included."""
        if self._file is None:
            self._pending.append(text)
        else:
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Tee(io.TextIOBase):
    """Passes writes to the real stream and finished lines to the log."""

    def __init__(self, stream: TextIO, log: ConsoleLog):
        self._stream, self._log, self._partial = stream, log, ""

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        # only the text after the last \r is ever logged: a bar redrawn in place for a whole run must not pile up
        self._partial = self._partial[self._partial.rfind("\r") + 1:]
        for line in lines:
            shown = line.rsplit("\r", 1)[-1]  # a bar redrawn in place: keep its final state
            if shown.strip():
                self._log.line(shown + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        """Log an unfinished last line."""
        if self._partial.rsplit("\r", 1)[-1].strip():
            self.write("\n")

    def isatty(self) -> bool:  # tqdm and others decide on this whether to draw bars
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", "utf-8")


@contextlib.contextmanager
def console_log(enabled: bool = True) -> Iterator[ConsoleLog]:
    """Copy this process's console into a ``ConsoleLog`` (a no-op log when not ``enabled``)."""
    log = ConsoleLog()
    if not enabled:
        yield log
        return
    saved = sys.stdout, sys.stderr
    tees = _Tee(saved[0], log), _Tee(saved[1], log)
    sys.stdout, sys.stderr = tees
    try:
        yield log
    except BaseException as exc:
        log.line(f"run stopped: {type(exc).__name__}: {exc}\n")
        raise
    finally:
        for tee in tees:
            tee.finish()
        sys.stdout, sys.stderr = saved
        log.close()
