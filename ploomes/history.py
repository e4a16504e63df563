"""Query functions over the change model: histories, states, changes, gaps, event pages.

Every function takes a read connection (`with store.reader() as con:`) and parameters,
binds every value, and returns a pandas DataFrame (or a small dataclass around one).
Timestamps come back tz-aware in UTC; the views convert them for display.

Defaults follow what a user means by "what happened": repeated deliveries of one change
(`events.duplicate_of`, `field_changes.is_duplicate`) and bookkeeping fields that Ploomes
rewrites on almost every delivery (`field_changes.bookkeeping`) are left out unless a
keyword asks for them. Users and custom fields are labelled from the `users` and `fields`
tables when those know them, else with the raw id or field path as text.

Performance: the store has no secondary indexes, so queries filter on plain columns
(which DuckDB prunes with min/max zone maps; `id`, `event_id` and `received_at` grow
with insertion), page in SQL, and parse JSON only on the rows a page shows. A record name
search reads `record_state.names`, text the ingest path keeps (schema v3). Substring
matches use `ILIKE` without an `ESCAPE` clause unless the text needs one (several times
faster in DuckDB). A free-text search over payloads (`EventFilter.text`) reads the
newest events first, window by window, and stops once the page is full or its time is
up, saying so (`EventsPage.exact`); counting every match (`count_events`) and a value
search (`changes_matching`) with no match to stop at remain full scans of text columns.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from ploomes.ingest import merge_state

OTHER_PREFIX = "OtherProperties."
UNKNOWN_BEFORE = "previous value unknown"
DEFAULT_LIMIT = 1000
MAX_PAGE_SIZE = 1000
# A free-text search of payloads reads the newest events first, in time windows that grow
# (6 h, then ×4); it answers once it has a page, or after this long with what it found.
TEXT_SEARCH_SECONDS = 0.06
_FIRST_WINDOW = timedelta(hours=6)
_WINDOW_GROWTH = 4

# Labels, joined in SQL: a user's name, else the id as text; a custom field's name, else
# the field path itself.
_USER_LABEL = "coalesce(u.name, CAST({col} AS VARCHAR))"
_FIELD_LABEL = "coalesce(f.name, fc.field)"
_FIELD_JOIN = "LEFT JOIN fields f ON fc.field = '" + OTHER_PREFIX + "' || f.key"

_CHANGE_COLUMNS = f"""
    fc.event_id, fc.received_at, fc.entity, fc.record_id, fc.action, fc.action_user_id,
    {_USER_LABEL.format(col="fc.action_user_id")} AS user_name,
    fc.field, {_FIELD_LABEL} AS field_label, fc.summary,
    CAST(fc.old_value AS VARCHAR) AS old_value, CAST(fc.new_value AS VARCHAR) AS new_value,
    fc.old_known, fc.new_known, fc.kind, fc.bookkeeping,
    CAST(fc.added AS VARCHAR) AS added, CAST(fc.removed AS VARCHAR) AS removed,
    fc.is_duplicate, fc.is_demo
"""
_CHANGE_FROM = f"""
    FROM field_changes fc
    LEFT JOIN users u ON u.id = fc.action_user_id
    {_FIELD_JOIN}
"""
# The title of a record as Ploomes names it, from one JSON side (evaluated per row shown).
_TITLE = ("coalesce({s}->>'$.Name', {s}->>'$.LegalName', {s}->>'$.Title', "
          "{s}->>'$.ContactName')")


# --- helpers ---------------------------------------------------------------------------


def _utc(value: datetime | pd.Timestamp | None) -> datetime | None:
    """Return an aware UTC datetime; a naive one is taken as UTC already."""
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()


def _frame(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> pd.DataFrame:
    """Run a query into a DataFrame whose timestamp columns are tz-aware UTC.

    Most page queries return a few rows, for which DuckDB's pandas conversion costs more
    than the query (~5 ms of fixed cost on a 20-column result): those frames are built
    from the fetched rows instead, with the exact dtypes `.df()` and `_normalized` give
    (tests/test_history.py compares both). Other column types and bigger results take
    `.df()`.
    """
    cursor = con.execute(sql, params)
    types = [str(d[1]) for d in cursor.description]
    names = [d[0] for d in cursor.description]
    # DuckDB renames names repeated in any case (a, A -> a, A_1): leave those to it
    if len({n.lower() for n in names}) == len(names) and \
            all(t in _COLUMN_BUILDERS for t in types):
        rows = cursor.fetchmany(_SMALL_RESULT + 1)
        if len(rows) <= _SMALL_RESULT:
            try:
                return _small_frame(names, types, rows)
            except (TypeError, ValueError):  # e.g. a timestamp beyond year 9999 (a str)
                pass
        cursor = con.execute(sql, params)  # big or odd: DuckDB's own conversion
    return _normalized(cursor.df())


# Rows up to which `_frame` builds the frame itself: about as fast as `.df()` at 10,000
# rows, so only results far beyond what a page shows run their query a second time.
_SMALL_RESULT = 5000


def _ints(bits: int):
    def build(values: list) -> pd.api.extensions.ExtensionArray | np.ndarray:
        if any(v is None for v in values):
            return pd.array(values, dtype=f"Int{bits}")
        return np.array(values, dtype=f"int{bits}")
    return build


def _bools(values: list) -> pd.api.extensions.ExtensionArray | np.ndarray:
    if any(v is None for v in values):
        return pd.array(values, dtype="boolean")
    return np.array(values, dtype=bool)


def _doubles(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _texts(values: list) -> pd.Series:
    # object dtype with None for NULL, as `_normalized` makes it (a bare array of str
    # would become pandas' str dtype, where NULL is NaN)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return pd.Series(out, dtype=object)


def _utc_stamps(values: list) -> pd.api.extensions.ExtensionArray:
    return pd.to_datetime(pd.Series(values, dtype=object), utc=True).astype(
        "datetime64[us, UTC]").array


_COLUMN_BUILDERS = {
    "BIGINT": _ints(64), "INTEGER": _ints(32), "BOOLEAN": _bools, "DOUBLE": _doubles,
    "VARCHAR": _texts, "JSON": _texts, "TIMESTAMP WITH TIME ZONE": _utc_stamps,
}


def _small_frame(names: list[str], types: list[str], rows: list[tuple]) -> pd.DataFrame:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    return pd.DataFrame({name: _COLUMN_BUILDERS[kind](list(values))
                         for name, kind, values in zip(names, types, columns, strict=True)})


def _normalized(df: pd.DataFrame) -> pd.DataFrame:
    for name in df.columns:
        column = df[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            df[name] = column.dt.tz_convert("UTC")
        elif pd.api.types.is_string_dtype(column.dtype):
            # text columns keep None for SQL NULL (pandas' str dtype would make it NaN)
            df[name] = pd.Series([None if pd.isna(v) else v for v in column],
                                 index=df.index, dtype=object)
    return df


def _like(text: str) -> str:
    """Return an ILIKE pattern matching `text` anywhere, wildcards escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _ilike(column: str, text: str) -> tuple[str, str]:
    """Return (condition, pattern): `column` contains `text`, any case, wildcards literal.

    DuckDB runs `ILIKE` with an `ESCAPE` clause several times slower than without one, so
    the clause is added only when the text holds a wildcard or backslash to escape.
    """
    if any(c in text for c in "%_\\"):
        return f"{column} ILIKE ? ESCAPE '\\'", _like(text)
    return f"{column} ILIKE ?", f"%{text}%"


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _limit(value: int, ceiling: int = 100_000) -> int:
    return max(0, min(int(value), ceiling))


@dataclass(frozen=True)
class _Found:
    """Rows a newest-first search found, and how far back it looked."""

    rows: list[tuple]
    complete: bool  # every window down to the oldest candidate was read
    searched_since: datetime | None  # the oldest moment read, when not complete


def _newest_first(con: duckdb.DuckDBPyConnection, sql: str, params: list, table: str,
                  column: str, need: int, start: datetime | None, end: datetime | None,
                  seconds: float | None) -> _Found:
    """Run `sql` on successive time windows, newest first, until `need` rows are found.

    `sql` selects rows newest first; its `{window}` is replaced by a bound condition
    `column >= lo AND column < hi` (placed before its other parameters) and it ends with
    `LIMIT ?`. A text match must read every row it tests, so reading recent windows first
    answers a page without reading the whole table: `column` grows with insertion, and
    DuckDB skips row groups outside a window by their min/max. With `seconds`, the
    search stops after that long (having read at least one window).
    """
    span = con.execute(f"SELECT min({column}), max({column}) FROM {table}").fetchall()[0]
    if span[0] is None:
        return _Found([], True, None)
    floor = max(_utc(span[0]), _utc(start)) if start is not None else _utc(span[0])
    hi = _utc(span[1]) + timedelta(microseconds=1)
    if end is not None:
        hi = min(hi, _utc(end))
    deadline = None if seconds is None else time.monotonic() + seconds
    found: list[tuple] = []
    width = _FIRST_WINDOW
    window = f"{column} >= ? AND {column} < ?"
    while hi > floor:
        lo = max(hi - width, floor)
        began = time.monotonic()
        found += con.execute(sql.format(window=window),
                             [lo, hi, *params, need - len(found)]).fetchall()
        if len(found) >= need:
            return _Found(found, False, lo)
        read, hi, width = hi - lo, lo, width * _WINDOW_GROWTH
        if deadline is not None and hi > floor:
            now = time.monotonic()
            if now >= deadline:
                return _Found(found, False, lo)
            # the next window should fit in the time left, at the pace of the last one
            pace = read / max(now - began, 1e-4)
            # (half of it: a window's cost grows faster than its length on busy days)
            width = max(min(width, pace * (deadline - now) / 2), timedelta(minutes=1))
    return _Found(found, True, None)


def show_value(text: str | None, known: bool = True) -> str:
    """Render a stored JSON value for people: strings bare, null as '(empty)'."""
    if not known:
        return UNKNOWN_BEFORE
    if text is None:
        return "(removed)"
    value = json.loads(text)
    if value is None:
        return "(empty)"
    if isinstance(value, str):
        return value
    return _json_text(value)


def show_items(values: list) -> str:
    """Render list items (tag ids, phones…) for people, comma separated."""
    return ", ".join(show_value(_json_text(v)) for v in values)


def list_delta(old: object, new: object) -> tuple[list, list]:
    """Return (added, removed) items between two lists, as multisets (order ignored)."""
    if not isinstance(old, list) or not isinstance(new, list):
        return (list(new) if isinstance(new, list) else []), []

    def key(item: object) -> str:
        return json.dumps(item, sort_keys=True, ensure_ascii=False, default=str)

    old_count = Counter(key(i) for i in old)
    new_count = Counter(key(i) for i in new)
    gained, lost = new_count - old_count, old_count - new_count
    added, removed = [], []
    for item in new:
        if gained[key(item)] > 0:
            gained[key(item)] -= 1
            added.append(item)
    for item in old:
        if lost[key(item)] > 0:
            lost[key(item)] -= 1
            removed.append(item)
    return added, removed


# --- field changes ---------------------------------------------------------------------


def _change_filters(include_duplicates: bool, include_bookkeeping: bool) -> list[str]:
    where = []
    if not include_duplicates:
        where.append("NOT fc.is_duplicate")
    if not include_bookkeeping:
        where.append("NOT fc.bookkeeping")
    return where


def _changes(con, where: list[str], params: list, limit: int, newest_first: bool = True
             ) -> pd.DataFrame:
    order = "DESC" if newest_first else "ASC"
    # sort and cut on narrow columns first; only the kept rows' values and labels are read
    sql = f"""
        WITH keys AS (
            SELECT fc.rowid AS rid, fc.event_id FROM field_changes fc
            WHERE {' AND '.join(where) or 'true'}
            ORDER BY fc.received_at {order}, fc.event_id {order}, fc.rowid LIMIT ?
        )
        SELECT {_CHANGE_COLUMNS} {_CHANGE_FROM}
        WHERE fc.event_id IN (SELECT event_id FROM keys) AND fc.rowid IN (SELECT rid FROM keys)
        ORDER BY fc.received_at {order}, fc.event_id {order}, fc.rowid
    """
    return _frame(con, sql, [*params, _limit(limit)])


def _time_range(where: list[str], params: list, column: str, start, end) -> None:
    if start is not None:
        where.append(f"{column} >= ?")
        params.append(_utc(start))
    if end is not None:
        where.append(f"{column} < ?")
        params.append(_utc(end))


def field_changes_of(con: duckdb.DuckDBPyConnection, field_path: str, *,
                     entity: str | None = None, new_value: object = ...,
                     start: datetime | None = None, end: datetime | None = None,
                     limit: int = DEFAULT_LIMIT, include_duplicates: bool = False,
                     include_bookkeeping: bool = True) -> pd.DataFrame:
    """List every change of one field across records, newest first (optionally to a value)."""
    where = ["fc.field = ?", *_change_filters(include_duplicates, include_bookkeeping)]
    params: list = [field_path]
    if entity:
        where.append("fc.entity = ?")
        params.append(entity)
    if new_value is not ...:
        # stored values are compact JSON text (ingest's to_json), so text equality is exact
        where.append("CAST(fc.new_value AS VARCHAR) = ?")
        params.append(_json_text(new_value))
    _time_range(where, params, "fc.received_at", start, end)
    return _changes(con, where, params, limit)


def user_changes(con: duckdb.DuckDBPyConnection, action_user_id: int, *,
                 start: datetime | None = None, end: datetime | None = None,
                 entity: str | None = None, limit: int = DEFAULT_LIMIT,
                 include_duplicates: bool = False,
                 include_bookkeeping: bool = False) -> pd.DataFrame:
    """List the field changes one user made (by ActionUserId), newest first."""
    where = ["fc.action_user_id = ?", *_change_filters(include_duplicates, include_bookkeeping)]
    params: list = [int(action_user_id)]
    if entity:
        where.append("fc.entity = ?")
        params.append(entity)
    _time_range(where, params, "fc.received_at", start, end)
    return _changes(con, where, params, limit)


def changes_matching(con: duckdb.DuckDBPyConnection, text: str, *,
                     field_path: str | None = None, entity: str | None = None,
                     side: str = "either", start: datetime | None = None,
                     end: datetime | None = None, limit: int = DEFAULT_LIMIT,
                     include_duplicates: bool = False,
                     include_bookkeeping: bool = False,
                     seconds: float | None = TEXT_SEARCH_SECONDS) -> pd.DataFrame:
    """List changes whose old or new JSON text contains `text` (any case, accents kept).

    Newest first. A text match reads every value it tests, so the search reads recent
    time windows first and, with `seconds`, stops after that long: then the result's
    `attrs["complete"]` is False and `attrs["searched_since"]` says how far back it read
    (None means everything was read).
    """
    if side not in ("either", "old", "new"):
        raise ValueError("side must be 'either', 'old' or 'new'")
    sides = {name: _ilike(f"CAST(fc.{name}_value AS VARCHAR)", text)[0]
             for name in ("old", "new")}
    pattern = _ilike("", text)[1]
    where = _change_filters(include_duplicates, include_bookkeeping)
    params: list = []
    if field_path:
        where.append("fc.field = ?")
        params.append(field_path)
    if entity:
        where.append("fc.entity = ?")
        params.append(entity)
    if side == "either":
        where.append(f"({sides['old']} OR {sides['new']})")
        params += [pattern, pattern]
    else:
        where.append(sides[side])
        params.append(pattern)
    # each window returns whole rows: fetching them again by rowid would rescan the table
    rows_sql = (f"SELECT {_CHANGE_COLUMNS} {_CHANGE_FROM} WHERE {{window}} AND "
                + " AND ".join(where)
                + " ORDER BY fc.received_at DESC, fc.event_id DESC, fc.rowid LIMIT ?")
    found = _newest_first(con, rows_sql, params, "field_changes", "received_at",
                          _limit(limit), start, end, seconds)
    names = [d[0] for d in con.execute(
        f"SELECT {_CHANGE_COLUMNS} {_CHANGE_FROM} LIMIT 0").description]
    frame = _normalized(pd.DataFrame.from_records(found.rows, columns=names))
    frame.attrs["complete"] = found.complete
    frame.attrs["searched_since"] = found.searched_since
    return frame


# --- one record ------------------------------------------------------------------------


def record_events(con: duckdb.DuckDBPyConnection, entity: str, record_id: int, *,
                  newest_first: bool = False, include_duplicates: bool = False
                  ) -> pd.DataFrame:
    """List the events of one record, one row each, with the fields they changed."""
    order = "DESC" if newest_first else "ASC"
    dup = "" if include_duplicates else "AND e.duplicate_of IS NULL"
    sql = f"""
        WITH ev AS (
            SELECT id, received_at, action, action_user_id, webhook_id, duplicate_of, is_demo
            FROM events e WHERE e.entity = ? AND e.record_id = ? {dup}
        ), ch AS (
            SELECT fc.event_id, string_agg({_FIELD_LABEL}, ', ' ORDER BY fc.rowid) AS fields,
                   count(*) AS changes
            FROM field_changes fc {_FIELD_JOIN}
            WHERE fc.entity = ? AND fc.record_id = ? AND NOT fc.bookkeeping
            GROUP BY fc.event_id
        )
        SELECT ev.id AS event_id, ev.received_at, ev.action, ev.action_user_id,
               {_USER_LABEL.format(col="ev.action_user_id")} AS user_name, ev.webhook_id,
               ev.duplicate_of, ev.is_demo, coalesce(ch.changes, 0) AS changes,
               coalesce(ch.fields, '') AS changed_fields
        FROM ev LEFT JOIN ch ON ch.event_id = ev.id
        LEFT JOIN users u ON u.id = ev.action_user_id
        ORDER BY ev.received_at {order}, ev.id {order}
    """
    return _frame(con, sql, [entity, int(record_id), entity, int(record_id)])


def record_history(con: duckdb.DuckDBPyConnection, entity: str, record_id: int, *,
                   newest_first: bool = True, include_duplicates: bool = False,
                   include_bookkeeping: bool = False) -> pd.DataFrame:
    """List a record's events with their field changes: one row per change (or per event
    that changed nothing shown), newest or oldest first."""
    order = "DESC" if newest_first else "ASC"
    dup = "" if include_duplicates else "AND e.duplicate_of IS NULL"
    book = "" if include_bookkeeping else "AND NOT fc.bookkeeping"
    sql = f"""
        WITH ev AS (
            SELECT id, received_at, action, action_user_id, webhook_id, duplicate_of, is_demo
            FROM events e WHERE e.entity = ? AND e.record_id = ? {dup}
        ), fc AS (
            SELECT *, rowid AS seq FROM field_changes fc
            WHERE fc.entity = ? AND fc.record_id = ? {book}
        )
        SELECT ev.id AS event_id, ev.received_at, ev.action, ev.action_user_id,
               {_USER_LABEL.format(col="ev.action_user_id")} AS user_name, ev.webhook_id,
               ev.duplicate_of, ev.is_demo,
               fc.field, {_FIELD_LABEL} AS field_label, fc.summary,
               CAST(fc.old_value AS VARCHAR) AS old_value,
               CAST(fc.new_value AS VARCHAR) AS new_value,
               fc.old_known, fc.new_known, fc.kind, fc.bookkeeping,
               CAST(fc.added AS VARCHAR) AS added, CAST(fc.removed AS VARCHAR) AS removed
        FROM ev LEFT JOIN fc ON fc.event_id = ev.id
        LEFT JOIN users u ON u.id = ev.action_user_id
        {_FIELD_JOIN}
        ORDER BY ev.received_at {order}, ev.id {order}, fc.seq
    """
    return _frame(con, sql, [entity, int(record_id), entity, int(record_id)])


@dataclass(frozen=True)
class RecordSnapshot:
    """A record as the store knew it right after one event."""

    entity: str
    record_id: int
    state: dict | None  # None: no event yet at that moment
    event_id: int | None  # the last event folded in
    received_at: datetime | None
    action: str | None
    deleted: bool
    events_folded: int


def _latest_state(con: duckdb.DuckDBPyConnection, entity: str, record_id: int,
                  upto_event: int | None = None) -> RecordSnapshot | None:
    """The state after a record's last event from `record_state`; None unless that is
    what was asked (`upto_event` before the last event) and what it holds (stage 2
    behind, or an event it could not derive)."""
    count, last_id, last_action, last_at = con.execute(
        "SELECT count(*), max(id), arg_max(action, id), arg_max(received_at, id) "
        "FROM events WHERE entity = ? AND record_id = ? AND duplicate_of IS NULL",
        [entity, record_id]).fetchone()
    if not count or (upto_event is not None and upto_event < last_id):
        return None
    kept = con.execute(
        "SELECT CAST(state AS VARCHAR), last_event_id, deleted FROM record_state "
        "WHERE entity = ? AND record_id = ?", [entity, record_id]).fetchone()
    if kept is None or kept[1] != last_id:
        return None
    return RecordSnapshot(entity, record_id, json.loads(kept[0]), int(last_id),
                          _utc(last_at), last_action, bool(kept[2]), int(count))


def state_at(con: duckdb.DuckDBPyConnection, entity: str, record_id: int,
             at: datetime | None = None, *, event_id: int | None = None,
             latest: bool = True) -> RecordSnapshot:
    """Fold a record's non-duplicate events up to `at` (and/or `event_id`) into its state.

    The fold is the ingest path's: start from the first `Old`, merge `Old` then `New` of
    each event in order; a deletion ends the record and a later event starts it afresh.
    The latest state (no `at`, and no `event_id` or one at or after the record's last
    event, as the Records page asks by default) is read from `record_state`, which stage
    2 keeps with that same fold, when it covers that last event; `latest=False` always
    folds (the tests compare the two).
    """
    if at is None and latest:
        snapshot = _latest_state(con, entity, int(record_id), event_id)
        if snapshot is not None:
            return snapshot
    where = ["entity = ?", "record_id = ?", "duplicate_of IS NULL"]
    params: list = [entity, int(record_id)]
    if at is not None:
        where.append("received_at <= ?")
        params.append(_utc(at))
    if event_id is not None:
        where.append("id <= ?")
        params.append(int(event_id))
    rows = con.execute(
        "SELECT id, received_at, action, CAST(old AS VARCHAR), CAST(new AS VARCHAR) "
        f"FROM events WHERE {' AND '.join(where)} ORDER BY id", params).fetchall()
    state: dict | None = None
    deleted = False
    last = None
    for row in rows:
        old = json.loads(row[3]) if row[3] is not None else None
        new = json.loads(row[4]) if row[4] is not None else None
        state = merge_state(merge_state(None if deleted else state, old), new)
        deleted = new is None and old is not None
        last = row
    if last is None:
        return RecordSnapshot(entity, int(record_id), None, None, None, None, False, 0)
    return RecordSnapshot(entity, int(record_id), state, last[0], _utc(last[1]), last[2],
                          deleted, len(rows))


def find_records(con: duckdb.DuckDBPyConnection, *, entity: str | None = None,
                 record_id: int | None = None, text: str | None = None,
                 include_deleted: bool = True, limit: int = 50) -> pd.DataFrame:
    """Find records by entity and id, or by text in their Name/LegalName/Title."""
    where, params = [], []
    if entity:
        where.append("s.entity = ?")
        params.append(entity)
    if record_id is not None:
        where.append("s.record_id = ?")
        params.append(int(record_id))
    if not include_deleted:
        where.append("NOT s.deleted")
    if text:
        if "\n" in text:  # `names` holds one name per line: only a single name can match
            found = [_ilike(f"(s.state->>'$.{key}')", text)
                     for key in ("Name", "LegalName", "Title")]
            where.append("(" + " OR ".join(cond for cond, _ in found) + ")")
            params += [pattern for _, pattern in found]
        else:
            # Name, LegalName and Title, kept as text by the ingest path (schema v3)
            cond, pattern = _ilike("s.names", text)
            where.append(cond)
            params.append(pattern)
    sql = f"""
        SELECT s.entity, s.record_id, s.title,
               s.last_event_id, s.last_received_at, s.deleted, s.is_demo
        FROM record_state s WHERE {' AND '.join(where) or 'true'}
        ORDER BY s.last_received_at DESC, s.entity, s.record_id LIMIT ?
    """
    return _frame(con, sql, [*params, _limit(limit)])


# --- continuity gaps -------------------------------------------------------------------


def explain_gap(fields: list[dict], previous_event_id: int, event_id: int) -> str:
    """Say in words what a gap means, e.g. 'Old said StatusId was 1 but …'."""
    parts = []
    for item in fields:
        label = item.get("label") or item["field"]
        parts.append(f"{label} was {_json_text(item.get('found'))} but our last delivery "
                     f"said {_json_text(item.get('expected'))}")
    said = "; ".join(parts) if parts else "the record differed from what we knew"
    return (f"Old said {said}: a change was missed between event {previous_event_id} "
            f"and event {event_id}.")


def _field_labels(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = con.execute("SELECT key, name FROM fields WHERE name IS NOT NULL").fetchall()
    return {OTHER_PREFIX + key: name for key, name in rows}


def continuity_gaps(con: duckdb.DuckDBPyConnection, entity: str | None = None,
                    record_id: int | None = None, *, event_id: int | None = None,
                    start: datetime | None = None, end: datetime | None = None,
                    include_demo: bool = True, limit: int = DEFAULT_LIMIT) -> pd.DataFrame:
    """List continuity gaps (of one record, one event, or all), newest first, explained."""
    where, params = [], []
    if entity:
        where.append("g.entity = ?")
        params.append(entity)
    if record_id is not None:
        where.append("g.record_id = ?")
        params.append(int(record_id))
    if event_id is not None:
        where.append("(g.event_id = ? OR g.previous_event_id = ?)")
        params += [int(event_id), int(event_id)]
    if not include_demo:
        where.append("NOT g.is_demo")
    _time_range(where, params, "g.received_at", start, end)
    sql = f"""
        SELECT g.event_id, g.previous_event_id, g.received_at, g.entity, g.record_id,
               CAST(g.fields AS VARCHAR) AS fields, g.is_demo
        FROM continuity_gaps g WHERE {' AND '.join(where) or 'true'}
        ORDER BY g.received_at DESC, g.event_id DESC LIMIT ?
    """
    df = _frame(con, sql, [*params, _limit(limit)])
    labels = _field_labels(con) if len(df) else {}
    explained, names, parsed = [], [], []
    for row in df.itertuples(index=False):
        items = json.loads(row.fields)
        for item in items:
            item["label"] = labels.get(item["field"], item["field"])
        parsed.append(items)
        names.append(", ".join(item["label"] for item in items))
        explained.append(explain_gap(items, row.previous_event_id, row.event_id))
    df["fields"] = pd.Series(parsed, index=df.index, dtype=object)
    df["field_labels"] = pd.Series(names, index=df.index, dtype=object)
    df["explanation"] = pd.Series(explained, index=df.index, dtype=object)
    return df


# --- the Events page -------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """What the Events page narrows events to; None means "any"."""

    start: datetime | None = None
    end: datetime | None = None
    entity: str | None = None
    action: str | None = None
    action_user_id: int | None = None
    record_id: int | None = None
    field: str | None = None  # events with a (non-duplicate) change of this field path
    text: str | None = None  # anywhere in the raw payload, any case
    include_duplicates: bool = False
    include_demo: bool = True


def event_where(f: EventFilter) -> tuple[str, list]:
    """Return the conditions over `events e` (alias e) that a filter means, and params."""
    where, params = [], []
    if not f.include_duplicates:
        where.append("e.duplicate_of IS NULL")
    if not f.include_demo:
        where.append("NOT e.is_demo")
    _time_range(where, params, "e.received_at", f.start, f.end)
    for column, value in (("entity", f.entity), ("action", f.action)):
        if value:
            where.append(f"e.{column} = ?")
            params.append(value)
    for column, value in (("action_user_id", f.action_user_id), ("record_id", f.record_id)):
        if value is not None:
            where.append(f"e.{column} = ?")
            params.append(int(value))
    if f.field:
        sub = ["fc.field = ?"]
        sub_params: list = [f.field]
        # repeat the cheap filters inside so the field_changes scan prunes too
        _time_range(sub, sub_params, "fc.received_at", f.start, f.end)
        if f.entity:
            sub.append("fc.entity = ?")
            sub_params.append(f.entity)
        if f.record_id is not None:
            sub.append("fc.record_id = ?")
            sub_params.append(int(f.record_id))
        where.append(f"e.id IN (SELECT fc.event_id FROM field_changes fc "
                     f"WHERE {' AND '.join(sub)})")
        params += sub_params
    if f.text:
        cond, pattern = _ilike("CAST(e.payload AS VARCHAR)", f.text)
        where.append(cond)
        params.append(pattern)
    return " AND ".join(where) or "true", params


def _field_where(f: EventFilter) -> tuple[str, list]:
    """Filter on `field_changes` alone: it repeats every event column a filter needs except
    the payload, and a field appears at most once per event."""
    where, params = ["fc.field = ?"], [f.field]
    if not f.include_duplicates:
        where.append("NOT fc.is_duplicate")
    if not f.include_demo:
        where.append("NOT fc.is_demo")
    _time_range(where, params, "fc.received_at", f.start, f.end)
    for column, value in (("entity", f.entity), ("action", f.action)):
        if value:
            where.append(f"fc.{column} = ?")
            params.append(value)
    for column, value in (("action_user_id", f.action_user_id), ("record_id", f.record_id)):
        if value is not None:
            where.append(f"fc.{column} = ?")
            params.append(int(value))
    return " AND ".join(where), params


def _keys(f: EventFilter) -> tuple[str, str, list]:
    """Return (FROM clause, WHERE clause, params) selecting the filter's events as
    `id, received_at`."""
    if f.field and not f.text:
        where, params = _field_where(f)
        source = (f"(SELECT fc.event_id AS id, fc.received_at FROM field_changes fc "
                  f"WHERE {where}) e")
        return source, "true", params
    where, params = event_where(f)
    return "events e", where, params


def count_events(con: duckdb.DuckDBPyConnection, f: EventFilter) -> int:
    """Count the events a filter selects."""
    source, where, params = _keys(f)
    return int(con.execute(f"SELECT count(*) FROM {source} WHERE {where}",
                           params).fetchone()[0])


def list_events(con: duckdb.DuckDBPyConnection, f: EventFilter, *, limit: int = 50,
                offset: int = 0) -> pd.DataFrame:
    """Return one page of events (newest first), labelled, with the fields they changed."""
    source, where, params = _keys(f)
    # sort and cut on narrow columns; wide JSON is read for the page's rows only
    keys = (f"SELECT e.id FROM {source} WHERE {where} "
            "ORDER BY e.received_at DESC, e.id DESC LIMIT ? OFFSET ?")
    return _event_rows(con, keys, [*params, _limit(limit, MAX_PAGE_SIZE), max(0, int(offset))])


def _event_rows(con: duckdb.DuckDBPyConnection, keys: str, params: list) -> pd.DataFrame:
    """Return the Events table's rows for the event ids `keys` selects, newest first."""
    sql = f"""
        WITH keys AS ({keys}), page AS (
            SELECT e.id, e.received_at, e.entity, e.action, e.record_id, e.action_user_id,
                   e.webhook_id, e.duplicate_of, e.is_demo, e.old, e.new
            FROM events e WHERE e.id IN (SELECT id FROM keys)
        ), ch AS (
            SELECT fc.event_id, string_agg({_FIELD_LABEL}, ', ' ORDER BY fc.rowid) AS fields
            FROM field_changes fc {_FIELD_JOIN}
            WHERE fc.event_id IN (SELECT id FROM page) AND NOT fc.bookkeeping
              -- a range lets DuckDB skip row groups (event_id grows with insertion)
              AND fc.event_id BETWEEN (SELECT min(id) FROM page) AND (SELECT max(id) FROM page)
            GROUP BY fc.event_id
        )
        SELECT page.id AS event_id, page.received_at, page.entity, page.action,
               page.record_id, {_TITLE.format(s="coalesce(page.new, page.old)")} AS title,
               page.action_user_id,
               {_USER_LABEL.format(col="page.action_user_id")} AS user_name,
               coalesce(ch.fields, '') AS changed_fields, page.webhook_id,
               page.duplicate_of, page.is_demo
        FROM page LEFT JOIN ch ON ch.event_id = page.id
        LEFT JOIN users u ON u.id = page.action_user_id
        ORDER BY page.received_at DESC, page.id DESC
    """
    return _frame(con, sql, params)


@dataclass(frozen=True)
class EventsPage:
    """One page of the Events table and how many events the filter selects in all.

    A free-text filter may stop searching once it has filled the page (or after
    TEXT_SEARCH_SECONDS): then `exact` is False, `total` counts the matches found so
    far (there are at least that many) and `searched_since` is how far back it read.
    """

    rows: pd.DataFrame
    total: int
    page: int
    page_size: int
    exact: bool = True
    searched_since: datetime | None = None

    @property
    def pages(self) -> int:
        """Return how many pages the filter's events fill (at least 1)."""
        return max(1, -(-self.total // self.page_size))


def events_page(con: duckdb.DuckDBPyConnection, f: EventFilter, page: int = 1,
                page_size: int = 50, *, text_seconds: float | None = TEXT_SEARCH_SECONDS
                ) -> EventsPage:
    """Return page `page` (1-based, clamped to the last page) of the filtered events.

    With a free-text filter, events are searched newest first and the search stops once
    this page and one more event are found, or after `text_seconds` (None: never), so
    the total may be a lower bound (`EventsPage.exact`).
    """
    page_size = max(1, min(int(page_size), MAX_PAGE_SIZE))
    page = max(1, int(page))
    if f.text:
        return _text_page(con, f, page, page_size, text_seconds)
    total = count_events(con, f)
    pages = max(1, -(-total // page_size))
    page = min(page, pages)
    rows = list_events(con, f, limit=page_size, offset=(page - 1) * page_size)
    return EventsPage(rows, total, page, page_size)


def _text_page(con: duckdb.DuckDBPyConnection, f: EventFilter, page: int, page_size: int,
               seconds: float | None) -> EventsPage:
    where, params = event_where(f)
    found = _newest_first(con, f"""
        SELECT e.id FROM events e WHERE {{window}} AND {where}
        ORDER BY e.received_at DESC, e.id DESC LIMIT ?
    """, params, "events", "received_at", page * page_size + 1, f.start, f.end, seconds)
    total = len(found.rows)
    page = min(page, max(1, -(-total // page_size)))
    ids = [r[0] for r in found.rows[(page - 1) * page_size:page * page_size]]
    rows = _event_rows(con, "SELECT unnest(?::BIGINT[]) AS id", [ids])
    return EventsPage(rows, total, page, page_size, found.complete, found.searched_since)


def filter_options(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    """Return the entities, actions and users (id, label) the events hold, for selectors."""
    entities = [r[0] for r in con.execute(
        "SELECT DISTINCT entity FROM events ORDER BY entity").fetchall()]
    actions = [r[0] for r in con.execute(
        "SELECT DISTINCT action FROM events ORDER BY action").fetchall()]
    users = con.execute(
        f"SELECT e.action_user_id, {_USER_LABEL.format(col='e.action_user_id')} "
        "FROM (SELECT DISTINCT action_user_id FROM events WHERE action_user_id IS NOT NULL) e "
        "LEFT JOIN users u ON u.id = e.action_user_id ORDER BY 2, 1").fetchall()
    return {"entities": entities, "actions": actions,
            "users": [(int(uid), label) for uid, label in users]}


def field_options(con: duckdb.DuckDBPyConnection, entity: str | None = None
                  ) -> list[tuple[str, str]]:
    """Return (field path, label) of every field with a change (of one entity), by label.

    Bookkeeping fields (`diff.BOOKKEEPING_FIELDS`: LastUpdateDate and the like change on
    nearly every delivery) are left out. Read from the `user_fields` rollup (a few
    thousand rows, kept by ingest stage 2 with `field_changes`) instead of a DISTINCT
    over millions of field changes: 2–4 ms instead of ~22 ms at 1M events.
    """
    where = "WHERE fc.entity = ?" if entity else ""
    rows = con.execute(
        f"SELECT fc.field, {_FIELD_LABEL} FROM (SELECT DISTINCT field FROM user_fields fc "
        f"{where}) fc {_FIELD_JOIN} ORDER BY 2, 1", [entity] if entity else []).fetchall()
    return [(r[0], r[1]) for r in rows]


# --- one event -------------------------------------------------------------------------


@dataclass(frozen=True)
class EventDetail:
    """Everything the Events page shows about one event."""

    event: dict
    changes: pd.DataFrame
    duplicates: pd.DataFrame
    gaps: pd.DataFrame
    payload: dict = field(default_factory=dict)


def event_detail(con: duckdb.DuckDBPyConnection, event_id: int) -> EventDetail | None:
    """Return one event with its field changes, copies, gaps and raw payload; None if absent."""
    # one row: plain Python values (a DataFrame would cost more than the query)
    cursor = con.execute(f"""
        SELECT e.id AS event_id, e.received_at, e.entity, e.action, e.record_id,
               e.account_id, e.action_user_id,
               {_USER_LABEL.format(col="e.action_user_id")} AS user_name, e.webhook_id,
               e.webhook_creator_id, e.secondary_entity_id, e.duplicate_of, e.is_demo,
               e.body_sha256, {_TITLE.format(s="coalesce(e.new, e.old)")} AS title,
               CAST(e.payload AS VARCHAR) AS payload
        FROM events e LEFT JOIN users u ON u.id = e.action_user_id WHERE e.id = ?
    """, [int(event_id)])
    found = cursor.fetchone()
    if found is None:
        return None
    row = dict(zip([d[0] for d in cursor.description], found, strict=True))
    payload = json.loads(row.pop("payload"))
    row["received_at"] = _utc(row["received_at"])

    changes = _frame(con, f"""
        SELECT {_CHANGE_COLUMNS} {_CHANGE_FROM} WHERE fc.event_id = ? ORDER BY fc.rowid
    """, [int(event_id)])
    _add_display_columns(changes)

    original = row["duplicate_of"] if row["duplicate_of"] is not None else row["event_id"]
    duplicates = _frame(con, f"""
        SELECT e.id AS event_id, e.received_at, e.webhook_id, e.action_user_id,
               {_USER_LABEL.format(col="e.action_user_id")} AS user_name,
               e.duplicate_of, e.duplicate_of IS NULL AS is_original
        FROM events e LEFT JOIN users u ON u.id = e.action_user_id
        WHERE (e.id = ? OR e.duplicate_of = ?) AND e.id <> ?
        ORDER BY e.received_at, e.id
    """, [original, original, row["event_id"]])
    gaps = continuity_gaps(con, row["entity"], row["record_id"], event_id=row["event_id"]) \
        if row["record_id"] is not None else continuity_gaps(con, event_id=row["event_id"])
    return EventDetail(row, changes, duplicates, gaps, payload)


def _add_display_columns(df: pd.DataFrame) -> None:
    """Add before/after text and added/removed item lists to a frame of field changes."""
    before, after, added, removed = [], [], [], []
    for r in df.itertuples(index=False):
        before.append(show_value(r.old_value, bool(r.old_known)))
        after.append(show_value(r.new_value, True) if r.new_known else "(removed)")
        if r.added is not None or r.removed is not None:
            plus = json.loads(r.added) if r.added else []
            minus = json.loads(r.removed) if r.removed else []
        elif r.kind == "list" and r.old_known:
            plus, minus = list_delta(json.loads(r.old_value) if r.old_value else None,
                                     json.loads(r.new_value) if r.new_value else None)
        else:
            plus, minus = [], []
        added.append(plus)
        removed.append(minus)
    df["before"] = pd.Series(before, index=df.index, dtype=object)
    df["after"] = pd.Series(after, index=df.index, dtype=object)
    df["added_items"] = pd.Series(added, index=df.index, dtype=object)
    df["removed_items"] = pd.Series(removed, index=df.index, dtype=object)
