"""The event store: the one module that opens the DuckDB file.

Nobody holds the file open for long. Readers use `with store.reader() as con:`, the
ingest worker and maintenance commands use `with store.writer() as con:`; both open the
file, do their work and close it, inside the data dir's reader/writer lock
(`ploomes.locks`). Lock conflicts with programs outside the project are retried until
`busy_timeout`, then surface as `StoreBusy` with a message a user can act on.

"Open" and "close" are an ATTACH and a DETACH on one in-memory DuckDB instance that the
process keeps (`_Engine`): creating an instance costs far more than attaching a file.

The schema is versioned (`schema_meta.version`) and migrated forward the first time a
process opens an older file; see ARCHITECTURE.md for the public table contract.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from ploomes.config import Settings
from ploomes.locks import LockTimeout, RWLock

log = logging.getLogger("ploomes.store")


class StoreError(Exception):
    """The event store cannot do what was asked; the message says what to do."""


class StoreBusy(StoreError):
    """The DuckDB file stayed locked by another program for too long."""


SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id BIGINT NOT NULL,                -- journal sequence number = delivery_id
    received_at TIMESTAMPTZ NOT NULL,  -- when the receiver accepted it (Ploomes sends no time)
    action VARCHAR NOT NULL,
    entity VARCHAR NOT NULL,
    account_id BIGINT,
    action_user_id BIGINT,
    webhook_id BIGINT,
    webhook_creator_id BIGINT,
    secondary_entity_id BIGINT,
    record_id BIGINT,                  -- New.Id, else Old.Id
    -- zstd for the three JSON columns: DuckDB's default string compression analyses
    -- every segment it writes, which made each checkpoint (one per reader letting the
    -- ingest go) cost twice as much; see ARCHITECTURE.md, "Column compression"
    old JSON USING COMPRESSION zstd,
    new JSON USING COMPRESSION zstd,
    payload JSON USING COMPRESSION zstd NOT NULL,  -- the whole body as received
    body_sha256 VARCHAR NOT NULL,
    is_demo BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS rejected_deliveries (
    id BIGINT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    status INTEGER NOT NULL,
    reason VARCHAR NOT NULL,
    raw BLOB,                          -- at most the first 64 KiB of the body
    raw_size BIGINT,
    source VARCHAR
);
CREATE TABLE IF NOT EXISTS auth_failures (
    received_at TIMESTAMPTZ NOT NULL,
    source VARCHAR,
    reason VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_state (
    name VARCHAR PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
"""

SCHEMA_V2 = """
ALTER TABLE events ADD COLUMN IF NOT EXISTS change_fingerprint VARCHAR;
ALTER TABLE events ADD COLUMN IF NOT EXISTS duplicate_of BIGINT;
CREATE TABLE IF NOT EXISTS field_changes (
    event_id BIGINT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    entity VARCHAR NOT NULL,
    record_id BIGINT,
    action VARCHAR NOT NULL,
    action_user_id BIGINT,
    field VARCHAR NOT NULL,
    old_value JSON,                    -- NULL: nothing before / previous value unknown
    new_value JSON,                    -- NULL: nothing after (cleared)
    old_known BOOLEAN NOT NULL,
    new_known BOOLEAN NOT NULL,
    kind VARCHAR NOT NULL,             -- set | changed | cleared | list | tags
    summary VARCHAR NOT NULL,
    bookkeeping BOOLEAN NOT NULL,
    added JSON,
    removed JSON,
    is_duplicate BOOLEAN NOT NULL,
    is_demo BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS record_state (
    entity VARCHAR NOT NULL,
    record_id BIGINT NOT NULL,
    state JSON NOT NULL,
    last_event_id BIGINT NOT NULL,
    last_received_at TIMESTAMPTZ NOT NULL,
    deleted BOOLEAN NOT NULL,
    is_demo BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS continuity_gaps (
    event_id BIGINT NOT NULL,
    previous_event_id BIGINT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    entity VARCHAR NOT NULL,
    record_id BIGINT NOT NULL,
    fields JSON NOT NULL,              -- [{"field", "expected", "found"}]
    is_demo BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id BIGINT PRIMARY KEY, name VARCHAR, email VARCHAR, suspended BOOLEAN,
    synced_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS fields (
    key VARCHAR PRIMARY KEY, entity_id BIGINT, name VARCHAR, type_id BIGINT,
    synced_at TIMESTAMPTZ
);
"""


# v3: a record's title and searchable names, kept beside its state by the ingest path so
# a name search reads one short text column instead of parsing every state's JSON.
SCHEMA_V3 = """
ALTER TABLE record_state ADD COLUMN IF NOT EXISTS title VARCHAR;  -- Name/LegalName/Title/…
ALTER TABLE record_state ADD COLUMN IF NOT EXISTS names VARCHAR;  -- Name, LegalName, Title
"""
# The same values ingest.record_names computes, for rows stored before v3.
FILL_V3 = """
UPDATE record_state SET
    title = coalesce(state->>'$.Name', state->>'$.LegalName', state->>'$.Title',
                     state->>'$.ContactName'),
    names = nullif(concat_ws(chr(10), state->>'$.Name', state->>'$.LegalName',
                             state->>'$.Title'), '')
"""


# v4: per-user rollups of the change model, kept by ingest stage 2 beside field_changes,
# so the Users page reads a few thousand rows instead of counting distinct records among
# millions (see ingest.fold_user_event and ARCHITECTURE.md).
SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS user_records (
    action_user_id BIGINT,             -- NULL: deliveries without an ActionUserId
    entity VARCHAR NOT NULL,
    record_id BIGINT NOT NULL,
    events BIGINT NOT NULL,            -- original deliveries (duplicate_of IS NULL)
    duplicates BIGINT NOT NULL,        -- repeated deliveries
    first_at TIMESTAMPTZ,              -- first and last original delivery (NULL if none)
    last_at TIMESTAMPTZ,
    last_duplicate_at TIMESTAMPTZ,     -- last repeated delivery (NULL if none)
    fields JSON NOT NULL               -- [field, …] changed, sorted; no bookkeeping or repeats
);
CREATE TABLE IF NOT EXISTS user_fields (
    action_user_id BIGINT,
    entity VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    changes BIGINT NOT NULL,           -- field changes, bookkeeping and repeats left out
    records BIGINT NOT NULL            -- distinct records among them
);
"""


def _migrate_v2(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA_V2)
    # rederive writes the current code's record_state columns and user rollups
    con.execute(SCHEMA_V3)
    con.execute(SCHEMA_V4)
    from ploomes.ingest import rederive  # late import: ingest builds on the store

    rederive(con)


def _migrate_v3(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA_V3)
    con.execute(FILL_V3)


# A store written before two-stage ingest computed each event's change model as it stored
# the event, and has no `derive` position: every event it holds is derived. Without the
# position, stage 2 would diff them all again (duplicating their field changes) and the
# rollups would leave them out. A store of today has the position once anything is derived.
DERIVED_BEFORE_V4 = """
INSERT INTO ingest_state SELECT 'derive', max(id), now() FROM events
WHERE NOT EXISTS (SELECT 1 FROM ingest_state WHERE name = 'derive')
  AND (EXISTS (SELECT 1 FROM field_changes) OR EXISTS (SELECT 1 FROM record_state))
HAVING max(id) IS NOT NULL
"""


def _migrate_v4(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA_V4)
    con.execute(DERIVED_BEFORE_V4)
    from ploomes.ingest import refill_user_rollups  # late import: ingest builds on the store

    refill_user_rollups(con)


MIGRATIONS: list[tuple[int, Callable[[duckdb.DuckDBPyConnection], None]]] = [
    (1, lambda con: con.execute(SCHEMA_V1)),
    (2, _migrate_v2),
    (3, _migrate_v3),
    (4, _migrate_v4),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the block in one transaction; a failed COMMIT's error is the one raised."""
    con.execute("BEGIN")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # a failed COMMIT already ended the transaction: keep the first error
        raise


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> tuple | None:
    """Run a query and return its first row (the result is read to its end).

    DuckDB 2 keeps a result open after `fetchone()`, and the connection refuses the next
    statement until it is finished; `fetchall()` always finishes it.
    """
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """Return the schema version of an open store (0 for an empty file)."""
    found = fetch_one(con,
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_meta' "
        "AND table_catalog = current_database()"
    )
    if not found or not found[0]:
        return 0
    row = fetch_one(con, "SELECT value FROM schema_meta WHERE key = 'version'")
    return int(row[0]) if row else 0


def migrate(con: duckdb.DuckDBPyConnection, target: int = SCHEMA_VERSION) -> int:
    """Bring an open read-write store up to `target`, one version per transaction."""
    current = schema_version(con)
    if current > SCHEMA_VERSION:
        raise StoreError(f"the data dir holds schema version {current}, newer than this "
                         f"program ({SCHEMA_VERSION}): upgrade the program")
    for version, step in MIGRATIONS:
        if current < version <= target:
            with transaction(con):
                step(con)
                con.execute("INSERT OR REPLACE INTO schema_meta VALUES ('version', ?)",
                            [str(version)])
            current = version
    return current


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "lock" in text.lower() and ("Could not set lock" in text or "Conflicting lock" in text)


class _Evicted(Exception):
    """The engine was closed to free memory before it could be used: get a new one."""


def _leak(obj: object) -> None:
    """Never deallocate `obj` (a DuckDB object a forked child inherited): destroying an
    instance whose threads did not survive the fork crashes or hangs."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


class _Engine:
    """This process's DuckDB instance for one store file; the file is attached while used.

    Creating a DuckDB instance costs ~18 ms of CPU before any work (every built-in
    function is registered again). A reader's open and query took 22 ms, an ATTACH, the
    query and a DETACH 3 ms (DuckDB 2.0.1, a 20,000-event store; 2.5 ms against 20-24 ms
    on a 1M-event one); the ingest's reopen 16 ms, an ATTACH 1-2 ms. So each process
    keeps one in-memory instance per file, and "opening" the store is `ATTACH … AS store`
    on it: the first user attaches, the last one to leave detaches, which checkpoints the
    file and releases DuckDB's file lock just as closing a connection did. Every
    connection handed out is a cursor whose default database is the file.

    Callers hold the data dir's RWLock (`ploomes.locks`) around their use, so in one
    process the file is attached read-only by readers or read-write by one writer, never
    both. DuckDB keeps temporary files beside the file, as it does for a file opened
    directly (an in-memory instance would put them in the working directory). One
    instance per file, even for Stores with other settings: two instances would share
    DuckDB's per-process file lock, and one detaching would drop it for the other. The
    first user to attach sets `memory_limit` and `threads` to its Store's; later users
    share them while it is attached.
    """

    ALIAS = "store"
    SETTINGS = ("memory_limit", "threads")  # what a Store may set (Store._config)

    def __init__(self, path: Path):
        self.path = path
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        self._db: duckdb.DuckDBPyConnection | None = None
        self._settings: dict[str, object] = {}  # what the instance runs with now
        self._read_only = False
        self._users = 0
        self.closed = False
        self._broken = False  # close the instance instead of detaching the file

    def open(self, read_only: bool, settings: dict[str, object]) -> duckdb.DuckDBPyConnection:
        """Attach the file if nobody in this process has it; return a cursor on it."""
        with self._mutex:
            if self.closed:
                raise _Evicted
            if self._users == 0:
                if self._db is None:
                    self._db = duckdb.connect(":memory:", config={
                        "temp_directory": str(self.path) + ".tmp", **settings})
                    self._settings = dict(settings)
                    self._broken = False
                elif settings != self._settings:
                    self._apply(settings)
                try:
                    self._attach(read_only)
                except (duckdb.ResourceInUseException, duckdb.BinderException):
                    # still attached (an interrupt between an ATTACH and the count below):
                    # start over; checked only here, a DETACH IF EXISTS costs ~0.2 ms
                    self._db.execute(f"DETACH DATABASE IF EXISTS {self.ALIAS}")
                    self._attach(read_only)
                self._read_only = read_only
            elif not (read_only and self._read_only):
                raise StoreError("the store is already open in this process; a writer "
                                 "must hold the store's lock alone")
            self._users += 1
            try:
                return self._cursor()
            except BaseException:
                self._leave()
                raise

    def _attach(self, read_only: bool) -> None:
        path = str(self.path).replace("'", "''")
        self._db.execute(f"ATTACH '{path}' AS {self.ALIAS}"
                         + (" (READ_ONLY)" if read_only else ""))

    def _apply(self, settings: dict[str, object]) -> None:
        self._settings = {}  # unknown until every statement went through
        for name in self.SETTINGS:  # names from this class; values from Store's arguments
            if name in settings:
                value = str(settings[name]).replace("'", "''")
                self._db.execute(f"SET GLOBAL {name} = '{value}'")
            else:
                self._db.execute(f"RESET GLOBAL {name}")
        self._settings = dict(settings)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """Return another cursor on the attached file (for a caller that holds one)."""
        if os.getpid() != self._pid:
            raise StoreError("the store was opened before this process forked: open it again")
        with self._mutex:
            return self._cursor()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        assert self._db is not None and self._users
        cursor = self._db.cursor()
        try:
            cursor.execute(f"USE {self.ALIAS}")
        except BaseException:
            cursor.close()
            raise
        return cursor

    def release(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """Close `cursor` (rolling back what it left open); detach once nobody uses it."""
        if os.getpid() != self._pid:
            # A forked child leaving a block its parent opened: the instance is the
            # parent's (closing the cursor or detaching would checkpoint the parent's
            # file under it), and its mutex may be held by a thread the fork left behind.
            _leak(cursor)
            return
        with self._mutex:
            try:
                cursor.close()
            except BaseException:
                # it may keep a transaction open on the file: detaching would not let go
                self._broken = True
                raise
            finally:
                self._leave()

    def _leave(self) -> None:
        # called with the mutex held
        self._users -= 1
        if self._users:
            return
        if not self._broken:
            try:
                self._db.execute(f"DETACH {self.ALIAS}")
                return
            except duckdb.Error as exc:
                # Committed work is safe in the WAL, and the next open replays it; a
                # connection's close used to swallow a failed checkpoint the same way.
                log.warning("checkpointing %s failed: %s", self.path.name, exc)
        self._drop()  # the only sure way to let go of the file

    def _drop(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except duckdb.Error as exc:
                log.warning("closing the DuckDB instance of %s failed: %s",
                            self.path.name, exc)

    def close_if_idle(self, blocking: bool = True) -> bool:
        """Close the instance if nobody uses it; return whether it was closed.

        With blocking=False an engine whose mutex another thread holds counts as in use.
        """
        if not self._mutex.acquire(blocking):
            return False
        try:
            if self._users:
                return False
            self.closed = True
            self._drop()
            return True
        finally:
            self._mutex.release()

    def leak_in_child(self) -> None:
        """In a forked child: keep the parent's instance alive, never touch it again."""
        self.closed = True
        self._mutex = threading.Lock()  # a thread the fork left behind may hold the old one
        if self._db is not None:
            _leak(self._db)


# resolved file -> engine, least recently used first
_ENGINES: OrderedDict[Path, _Engine] = OrderedDict()
_ENGINES_LOCK = threading.Lock()
# Instances kept for files nobody uses (each costs ~4.5 MB and its threads): a process
# of the project works on one store, its rebuild on two; the test suite on hundreds.
IDLE_ENGINES = 2
_FORK_HOLDS_LOCK = False


def _engine(path: Path, key: Path) -> _Engine:
    """Return this process's engine for the file `path` (`key`: its resolved path)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None or engine.closed:
            engine = _ENGINES[key] = _Engine(path)
            others = [k for k in _ENGINES if k != key]
            for old in others[:max(0, len(others) - IDLE_ENGINES)]:
                if _ENGINES[old].close_if_idle():
                    del _ENGINES[old]
        _ENGINES.move_to_end(key)
        return engine


def _before_fork() -> None:
    # A forked child cannot close the instances it inherits: leave it as few as we can.
    # Never wait long here: the forking thread may itself hold a lock of this module.
    global _FORK_HOLDS_LOCK
    _FORK_HOLDS_LOCK = _ENGINES_LOCK.acquire(timeout=1.0)
    if _FORK_HOLDS_LOCK:
        for key in [k for k, e in _ENGINES.items() if e.close_if_idle(blocking=False)]:
            del _ENGINES[key]


def _after_fork_in_parent() -> None:
    global _FORK_HOLDS_LOCK
    if _FORK_HOLDS_LOCK:
        _FORK_HOLDS_LOCK = False
        _ENGINES_LOCK.release()


def _after_fork_in_child() -> None:
    global _ENGINES_LOCK, _FORK_HOLDS_LOCK
    _ENGINES_LOCK, _FORK_HOLDS_LOCK = threading.Lock(), False
    for engine in _ENGINES.values():
        engine.leak_in_child()
    _ENGINES.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


class Store:
    """The DuckDB event store of one data dir."""

    def __init__(self, settings: Settings, busy_timeout: float = 30.0,
                 memory_limit: str | None = None, schema_target: int = SCHEMA_VERSION,
                 path: Path | None = None, keep_reader: float = 0.0,
                 threads: int | None = None):
        self.settings = settings
        # keep_reader > 0 (the dashboard): keep the file attached read-only between
        # queries for that many idle seconds, and hand out cursors on it. Attaching it
        # costs ~1-3 ms of CPU (see _Engine), a cursor ~0.01 ms. It is detached as soon
        # as a writer waits, so ingestion is never held up for long.
        self._keep_reader = keep_reader
        self._kept: tuple | None = None  # (engine, cursor, lock context) while kept
        self._kept_users = 0
        self._kept_used = 0.0
        self._kept_cond = threading.Condition()
        self._kept_watch: threading.Thread | None = None
        self.path: Path = path or settings.db_path
        self._engine_key = self.path.resolve()  # one engine per file, however it is named
        self.busy_timeout = busy_timeout
        # A store at another path (a rebuild's new file) is locked on its own.
        self.lock = RWLock(settings.data_dir, "store" if path is None else self.path.name)
        self._config: dict[str, object] = {"memory_limit": memory_limit} if memory_limit else {}
        if threads:  # DuckDB's worker threads (default: one per core)
            self._config["threads"] = threads
        self._schema_target = schema_target
        self._ready = False
        self._ready_lock = threading.Lock()

    def _connect(self, read_only: bool, deadline: float
                 ) -> tuple[_Engine, duckdb.DuckDBPyConnection]:
        """Open the file (the caller holds the lock): the engine and a cursor on it."""
        delay = 0.01
        while True:
            engine = _engine(self.path, self._engine_key)
            try:
                return engine, engine.open(read_only, self._config)
            except _Evicted:  # closed to free memory just now: the next one is new
                if time.monotonic() >= deadline:
                    raise StoreBusy(f"{self.path.name} could not be opened in time") from None
                continue
            except duckdb.IOException as exc:
                if not _is_lock_error(exc):
                    raise StoreError(f"cannot open {self.path.name}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise StoreBusy(
                        f"{self.path.name} is locked by another program (is a DuckDB shell "
                        "or another tool holding it open?). Close it and try again."
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.25)

    def ensure_ready(self) -> None:
        """Create or migrate the file once per process."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            with self._open_writer() as con:
                migrate(con, self._schema_target)
            self._ready = True

    @contextmanager
    def _open_writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.busy_timeout
        try:
            with self.lock.exclusive(self.busy_timeout):
                engine, con = self._connect(False, deadline)
                try:
                    yield con
                finally:
                    engine.release(con)
        except LockTimeout as exc:
            raise StoreBusy("the data store is busy writing; try again in a moment") from exc

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the store read-write, alone, for one batch of work."""
        self.ensure_ready()
        with self._open_writer() as con:
            yield con

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the store read-only, shared with other readers, for one or more queries."""
        self.ensure_ready()
        if self._keep_reader > 0:
            with self._kept_reader() as con:
                yield con
            return
        opened = self._open_shared()
        try:
            yield opened[1]
        finally:
            self._close_shared(opened)

    def _open_shared(self) -> tuple:
        """Take the lock as a reader and open the file read-only: (engine, cursor, lock)."""
        deadline = time.monotonic() + self.busy_timeout
        lock_cm = self.lock.shared(self.busy_timeout)
        try:
            lock_cm.__enter__()
        except LockTimeout as exc:
            raise StoreBusy("the data store stayed busy; try again in a moment") from exc
        try:
            return *self._connect(True, deadline), lock_cm
        except BaseException:
            lock_cm.__exit__(None, None, None)
            raise

    @staticmethod
    def _close_shared(opened: tuple) -> None:
        engine, con, lock_cm = opened
        try:
            engine.release(con)
        finally:
            lock_cm.__exit__(None, None, None)

    def _close_kept(self) -> None:
        # called with self._kept_cond held and no user of the kept connection
        opened, self._kept = self._kept, None
        self._close_shared(opened)

    @contextmanager
    def _kept_reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._kept_cond:
            if self._kept is not None and self.lock.writer_waiting():
                # let the writer in: no new user on the kept connection, close it when
                # the current ones are done, then queue behind the writer like anyone
                while self._kept_users:
                    self._kept_cond.wait()
                if self._kept is not None:
                    self._close_kept()
            if self._kept is None:
                self._kept = self._open_shared()
                if self._kept_watch is None or not self._kept_watch.is_alive():
                    self._kept_watch = threading.Thread(target=self._watch_kept,
                                                        name="store-kept-reader", daemon=True)
                    self._kept_watch.start()
            self._kept_users += 1
            cursor = self._kept[0].cursor()  # a cursor per use: threads never share one
        try:
            yield cursor
        finally:
            cursor.close()
            with self._kept_cond:
                self._kept_users -= 1
                self._kept_used = time.monotonic()
                self._kept_cond.notify_all()

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
