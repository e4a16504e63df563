"""A cross-process reader/writer lock over two lock files, letting a waiting writer go first.

DuckDB lets one process open a file read-write *or* several open it read-only; every
other combination fails at once. Every process of the project therefore opens the
DuckDB file only inside this lock: readers share it, a writer has it alone.

Writer preference: a writer first takes the *gate* exclusively, so readers that arrive
after it wait at the gate, then waits for the readers already inside to leave. A reader
passes through the gate (shared, released at once) before taking the data lock shared.
flock() locks belong to the open file description, so two threads of one process that
open the files separately exclude each other just like two processes do.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockTimeout(TimeoutError):
    """The lock was not obtained in time."""


def _acquire(fd: int, mode: int, deadline: float) -> None:
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout("the data store is busy") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.02)


class RWLock:
    """The reader/writer lock of one data dir."""

    def __init__(self, directory: Path, name: str = "store"):
        self.directory = directory
        self._gate = directory / f".{name}-gate.lock"
        self._data = directory / f".{name}-data.lock"
        # Readers and writers hold this (shared) while they wait, so a writer that keeps
        # the file open across batches can tell when to let them in.
        self._want = directory / f".{name}-want.lock"

    def _open(self, path: Path) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def shared(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the lock as a reader."""
        deadline = time.monotonic() + timeout
        want = self._open(self._want)
        gate, data = self._open(self._gate), self._open(self._data)
        try:
            fcntl.flock(want, fcntl.LOCK_SH)  # only ever held exclusively for an instant
            try:
                _acquire(gate, fcntl.LOCK_SH, deadline)
                try:
                    _acquire(data, fcntl.LOCK_SH, deadline)
                finally:
                    fcntl.flock(gate, fcntl.LOCK_UN)
            finally:
                os.close(want)
            yield
        finally:
            os.close(data)  # closing the descriptor releases its lock
            os.close(gate)

    def writer_waiting(self) -> bool:
        """Return whether a writer holds or waits at the gate right now."""
        fd = self._open(self._gate)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def readers_waiting(self) -> bool:
        """Return whether a reader (or another writer) is waiting for the lock right now."""
        fd = self._open(self._want)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also releases the probe's lock
        return False

    @contextmanager
    def exclusive(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the lock as the only writer."""
        deadline = time.monotonic() + timeout
        want = self._open(self._want)
        gate, data = self._open(self._gate), self._open(self._data)
        try:
            fcntl.flock(want, fcntl.LOCK_SH)  # a writer holding the file lets us in
            try:
                _acquire(gate, fcntl.LOCK_EX, deadline)
                _acquire(data, fcntl.LOCK_EX, deadline)
            finally:
                os.close(want)
            yield
        finally:
            os.close(data)
            os.close(gate)
