"""Short read leases: a live run never prunes a checkpoint that ``sample``, ``eval`` or ``export`` is reading.

A reader holds a shared ``flock`` on ``<checkpoint>/.lease`` while it reads the checkpoint's files;
pruning takes an exclusive, non-blocking lock on the same file before it moves a folder away, and
skips (keeps until its next save) any folder a reader holds. Locks are the kernel's: a reader that
is killed releases its lease at once, and a lease never blocks training for longer than a rename.

The reader checks, once its lease is granted, that the folder is still where it chose it: pruning may
have moved it between the choice and the lock, and then the reader chooses again (the newest
checkpoint is newer by then). Exports and folders outside a run's ``checkpoints/`` are never pruned
and need no lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from madkit.engine.checkpoints.layout import CHECKPOINTS

LEASE_FILE = ".lease"


class FolderMoved(Exception):
    """The checkpoint was pruned between choosing it and leasing it: choose again."""


def needs_lease(folder: Path) -> bool:
    return folder.parent.name == CHECKPOINTS and folder.name.isdigit()


@contextlib.contextmanager
def read_lease(folder: Path) -> Iterator[None]:
    """Hold a shared lease on a run's checkpoint ``folder``; ``FolderMoved`` if it is already gone."""
    if not needs_lease(folder):
        yield
        return
    try:
        fd = os.open(folder / LEASE_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except (FileNotFoundError, NotADirectoryError):
        raise FolderMoved(str(folder)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            still_here = os.stat(folder / LEASE_FILE).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            still_here = False
        if not still_here:
            raise FolderMoved(str(folder))
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def unless_leased(folder: Path) -> Iterator[bool]:
    """For pruning: yields True while no reader holds ``folder`` (readers are kept out until the block
    ends), False when one does (leave the folder for the next prune)."""
    try:
        fd = os.open(folder / LEASE_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a folder one cannot write a lease into cannot be leased by readers either
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
