"""The receiving side of the project, without HTTP: accept → journal → ingest worker.

`DeliveryService` owns the journal and the ingest worker of one data dir and counts
every outcome for `/metrics`; `receiver.py` is a thin Flask shell over it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ploomes.config import Settings
from ploomes.delivery import InvalidDelivery, parse_delivery, validate
from ploomes.ingest import Pipeline, rejected_payload
from ploomes.journal import (
    FLAG_DEMO,
    KIND_CONTROL,
    KIND_REJECTED,
    Journal,
    JournalReader,
    JournalWriteError,
    Record,
)
from ploomes.keys import KeyRing
from ploomes.store import Store, StoreError

log = logging.getLogger("ploomes.receiver")

AUTH_SAMPLE = 1000  # unauthenticated attempts kept (time, source, reason), never bodies


@dataclass(frozen=True)
class Outcome:
    """What the receiver answers for one delivery."""

    status: int
    body: dict


class Metrics:
    """The Prometheus metrics of one service (own registry: tests build many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "ploomes_deliveries", "Deliveries by outcome", ["outcome"], registry=self.registry)
        self.ack_seconds = Histogram(
            "ploomes_ack_seconds", "Time from request to accepted answer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry)
        self.ingest_lag = Histogram(
            "ploomes_ingest_lag_seconds", "Time from acceptance to visible in DuckDB",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry)
        self.backlog = Gauge("ploomes_journal_backlog", "Journal records not yet in DuckDB",
                             registry=self.registry)
        self.ingest_errors = Counter("ploomes_ingest_errors", "Failed ingest attempts",
                                     registry=self.registry)


class IngestWorker(threading.Thread):
    """Moves durable journal records into DuckDB in batches, exactly once."""

    def __init__(self, service: DeliveryService, batch_size: int = 2000):
        super().__init__(name="ploomes-ingest", daemon=True)
        self.service = service
        self.batch_size = batch_size
        self.ingested_seq = 0
        self.oldest_pending_ns: int | None = None
        self.last_error: str | None = None
        self.last_ingest_at: float | None = None
        self._stop_event = threading.Event()
        self._started_store = False
        self._reader: JournalReader | None = None
        self._pending: list[Record] = []
        self._last_prune = 0.0

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to finish its current batch and stop."""
        self._stop_event.set()
        self.join(timeout)

    def _start_store(self) -> None:
        svc = self.service
        with svc.store.writer() as con:
            row = con.execute("SELECT last_seq FROM ingest_state WHERE name = 'main'").fetchone()
            self.ingested_seq = row[0] if row else 0
            svc.pipeline.load_recent(con)
        self._reader = JournalReader(svc.journal.dir, self.ingested_seq)
        self._started_store = True

    def run(self) -> None:
        backoff = 0.05
        while True:
            stopping = self._stop_event.is_set()
            try:
                if not self._started_store:
                    self._start_store()
                worked = self.step()
                backoff = 0.05
                self.last_error = None
                if stopping and not worked:
                    return
            except (StoreError, duckdb.Error, OSError) as exc:
                self.service.metrics.ingest_errors.inc()
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("ingest paused, will retry: %s", self.last_error)
                if stopping:
                    return
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def step(self) -> bool:
        """Ingest one batch if there is one; return whether anything was done."""
        svc = self.service
        assert self._reader is not None
        synced = svc.journal.wait_for_records(self.ingested_seq, timeout=0.1)
        if synced < svc.journal.written_seq and not self._pending:
            svc.journal.sync()  # refusals are written unsynced; make them ingestible
            synced = svc.journal.synced_seq
        if not self._pending and synced > self._reader.last_seq:
            self._pending = self._reader.read(self.batch_size, synced)
        svc.metrics.backlog.set(max(0, svc.journal.synced_seq - self.ingested_seq))
        self.oldest_pending_ns = self._pending[0].received_ns if self._pending else None
        failures = svc.take_auth_failures()
        if not self._pending and not failures:
            self._maybe_prune()
            return False
        try:
            with svc.store.writer() as con:
                svc.pipeline.apply(con, self._pending, failures)
        except (duckdb.IOException, StoreError):
            self._started_store = False  # retried from the stored position
            raise
        except duckdb.Error as exc:
            # A record DuckDB refuses must not stall every later one: store the batch
            # record by record and keep any that still fails as a rejected delivery.
            log.error("a batch could not be stored, retrying record by record: %s", exc)
            self._isolate(failures)
        now = time.time_ns()
        for record in self._pending:
            if not record.is_demo:
                svc.metrics.ingest_lag.observe(max(0, now - record.received_ns) / 1e9)
        if self._pending:
            self.ingested_seq = self._pending[-1].seq
        self._pending = []
        self.oldest_pending_ns = None
        self.last_ingest_at = time.time()
        return True

    def _isolate(self, failures: list) -> None:
        svc = self.service
        with svc.store.writer() as con:
            svc.pipeline.load_recent(con)
            for record in self._pending:
                try:
                    svc.pipeline.apply(con, [record], failures)
                except duckdb.Error as exc:
                    svc.pipeline.load_recent(con)
                    reason = f"accepted, but DuckDB refused it (kept in the journal): {exc}"
                    svc.pipeline.apply(con, [Record(
                        record.seq, KIND_REJECTED, record.flags, record.received_ns,
                        rejected_payload(200, reason[:500], record.payload, None))])
                failures = []

    def _maybe_prune(self) -> None:
        retention = self.service.settings.journal_retention_days * 86400
        if retention and time.monotonic() - self._last_prune > 600:
            self._last_prune = time.monotonic()
            for path in self.service.journal.prune(self.ingested_seq, retention):
                log.info("journal segment %s removed (retention)", path.name)


class DeliveryService:
    """Accepts deliveries durably and keeps the event store up to date."""

    def __init__(self, settings: Settings, start_worker: bool = True):
        self.settings = settings
        self.metrics = Metrics()
        self.keys = KeyRing(settings)
        if len(self.keys) == 0:
            raise StoreError("no validation key is configured")  # never run open
        self.journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
        self.store = Store(settings)
        self.pipeline = Pipeline(settings.duplicate_window_seconds)
        self._auth_failures: deque[tuple[datetime, str | None, str]] = deque(maxlen=AUTH_SAMPLE)
        self.worker = IngestWorker(self)
        self.started_at = time.time()
        if start_worker:
            self.worker.start()

    def close(self) -> None:
        """Drain the worker and release the journal."""
        if self.worker.is_alive():
            self.worker.stop()
        self.journal.close()

    def take_auth_failures(self) -> list[tuple[datetime, str | None, str]]:
        """Hand the sampled unauthenticated attempts to the worker."""
        out = []
        while self._auth_failures:
            try:
                out.append(self._auth_failures.popleft())
            except IndexError:
                break
        return out

    def refuse(self, outcome: str, status: int, reason: str) -> Outcome:
        """Count a refusal and build its answer."""
        self.metrics.deliveries.labels(outcome=outcome).inc()
        return Outcome(status, {"status": "refused", "reason": reason})

    def unauthorized(self, source: str | None, reason: str) -> Outcome:
        """Count an unauthenticated attempt and keep a bounded sample of it."""
        self._auth_failures.append((datetime.now(UTC), source, reason))
        return self.refuse("unauthorized", 401, "missing or invalid validation key")

    def authenticated(self, key: str | None) -> bool:
        """Return whether the presented key is accepted."""
        return self.keys.matches(key)

    def reject_authenticated(self, outcome: str, status: int, reason: str, raw: bytes,
                             source: str | None) -> Outcome:
        """Refuse an authenticated delivery and keep it in rejected_deliveries."""
        try:
            # Not synced on its own: the next durable append or the worker carries it.
            self.journal.append(rejected_payload(status, reason, raw, source),
                                kind=KIND_REJECTED, durable=False)
        except JournalWriteError:
            pass  # the refusal stands even when it cannot be recorded
        return self.refuse(outcome, status, reason)

    def accept(self, raw: bytes, source: str | None, started: float) -> Outcome:
        """Validate, journal durably and acknowledge one authenticated delivery."""
        try:
            parse_delivery(raw)
        except InvalidDelivery as exc:
            return self.reject_authenticated("invalid", 400, str(exc), raw, source)
        try:
            seq = self.journal.append(raw)
        except JournalWriteError as exc:
            log.error("cannot store a delivery: %s", exc)
            return self.refuse("unavailable", 503, "cannot store the delivery now; retry later")
        self.metrics.deliveries.labels(outcome="accepted").inc()
        self.metrics.ack_seconds.observe(time.perf_counter() - started)
        return Outcome(200, {"status": "accepted", "delivery_id": seq})

    def accept_demo(self, request_body: object) -> Outcome:
        """Journal demo deliveries or a demo removal sent by the dashboard."""
        from ploomes.demo import REMOVE_DEMO, demo_records

        if not isinstance(request_body, dict):
            return self.refuse("invalid", 400, "expected a JSON object")
        try:
            if request_body.get("remove") is True:
                self.journal.append(REMOVE_DEMO, kind=KIND_CONTROL)
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
            seqs = self.journal.append_many(payloads, flags=FLAG_DEMO, received_ns=stamps)
        except JournalWriteError:
            return self.refuse("unavailable", 503, "cannot store demo data now")
        return Outcome(200, {"status": "accepted", "count": len(seqs), "last_id": seqs[-1]})

    def health(self) -> tuple[int, dict]:
        """Return the HTTP status and body of /healthz."""
        worker = self.worker
        pending = self.journal.synced_seq - worker.ingested_seq
        oldest = worker.oldest_pending_ns
        lag = max(0.0, (time.time_ns() - oldest) / 1e9) if oldest and pending > 0 else 0.0
        broken = self.journal.broken
        body = {
            "status": "failing" if broken else ("degraded" if worker.last_error else "ok"),
            "journal_seq": self.journal.synced_seq,
            "ingested_seq": worker.ingested_seq,
            "backlog": pending,
            "ingest_lag_seconds": round(lag, 3),
            "ingest_error": worker.last_error,
            "journal_error": broken,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "worker_alive": worker.is_alive(),
        }
        return (503 if broken else 200), body
