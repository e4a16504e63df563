"""The ingest path: journal records → rows of the event store, with the change model.

`Pipeline.apply` is how rows enter a live store: the receiver's ingest worker calls it
on each batch of new journal records, and demo data goes through it too. Each call runs
in one transaction that also records the last journal sequence applied, so a crash never
applies a record twice or skips one. `python -m ploomes rebuild` derives the whole
journal in one pass (`ploomes.ingest.bulk`) with the functions here that build the rows
(`event_item`, `event_table`, `change_table`, `mark_duplicate`), so both give the same
rows.

Per delivery it computes, once: the event row, its field changes (`ploomes.model.diff`),
whether it repeats an earlier delivery of the same change (duplicate detection), and
whether its `Old` contradicts what earlier events said the record was (continuity gaps).
Stage 2 also keeps the per-user rollups the Users page reads (`user_records`,
`user_fields`), in the same transaction as the field changes they summarise.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import duckdb
import orjson
import pyarrow as pa

from ploomes.ingest.rollups import (
    USER_FIELD_KEY,
    UserKey,
    UserRecord,
    fold_user_event,
    refill_user_rollups,
    same_key,
)
from ploomes.intake.journal import (
    KIND_CONTROL,
    KIND_DELIVERY,
    KIND_REJECTED,
    REJECTED_RAW_LIMIT,
    Record,
    decode_rejected,
)
from ploomes.model import diff as diffmod
from ploomes.model.delivery import Delivery, InvalidDelivery, parse_delivery, to_json
from ploomes.model.state import fold, record_names
from ploomes.store import fetch_one, fetch_row, transaction

DUPLICATE_INDEX_SIZE = 50_000  # fingerprints remembered for duplicate detection


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TIMESTAMP = pa.timestamp("us", tz="UTC")


def ns_to_datetime(ns: int) -> datetime:
    """Return a UTC datetime for nanoseconds since the epoch, to the microsecond below.

    Integer arithmetic, so a time column built from `ns // 1000` holds the same value.
    """
    return _EPOCH + timedelta(microseconds=ns // 1000)


@dataclass
class _Rows:
    events: pa.Table | None = None
    changes: list[pa.Table] = field(default_factory=list)
    gaps: list[tuple] = field(default_factory=list)
    rejected: list[tuple] = field(default_factory=list)
    states: dict[tuple[str, int], tuple] = field(default_factory=dict)
    # user rollups: rows as they are after this batch, and (changes, records) to add
    user_records: dict[UserKey, UserRecord] = field(default_factory=dict)
    user_fields: dict[tuple[int | None, str, str], list[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.events is not None or self.rejected or self.states)


EVENT_SCHEMA = pa.schema([
    ("id", pa.int64()), ("received_at", pa.timestamp("us", tz="UTC")),
    ("action", pa.string()), ("entity", pa.string()), ("account_id", pa.int64()),
    ("action_user_id", pa.int64()), ("webhook_id", pa.int64()),
    ("webhook_creator_id", pa.int64()), ("secondary_entity_id", pa.int64()),
    ("record_id", pa.int64()), ("old", pa.string()), ("new", pa.string()),
    ("payload", pa.string()), ("body_sha256", pa.string()), ("is_demo", pa.bool_()),
    ("change_fingerprint", pa.string()), ("duplicate_of", pa.int64()), ("is_test", pa.bool_()),
])
CHANGE_SCHEMA = pa.schema([
    ("event_id", pa.int64()), ("received_at", pa.timestamp("us", tz="UTC")),
    ("entity", pa.string()), ("record_id", pa.int64()), ("action", pa.string()),
    ("action_user_id", pa.int64()), ("field", pa.string()), ("old_value", pa.string()),
    ("new_value", pa.string()), ("old_known", pa.bool_()), ("new_known", pa.bool_()),
    ("kind", pa.string()), ("summary", pa.string()), ("bookkeeping", pa.bool_()),
    ("added", pa.string()), ("removed", pa.string()), ("is_duplicate", pa.bool_()),
    ("is_demo", pa.bool_()),
])
GAP_SCHEMA = pa.schema([
    ("event_id", pa.int64()), ("previous_event_id", pa.int64()),
    ("received_at", pa.timestamp("us", tz="UTC")), ("entity", pa.string()),
    ("record_id", pa.int64()), ("fields", pa.string()), ("is_demo", pa.bool_()),
])
REJECTED_SCHEMA = pa.schema([
    ("id", pa.int64()), ("received_at", pa.timestamp("us", tz="UTC")),
    ("status", pa.int32()), ("reason", pa.string()), ("raw", pa.binary()),
    ("raw_size", pa.int64()), ("source", pa.string()),
])
STATE_SCHEMA = pa.schema([
    ("entity", pa.string()), ("record_id", pa.int64()), ("state", pa.string()),
    ("last_event_id", pa.int64()), ("last_received_at", pa.timestamp("us", tz="UTC")),
    ("deleted", pa.bool_()), ("is_demo", pa.bool_()), ("title", pa.string()),
    ("names", pa.string()),
])
USER_RECORD_SCHEMA = pa.schema([
    ("action_user_id", pa.int64()), ("entity", pa.string()), ("record_id", pa.int64()),
    ("events", pa.int64()), ("duplicates", pa.int64()),
    ("first_at", pa.timestamp("us", tz="UTC")), ("last_at", pa.timestamp("us", tz="UTC")),
    ("last_duplicate_at", pa.timestamp("us", tz="UTC")), ("fields", pa.string()),
])
USER_FIELD_SCHEMA = pa.schema([
    ("action_user_id", pa.int64()), ("entity", pa.string()), ("field", pa.string()),
    ("changes", pa.int64()), ("records", pa.int64()),
])


def _table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    columns: list[Sequence[object]] = (list(zip(*rows, strict=True)) if rows
                                       else [[] for _ in schema])
    return pa.table([pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)],
                    schema=schema)


def warm_up() -> None:
    """Load what the first batch would load: pyarrow imports pandas on first use.

    Done before the ingest says it is ready, so the import's CPU does not land in the
    first batch of deliveries, while the receiver is answering them.
    """
    _table([], EVENT_SCHEMA)


def _json_value_bytes(value: object, known: bool) -> bytes | None:
    # NULL means "nothing" (unknown or absent); a JSON null is stored as 'null'.
    if not known:
        return None
    return _json_bytes(value) if value is not None else b"null"


# A parsed delivery on its way to `events`: (id, received ns, delivery, is_demo,
# body sha256, body as received, is_test).
EventItem = tuple[int, int, Delivery, bool, str, bytes, bool]


def _json_bytes(value: object) -> bytes | None:
    """`to_json` as UTF-8 bytes: Arrow takes bytes far faster than non-ASCII text."""
    if value is None:
        return None
    try:
        return orjson.dumps(value)
    except TypeError:  # what orjson cannot write: to_json's fallback
        return (to_json(value) or "").encode("utf-8")


def _text_column(values: Iterable[bytes | None]) -> pa.Array:
    """A string column from UTF-8 bytes (checked as UTF-8 by the cast)."""
    return pa.array(values, pa.binary()).cast(pa.string())


def event_table(items: Sequence[EventItem], fingerprints: Sequence[str | None],
                duplicates: Sequence[int | None]) -> pa.Table:
    """Build `events` rows, column by column, for parsed deliveries.

    Live stage 1 and a rebuild both store events through here.
    """
    if not items:
        return EVENT_SCHEMA.empty_table()
    seqs, stamps, deliveries, demos, shas, bodies, tests = zip(*items, strict=True)
    (actions, entities, accounts, users, webhooks, creators, secondaries, records, olds,
     news, _) = zip(*deliveries, strict=True)
    ints = [pa.array(column, pa.int64())
            for column in (accounts, users, webhooks, creators, secondaries, records)]
    return pa.Table.from_arrays([
        pa.array(seqs, pa.int64()), pa.array([ns // 1000 for ns in stamps], TIMESTAMP),
        pa.array(actions, pa.string()), pa.array(entities, pa.string()), *ints,
        _text_column(map(_json_bytes, olds)), _text_column(map(_json_bytes, news)),
        _text_column(bodies), pa.array(shas, pa.string()), pa.array(demos, pa.bool_()),
        pa.array(fingerprints, pa.string()), pa.array(duplicates, pa.int64()),
        pa.array(tests, pa.bool_())], schema=EVENT_SCHEMA)


def change_table(events: pa.Table, owners: Sequence[int],
                 changes: Sequence[diffmod.FieldChange]) -> pa.Table:
    """Build `field_changes` rows: `changes[i]` was made by the event at `owners[i]`.

    `events` has the event columns a change row repeats (id, received_at, entity,
    record_id, action, action_user_id, duplicate_of, is_demo); they are taken from it by
    index rather than repeated in Python. Live stage 2 and a rebuild both derive here.
    """
    if not changes:
        return CHANGE_SCHEMA.empty_table()
    index = pa.array(owners, pa.int64())
    (fields, old_values, new_values, old_known, new_known, kinds, summaries, bookkeeping,
     added, removed) = zip(*changes, strict=True)

    def take(name: str) -> pa.Array:
        return events.column(name).take(index)

    return pa.Table.from_arrays([
        take("id"), take("received_at"), take("entity"), take("record_id"), take("action"),
        take("action_user_id"), pa.array(fields, pa.string()),
        _text_column([_json_value_bytes(v, k)
                      for v, k in zip(old_values, old_known, strict=True)]),
        _text_column([_json_value_bytes(v, k)
                      for v, k in zip(new_values, new_known, strict=True)]),
        pa.array(old_known, pa.bool_()), pa.array(new_known, pa.bool_()),
        pa.array(kinds, pa.string()), pa.array(summaries, pa.string()),
        pa.array(bookkeeping, pa.bool_()),
        _text_column([_json_bytes(list(ids)) if ids else None for ids in added]),
        _text_column([_json_bytes(list(ids)) if ids else None for ids in removed]),
        take("duplicate_of").is_valid(), take("is_demo")], schema=CHANGE_SCHEMA)


@contextmanager
def _wanted_records(con: duckdb.DuckDBPyConnection, keys: set[tuple[str, int]]
                    ) -> Iterator[None]:
    """Make these (entity, record_id) joinable as `_wanted` for the block."""
    con.register("_wanted", pa.table({"entity": [k[0] for k in keys],
                                      "record_id": [k[1] for k in keys]},
                                     schema=pa.schema([("entity", pa.string()),
                                                       ("record_id", pa.int64())])))
    try:
        yield
    finally:
        con.unregister("_wanted")


def _rows_of_wanted(con: duckdb.DuckDBPyConnection, select: str) -> list[tuple]:
    """Run `select` (a table aliased `s`) for the records registered as `_wanted`."""
    return con.execute(select + " JOIN _wanted w "
                       "ON s.entity = w.entity AND s.record_id = w.record_id").fetchall()


def set_position(con: duckdb.DuckDBPyConnection, name: str, seq: int) -> None:
    """Store how far a stage got (`ingest_state`), in the caller's transaction.

    An UPDATE of the existing row: DuckDB's `INSERT OR REPLACE` costs more per batch.
    """
    if not fetch_row(con, "UPDATE ingest_state SET last_seq = ?, updated_at = now() "
                     "WHERE name = ?", [seq, name])[0]:
        con.execute("INSERT INTO ingest_state VALUES (?, ?, now())", [name, seq])


def _owner_table(items: Sequence[tuple[int, int, Delivery, bool, int | None]]) -> pa.Table:
    """The event columns `change_table` takes, for stage 2's items."""
    ids, stamps, deliveries, demos, dups = zip(*items, strict=True) if items else ([],) * 5
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "received_at": pa.array([ns // 1000 for ns in stamps], TIMESTAMP),
        "entity": pa.array([d.entity for d in deliveries], pa.string()),
        "record_id": pa.array([d.record_id for d in deliveries], pa.int64()),
        "action": pa.array([d.action for d in deliveries], pa.string()),
        "action_user_id": pa.array([d.action_user_id for d in deliveries], pa.int64()),
        "duplicate_of": pa.array(dups, pa.int64()),
        "is_demo": pa.array(demos, pa.bool_())})


def event_item(record: Record) -> EventItem:
    """Parse a delivery record for `events`; InvalidDelivery if today's rules refuse it."""
    return (record.seq, record.received_ns, parse_delivery(record.payload), record.is_demo,
            hashlib.sha256(record.payload).hexdigest(), record.payload, record.is_test)


def rejected_row(record: Record, refused: InvalidDelivery | None = None) -> tuple[Any, ...]:
    """Return the `rejected_deliveries` row of a rejected record, or of a delivery record
    that today's rules refuse (`refused`)."""
    at = ns_to_datetime(record.received_ns)
    if refused is None:
        return (record.seq, at, *decode_rejected(record.payload))
    # The receiver checks every body before journaling it, so only a delivery accepted
    # under older rules that the current ones refuse gets here; it is kept, with the
    # reason, instead of lost.
    return (record.seq, at, 400, str(refused), record.payload[:REJECTED_RAW_LIMIT],
            len(record.payload), None)


def fingerprint(d: Delivery) -> str:
    """Return the change fingerprint of a delivery (duplicate detection)."""
    return diffmod.change_fingerprint(d.entity, d.record_id, d.action, d.action_user_id,
                                      d.old, d.new)


class PositionMoved(RuntimeError):
    """The store's journal position is not where this pipeline expected it."""


class DeriveObserver(Protocol):
    """Told about every event stage 2 derives, inside its transaction (the alerts)."""

    def begin(self) -> None: ...
    def event(self, seq: int, ns: int, d: Delivery, demo: bool, dup_of: int | None,
              changes: Sequence[diffmod.FieldChange]) -> None: ...
    def decide(self, con: duckdb.DuckDBPyConnection) -> object: ...
    def rolled_back(self) -> None: ...
    def committed(self) -> None: ...


class Pipeline:
    """Turns journal records into store rows; keeps the memory duplicate detection needs."""

    def __init__(self, duplicate_window_seconds: float = 120.0, derive: bool = True):
        self.window_ns = int(duplicate_window_seconds * 1e9)
        # derive=False stores events only (no diffs, duplicates, gaps or state): the
        # benchmark's baseline for what the change model costs at ingest.
        self.derive = derive
        # fingerprint -> (event id, received ns, is_demo), oldest first
        self._recent: OrderedDict[str, tuple[int, int, bool]] = OrderedDict()
        # the live ingest's alerts; a rebuild or a migration derives without them, so old
        # events fire nothing again
        self.observer: DeriveObserver | None = None

    def load_recent(self, con: duckdb.DuckDBPyConnection) -> None:
        """Rebuild duplicate-detection memory from the store (after a restart)."""
        self._recent.clear()
        rows = con.execute(
            "SELECT change_fingerprint, id, epoch_ns(received_at), is_demo FROM events "
            "WHERE duplicate_of IS NULL AND change_fingerprint IS NOT NULL "
            "ORDER BY id DESC LIMIT ?", [DUPLICATE_INDEX_SIZE]).fetchall()
        for fp, event_id, ns, demo in reversed(rows):
            self._remember(fp, event_id, ns, demo)

    def _remember(self, fp: str, event_id: int, ns: int, demo: bool) -> None:
        self._recent.pop(fp, None)
        self._recent[fp] = (event_id, ns, demo)
        if len(self._recent) > DUPLICATE_INDEX_SIZE:
            self._recent.popitem(last=False)

    def _duplicate_of(self, fp: str, ns: int) -> int | None:
        hit = self._recent.get(fp)
        if hit and abs(ns - hit[1]) <= self.window_ns:
            return hit[0]
        return None

    # -- the batch entry points -------------------------------------------------------

    def apply(self, con: duckdb.DuckDBPyConnection, records: Sequence[Record],
              auth_failures: Iterable[tuple[datetime, str | None, str]] = (),
              journal_name: str = "main", expect_seq: int | None = None) -> int:
        """Apply journal records in one transaction and record the position; return rows.

        With `expect_seq`, refuse (PositionMoved) unless the store's position is exactly
        there, so two workers can never apply the same records twice.
        """
        with transaction(con):
            if expect_seq is not None:
                row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = ?",
                                [journal_name])
                if (row[0] if row else 0) != expect_seq:
                    raise PositionMoved(f"store is at {row[0] if row else 0}, "
                                        f"expected {expect_seq}")
            count = self._apply(con, records)
            failures = list(auth_failures)
            if failures:
                con.executemany("INSERT INTO auth_failures VALUES (?, ?, ?)", failures)
                con.execute(
                    "DELETE FROM auth_failures WHERE received_at < (SELECT min(received_at) "
                    "FROM (SELECT received_at FROM auth_failures "
                    "ORDER BY received_at DESC LIMIT 1000))")
            if records:
                set_position(con, journal_name, records[-1].seq)
        return count

    def _apply(self, con: duckdb.DuckDBPyConnection, records: Sequence[Record]) -> int:
        items: list[EventItem] = []
        rows = _Rows()
        count = 0
        for record in records:
            if record.kind == KIND_DELIVERY:
                try:
                    items.append(event_item(record))
                except InvalidDelivery as exc:
                    rows.rejected.append(rejected_row(record, exc))
            elif record.kind == KIND_REJECTED:
                rows.rejected.append(rejected_row(record))
            elif record.kind == KIND_CONTROL:
                count += self._flush(con, items, rows)
                items, rows = [], _Rows()
                self.control(con, json.loads(record.payload))
        return count + self._flush(con, items, rows)

    def _flush(self, con: duckdb.DuckDBPyConnection, items: list[EventItem], rows: _Rows
               ) -> int:
        if items:
            self._stage_events(items, rows)
        if rows.rejected:
            con.register("_rejected", _table(rows.rejected, REJECTED_SCHEMA))
            con.execute("INSERT INTO rejected_deliveries SELECT * FROM _rejected")
            con.unregister("_rejected")
        self._write_derived(con, rows)
        if rows.events is not None:
            con.register("_events", rows.events)
            con.execute(
                "INSERT INTO events (id, received_at, action, entity, account_id, "
                "action_user_id, webhook_id, webhook_creator_id, secondary_entity_id, "
                "record_id, old, new, payload, body_sha256, is_demo, change_fingerprint, "
                "duplicate_of, is_test) SELECT * FROM _events")
            con.unregister("_events")
        return (rows.events.num_rows if rows.events is not None else 0) + len(rows.rejected)

    def _load_states(self, con: duckdb.DuckDBPyConnection) -> dict[tuple[str, int], tuple]:
        """Return the stored `record_state` rows of the `_wanted` records."""
        rows = _rows_of_wanted(
            con, "SELECT s.entity, s.record_id, s.state, s.last_event_id, "
            "s.last_received_at, s.deleted, s.is_demo FROM record_state s")
        return {(r[0], r[1]): (json.loads(r[2]), r[3], r[4], r[5], r[6]) for r in rows}

    def _load_user_records(self, con: duckdb.DuckDBPyConnection
                           ) -> dict[UserKey, UserRecord]:
        """Return the stored `user_records` rows of the `_wanted` records, every user."""
        rows = _rows_of_wanted(
            con, "SELECT s.action_user_id, s.entity, s.record_id, s.events, "
            "s.duplicates, epoch_us(s.first_at), epoch_us(s.last_at), "
            "epoch_us(s.last_duplicate_at), s.fields, s.rowid FROM user_records s")
        return {(r[0], r[1], r[2]): UserRecord(r[3], r[4], r[5], r[6], r[7],
                                                set(orjson.loads(r[8])), r[9]) for r in rows}

    def mark_duplicate(self, fp: str, seq: int, ns: int, demo: bool) -> int | None:
        """Return the event that the change `fp` of event `seq` repeats, or None.

        None makes `seq` the original that later copies of the change refer to. Called in
        id order, by stage 1 and by a rebuild alike.
        """
        dup_of = self._duplicate_of(fp, ns)
        if dup_of is None:
            self._remember(fp, seq, ns, demo)
        return dup_of

    def _fingerprint(self, seq: int, ns: int, d: Delivery, demo: bool
                     ) -> tuple[str, int | None]:
        fp = fingerprint(d)
        return fp, self.mark_duplicate(fp, seq, ns, demo)

    def _stage_events(self, items: list[EventItem], rows: _Rows) -> None:
        """Stage 1: event rows with their fingerprint and duplicate mark (cheap)."""
        fps: list[str | None] = []
        dups: list[int | None] = []
        for seq, ns, d, demo, *_ in items:
            fp, dup_of = self._fingerprint(seq, ns, d, demo) if self.derive else (None, None)
            fps.append(fp)
            dups.append(dup_of)
        rows.events = event_table(items, fps, dups)

    def _derive(self, con: duckdb.DuckDBPyConnection,
                items: list[tuple[int, int, Delivery, bool, int | None]], rows: _Rows) -> None:
        """Stage 2: field changes, continuity gaps and record state of stored events.

        `items` are (event id, received ns, delivery, is_demo, duplicate_of) in id order.
        """
        keys = {(item[2].entity, item[2].record_id) for item in items
                if item[2].record_id is not None}
        with _wanted_records(con, keys):
            states = self._load_states(con)
            stored = self._load_user_records(con)
        owners: list[int] = []
        changes: list[diffmod.FieldChange] = []
        for index, (seq, ns, d, demo, dup_of) in enumerate(items):
            found = diffmod.diff_record(d.action, d.old, d.new)
            if self.observer is not None:
                self.observer.event(seq, ns, d, demo, dup_of, found)
            fold_user_event(rows, stored, d.action_user_id, d.entity, d.record_id, ns,
                            dup_of is not None, [c.field for c in found if not c.bookkeeping])
            owners.extend([index] * len(found))
            changes.extend(found)
            if dup_of is not None or d.record_id is None:
                continue
            key = (d.entity, d.record_id)
            previous = states.get(key)
            base = previous[0] if previous and not previous[3] else None
            state, gap = fold(base, d.old, d.new)
            at = ns_to_datetime(ns)
            if gap and previous:
                rows.gaps.append((seq, previous[1], at, d.entity, d.record_id, to_json(gap),
                                  demo))
            deleted = d.new is None and d.old is not None
            states[key] = (state, seq, at, deleted, demo)
            rows.states[key] = (d.entity, d.record_id, to_json(state), seq, at, deleted, demo,
                                *record_names(state))
        rows.changes.append(change_table(_owner_table(items), owners, changes))

    def derive_pending(self, con: duckdb.DuckDBPyConnection, max_events: int = 1000
                       ) -> int | None:
        """Run stage 2 on up to max_events stored events, in one transaction.

        Return the id of the last event derived, or None when every event is derived.
        """
        if not self.derive:
            return None
        observer = self.observer
        if observer is None:
            with transaction(con):
                return self._derive_next(con, max_events)
        observer.begin()
        try:
            with transaction(con):
                last = self._derive_next(con, max_events)
                observer.decide(con)  # in the same transaction as the stage-2 position
        except BaseException:
            observer.rolled_back()
            raise
        observer.committed()
        return last

    def skip_derive(self, con: duckdb.DuckDBPyConnection) -> int | None:
        """Move stage 2 past the next event (one whose change model cannot be computed).

        The event still counts in the user rollups, with no field changes: they summarise
        every event stage 2 has passed, as the Users page counts events.
        """
        with transaction(con):
            row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'derive'")
            nxt = fetch_one(
                con, "SELECT id, action_user_id, entity, record_id, epoch_ns(received_at), "
                "duplicate_of, is_test FROM events WHERE id > ? ORDER BY id LIMIT 1",
                [row[0] if row else 0])
            if not nxt:
                return None
            event_id, user, entity, record_id, ns, dup_of, test = nxt
            if not test:  # test deliveries stay out of the rollups
                rows = _Rows()
                with _wanted_records(con, {(entity, record_id)} if record_id is not None
                                     else set()):
                    stored = self._load_user_records(con)
                fold_user_event(rows, stored, user, entity, record_id, ns,
                                dup_of is not None, [])
                self._write_derived(con, rows)
            set_position(con, "derive", event_id)
        return event_id

    def _derive_next(self, con: duckdb.DuckDBPyConnection, max_events: int) -> int | None:
        row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'derive'")
        batch = con.execute(
            "SELECT id, epoch_ns(received_at), payload, is_demo, duplicate_of, is_test "
            "FROM events WHERE id > ? ORDER BY id LIMIT ?",
            [row[0] if row else 0, max_events]).fetchall()
        if not batch:
            return None
        # the payload column holds the whole body, so it re-validates identically. A test
        # delivery gets no change model: no field changes, record state, gaps or rollups
        # (the Events page diffs it when it is opened).
        items = [(event_id, ns, parse_delivery(payload.encode("utf-8")), demo, dup_of)
                 for event_id, ns, payload, demo, dup_of, test in batch if not test]
        rows = _Rows()
        self._derive(con, items, rows)
        self._write_derived(con, rows)
        set_position(con, "derive", batch[-1][0])
        return batch[-1][0]

    def _write_derived(self, con: duckdb.DuckDBPyConnection, rows: _Rows) -> None:
        for changes in rows.changes:
            if changes.num_rows:
                con.register("_changes", changes)
                con.execute("INSERT INTO field_changes SELECT * FROM _changes")
                con.unregister("_changes")
        if rows.gaps:
            con.register("_gaps", _table(rows.gaps, GAP_SCHEMA))
            con.execute("INSERT INTO continuity_gaps SELECT * FROM _gaps")
            con.unregister("_gaps")
        if rows.states:
            con.register("_states", _table(list(rows.states.values()), STATE_SCHEMA))
            con.execute("DELETE FROM record_state s USING _states n "
                        "WHERE s.entity = n.entity AND s.record_id = n.record_id")
            con.execute("INSERT INTO record_state (entity, record_id, state, last_event_id, "
                        "last_received_at, deleted, is_demo, title, names) "
                        "SELECT * FROM _states")
            con.unregister("_states")
        if rows.user_records:
            # stored rows go by the rowid they were loaded with (same transaction): no
            # second join over the whole table
            stale = [r.rowid for r in rows.user_records.values() if r.rowid is not None]
            if stale:
                con.execute("DELETE FROM user_records WHERE rowid IN (SELECT unnest(?))",
                            [stale])
            con.register("_user_records", _table(
                [(*key, r.events, r.duplicates, r.first_us, r.last_us, r.last_duplicate_us,
                  to_json(sorted(r.fields))) for key, r in rows.user_records.items()],
                USER_RECORD_SCHEMA))
            con.execute("INSERT INTO user_records SELECT * FROM _user_records")
            con.unregister("_user_records")
        if rows.user_fields:
            con.register("_user_fields", _table(
                [(*key, changes, records)
                 for key, (changes, records) in rows.user_fields.items()],
                USER_FIELD_SCHEMA))
            con.execute(
                "MERGE INTO user_fields t USING _user_fields d ON "
                + same_key("t", "d", USER_FIELD_KEY)
                + " WHEN MATCHED THEN UPDATE SET changes = t.changes + d.changes, "
                "records = t.records + d.records WHEN NOT MATCHED THEN INSERT VALUES "
                "(d.action_user_id, d.entity, d.field, d.changes, d.records)")
            con.unregister("_user_fields")

    def control(self, con: duckdb.DuckDBPyConnection, op: dict[str, Any]) -> None:
        """Apply a control record's operation (e.g. removing demo data) to stored rows."""
        if op.get("op") == "remove_demo":
            # the user rollups of what demo rows touched are recomputed once they are gone
            con.execute("CREATE OR REPLACE TEMP TABLE _demo_records AS SELECT DISTINCT "
                        "action_user_id, entity, record_id FROM events "
                        "WHERE is_demo AND record_id IS NOT NULL")
            con.execute("CREATE OR REPLACE TEMP TABLE _demo_fields AS SELECT DISTINCT "
                        "action_user_id, entity, field FROM field_changes "
                        "WHERE is_demo AND NOT bookkeeping AND NOT is_duplicate")
            for table in ("events", "field_changes", "continuity_gaps", "record_state"):
                con.execute(f"DELETE FROM {table} WHERE is_demo")
            refill_user_rollups(con, records="_demo_records", fields="_demo_fields")
            con.execute("DROP TABLE _demo_records")
            con.execute("DROP TABLE _demo_fields")
            # names written by load_demo carry no sync time; synced ones stay
            for table in ("users", "fields", "lookups", "accounts"):
                con.execute(f"DELETE FROM {table} WHERE synced_at IS NULL")
            self._recent = OrderedDict((k, v) for k, v in self._recent.items() if not v[2])

    # -- recomputing the change model from stored events --------------------------------

    def rederive_all(self, con: duckdb.DuckDBPyConnection, chunk: int = 5000) -> int:
        """Recompute fingerprints, duplicates and the change model from `events`.

        Runs inside the caller's transaction (a migration or a rebuild).
        """
        for table in ("field_changes", "continuity_gaps", "record_state", "user_records",
                      "user_fields"):
            con.execute(f"DELETE FROM {table}")
        con.execute("DELETE FROM ingest_state WHERE name = 'derive'")
        self._recent.clear()
        last, total = -1, 0
        while True:
            batch = con.execute(
                "SELECT id, epoch_ns(received_at), payload, is_demo FROM events "
                "WHERE id > ? ORDER BY id LIMIT ?", [last, chunk]).fetchall()
            if not batch:
                break
            marks = [(event_id, *self._fingerprint(
                event_id, ns, parse_delivery(payload.encode("utf-8")), demo))
                for event_id, ns, payload, demo in batch]
            con.register("_fp", pa.table({
                "id": [m[0] for m in marks], "fp": [m[1] for m in marks],
                "dup": pa.array([m[2] for m in marks], type=pa.int64())}))
            con.execute("UPDATE events SET change_fingerprint = _fp.fp, duplicate_of = _fp.dup "
                        "FROM _fp WHERE events.id = _fp.id")
            con.unregister("_fp")
            last, total = batch[-1][0], total + len(batch)
        while self._derive_next(con, chunk) is not None:
            pass
        return total
