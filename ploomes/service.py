"""The receiving side of the project, without HTTP: accept → journal → ingest process.

`DeliveryService` owns the journal of one data dir, answers for each delivery, and
runs the ingest worker as a child process (`ingest_main`). The worker is a separate
process so that parsing, diffing and DuckDB commits never hold the receiver's GIL:
answers stay fast while ingestion works, and a crash there cannot take answers down.
The two share a few numbers in shared memory (`SharedState`): the journal's durable
position, how far ingestion got, its lag histogram and its last error.
`receiver.py` is a thin Flask shell over `DeliveryService`.
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import duckdb
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from ploomes.config import Settings
from ploomes.delivery import InvalidDelivery, check_delivery, validate
from ploomes.ingest import Pipeline, rejected_payload
from ploomes.journal import (
    FLAG_DEMO,
    KIND_CONTROL,
    KIND_DELIVERY,
    KIND_REJECTED,
    Journal,
    JournalReader,
    JournalWriteError,
    Record,
)
from ploomes.keys import KeyRing
from ploomes.store import Store, StoreError, fetch_one
from ploomes.syncd import CHECK_HERE_MAX

log = logging.getLogger("ploomes.receiver")

# Errors that belong to the records of a batch (their values), not to the machine: such
# a batch is retried record by record. Anything else (disk full, I/O, a lock) pauses
# ingestion and is retried later from the stored position, losing nothing.
RECORD_ERRORS = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException,
                 ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError)
AUTH_SAMPLE = 1000  # unauthenticated attempts kept (time, source, reason), never bodies
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_CTX = multiprocessing.get_context("spawn")  # no fork of a threaded server


def _run_here(fn: Callable[..., object], *args: object) -> object:
    return fn(*args)


def _observe(histogram, bounds: tuple, value: float) -> None:
    """Count value in a histogram kept as one count per bucket, then +Inf, then the sum."""
    histogram[bisect.bisect_left(bounds, value)] += 1  # the first bound >= value
    histogram[len(bounds) + 1] += value


class SharedState:
    """Numbers the receiver and its ingest process share (shared memory, no pickling)."""

    def __init__(self) -> None:
        self.synced_seq = _CTX.Value(ctypes.c_int64, 0, lock=False)  # written by receiver
        self.ingested_seq = _CTX.Value(ctypes.c_int64, 0, lock=False)  # written by worker
        self.derived_seq = _CTX.Value(ctypes.c_int64, 0, lock=False)  # change model done
        self.oldest_pending_ns = _CTX.Value(ctypes.c_int64, 0, lock=False)
        self.ingest_errors = _CTX.Value(ctypes.c_int64, 0, lock=False)
        self.error = _CTX.Array(ctypes.c_char, 400, lock=False)
        self.stop = _CTX.Value(ctypes.c_bool, False, lock=False)
        self.ready = _CTX.Value(ctypes.c_bool, False, lock=False)  # worker has started
        # lag histogram: one count per bucket, then +Inf, then the sum
        self.lag = _CTX.Array(ctypes.c_double, len(LAG_BUCKETS) + 2, lock=False)
        self.failures = _CTX.Queue(maxsize=AUTH_SAMPLE)

    def set_error(self, text: str | None) -> None:
        """Publish the worker's last error (or clear it)."""
        self.error.value = (text or "").encode("utf-8", "replace")[:399]

    def get_error(self) -> str | None:
        """Return the worker's last error, if any."""
        return self.error.value.decode("utf-8", "replace") or None

    def observe_lag(self, seconds: float) -> None:
        """Count one ingest-lag observation."""
        _observe(self.lag, LAG_BUCKETS, seconds)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the receiver dies (even by kill -9)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the worker also exits when it notices a new parent


class _WriteSession:
    """The worker's DuckDB connection, kept open across batches while work keeps coming.

    Closing the file checkpoints it, which can cost more than a batch (12 ms of CPU at
    the median, up to 213 ms, on a 20,000-event store; a stage-1 batch of 400 ~30 ms),
    so the worker keeps it while busy, and lets readers in as soon as one waits
    (`RWLock.others_waiting`, which also sees a waiting writer such as the dashboard
    loading demo data), after `HOLD_MAX` seconds at the most, or once it has been idle
    for `IDLE_CLOSE` seconds.
    """

    HOLD_MAX = 10.0
    IDLE_CLOSE = 0.1
    READER_GRACE = 0.5  # seconds a reopening writer lets waiting readers in first

    def __init__(self, store: Store):
        self.store = store
        self._cm = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened = self._used = 0.0

    def connection(self) -> duckdb.DuckDBPyConnection:
        """Return the open connection, opening the store (alone) if needed.

        Readers that asked for the store go first: the lock prefers writers, and a
        writer that closed for them and reopened at once would win the race for the
        lock again and again (a reader polling it starved for seconds, measured).
        """
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

    def after_batch(self) -> None:
        """Let waiting readers in, or everyone after HOLD_MAX seconds."""
        if self._con is not None and (
                time.monotonic() - self._opened > self.HOLD_MAX
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
            cm.__exit__(None, None, None)


class IngestWorker:
    """Moves durable journal records into DuckDB in batches, exactly once.

    Stage 1 makes events visible (rows, fingerprints, duplicates); stage 2 computes the
    change model of stored events (field changes, gaps, record state). Stage 2 runs in
    small steps between stage-1 batches, so a burst of deliveries is visible at once and
    its field changes follow as CPU allows.

    Under a steady flow, stage-1 batches start at most every `GATHER` seconds (sooner
    when a whole batch waits): a commit costs about the same for 1 event or 400, so gathering
    for a quarter of a second leaves the receiver's CPU to answering instead of to a
    commit per handful of deliveries (measured: 196 µs of CPU per event in batches of 130,
    126–157 in batches of 400). While deliveries flow, stage 2 runs in steps of
    `DERIVE_BUSY` events between batches, taking at most `DERIVE_SHARE` of the time (the
    machine's CPU goes to answering and to visibility first), `DERIVE_SHARE_BURST` during
    a burst (a stage-1 batch of `BURST_BATCH` records or more: 400 deliveries/s); it
    catches up in steps of `DERIVE_IDLE` events once deliveries stop.

    Why less during a burst: this process runs beside the receiver's event loop, and
    when this was measured the machine's two cores were saturated under load (the loop,
    this process, the sync helper, the clients and the benchmark's reader; since readers
    stopped costing a DuckDB instance each, the loop itself is the limit, see
    ARCHITECTURE.md), so its CPU was taken from the loop: with stage 1 held
    back the receiver answered 5-15 % more; with a 3 % share instead of 10 % for stage 2,
    3-6 % more (alternating 10 s wrk runs). Stage 2 cannot keep up with a burst anyway
    (~450 µs of CPU per event: ~220 events/s at 10 %); what it leaves is derived as soon
    as the flow slows. Below a burst it keeps the 10 % that derives ~220 events/s.
    """

    GATHER = 0.25  # seconds between the starts of two stage-1 batches under load
    DERIVE_BUSY = 200  # events per stage-2 step while deliveries flow (a step has a fixed cost)
    DERIVE_SHARE = 0.1  # at most this share of the time goes to stage 2 while they flow
    DERIVE_SHARE_BURST = 0.03  # ... and during a burst
    BURST_BATCH = 100  # records in one stage-1 batch (a GATHER window) that make a burst
    DERIVE_IDLE = 1000  # events derived per step when no delivery waits

    def __init__(self, settings: Settings, shared: SharedState, batch_size: int = 1000):
        self.settings = settings
        self.shared = shared
        self.batch_size = batch_size
        # One DuckDB thread: the worker runs beside the receiver's event loop, and its
        # batches are small; a second thread cost more CPU than it saved (stage 2 in
        # batches of 200: 404-504 µs of CPU per event with one, 544-559 with two).
        self.store = Store(settings, threads=1)
        self.session = _WriteSession(self.store)
        self.pipeline = Pipeline(settings.duplicate_window_seconds)
        self.ingested_seq = 0
        self.derived_seq = 0
        self._reader: JournalReader | None = None
        self._pending: list[Record] = []
        self._last_prune = 0.0
        self._next_batch_at = 0.0  # monotonic time before which deliveries may gather
        self._derive_after = 0.0  # monotonic time before which stage 2 waits (under flow)
        self._last_batch = 0  # records in the last stage-1 batch read

    def _start(self) -> None:
        with self.store.writer() as con:
            row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'main'")
            self.ingested_seq = row[0] if row else 0
            row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'derive'")
            self.derived_seq = row[0] if row else 0
            self.pipeline.load_recent(con)
        self._reader = JournalReader(self.settings.journal_dir, self.ingested_seq)
        self._pending = []
        self.shared.ingested_seq.value = self.ingested_seq
        self.shared.derived_seq.value = self.derived_seq
        self.shared.ready.value = True

    def run(self, parent_pid: int) -> None:
        """Ingest until asked to stop (then drain) or until the receiver is gone."""
        try:
            self._run(parent_pid)
        finally:
            self.session.close()

    def _run(self, parent_pid: int) -> None:
        backoff = 0.05
        while os.getppid() == parent_pid:
            stopping = self.shared.stop.value
            try:
                if self._reader is None:
                    self._start()
                worked = self.step()
                backoff = 0.05
                self.shared.set_error(None)
                if stopping and not worked:
                    return
                if not worked:
                    time.sleep(0.005)
            except Exception as exc:  # noqa: BLE001 - every failure is retried from the store
                self.shared.ingest_errors.value += 1
                self.shared.set_error(f"{type(exc).__name__}: {exc}")
                log.warning("ingest paused, will retry: %s", exc)
                self.session.close()
                self._reader = None  # resume from the position stored in DuckDB
                if stopping:
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _take_failures(self) -> list[tuple[datetime, str | None, str]]:
        out = []
        for _ in range(AUTH_SAMPLE):
            try:
                out.append(self.shared.failures.get_nowait())
            except queue.Empty:
                break
        return out

    def step(self) -> bool:
        """Ingest one batch if there is one; return whether anything was done."""
        assert self._reader is not None
        synced = self.shared.synced_seq.value
        waiting = synced - self._reader.last_seq
        if not self._pending and waiting > 0:
            gather = self._next_batch_at - time.monotonic()
            if gather > 0 and waiting < self.batch_size:
                return self._between_batches(gather)
            self._pending = self._reader.read(self.batch_size, synced)
            self._last_batch = len(self._pending)
            self._next_batch_at = time.monotonic() + self.GATHER
        self.shared.oldest_pending_ns.value = (
            self._pending[0].received_ns if self._pending else 0)
        failures = self._take_failures()
        if not self._pending and not failures:
            gather = self._next_batch_at - time.monotonic()
            if gather > 0:
                # caught up, but deliveries came less than GATHER ago: a flow pausing
                # between two syncs, not an idle receiver; stage 2 keeps its share
                return self._between_batches(gather)
            if self._derive_some(self.DERIVE_IDLE):
                self.session.after_batch()
                return True
            self.session.idle()
            self._maybe_prune()
            return False
        try:
            self.pipeline.apply(self.session.connection(), self._pending, failures,
                                expect_seq=self.ingested_seq)
        except RECORD_ERRORS as exc:
            self.session.close()
            # A record DuckDB refuses must not stall every later one: store the batch
            # record by record and keep any that still fails as a rejected delivery.
            log.error("a batch could not be stored, retrying record by record: %s", exc)
            self._isolate()
        now = time.time_ns()
        for record in self._pending:
            if not record.is_demo:
                self.shared.observe_lag(max(0, now - record.received_ns) / 1e9)
        if self._pending:
            self.ingested_seq = self._pending[-1].seq
        self._pending = []
        self.shared.ingested_seq.value = self.ingested_seq
        self.shared.oldest_pending_ns.value = 0
        self.session.after_batch()
        return True

    def _between_batches(self, gather: float) -> bool:
        """While deliveries gather for the next batch: a stage-2 step if due, else wait."""
        started = time.monotonic()
        derived = started >= self._derive_after and self._derive_some(self.DERIVE_BUSY)
        if derived:
            self._derive_after = started + (time.monotonic() - started) / self.derive_share
        self.session.after_batch()  # a waiting reader need not wait for the next batch
        if not derived:
            time.sleep(min(gather, 0.01))
        return True

    @property
    def derive_share(self) -> float:
        """The share of the time stage 2 may take while deliveries flow."""
        return (self.DERIVE_SHARE_BURST if self._last_batch >= self.BURST_BATCH
                else self.DERIVE_SHARE)

    def _derive_some(self, max_events: int) -> bool:
        """Run stage 2 (the change model) on a few stored events; return whether it did."""
        if self.derived_seq >= self.ingested_seq:
            return False
        try:
            last = self.pipeline.derive_pending(self.session.connection(), max_events)
        except RECORD_ERRORS as exc:
            # one event's values break the change model: find it, skip it, say so
            self.session.close()
            last = self._derive_one_by_one(max_events, exc)
        if last is None:  # every stored event is derived (later records are not events)
            self.derived_seq = self.ingested_seq
        else:
            self.derived_seq = last
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

    def _isolate(self) -> None:
        with self.store.writer() as con:
            self.pipeline.load_recent(con)
            seq = self.ingested_seq
            for record in self._pending:
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

    def _maybe_prune(self) -> None:
        retention = self.settings.journal_retention_days * 86400
        if retention and time.monotonic() - self._last_prune > 600:
            self._last_prune = time.monotonic()
            from ploomes.journal import prune_segments

            for path in prune_segments(self.settings.journal_dir, self.ingested_seq, retention):
                log.info("journal segment %s removed (retention)", path.name)


def ingest_main(settings: Settings, shared: SharedState, parent_pid: int) -> None:
    """Entry point of the ingest process."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the receiver decides when we stop
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s ploomes.ingest: %(message)s")
    from ploomes.ingest import warm_up

    warm_up()  # before the worker says it is ready: not in the first batch's time
    IngestWorker(settings, shared).run(parent_pid)


class Outcome(NamedTuple):
    """What the receiver answers for one delivery."""

    status: int
    body: dict


def _histogram_family(name: str, doc: str, histogram, bounds: tuple) -> HistogramMetricFamily:
    """The Prometheus histogram of one kept by `_observe` (cumulative buckets, +Inf, sum)."""
    buckets, total = [], 0.0
    for bound, count in zip(bounds, histogram, strict=False):
        total += count
        buckets.append((str(bound), total))
    buckets.append(("+Inf", total + histogram[len(bounds)]))
    return HistogramMetricFamily(name, doc, buckets=buckets,
                                 sum_value=histogram[len(bounds) + 1])


class _SharedCollector:
    """Exposes the service's counts and the ingest process's numbers at /metrics."""

    def __init__(self, service: DeliveryService):
        self.service = service

    def collect(self):
        service = self.service
        shared = service.shared
        deliveries = CounterMetricFamily("ploomes_deliveries", "Deliveries by outcome",
                                         labels=["outcome"])
        for outcome, count in sorted(service.outcomes.items()):
            deliveries.add_metric([outcome], count)
        yield deliveries
        yield _histogram_family("ploomes_ack_seconds", "Time from request to accepted answer",
                                service.ack, ACK_BUCKETS)
        yield _histogram_family("ploomes_ingest_lag_seconds",
                                "Time from acceptance to visible in DuckDB",
                                shared.lag, LAG_BUCKETS)
        yield GaugeMetricFamily("ploomes_journal_backlog", "Journal records not yet in DuckDB",
                                value=self.service.backlog())
        yield GaugeMetricFamily("ploomes_ingest_errors", "Failed ingest attempts so far",
                                value=shared.ingest_errors.value)


class DeliveryService:
    """Accepts deliveries durably and keeps the event store up to date."""

    def __init__(self, settings: Settings, start_worker: bool = True):
        self.settings = settings
        self.keys = KeyRing(settings)
        if len(self.keys) == 0:
            raise StoreError("no validation key is configured")  # never run open
        self.shared = SharedState()
        self.journal = Journal(settings.journal_dir, settings.journal_segment_bytes,
                               on_synced=self._published)
        self.shared.synced_seq.value = self.journal.synced_seq
        # What appends go through: the journal itself (thread-safe), or for the gevent
        # server a `ploomes.green.GroupCommit` over it, with the same append_entries.
        self.appender = self.journal
        # Where a big body is checked: here, or for the gevent server on its thread pool
        # (`ploomes.green.offload`), so that one body cannot hold the event loop.
        self.run_cpu: Callable[..., object] = _run_here
        Store(settings).ensure_ready()  # create or migrate before the worker starts
        # /metrics: plain numbers, exposed by _SharedCollector. prometheus_client's own
        # Counter and Histogram take a lock per update; these are updated only on the
        # thread that serves requests (the receiver's event loop), once per request.
        self.registry = CollectorRegistry()
        # "accepted" is there from the start: a rate over a restart must see its 0
        self.outcomes: collections.Counter[str] = collections.Counter(accepted=0)
        self.ack = [0] * (len(ACK_BUCKETS) + 1) + [0.0]  # kept by _observe
        self.registry.register(_SharedCollector(self))
        self.started_at = time.time()
        self.worker: multiprocessing.process.BaseProcess | None = None
        self._closing = threading.Event()
        if start_worker:
            self._start_worker()
            threading.Thread(target=self._watch, name="ploomes-watch", daemon=True).start()

    def _published(self, seq: int) -> None:
        self.shared.synced_seq.value = seq

    def _start_worker(self) -> None:
        self.worker = _CTX.Process(target=ingest_main, name="ploomes-ingest",
                                   args=(self.settings, self.shared, os.getpid()), daemon=True)
        self.worker.start()

    def _watch(self) -> None:
        """Sync refusals written without a sync, and restart a dead worker."""
        while not self._closing.wait(0.1):
            try:
                if self.appender is self.journal and self.journal.unsynced:
                    # refusals may be queued unsynced: make them ingestible (a GroupCommit
                    # writes them with its next group, at once)
                    self.journal.sync()
            except JournalWriteError:
                pass  # /healthz reports a broken journal; requests get 503
            except Exception:  # noqa: BLE001 - this thread also restarts the worker
                log.exception("syncing the journal failed")
            if self.worker is not None and not self.worker.is_alive() \
                    and not self._closing.is_set():  # at shutdown it stops on purpose
                log.error("the ingest process stopped (exit code %s); restarting it",
                          self.worker.exitcode)
                self._start_worker()

    def close(self) -> None:
        """Let the worker drain, then release the journal."""
        self._closing.set()
        if self.worker is not None and self.worker.is_alive():
            self.shared.stop.value = True
            self.worker.join(30)
            if self.worker.is_alive():
                self.worker.terminate()
        self.journal.close()

    def backlog(self) -> int:
        """Return how many durable journal records are not yet in DuckDB."""
        return max(0, self.shared.synced_seq.value - self.shared.ingested_seq.value)

    def refuse(self, outcome: str, status: int, reason: str) -> Outcome:
        """Count a refusal and build its answer."""
        self.outcomes[outcome] += 1
        return Outcome(status, {"status": "refused", "reason": reason})

    def unauthorized(self, source: str | None, reason: str) -> Outcome:
        """Count an unauthenticated attempt and keep a bounded sample of it."""
        try:
            self.shared.failures.put_nowait((datetime.now(UTC), source, reason))
        except queue.Full:
            pass  # a flood: the sample is full until the worker takes it
        return self.refuse("unauthorized", 401, "missing or invalid validation key")

    def authenticated(self, key: str | None) -> bool:
        """Return whether the presented key is accepted."""
        return self.keys.matches(key)

    def reject_authenticated(self, outcome: str, status: int, reason: str, raw: bytes,
                             source: str | None) -> Outcome:
        """Refuse an authenticated delivery and keep it in rejected_deliveries."""
        try:
            # Not waited for: the next group (or, without gevent, the next durable append
            # or the watcher) writes it.
            self.appender.append_entries(
                [(rejected_payload(status, reason, raw, source), KIND_REJECTED, 0, None)],
                durable=False)
        except JournalWriteError:
            pass  # the refusal stands even when it cannot be recorded
        return self.refuse(outcome, status, reason)

    def accept(self, raw: bytes, source: str | None, started: float) -> Outcome:
        """Validate, journal durably and acknowledge one authenticated delivery."""
        try:
            # Bodies over CHECK_HERE_MAX are checked first, through run_cpu (one could
            # hold the event loop for long). A smaller one is checked here, or by the
            # appender once journaled (ploomes.green.GroupCommit: off the event loop).
            if len(raw) > CHECK_HERE_MAX:
                self.run_cpu(check_delivery, raw)
            elif not self.appender.checks_deliveries:
                check_delivery(raw)
        except InvalidDelivery as exc:
            return self.reject_authenticated("invalid", 400, str(exc), raw, source)
        try:
            seq = self.appender.append_entries([(raw, KIND_DELIVERY, 0, None)])[0]
        except InvalidDelivery as exc:  # refused once journaled: the ingest keeps it
            return self.refuse("invalid", 400, str(exc))  # in rejected_deliveries
        except JournalWriteError as exc:
            log.error("cannot store a delivery: %s", exc)
            return self.refuse("unavailable", 503, "cannot store the delivery now; retry later")
        self.outcomes["accepted"] += 1
        _observe(self.ack, ACK_BUCKETS, time.perf_counter() - started)
        return Outcome(200, {"status": "accepted", "delivery_id": seq})

    def accept_demo(self, request_body: object) -> Outcome:
        """Journal demo deliveries or a demo removal sent by the dashboard."""
        from ploomes.demo import REMOVE_DEMO, demo_records

        if not isinstance(request_body, dict):
            return self.refuse("invalid", 400, "expected a JSON object")
        try:
            if request_body.get("remove") is True:
                self.appender.append_entries([(REMOVE_DEMO, KIND_CONTROL, 0, None)])
                return Outcome(200, {"status": "accepted", "removed": True})
            pairs = []
            for item in request_body.get("deliveries") or []:
                body = item["body"]
                validate(body)
                pairs.append((datetime.fromisoformat(item["received_at"]), body))
        except (KeyError, TypeError, ValueError) as exc:  # InvalidDelivery is a ValueError
            return self.refuse("invalid", 400, f"bad demo data: {exc}")
        except JournalWriteError:
            return self.refuse("unavailable", 503, "cannot store demo data now")
        if not pairs:
            return self.refuse("invalid", 400, "no deliveries")
        payloads, stamps = demo_records(pairs)
        try:
            seqs = self.appender.append_entries(
                [(payload, KIND_DELIVERY, FLAG_DEMO, stamp)
                 for payload, stamp in zip(payloads, stamps, strict=True)])
        except JournalWriteError:
            return self.refuse("unavailable", 503, "cannot store demo data now")
        return Outcome(200, {"status": "accepted", "count": len(seqs), "last_id": seqs[-1]})

    def health(self) -> tuple[int, dict]:
        """Return the HTTP status and body of /healthz."""
        pending = self.backlog()
        oldest = self.shared.oldest_pending_ns.value
        lag = max(0.0, (time.time_ns() - oldest) / 1e9) if oldest and pending else 0.0
        broken = self.journal.broken
        error = self.shared.get_error()
        alive = self.worker is not None and self.worker.is_alive()
        if broken:
            status = "failing"
        elif error or not alive:
            status = "degraded"
        else:
            status = "ok" if self.shared.ready.value else "starting"
        body = {
            "status": status,
            "journal_seq": self.shared.synced_seq.value,
            "ingested_seq": self.shared.ingested_seq.value,
            "backlog": pending,
            "derive_backlog": max(0, self.shared.ingested_seq.value
                                  - self.shared.derived_seq.value),
            "ingest_lag_seconds": round(lag, 3),
            "ingest_error": error,
            "journal_error": broken,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "worker_alive": alive,
        }
        return (503 if broken else 200), body
