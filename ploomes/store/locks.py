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
    def _wanting(self) -> Iterator[None]:
        """Say we wait for the lock (a writer keeping the file open then lets us in)."""
        want = self._open(self._want)
        try:
            fcntl.flock(want, fcntl.LOCK_SH)  # only ever held exclusively for an instant
            yield
        finally:
            os.close(want)

    def _taken(self, path: Path, mode: int) -> bool:
        """Return whether `path` cannot be locked in `mode` right now (a probe)."""
        fd = self._open(path)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also releases the probe's lock
        return False

    @contextmanager
    def shared(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the lock as a reader."""
        deadline = time.monotonic() + timeout
        gate, data = self._open(self._gate), self._open(self._data)
        try:
            with self._wanting():
                _acquire(gate, fcntl.LOCK_SH, deadline)
                try:
                    _acquire(data, fcntl.LOCK_SH, deadline)
                finally:
                    fcntl.flock(gate, fcntl.LOCK_UN)
            yield
        finally:
            os.close(data)  # closing the descriptor releases its lock
            os.close(gate)

    def writer_waiting(self) -> bool:
        """Return whether a writer holds or waits at the gate right now."""
        return self._taken(self._gate, fcntl.LOCK_SH)

    def others_waiting(self) -> bool:
        """Return whether a reader or another writer is waiting for the lock right now."""
        return self._taken(self._want, fcntl.LOCK_EX)

    @contextmanager
    def exclusive(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the lock as the only writer."""
        deadline = time.monotonic() + timeout
        gate, data = self._open(self._gate), self._open(self._data)
        try:
            with self._wanting():
                _acquire(gate, fcntl.LOCK_EX, deadline)
                _acquire(data, fcntl.LOCK_EX, deadline)
            yield
        finally:
            os.close(data)
            os.close(gate)
