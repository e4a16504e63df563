"""Numbers the receiver and its ingest process share, in shared memory.

The receiver publishes how far the journal is durable (the ingest and the relay's
forwarder never read past it) and hands over a bounded sample of unauthenticated
attempts; the ingest publishes how far it got, its lag histogram and its last error,
which `/healthz` and `/metrics` show; the forwarder publishes how far its outbox log is
durable, which the ingest reads into DuckDB.
"""

from __future__ import annotations

import bisect
import ctypes
import multiprocessing
from typing import Protocol

# Spawned, never forked: the receiver runs threads (gevent's pool, the watcher).
CONTEXT = multiprocessing.get_context("spawn")
AUTH_SAMPLE = 1000  # unauthenticated attempts kept (time, source, reason), never bodies
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
# What the ingest last found of the DuckDB file (SharedState.store_state)
STORE_UNKNOWN = 0  # not reached yet
STORE_OK = 1
STORE_FAILING = 2  # the last attempt failed (busy, disk full, ...)
STORE_UNREADABLE = 3  # the file is damaged: `python -m ploomes rebuild` mends it


class Histogram(Protocol):
    """What `observe` counts into: a list, or a ctypes array in shared memory (which is
    no MutableSequence)."""

    def __getitem__(self, index: int, /) -> float: ...
    def __setitem__(self, index: int, value: float, /) -> None: ...


def observe(histogram: Histogram, bounds: tuple[float, ...], value: float) -> None:
    """Count value in a histogram kept as one count per bucket, then +Inf, then the sum."""
    histogram[bisect.bisect_left(bounds, value)] += 1  # the first bound >= value
    histogram[len(bounds) + 1] += value


class SharedState:
    """What the receiver and its ingest process tell each other (no pickling per use)."""

    def __init__(self) -> None:
        # RawValue/RawArray are what Value/Array(lock=False) return, typed as the ctypes
        # objects they are (typeshed types Value/Array as their locked wrappers)
        self.synced_seq = CONTEXT.RawValue(ctypes.c_int64, 0)  # by the receiver
        self.ingested_seq = CONTEXT.RawValue(ctypes.c_int64, 0)  # by the ingest
        self.derived_seq = CONTEXT.RawValue(ctypes.c_int64, 0)  # change model
        # the relay's outbox log (data/outbox): how far it is durable (by the forwarder)
        # and how far the ingest has stored its attempts in DuckDB
        self.outbox_synced_seq = CONTEXT.RawValue(ctypes.c_int64, 0)
        self.outbox_ingested_seq = CONTEXT.RawValue(ctypes.c_int64, 0)
        self.oldest_pending_ns = CONTEXT.RawValue(ctypes.c_int64, 0)
        self.ingest_errors = CONTEXT.RawValue(ctypes.c_int64, 0)
        self.error = CONTEXT.RawArray(ctypes.c_char, 400)
        self.stop = CONTEXT.RawValue(ctypes.c_bool, False)
        self.ready = CONTEXT.RawValue(ctypes.c_bool, False)  # the ingest started
        self.store_state = CONTEXT.RawValue(ctypes.c_int, STORE_UNKNOWN)
        # lag histogram: one count per bucket, then +Inf, then the sum
        self.lag = CONTEXT.RawArray(ctypes.c_double, len(LAG_BUCKETS) + 2)
        self.failures = CONTEXT.Queue(maxsize=AUTH_SAMPLE)

    def set_error(self, text: str | None) -> None:
        """Publish the ingest's last error (or clear it)."""
        self.error.value = (text or "").encode("utf-8", "replace")[:399]

    def get_error(self) -> str | None:
        """Return the ingest's last error, if any."""
        return self.error.value.decode("utf-8", "replace") or None

    def observe_lag(self, seconds: float) -> None:
        """Count one ingest-lag observation."""
        observe(self.lag, LAG_BUCKETS, seconds)

    def backlog(self) -> int:
        """Return how many durable journal records are not yet in DuckDB."""
        return max(0, self.synced_seq.value - self.ingested_seq.value)
