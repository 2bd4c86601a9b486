"""One writer per run folder: an advisory ``flock`` on ``RUN/.lock``.

``madkit run`` holds the lock exclusively for its whole life (under torchrun, rank 0 holds it for
all ranks). ``eval``, ``sample``, ``sweep`` and ``report`` hold it shared while they write into the
folder: they may run side by side, but never beside a training run, and a training run never starts
beside them. A process that cannot get the lock changes nothing and raises ``RunFolderBusyError``
(exit 2) naming the holder.

The kernel releases a flock when the last descriptor of its open file is closed, so a holder that
dies, even by SIGKILL, never blocks the next run. Processes forked by the holder (DataLoader workers)
close their inherited copy at once (``os.register_at_fork``), so an orphaned worker cannot keep a
dead run's lock alive. The lock file stays in place (deleting it would let two processes lock two
different files); it holds the exclusive holder's pid, host and command, for the refusal message.

Why not the ``filelock`` package: its ``FileLock`` is exclusive only, and side writers need a shared
mode; its ``ReadWriteLock`` keeps the lock in an SQLite transaction, whose locking SQLite itself
calls unreliable on the network filesystems where clusters keep runs, and it needs the folder to
support hard links. ``flock`` is POSIX-only (madkit trains on Linux and macOS) and works on NFSv4.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from madkit.engine.checkpoints.export_format import is_export
from madkit.errors import UserError

LOCK_FILE = ".lock"
_HELD: set[int] = set()  # descriptors this process holds locks through


class RunFolderBusyError(UserError):
    """Another madkit process is writing into the run folder."""


def _close_inherited() -> None:
    # in a forked child: give up the parent's locks without unlocking them (LOCK_UN would release
    # them for the parent too); closing our copy of the descriptor does exactly that
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited)


class RunLock:
    """``with RunLock(run_dir, "madkit run"):`` ... (exclusive), or ``shared=True`` for side writers.

    ``acquire()`` needs the folder to exist; it never creates it. Re-acquiring a held lock is a no-op.
    """

    def __init__(self, run_dir: str | Path, purpose: str, shared: bool = False):
        self.root, self.purpose, self.shared = Path(run_dir), purpose, shared
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Self:
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderBusyError(self._refusal()) from None
            raise
        self._fd = fd
        _HELD.add(fd)
        if not self.shared:
            self._write_holder()
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.discard(fd)
        try:
            if not self.shared:
                os.ftruncate(fd, 0)  # the next refusal must not name a finished run
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _write_holder(self) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.purpose,
            "argv": " ".join(sys.argv[1:])[:300],
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        data = (json.dumps(holder) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def _refusal(self) -> str:
        mine = "write into" if self.shared else "train in"
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if holder.get("pid"):
            who = (
                f"{holder.get('command', 'madkit')} (pid {holder['pid']} on {holder.get('host', '?')}, "
                f"since {holder.get('since', '?')})"
            )
        else:  # shared holders leave no record: only eval, sample, sweep and report take the lock shared
            who = "a madkit eval, sample, sweep or report writing into it"
        fix = (
            "wait for it to finish, or write elsewhere (--out)"
            if self.shared
            else "wait for it to finish, or train into another folder (--out)"
        )
        return f"cannot {mine} {self.root}: the run folder is in use by {who}; nothing was changed; {fix}"


def run_folder_of(path: str | Path) -> Path | None:
    """The run folder ``path`` belongs to: itself (a run folder), RUN for RUN/checkpoints/<step>, or
    None (a loose checkpoint folder, or nothing madkit trained)."""
    path = Path(path)
    if path.parent.name == "checkpoints" and path.name.isdigit():
        return path.parent.parent
    if is_export(path):  # an export holds a config.resolved.toml too, but nothing trains into it
        return None
    if (path / "checkpoints").is_dir() or (path / "config.resolved.toml").is_file():
        return path
    return None


@contextlib.contextmanager
def writing_into(run_dir: str | Path | None, purpose: str, target: str | Path | None = None) -> Iterator[None]:
    """Hold ``run_dir``'s lock shared while eval/sample/sweep/report write ``target`` (default: into
    ``run_dir`` itself). Nothing is locked when there is no run folder or ``target`` lies outside it."""
    if run_dir is None or not Path(run_dir).is_dir():
        yield
        return
    if target is not None and not Path(target).resolve().is_relative_to(Path(run_dir).resolve()):
        yield
        return
    with RunLock(run_dir, purpose, shared=True):
        yield
