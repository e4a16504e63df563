"""A rebuild's rows in bulk: the whole journal → events and their change model, on every core.

Live ingestion stores a batch of records (stage 1), then derives its change model from
what it stored (stage 2), a batch at a time. A rebuild has every record at hand, so it
does both in one pass: worker processes parse and diff chunks of records side by side
(`derive_chunk`, which depends on nothing but the chunk), and this process takes their
results in journal order for what depends on order: duplicate marks
(`Pipeline.mark_duplicate`), record state and continuity gaps (`model.state.fold`). It
appends rows in large batches, keeps record state in memory until the end, and
recomputes the user rollups in SQL once (`refill_user_rollups`, which gives what stage 2
folds event by event). Rows are built by the functions live ingestion uses
(`event_item`, `event_table`, `change_table`, `fold`), so both give the same rows.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ploomes.ingest.pipeline import (
    EVENT_SCHEMA,
    GAP_SCHEMA,
    REJECTED_SCHEMA,
    STATE_SCHEMA,
    TIMESTAMP,
    EventItem,
    Pipeline,
    change_table,
    event_item,
    event_table,
    fingerprint,
    rejected_row,
    set_position,
)
from ploomes.ingest.rollups import refill_user_rollups
from ploomes.intake.journal import (
    KIND_CONTROL,
    KIND_DELIVERY,
    KIND_REJECTED,
    Record,
    scan_segment,
    segment_paths,
)
from ploomes.intake.shared import CONTEXT
from ploomes.model import diff as diffmod
from ploomes.model.delivery import InvalidDelivery, to_json
from ploomes.model.state import fold, record_names

# journal records derived at a time (a segment holds more): small enough that the memory of
# one chunk is reused by the next instead of being handed back to the system and faulted in
CHUNK_RECORDS = 500
FLUSH_EVENTS = 50_000  # events gathered before one append: a statement per chunk costs more
PARALLEL_BYTES = 64 << 20  # a smaller journal is derived in this process (no start-up cost)

# What an event's values can raise in the change model; live ingestion skips such an event
# (`Pipeline.skip_derive`: stored, counted, no field changes, no state), and so does this.
DERIVE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, RecursionError,
                 OverflowError)

# One delivery as the ordered part needs it: (id, received ns, is_demo, fingerprint,
# entity, record id, Old, New).
Delivered = tuple[int, int, bool, str, str, int | None, dict[str, Any] | None,
                  dict[str, Any] | None]
# A record's state as a rebuild keeps it: (state, last event id, last received µs,
# deleted, is_demo).
Kept = tuple[dict[str, Any], int, int, bool, bool]


@dataclass
class Chunk:
    """What a worker derived from consecutive journal records."""

    last_seq: int
    records: int
    events: pa.Table | None = None  # `duplicate_of` not set yet: it depends on order
    changes: pa.Table | None = None  # `is_duplicate` likewise
    delivered: list[Delivered] = field(default_factory=list)
    rejected: list[tuple[Any, ...]] = field(default_factory=list)
    undiffable: list[int] = field(default_factory=list)  # events whose diff raised
    control: dict[str, Any] | None = None  # a control record, applied in order


def derive_chunk(records: Sequence[Record]) -> Chunk:
    """Parse, fingerprint and diff consecutive journal records (no control record among
    several; a control record comes alone)."""
    chunk = Chunk(last_seq=records[-1].seq if records else 0, records=len(records))
    if len(records) == 1 and records[0].kind == KIND_CONTROL:
        chunk.control = json.loads(records[0].payload)
        return chunk
    items: list[EventItem] = []
    fps: list[str | None] = []
    owners: list[int] = []
    changes: list[diffmod.FieldChange] = []
    for record in records:
        if record.kind == KIND_REJECTED:
            chunk.rejected.append(rejected_row(record))
            continue
        if record.kind != KIND_DELIVERY:
            continue
        try:
            item = event_item(record)
        except InvalidDelivery as exc:
            chunk.rejected.append(rejected_row(record, exc))
            continue
        seq, ns, d, demo = item[:4]
        fp = fingerprint(d)
        test = item[6]  # a test delivery gets no change model, as in live ingestion
        try:
            found = [] if test else diffmod.diff_record(d.action, d.old, d.new)
        except DERIVE_ERRORS:
            chunk.undiffable.append(seq)
            found = []
        owners.extend([len(items)] * len(found))
        changes.extend(found)
        items.append(item)
        fps.append(fp)
        # Old and New only where the ordered part folds them: less to send back
        record_id = None if test else d.record_id  # nothing to fold
        chunk.delivered.append((seq, ns, demo, fp, d.entity, record_id,
                                *((d.old, d.new) if record_id is not None else (None, None))))
    if items:
        chunk.events = event_table(items, fps, [None] * len(items))
        chunk.changes = change_table(chunk.events, owners, changes)
    return chunk


def derive_segment(path: Path, after_seq: int) -> list[Chunk]:
    """Read one journal segment (its records after `after_seq`) and derive them.

    A worker reads the segment itself, so the records never travel between processes.
    """
    records = [record for record, _ in scan_segment(path) if record.seq > after_seq]
    return [derive_chunk(group) for group in chunks_of(records)]


def segments_after(journal_dir: Path, after_seq: int) -> list[Path]:
    """Return the journal segments that may hold records after `after_seq`."""
    segments = segment_paths(journal_dir)
    firsts = [int(p.stem) for p in segments]
    # as `iter_records`: a segment whose successor starts at or below after_seq + 1
    # holds nothing later
    return [path for i, path in enumerate(segments)
            if not (i + 1 < len(segments) and firsts[i + 1] <= after_seq + 1)]


def chunks_of(records: Iterable[Record], size: int = CHUNK_RECORDS) -> Iterator[list[Record]]:
    """Group records for `derive_chunk`: up to `size` at a time, a control record alone."""
    batch: list[Record] = []
    for record in records:
        if record.kind == KIND_CONTROL:
            if batch:
                yield batch
                batch = []
            yield [record]
        else:
            batch.append(record)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def parallel_workers(journal_bytes: int) -> int:
    """Return how many worker processes suit a journal of this size (0: none)."""
    cores = os.cpu_count() or 1
    if journal_bytes < PARALLEL_BYTES or cores < 2:
        return 0  # one core gains nothing from more processes, only their overhead
    return cores


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector for a bulk job, then restore it.

    Rows are plain JSON values, without reference cycles; the collector's passes over the
    millions of objects a rebuild keeps alive (record states) find nothing and cost more
    than the work. Memory is still freed by reference counting.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _worker_start() -> None:
    gc.disable()  # a worker process exists for the bulk job alone (see no_cycle_collection)


def derived_chunks(journal_dir: Path, after_seq: int, workers: int) -> Iterator[Chunk]:
    """Yield the derived chunks of the journal after `after_seq`, in order, a segment per
    task on `workers` processes (none: in this one)."""
    segments = segments_after(journal_dir, after_seq)
    if workers <= 0:
        for path in segments:
            yield from derive_segment(path, after_seq)
        return
    # spawn, like the ingest process: the new interpreters share nothing with this one
    with CONTEXT.Pool(workers, initializer=_worker_start) as pool:
        # a few segments ahead of the one awaited, not the whole journal in memory
        pending: deque[AsyncResult[list[Chunk]]] = deque()
        for path in segments:
            pending.append(pool.apply_async(derive_segment, (path, after_seq)))
            if len(pending) > workers:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


class BulkDerive:
    """The ordered part of a rebuild: takes chunks in journal order and appends rows."""

    def __init__(self, con: duckdb.DuckDBPyConnection, pipeline: Pipeline):
        self.con = con
        self.pipeline = pipeline
        self.states: dict[tuple[str, int], Kept] = {}
        self.last_seq = 0
        self.records = 0
        # where the time goes, for the report: waiting for (or doing) the parallel part,
        # the ordered part, appending rows, the end (record state, rollups)
        self.seconds = {"derive": 0.0, "order": 0.0, "append": 0.0, "finish": 0.0}
        self._events: list[pa.Table] = []
        self._changes: list[pa.Table] = []
        self._gaps: list[tuple[Any, ...]] = []
        self._rejected: list[tuple[Any, ...]] = []
        self._pending_events = 0
        # record state already in the store (events kept from the previous file)
        for row in con.execute("SELECT entity, record_id, state, last_event_id, "
                               "epoch_us(last_received_at), deleted, is_demo "
                               "FROM record_state").fetchall():
            self.states[(row[0], row[1])] = (json.loads(row[2]), *row[3:])

    def add(self, chunk: Chunk) -> None:
        """Take the next chunk of the journal."""
        started, appended = time.perf_counter(), self.seconds["append"]
        self._add(chunk)
        took = time.perf_counter() - started
        self.seconds["order"] += took - (self.seconds["append"] - appended)

    def _add(self, chunk: Chunk) -> None:
        self.last_seq = max(self.last_seq, chunk.last_seq)
        self.records += chunk.records
        if chunk.control is not None:
            self.flush()
            self.pipeline.control(self.con, chunk.control)
            if chunk.control.get("op") == "remove_demo":
                self.states = {k: v for k, v in self.states.items() if not v[4]}
            return
        self._rejected.extend(chunk.rejected)
        if chunk.events is None or chunk.changes is None:
            return
        duplicates = self._mark_and_fold(chunk)
        events = chunk.events.set_column(
            EVENT_SCHEMA.get_field_index("duplicate_of"), "duplicate_of",
            pa.array(duplicates, pa.int64()))
        self._events.append(events)
        changes = chunk.changes
        dup_ids = [seq for (seq, *_), dup in zip(chunk.delivered, duplicates, strict=True)
                   if dup is not None]
        if dup_ids:
            index = changes.schema.get_field_index("is_duplicate")
            changes = changes.set_column(index, "is_duplicate", pc.is_in(
                changes.column("event_id"), value_set=pa.array(dup_ids, pa.int64())))
        self._changes.append(changes)
        self._pending_events += events.num_rows
        if self._pending_events >= FLUSH_EVENTS:
            self.flush()

    def _mark_and_fold(self, chunk: Chunk) -> list[int | None]:
        """Mark duplicates and fold record state, in id order; return `duplicate_of`."""
        duplicates: list[int | None] = []
        undiffable = set(chunk.undiffable)
        failed: list[int] = []
        mark = self.pipeline.mark_duplicate
        states = self.states
        for seq, ns, demo, fp, entity, record_id, old, new in chunk.delivered:
            dup_of = mark(fp, seq, ns, demo)
            duplicates.append(dup_of)
            if dup_of is not None or record_id is None or seq in undiffable:
                continue
            key = (entity, record_id)
            previous = states.get(key)
            base = previous[0] if previous and not previous[3] else None
            try:
                state, gap = fold(base, old, new)
            except DERIVE_ERRORS:
                failed.append(seq)  # as live ingestion: no field changes, no state
                continue
            if gap and previous:
                self._gaps.append((seq, previous[1], ns // 1000, entity, record_id,
                                   to_json(gap), demo))
            states[key] = (state, seq, ns // 1000, new is None and old is not None, demo)
        if failed and chunk.changes is not None:
            keep = pc.invert(pc.is_in(chunk.changes.column("event_id"),
                                      value_set=pa.array(failed, pa.int64())))
            chunk.changes = chunk.changes.filter(keep)
        return duplicates

    def flush(self) -> None:
        """Append what was gathered."""
        started = time.perf_counter()
        self._flush()
        self.seconds["append"] += time.perf_counter() - started

    def _flush(self) -> None:
        con = self.con
        for table, rows, name in (("events", self._events, "_bulk_events"),
                                  ("field_changes", self._changes, "_bulk_changes")):
            if rows:
                con.register(name, pa.concat_tables(rows))
                # BY NAME: columns of later schema versions need not come last
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {name}")
                con.unregister(name)
        for table, tuples, schema in (("continuity_gaps", self._gaps, GAP_SCHEMA),
                                      ("rejected_deliveries", self._rejected, REJECTED_SCHEMA)):
            if tuples:
                con.register("_bulk_rows", _rows_table(tuples, schema))
                con.execute(f"INSERT INTO {table} SELECT * FROM _bulk_rows")
                con.unregister("_bulk_rows")
        self._events, self._changes, self._gaps, self._rejected = [], [], [], []
        self._pending_events = 0

    def finish(self) -> None:
        """Append the rest, record state, positions and user rollups."""
        self.flush()
        started = time.perf_counter()
        self._finish()
        self.seconds["finish"] += time.perf_counter() - started

    def _finish(self) -> None:
        con = self.con
        con.execute("DELETE FROM record_state")
        rows = [(entity, record_id, to_json(state), last, at, deleted, demo,
                 *record_names(state))
                for (entity, record_id), (state, last, at, deleted, demo)
                in self.states.items()]
        if rows:
            con.register("_bulk_states", _rows_table(rows, STATE_SCHEMA))
            con.execute("INSERT INTO record_state SELECT * FROM _bulk_states")
            con.unregister("_bulk_states")
        if self.last_seq:
            set_position(con, "main", self.last_seq)
        last_event = con.execute("SELECT max(id) FROM events").fetchall()[0][0]
        if last_event is not None:
            set_position(con, "derive", last_event)
        refill_user_rollups(con)


def _rows_table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    """Columns of row tuples; time columns may hold µs since the epoch or datetimes."""
    columns = list(zip(*rows, strict=True))
    arrays = []
    for values, column in zip(columns, schema, strict=True):
        if column.type == TIMESTAMP and values and isinstance(values[0], int):
            arrays.append(pa.array(values, pa.int64()).cast(TIMESTAMP))
        else:
            arrays.append(pa.array(values, column.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def derive_journal(con: duckdb.DuckDBPyConnection, pipeline: Pipeline, journal_dir: Path,
                   after_seq: int, workers: int,
                   progress: Callable[[int], None] | None = None) -> BulkDerive:
    """Store the journal's records after `after_seq` and their change model, as live
    ingestion would; return what did it (`records`, `seconds`)."""
    if workers > 0:
        # DuckDB's own threads would take the cores from the worker processes, and a
        # single thread appends for less CPU in all
        con.execute("SET threads = 1")
    with no_cycle_collection():
        bulk = BulkDerive(con, pipeline)
        chunks = derived_chunks(journal_dir, after_seq, workers)
        while True:
            started = time.perf_counter()
            chunk = next(chunks, None)
            bulk.seconds["derive"] += time.perf_counter() - started
            if chunk is None:
                break
            bulk.add(chunk)
            if progress is not None:
                progress(bulk.records)
        if workers > 0:
            con.execute("RESET threads")  # the rollups' SQL at the end has the cores to itself
        bulk.finish()
    return bulk
