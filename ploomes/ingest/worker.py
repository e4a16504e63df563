"""The ingest process: durable journal records → DuckDB, exactly once, in two stages.

Stage 1 makes deliveries visible (event rows, fingerprints, duplicate marks) in batches:
each batch is one transaction that also stores the journal position, and is applied
only if the stored position is where the worker expects it, so after `kill -9` every
record lands exactly once. Stage 2 computes the change model (field changes, gaps,
record state, user rollups) of stored events with its own position, in small steps
whenever stage 1 has nothing due: a burst is visible at once and its diffs follow.

The worker also stores the relay's attempts: it reads the outbox log (`data/outbox/`,
written by the forwarder, never past the position the forwarder published as durable)
into `outbox_attempts` and `outbox_messages`, in batches with their own position (the
`outbox` row of `ingest_state`), exactly once like stage 1.

The worker also decides and sends the alerts (`ploomes.alerts`): rules are evaluated
once per event inside each stage-2 transaction, time-based rules every
`alerts_tick_seconds`, and a sender thread delivers them through the alerts' own outbox
log, whose attempts are stored like the relay's (position `alerts_outbox`).

The worker is a child process of the receiver (`IngestProcess`), so diffing and commits
never take the receiver's GIL; it dies with the receiver (PR_SET_PDEATHSIG) and is
restarted by it if it stops.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import threading
import time
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess

import duckdb

from ploomes.alerts.decide import AlertDecider, stored_alerts
from ploomes.alerts.rules import business_hours
from ploomes.alerts.sender import POSITION as ALERTS_POSITION
from ploomes.alerts.sender import AlertSender, alerts_outbox_dir
from ploomes.config import Settings
from ploomes.ingest.pipeline import Pipeline, warm_up
from ploomes.ingest.upgrade import UPGRADES
from ploomes.intake.journal import (
    KIND_REJECTED,
    JournalReader,
    Record,
    prune_segments,
    rejected_payload,
)
from ploomes.intake.shared import (
    AUTH_SAMPLE,
    CONTEXT,
    STORE_FAILING,
    STORE_OK,
    STORE_UNREADABLE,
    SharedState,
)
from ploomes.outbox.tables import outbox_position, store_attempts
from ploomes.store import Store, StoreError, StoreUnreadable, fetch_one

log = logging.getLogger("ploomes.ingest")

# Errors that belong to the records of a batch (their values), not to the machine: such
# a batch is retried record by record. Anything else (disk full, I/O, a lock) pauses
# ingestion and is retried later from the stored position, losing nothing.
RECORD_ERRORS = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException,
                 ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError)


class _WriteSession:
    """The worker's DuckDB connection, kept open across batches while work keeps coming.

    Closing the file checkpoints it, which can cost more than a batch, so the worker
    keeps it while busy and lets others in as soon as one waits (`RWLock.others_waiting`:
    a dashboard reader, or a writer such as a demo load), after `HOLD_MAX` seconds at
    most, or once idle for `IDLE_CLOSE` seconds. Reopening, it lets waiting readers in
    first: the lock prefers writers, and a writer reopening at once would win every race.
    """

    HOLD_MAX = 10.0
    IDLE_CLOSE = 0.1
    READER_GRACE = 0.5

    def __init__(self, store: Store):
        self.store = store
        self._cm: object | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened = self._used = 0.0

    def connection(self) -> duckdb.DuckDBPyConnection:
        """Return the open connection, opening the store (alone) if needed."""
        if self._con is None:
            deadline = time.monotonic() + self.READER_GRACE
            while self.store.lock.others_waiting() and time.monotonic() < deadline:
                time.sleep(0.002)
            cm = self.store.writer()
            self._con = cm.__enter__()
            self._cm = cm
            self._opened = time.monotonic()
        self._used = time.monotonic()
        return self._con

    @property
    def is_open(self) -> bool:
        """Return whether the connection is open now."""
        return self._con is not None

    def after_batch(self) -> None:
        """Let waiting readers in, or everyone after HOLD_MAX seconds."""
        if self._con is not None and (time.monotonic() - self._opened > self.HOLD_MAX
                                      or self.store.lock.others_waiting()):
            self.close()

    def idle(self) -> None:
        """Close the store once nothing came for IDLE_CLOSE seconds."""
        if self._con is not None and time.monotonic() - self._used > self.IDLE_CLOSE:
            self.close()

    def close(self) -> None:
        """Close the connection (checkpointing the file) and release the lock."""
        cm, self._cm, self._con = self._cm, None, None
        if cm is not None:
            cm.__exit__(None, None, None)  # type: ignore[attr-defined]


class IngestWorker:
    """Moves durable journal records into DuckDB in batches, exactly once.

    Under a steady flow a stage-1 batch starts at most every `GATHER` seconds (at once
    when `batch_size` records wait): a commit costs about as much for 1 event as for
    400, so gathering keeps the CPU for answering. Between batches stage 2 runs in steps
    of `DERIVE_STEP` events, taking at most `DERIVE_SHARE` of the time while deliveries
    flow (this process shares the machine with the receiver's event loop: a busy stage 2
    took CPU from answering, see bench/RESULTS.md) and all of it once they stop.
    """

    GATHER = 0.25
    DERIVE_STEP = 200
    DERIVE_SHARE = 0.1

    def __init__(self, settings: Settings, shared: SharedState, batch_size: int = 1000):
        self.settings = settings
        self.shared = shared
        self.batch_size = batch_size
        # One DuckDB thread: the worker runs beside the receiver, whose loop needs a core.
        self.store = Store(settings, threads=1, upgrades=UPGRADES)
        self.session = _WriteSession(self.store)
        self.pipeline = Pipeline(settings.duplicate_window_seconds)
        self.ingested_seq = 0
        self.derived_seq = 0
        self._reader: JournalReader | None = None
        self._outbox: JournalReader | None = None  # the relay's attempts (data/outbox)
        self.outbox_seq = 0
        self._next_outbox_at = 0.0
        self._next_batch_at = 0.0
        self._derive_after = 0.0  # while deliveries flow, stage 2 waits until then
        self._last_prune = 0.0
        self.alerts = AlertDecider(settings)
        self.pipeline.observer = self.alerts
        self.sender = AlertSender(settings)
        self.hours = business_hours(settings)
        self._alert_log: JournalReader | None = None
        self.alert_log_seq = 0
        self._next_alert_tick = 0.0

    def start(self) -> None:
        """Read the stored positions and position the journal reader after them."""
        with self.store.writer() as con:
            row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'main'")
            self.ingested_seq = row[0] if row else 0
            row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'derive'")
            self.derived_seq = row[0] if row else 0
            self.pipeline.load_recent(con)
            self.outbox_seq = outbox_position(con)
            self.alert_log_seq = outbox_position(con, ALERTS_POSITION)
            self.alerts.warm_up(con, self.derived_seq)
            self._alert_log = None
            self._rules_changed(con)
        self._reader = JournalReader(self.settings.journal_dir, self.ingested_seq)
        self._outbox = JournalReader(self.settings.data_dir / "outbox", self.outbox_seq)
        self.shared.outbox_ingested_seq.value = self.outbox_seq
        self.shared.ingested_seq.value = self.ingested_seq
        self.shared.derived_seq.value = self.derived_seq
        self.shared.ready.value = True

    def run(self, parent_pid: int) -> None:
        """Ingest until asked to stop (then drain) or until the receiver is gone."""
        backoff = 0.05
        reported: str | None = None  # the error last logged: a lasting one is logged once
        try:
            while os.getppid() == parent_pid:
                stopping = self.shared.stop.value
                try:
                    if self._reader is None:
                        self.start()
                    worked = self.step()
                    backoff = 0.05
                    self.shared.set_error(None)
                    self.shared.store_state.value = STORE_OK
                    if reported is not None:
                        log.info("ingest resumed")
                        reported = None
                except Exception as exc:  # noqa: BLE001 - retried from the stored positions
                    error = f"{type(exc).__name__}: {exc}"
                    self.shared.ingest_errors.value += 1
                    self.shared.set_error(error)
                    # a damaged file is no passing trouble: a rebuild mends it
                    self.shared.store_state.value = (
                        STORE_UNREADABLE if isinstance(exc, StoreUnreadable) else STORE_FAILING)
                    if error != reported:
                        log.warning("ingest paused, will retry: %s", exc)
                        reported = error
                    self.session.close()
                    self._reader = None
                    if stopping:
                        return
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if stopping and not worked:
                    return
                if not worked:
                    time.sleep(0.005)
        finally:
            self.session.close()
            self.sender.close()

    def step(self) -> bool:
        """Do the next piece of work (a stage-1 batch, else a stage-2 step); say if any."""
        assert self._reader is not None
        synced = self.shared.synced_seq.value
        waiting = synced - self._reader.last_seq
        failures = self._take_failures()
        stopping = self.shared.stop.value  # draining: no gathering, no share for stage 2
        due = (stopping or waiting >= self.batch_size
               or time.monotonic() >= self._next_batch_at)
        if (waiting > 0 and due) or failures:
            records = self._reader.read(self.batch_size, synced) if waiting > 0 and due else []
            if records:
                self._next_batch_at = time.monotonic() + self.GATHER
            self._store_batch(records, failures)
            return True
        if self._store_outbox(stopping) or self._store_alert_log(stopping):
            return True
        started = time.monotonic()
        flowing = not stopping and (waiting > 0 or started < self._next_batch_at)
        if (not flowing or started >= self._derive_after) and self._derive_some(
                self.DERIVE_STEP):
            took = time.monotonic() - started
            self._derive_after = started + took / self.DERIVE_SHARE
            self.session.after_batch()
            return True
        self._alert_tick()
        if waiting <= 0:
            self.session.idle()
            self._maybe_prune()
        else:
            self.session.after_batch()  # a waiting reader need not wait for the batch
        return False

    def _take_failures(self) -> list[tuple[datetime, str | None, str]]:
        out = []
        for _ in range(AUTH_SAMPLE):
            try:
                out.append(self.shared.failures.get_nowait())
            except queue.Empty:
                break
        return out

    def _store_batch(self, records: list[Record],
                     failures: list[tuple[datetime, str | None, str]]) -> None:
        """Stage 1: store a batch of records (and the auth failure sample) exactly once."""
        self.shared.oldest_pending_ns.value = records[0].received_ns if records else 0
        try:
            self.pipeline.apply(self.session.connection(), records, failures,
                                expect_seq=self.ingested_seq)
        except RECORD_ERRORS as exc:
            self.session.close()
            # A record DuckDB refuses must not stall every later one: store the batch
            # record by record and keep any that still fails as a rejected delivery.
            log.error("a batch could not be stored, retrying record by record: %s", exc)
            self._isolate(records)
        now = time.time_ns()
        for record in records:
            if not record.is_demo:
                self.shared.observe_lag(max(0, now - record.received_ns) / 1e9)
        if records:
            self.ingested_seq = records[-1].seq
        self.shared.ingested_seq.value = self.ingested_seq
        self.shared.oldest_pending_ns.value = 0
        self.session.after_batch()

    def _store_outbox(self, stopping: bool) -> bool:
        """Store a batch of the relay's attempts, gathered like stage 1; say if any."""
        assert self._outbox is not None
        durable = self.shared.outbox_synced_seq.value
        waiting = durable - self._outbox.last_seq
        if waiting <= 0 or not (stopping or waiting >= self.batch_size
                                or time.monotonic() >= self._next_outbox_at):
            return False
        records = self._outbox.read(self.batch_size, durable)
        if not records:
            return False
        self._next_outbox_at = time.monotonic() + self.GATHER
        store_attempts(self.session.connection(), records, expect_seq=self.outbox_seq)
        self.outbox_seq = records[-1].seq
        self.shared.outbox_ingested_seq.value = self.outbox_seq
        self.session.after_batch()
        return True

    def _rules_changed(self, con: duckdb.DuckDBPyConnection) -> None:
        """Give the sender the rules; start it once there is anything to send (a worker
        without rules opens no log: tests run several workers in one process)."""
        if self.sender.log is not None:
            self.sender.set_rules(self.alerts.rules)
            return
        stored = stored_alerts(con)
        if self.alerts.rules or stored:
            self.sender.start(self.alerts.rules, stored)

    def _store_alert_log(self, stopping: bool) -> bool:
        """Store the alerts' attempts (their own outbox log); say if any."""
        folder = alerts_outbox_dir(self.settings)
        if self._alert_log is None:
            if not folder.is_dir():
                return False
            self._alert_log = JournalReader(folder, self.alert_log_seq)
        # without a sender in this process nobody writes the log (it has one writer, this
        # process): all of it is durable, e.g. after a rebuild with no rule left
        durable = self.sender.synced_seq if self.sender.log is not None else 2**62
        if durable <= self._alert_log.last_seq:
            return False
        records = self._alert_log.read(self.batch_size, durable)
        if not records:
            return False
        store_attempts(self.session.connection(), records, expect_seq=self.alert_log_seq,
                       position=ALERTS_POSITION)
        self.alert_log_seq = records[-1].seq
        self.session.after_batch()
        return True

    def _alert_tick(self) -> None:
        """Decide the time-based alert rules every `alerts_tick_seconds`."""
        if time.monotonic() < self._next_alert_tick:
            return
        self._next_alert_tick = time.monotonic() + self.settings.alerts_tick_seconds
        was_open = self.session.is_open
        con = self.session.connection()
        if self.alerts.reload(con):
            self._rules_changed(con)
        self.sender.add(self.alerts.tick(con, datetime.now(UTC), self.hours))
        if not was_open:
            self.session.close()  # opened only for the clock: readers need not wait
        else:
            self.session.after_batch()

    def _isolate(self, records: list[Record]) -> None:
        with self.store.writer() as con:
            self.pipeline.load_recent(con)
            seq = self.ingested_seq
            for record in records:
                try:
                    self.pipeline.apply(con, [record], expect_seq=seq)
                except RECORD_ERRORS as exc:
                    self.pipeline.load_recent(con)
                    reason = f"accepted, but DuckDB refused it (kept in the journal): {exc}"
                    self.pipeline.apply(con, [Record(
                        record.seq, KIND_REJECTED, record.flags, record.received_ns,
                        rejected_payload(200, reason[:500], record.payload, None))],
                        expect_seq=seq)
                seq = record.seq

    def _derive_some(self, max_events: int) -> bool:
        """Run stage 2 on a few stored events; return whether it did."""
        if self.derived_seq >= self.ingested_seq:
            return False
        # a rule added, changed or muted applies from the next events derived (one small
        # query per step of DERIVE_STEP events)
        con = self.session.connection()
        if self.alerts.reload(con):
            self._rules_changed(con)
        try:
            last = self.pipeline.derive_pending(self.session.connection(), max_events)
        except RECORD_ERRORS as exc:
            # one event's values break the change model: find it, skip it, say so
            self.session.close()
            last = self._derive_one_by_one(max_events, exc)
        self.sender.add(self.alerts.take_ready())
        # None: every stored event is derived (later records are not events)
        self.derived_seq = self.ingested_seq if last is None else last
        self.shared.derived_seq.value = self.derived_seq
        return last is not None

    def _derive_one_by_one(self, count: int, first_error: Exception) -> int | None:
        last = None
        for _ in range(count):
            con = self.session.connection()
            try:
                done = self.pipeline.derive_pending(con, 1)
            except RECORD_ERRORS as exc:
                done = self.pipeline.skip_derive(con)
                self.shared.ingest_errors.value += 1
                log.error("no field changes for event %s: %s (first error: %s)",
                          done, exc, first_error)
            if done is None:
                break
            last = done
        return last

    def _maybe_prune(self) -> None:
        retention = self.settings.journal_retention_days * 86400
        if retention and time.monotonic() - self._last_prune > 600:
            self._last_prune = time.monotonic()
            for path in prune_segments(self.settings.journal_dir, self.ingested_seq,
                                       retention):
                log.info("journal segment %s removed (retention)", path.name)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the receiver dies (even by kill -9)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the worker also exits when it notices a new parent


def ingest_main(settings: Settings, shared: SharedState, parent_pid: int) -> None:
    """Entry point of the ingest process."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the receiver decides when we stop
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s ploomes.ingest: %(message)s")
    warm_up()  # before the worker says it is ready: not in the first batch's time
    IngestWorker(settings, shared).run(parent_pid)


class IngestProcess:
    """Runs the ingest worker as a child process, restarting it if it stops."""

    def __init__(self, settings: Settings, shared: SharedState):
        self.settings = settings
        self.shared = shared
        self._process: BaseProcess | None = None
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None
        self._store_reported = False

    def start(self) -> None:
        """Start the worker and a thread that restarts it if it stops.

        A DuckDB file that cannot be opened does not stop the start: deliveries are
        journaled all the same, the worker retries, and the log says how to mend it.
        """
        try:  # create or migrate the file once, before the worker opens it
            Store(self.settings, upgrades=UPGRADES).ensure_ready()
        except StoreError as exc:  # damaged, or held by another program: the worker retries
            self.shared.set_error(f"{type(exc).__name__}: {exc}")
            self.shared.store_state.value = (
                STORE_UNREADABLE if isinstance(exc, StoreUnreadable) else STORE_FAILING)
        self._report_store()
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="ingest-watch", daemon=True)
        self._watcher.start()

    def _report_store(self) -> None:
        """Log once when the file stops opening (with the command that mends it), and
        once when it opens again."""
        state = self.shared.store_state.value
        if state == STORE_UNREADABLE and not self._store_reported:
            self._store_reported = True
            log.error(
                "The data store %s is damaged (%s). Deliveries are still accepted and kept "
                "in the journal: nothing is lost. To mend it, stop the receiver and run "
                "`python -m ploomes rebuild --data-dir %s` (it sets the file aside and "
                "rebuilds it from the journal), then start the receiver again.",
                self.settings.db_path, self.shared.get_error(), self.settings.data_dir)
        elif state == STORE_OK and self._store_reported:
            self._store_reported = False
            log.info("The data store %s opens again; the journal is being ingested",
                     self.settings.db_path)

    def _spawn(self) -> None:
        self._process = CONTEXT.Process(target=ingest_main, name="ploomes-ingest",
                                        args=(self.settings, self.shared, os.getpid()),
                                        daemon=True)
        self._process.start()

    def _watch(self) -> None:
        while not self._closing.wait(0.1):
            self._report_store()
            process = self._process
            if process is not None and not process.is_alive() and not self._closing.is_set():
                log.error("the ingest process stopped (exit code %s); restarting it",
                          process.exitcode)
                self._spawn()

    @property
    def pid(self) -> int | None:
        """Return the worker's process id while it runs."""
        return self._process.pid if self.alive() and self._process is not None else None

    def alive(self) -> bool:
        """Return whether the worker process is running."""
        return self._process is not None and self._process.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the worker drain what is durable, then stop it."""
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join()
        process = self._process
        if process is not None and process.is_alive():
            self.shared.stop.value = True
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(5)
