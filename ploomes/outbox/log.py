"""The outbox log (`data/outbox/`): the sender's durable memory, in the journal's format.

The sending process is its single writer (`OutboxLog` holds the journal's writer lock).
Appends come from the sender's threads and are written by one thread in groups, one
write and one fdatasync per group, without making the sender wait: an outcome reaches
the disk a fraction of a millisecond after it is known, so a `kill -9` loses at most the
outcomes of that instant (their messages are sent again: at least once). Requests that
must not be lost once taken (a replay whose request file is then deleted) wait for the
disk (`append_now`).

At start the sender reads the last checkpoint and the records after it (`recover`); the
ingest process reads the whole log into DuckDB with a `JournalReader`, never past the
position the writer published as durable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ploomes.intake.journal import (
    Entry,
    Journal,
    JournalWriteError,
    Record,
    iter_records,
    prune_segments,
    scan_segment,
    segment_paths,
)
from ploomes.outbox.records import KIND_CHECKPOINT, decode

log = logging.getLogger("ploomes.outbox")

SEGMENT_BYTES = 4 * 1024 * 1024
GATHER = 0.002  # seconds the writer waits after a group, so the next one is larger


class OutboxLogBroken(JournalWriteError):
    """The log cannot be written any more; the sender must stop (it is restarted and
    resumes from what is on disk)."""


class OutboxLog:
    """Appends to the outbox log from any thread; one writer thread makes them durable."""

    def __init__(self, log_dir: Path, segment_bytes: int = SEGMENT_BYTES,
                 on_synced: Callable[[int], None] | None = None):
        self.dir = log_dir
        self.journal = Journal(log_dir, segment_bytes, on_synced=on_synced)  # JournalBusy
        self._queue: list[Entry] = []
        self._cond = threading.Condition()
        self._queued = 0  # entries ever queued
        self._written = 0  # entries ever made durable
        self._error: str | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="outbox-log", daemon=True)
        self._thread.start()

    @property
    def synced_seq(self) -> int:
        """Return the sequence number of the last durable record."""
        return self.journal.synced_seq

    @property
    def failing(self) -> str | None:
        """Return why the log cannot be written, or None."""
        return self._error

    def append(self, kind: int, payload: bytes) -> None:
        """Queue one record; it is written and synced in the next group."""
        with self._cond:
            if self._error:
                raise OutboxLogBroken(self._error)
            self._queue.append((payload, kind, 0, None))
            self._queued += 1
            self._cond.notify_all()

    def append_now(self, kind: int, payload: bytes, timeout: float = 30.0) -> None:
        """Append one record and return once it (and everything before it) is durable."""
        self.append(kind, payload)
        self.flush(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Return once everything queued so far is durable; OutboxLogBroken if it cannot be."""
        deadline = time.monotonic() + timeout
        with self._cond:
            wanted = self._queued
            while self._written < wanted:
                if self._error:
                    raise OutboxLogBroken(self._error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OutboxLogBroken("the outbox log did not reach the disk in time")
                self._cond.wait(left)

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue and self._closing:
                    return
                group, self._queue = self._queue, []
            try:
                self.journal.append_entries(group)
            except JournalWriteError as exc:
                with self._cond:
                    self._queue[:0] = group  # nothing of the group was kept: try it again
                    if self.journal.broken:
                        self._error = f"cannot write the outbox log: {exc}"
                        self._cond.notify_all()
                        return
                log.warning("cannot write the outbox log now, retrying: %s", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            with self._cond:
                self._written += len(group)
                self._cond.notify_all()
            time.sleep(GATHER)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then release the log."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        self.journal.close()


@dataclass(frozen=True)
class Recovered:
    """Where a sender resumes: its last checkpoint (None: none yet) and the log's
    records after it, in order."""

    checkpoint: dict | None
    checkpoint_seq: int
    records: list[Record]


def recover(log_dir: Path) -> Recovered:
    """Read the last checkpoint of a log and every record after it.

    Segments are read from the newest back until one holds a checkpoint, so a start
    reads about one segment however long the log is.
    """
    segments = segment_paths(log_dir)
    checkpoint: Record | None = None
    for path in reversed(segments):
        for record, _ in scan_segment(path):
            if record.kind == KIND_CHECKPOINT:
                checkpoint = record
        if checkpoint is not None:
            break
    after = checkpoint.seq if checkpoint is not None else 0
    records = list(iter_records(log_dir, after))
    return Recovered(decode(checkpoint.payload) if checkpoint is not None else None, after,
                     records)


def read_log(log_dir: Path, after_seq: int = 0) -> Iterator[Record]:
    """Yield every intact record of a log after `after_seq`, in order."""
    return iter_records(log_dir, after_seq)


def prune(log_dir: Path, upto_seq: int, retention_seconds: float) -> list[Path]:
    """Delete whole segments at or below `upto_seq` (read by the ingest and older than the
    last checkpoint) that are older than the retention period."""
    return prune_segments(log_dir, upto_seq, retention_seconds)
