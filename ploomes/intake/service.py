"""The receiving side without HTTP: check, journal durably, answer, count.

`DeliveryService` owns the journal of one data dir and decides every answer. The HTTP
shell (`receiver.py`) calls it per request and gives it an `appender`: the journal
itself (thread-safe), or the receiver's group commit, which writes many requests'
records with one sync. The ingest process (`ploomes.ingest.worker`) reads what the
service made durable; the two share `SharedState`.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from ploomes.config import Settings
from ploomes.intake.journal import (
    FLAG_DEMO,
    KIND_CONTROL,
    KIND_DELIVERY,
    KIND_REJECTED,
    Entry,
    Journal,
    JournalWriteError,
    rejected_payload,
)
from ploomes.intake.keys import KeyRing
from ploomes.intake.shared import (
    LAG_BUCKETS,
    STORE_FAILING,
    STORE_OK,
    STORE_UNREADABLE,
    SharedState,
)
from ploomes.model.delivery import InvalidDelivery, check_delivery, validate

log = logging.getLogger("ploomes.receiver")

ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Bodies larger than this are checked through `run_cpu` (the receiver: a pool thread),
# so one big body cannot hold the event loop every request shares.
CHECK_HERE_MAX = 64 * 1024
REMOVE_DEMO = json.dumps({"op": "remove_demo"}).encode("utf-8")


class Appender(Protocol):
    """What journal appends go through: `Journal` or the receiver's group commit."""

    def append_entries(self, entries: Sequence[Entry]) -> list[int]:
        """Append records durably; return their sequence numbers."""
        ...

    @property
    def failing(self) -> str | None:
        """Return why records cannot be appended now, or None."""
        ...


class Outcome(NamedTuple):
    """What the receiver answers for one request."""

    status: int
    body: dict[str, object]


DEMO_NS_MAX = 2**62  # received_at of demo data: from 1970 to 2116


def demo_entries(deliveries: Sequence[tuple[datetime, dict]]) -> list[Entry]:
    """Encode (received_at, body) pairs as demo journal entries."""
    entries: list[Entry] = []
    for at, body in deliveries:
        ns = int(at.timestamp() * 1e9)
        if not 0 < ns < DEMO_NS_MAX:
            # A journal stamp is 64 bits, and DuckDB's nanosecond timestamps stop short
            # of that: one such entry would fail the group it was written with.
            raise ValueError(f"received_at {at.isoformat()} is out of range")
        entries.append((json.dumps(body, ensure_ascii=False).encode("utf-8"), KIND_DELIVERY,
                        FLAG_DEMO, ns))
    return entries


# /healthz's reasons, the same for every client: paths and error texts, which tell an
# outsider about the machine, are given to local clients only (`health(detailed=True)`).
JOURNAL_FAILING = "deliveries cannot be stored now (the journal cannot write)"
STORE_DAMAGED = ("the data store is damaged: deliveries are kept in the journal "
                 "(`python -m ploomes rebuild` recreates the file from it)")
STORE_BEHIND = "deliveries are kept in the journal but not stored in the data store yet"
INGEST_STOPPED = "the ingest process is not running"


class _SharedCollector:
    """Exposes the ingest process's numbers and whether appends work at /metrics."""

    def __init__(self, service: DeliveryService):
        self.shared = service.shared
        self.service = service

    def collect(self) -> Iterator[Metric]:
        shared = self.shared
        buckets, total = [], 0.0
        for bound, count in zip(LAG_BUCKETS, shared.lag, strict=False):
            total += count
            buckets.append((str(bound), total))
        buckets.append(("+Inf", total + shared.lag[len(LAG_BUCKETS)]))
        yield HistogramMetricFamily("ploomes_ingest_lag_seconds",
                                    "Time from acceptance to visible in DuckDB",
                                    buckets=buckets, sum_value=shared.lag[len(LAG_BUCKETS) + 1])
        yield GaugeMetricFamily("ploomes_journal_backlog", "Journal records not yet in DuckDB",
                                value=shared.backlog())
        yield GaugeMetricFamily("ploomes_ingest_errors", "Failed ingest attempts so far",
                                value=shared.ingest_errors.value)
        yield GaugeMetricFamily("ploomes_store_ok",
                                "1 while the ingest stores deliveries in DuckDB, else 0",
                                value=int(shared.store_state.value == STORE_OK))
        yield GaugeMetricFamily("ploomes_journal_ok",
                                "1 while deliveries can be journaled (answered 200), else 0",
                                value=int(self.service.appender.failing is None))


class DeliveryService:
    """Accepts deliveries durably and answers for each request."""

    def __init__(self, settings: Settings, shared: SharedState | None = None):
        self.settings = settings
        self.keys = KeyRing(settings)
        if len(self.keys) == 0:
            raise ValueError("no validation key is configured")  # never run open
        self.shared = shared or SharedState()
        self.journal = Journal(settings.journal_dir, settings.journal_segment_bytes,
                               on_synced=self._published)
        self.shared.synced_seq.value = self.journal.synced_seq
        self.appender: Appender = self.journal
        self.run_cpu: Callable[..., object] = lambda fn, *args: fn(*args)
        self.registry = CollectorRegistry()
        self._outcomes = Counter("ploomes_deliveries", "Deliveries by outcome", ["outcome"],
                                 registry=self.registry)
        self._outcomes.labels("accepted")  # there from the start: a rate must see its 0
        self._ack = Histogram("ploomes_ack_seconds", "Time from request to accepted answer",
                              buckets=ACK_BUCKETS, registry=self.registry)
        self.registry.register(_SharedCollector(self))
        self.started_at = time.time()

    def _published(self, seq: int) -> None:
        self.shared.synced_seq.value = seq

    def count(self, outcome: str) -> None:
        """Count one request's outcome in /metrics."""
        self._outcomes.labels(outcome).inc()

    def refuse(self, outcome: str, status: int, reason: str) -> Outcome:
        """Count a refusal and build its answer."""
        self.count(outcome)
        return Outcome(status, {"status": "refused", "reason": reason})

    def unauthorized(self, source: str | None, reason: str) -> Outcome:
        """Count an unauthenticated attempt and keep a bounded sample of it."""
        try:
            self.shared.failures.put_nowait((datetime.now(UTC), source, reason))
        except queue.Full:
            pass  # a flood: the sample is full until the ingest takes it
        return self.refuse("unauthorized", 401, "missing or invalid validation key")

    def authenticated(self, key: str | None) -> bool:
        """Return whether the presented key is accepted."""
        return self.keys.matches(key)

    def reject_authenticated(self, outcome: str, status: int, reason: str, raw: bytes,
                             source: str | None) -> Outcome:
        """Refuse an authenticated delivery and keep it in rejected_deliveries."""
        try:
            self.appender.append_entries(
                [(rejected_payload(status, reason, raw, source), KIND_REJECTED, 0, None)])
        except JournalWriteError:
            pass  # the refusal stands even when it cannot be recorded
        return self.refuse(outcome, status, reason)

    def accept(self, raw: bytes, source: str | None, started: float, flags: int = 0
               ) -> Outcome:
        """Check, journal durably and acknowledge one authenticated delivery (`flags`:
        journal flags such as FLAG_TEST)."""
        try:
            if len(raw) > CHECK_HERE_MAX:
                self.run_cpu(check_delivery, raw)
            else:
                check_delivery(raw)
        except InvalidDelivery as exc:
            return self.reject_authenticated("invalid", 400, str(exc), raw, source)
        try:
            seq = self.appender.append_entries([(raw, KIND_DELIVERY, flags, None)])[0]
        except JournalWriteError as exc:
            log.error("cannot store a delivery: %s", exc)
            return self.refuse("unavailable", 503, "cannot store the delivery now; retry later")
        self.count("accepted")
        self._ack.observe(time.perf_counter() - started)
        return Outcome(200, {"status": "accepted", "delivery_id": seq})

    def accept_demo(self, request_body: object) -> Outcome:
        """Journal demo deliveries or a demo removal sent by the dashboard."""
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
            if not pairs:
                return self.refuse("invalid", 400, "no deliveries")
            seqs = self.appender.append_entries(demo_entries(pairs))
        except JournalWriteError:
            return self.refuse("unavailable", 503, "cannot store demo data now")
        except (KeyError, TypeError, ValueError) as exc:  # InvalidDelivery is a ValueError
            return self.refuse("invalid", 400, f"bad demo data: {exc}")
        return Outcome(200, {"status": "accepted", "count": len(seqs), "last_id": seqs[-1]})

    def health(self, ingest_alive: bool, detailed: bool = True) -> tuple[int, dict[str, object]]:
        """Return the HTTP status and body of /healthz.

        503 ("failing") whenever a delivery cannot be stored now; a data store that
        cannot be used is "degraded" (200): deliveries are still journaled. `detailed`
        (local clients) adds the figures, paths and error texts; others get the status
        and generic reasons only.
        """
        shared = self.shared
        pending = shared.backlog()
        oldest = shared.oldest_pending_ns.value
        lag = max(0.0, (time.time_ns() - oldest) / 1e9) if oldest and pending else 0.0
        journal_error = self.appender.failing
        error = shared.get_error()
        store_state = shared.store_state.value
        reasons = []
        if journal_error:
            reasons.append(JOURNAL_FAILING)
        if store_state == STORE_UNREADABLE:
            reasons.append(STORE_DAMAGED)
        elif store_state == STORE_FAILING or error:
            reasons.append(STORE_BEHIND)
        if not ingest_alive:
            reasons.append(INGEST_STOPPED)
        if journal_error:
            status = "failing"
        elif reasons:
            status = "degraded"
        else:
            status = "ok" if shared.ready.value else "starting"
        code = 503 if journal_error else 200
        if not detailed:
            return code, {"status": status, "reasons": reasons}
        body = {
            "status": status,
            "reasons": reasons,
            "store": {STORE_OK: "ok", STORE_FAILING: "failing",
                      STORE_UNREADABLE: "damaged"}.get(store_state, "unknown"),
            "journal_seq": shared.synced_seq.value,
            "ingested_seq": shared.ingested_seq.value,
            "backlog": pending,
            "derive_backlog": max(0, shared.ingested_seq.value - shared.derived_seq.value),
            "ingest_lag_seconds": round(lag, 3),
            "ingest_error": error,
            "journal_error": journal_error,
            "store_path": str(self.settings.db_path),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "worker_alive": ingest_alive,
        }
        return code, body

    def close(self) -> None:
        """Release the journal."""
        self.journal.close()
