"""The event store: the one module that opens the DuckDB file.

DuckDB lets one process open a file read-write *or* several open it read-only. Nobody
holds the file open for long: readers use `with store.reader() as con:`, the ingest and
maintenance commands `with store.writer() as con:`; both open the file inside the data
dir's reader/writer lock (`ploomes.store.locks`) and close it when done. A program
outside the project holding the file is retried until `busy_timeout`, then surfaces as
`StoreBusy` with a message a user can act on.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import duckdb

from ploomes.config import Settings
from ploomes.store.locks import LockTimeout, RWLock
from ploomes.store.schema import (
    SCHEMA_VERSION,
    StoreBusy,
    StoreError,
    StoreUnreadable,
    Upgrades,
    is_damage,
    migrate,
)

PRIVATE_FILE = 0o600  # CRM data is personal data: the file and its WAL, like the journal


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "lock" in text.lower() and ("Could not set lock" in text or "Conflicting lock" in text)


@contextmanager
def _named_errors(path: Path) -> Iterator[None]:
    """Turn a DuckDB error raised by work on an open store into the project's StoreError.

    Callers above the store (pages, commands) then handle one error type with a message;
    errors of their own (a ValueError of a bad argument…) pass through unchanged.
    """
    try:
        yield
    except duckdb.Error as exc:
        if is_damage(exc):
            raise StoreUnreadable(f"{path.name} is damaged: {exc}") from exc
        raise StoreError(f"a query on {path.name} failed: {exc}") from exc


def make_private(path: Path) -> None:
    """Give the DuckDB file and its WAL, where they exist, to their owner alone.

    DuckDB creates both with the process umask (and the WAL again after each
    checkpoint), so the store narrows them after creating or writing them.
    """
    for part in (path, path.with_name(path.name + ".wal")):
        try:
            if os.stat(part).st_mode & 0o077:
                os.chmod(part, PRIVATE_FILE)
        except FileNotFoundError:
            pass


# Stores holding a kept read connection, closed at exit before the interpreter stops its
# daemon threads: a watcher stopped inside DuckDB's close (C++) aborts the whole process
# ("FATAL: exception not rethrown", exit status 134) even though all went well.
_KEPT: weakref.WeakSet[Store] = weakref.WeakSet()


@atexit.register
def _close_kept_at_exit() -> None:
    for store in list(_KEPT):
        store.close_kept_reader()


class Store:
    """The DuckDB event store of one data dir."""

    def __init__(self, settings: Settings, busy_timeout: float = 30.0,
                 memory_limit: str | None = None, schema_target: int = SCHEMA_VERSION,
                 path: Path | None = None, threads: int | None = None,
                 upgrades: Upgrades | None = None, keep_reader: float = 0.0):
        self.settings = settings
        # keep_reader > 0 (the dashboard): keep the file open read-only between queries
        # for that many idle seconds and hand out a cursor per query, so the queries of
        # one page share one open; it is closed as soon as a writer waits.
        self._keep_reader = keep_reader
        self._kept: tuple[AbstractContextManager[None], duckdb.DuckDBPyConnection] | None = None
        self._kept_users = 0
        self._kept_used = 0.0
        self._kept_cond = threading.Condition()
        self.path: Path = path or settings.db_path
        self.busy_timeout = busy_timeout
        # A store at another path (a rebuild's new file) is locked on its own.
        self.lock = RWLock(settings.data_dir, "store" if path is None else self.path.name)
        self._config: dict[str, str | int] = {}
        if memory_limit:
            self._config["memory_limit"] = memory_limit
        if threads:  # DuckDB's worker threads (default: one per core)
            self._config["threads"] = threads
        self._schema_target = schema_target
        self._upgrades = upgrades
        self._ready = False
        self._ready_lock = threading.Lock()

    def _connect(self, read_only: bool, deadline: float) -> duckdb.DuckDBPyConnection:
        """Open the file (the caller holds the lock), retrying while another program has it."""
        con = self._connect_file(read_only, deadline)
        # Settings go in by SET, not connect(config=…): DuckDB shares one instance per file
        # within a process and refuses a connect with another config while it is open, so
        # two Stores of one file (the dashboard's, a plain one) could not read at once.
        # While several are open, the last one's settings apply to all.
        try:
            for name, value in self._config.items():  # names from __init__, never input
                quoted = str(value).replace("'", "''")
                con.execute(f"SET GLOBAL {name} = '{quoted}'")
        except duckdb.Error as exc:
            con.close()
            raise StoreError(f"cannot configure {self.path.name}: {exc}") from exc
        return con

    def _connect_file(self, read_only: bool, deadline: float) -> duckdb.DuckDBPyConnection:
        delay = 0.01
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as exc:
                if is_damage(exc):
                    raise StoreUnreadable(f"{self.path.name} does not open: {exc}") from exc
                if not _is_lock_error(exc):
                    raise StoreError(f"cannot open {self.path.name}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise StoreBusy(
                        f"{self.path.name} is locked by another program (is a DuckDB shell "
                        "or another tool holding it open?). Close it and try again."
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
            except duckdb.Error as exc:
                if is_damage(exc):
                    raise StoreUnreadable(f"{self.path.name} does not open: {exc}") from exc
                raise StoreError(f"cannot open {self.path.name}: {exc}") from exc

    def ensure_ready(self) -> None:
        """Create or migrate the file once per process."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            self.settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._open(read_only=False) as con:
                migrate(con, self._schema_target, self._upgrades)
            self._ready = True

    @contextmanager
    def _open(self, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.busy_timeout
        hold = self.lock.shared if read_only else self.lock.exclusive
        try:
            with hold(self.busy_timeout):
                con = self._connect(read_only, deadline)
                try:
                    if not read_only:
                        make_private(self.path)
                    with _named_errors(self.path):
                        yield con
                finally:
                    if not read_only:
                        make_private(self.path)  # a WAL the block's writes created
                    con.close()
        except LockTimeout as exc:
            raise StoreBusy("the data store stayed busy; try again in a moment") from exc

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the store read-write, alone, for one batch of work."""
        self.ensure_ready()
        with self._open(read_only=False) as con:
            yield con

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the store read-only, shared with other readers, for one or more queries."""
        self.ensure_ready()
        if self._keep_reader <= 0:
            with self._open(read_only=True) as con:
                yield con
            return
        with self._kept_cond:
            if self._kept is not None and self.lock.writer_waiting():
                # let the writer in: no new user of the kept connection; close it once
                # the current ones are done, then queue behind the writer like anyone
                while self._kept_users:
                    self._kept_cond.wait()
                self._close_kept()
            if self._kept is None:
                self._kept = self._open_kept()
                _KEPT.add(self)
                threading.Thread(target=self._watch_kept, name="store-kept-reader",
                                 daemon=True).start()
            self._kept_users += 1
            cursor = self._kept[1].cursor()  # one per use: threads never share a cursor
        try:
            with _named_errors(self.path):
                yield cursor
        finally:
            cursor.close()
            with self._kept_cond:
                self._kept_users -= 1
                self._kept_used = time.monotonic()
                self._kept_cond.notify_all()

    def _open_kept(self) -> tuple[AbstractContextManager[None], duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.busy_timeout
        held = self.lock.shared(self.busy_timeout)
        try:
            held.__enter__()
        except LockTimeout as exc:
            raise StoreBusy("the data store stayed busy; try again in a moment") from exc
        try:
            return held, self._connect(True, deadline)
        except BaseException:
            held.__exit__(None, None, None)
            raise

    def close_kept_reader(self) -> None:
        """Close the kept read connection now, unless a query is using it."""
        with self._kept_cond:
            if not self._kept_users:
                self._close_kept()

    def _close_kept(self) -> None:
        # called with _kept_cond held and nobody using the kept connection
        kept, self._kept = self._kept, None
        if kept is not None:
            try:
                kept[1].close()
            finally:
                kept[0].__exit__(None, None, None)

    def _watch_kept(self) -> None:
        """Close the kept connection once idle, or as soon as a writer waits."""
        while True:
            time.sleep(0.05)
            with self._kept_cond:
                if self._kept is None:
                    return
                idle = time.monotonic() - self._kept_used > self._keep_reader
                if not self._kept_users and (idle or self.lock.writer_waiting()):
                    self._close_kept()
                    return

    def size_bytes(self) -> int:
        """Return the size of the DuckDB file (and its WAL) on disk."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total
