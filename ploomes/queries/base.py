"""Helpers every query module shares: frames, text matching, time ranges, labels.

Query functions take a read connection (`with store.reader() as con:`) and parameters,
bind every value, and return a pandas DataFrame (or a small dataclass around one).
Timestamps come back tz-aware in UTC; the views convert them for display. The store has
no secondary indexes, so queries filter on plain columns (DuckDB prunes row groups with
min/max zone maps: `id`, `event_id` and `received_at` grow with insertion), page in
SQL, and parse JSON only on the rows a page shows.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import overload

import duckdb
import pandas as pd

from ploomes.i18n import N_, _
from ploomes.model.vocabulary import TITLE_KEYS
from ploomes.queries.names import NamesCache

# The title of a record as Ploomes names it, from one JSON side (evaluated per row shown).
TITLE_SQL = "coalesce(" + ", ".join(f"{{s}}->>'$.{key}'" for key in TITLE_KEYS) + ")"

UNKNOWN_BEFORE = N_("previous value unknown")  # translated where shown
DEFAULT_LIMIT = 1000
MAX_PAGE_SIZE = 1000
# A free-text search of payloads reads the newest events first, in time windows that grow
# (6 h, then ×4); it answers once it has a page, or after this long with what it found.
TEXT_SEARCH_SECONDS = 0.06
_FIRST_WINDOW = timedelta(hours=6)
_WINDOW_GROWTH = 4
# A user's name joined in SQL, from the row's own account only (then the unknown
# account's rows, account_id NULL), else the id as text: `user_join` + `user_label`.
def user_join(id_col: str, account_col: str, alias: str = "u") -> str:
    """Return the LEFT JOINs that name the user `id_col` of the account `account_col`."""
    return (f"LEFT JOIN users {alias} ON {alias}.id = {id_col} "
            f"AND {alias}.account_id = {account_col} "
            f"LEFT JOIN users {alias}0 ON {alias}0.id = {id_col} AND {alias}0.account_id IS NULL")


def user_label(id_col: str, alias: str = "u") -> str:
    """Return the SQL of the name `user_join` found, else the id as text."""
    return f"coalesce({alias}.name, {alias}0.name, CAST({id_col} AS VARCHAR))"


# A field change's columns; names are added in Python (`label_changes`), per account.
CHANGE_COLUMNS = """
    fc.event_id, fc.received_at, fc.entity, fc.record_id, fc.action, fc.action_user_id,
    fc.field, fc.summary,
    CAST(fc.old_value AS VARCHAR) AS old_value, CAST(fc.new_value AS VARCHAR) AS new_value,
    fc.old_known, fc.new_known, fc.kind, fc.bookkeeping,
    CAST(fc.added AS VARCHAR) AS added, CAST(fc.removed AS VARCHAR) AS removed,
    fc.is_duplicate, fc.is_demo
"""
CHANGE_FROM = "FROM field_changes fc"


@overload
def utc(value: datetime | pd.Timestamp) -> datetime: ...
@overload
def utc(value: None) -> None: ...
def utc(value: datetime | pd.Timestamp | None) -> datetime | None:
    """Return an aware UTC datetime; a naive one is taken as UTC already."""
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None
          ) -> pd.DataFrame:
    """Run a query into a DataFrame: timestamps tz-aware UTC, SQL NULL text as None."""
    return normalized(con.execute(sql, params or []).df())


def normalized(df: pd.DataFrame) -> pd.DataFrame:
    for name in df.columns:
        column = df[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            df[name] = column.dt.tz_convert("UTC")
        elif pd.api.types.is_string_dtype(column.dtype):
            # text columns keep None for SQL NULL (pandas' str dtype would make it NaN)
            df[name] = pd.Series([None if pd.api.types.is_scalar(v) and pd.isna(v) else v
                                  for v in column], index=df.index, dtype=object)
    return df


def like_pattern(text: str) -> str:
    """Return an ILIKE pattern matching `text` anywhere, wildcards escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def ilike(column: str, text: str) -> tuple[str, str]:
    """Return (condition, pattern): `column` contains `text`, any case, wildcards literal.

    DuckDB runs `ILIKE` with an `ESCAPE` clause several times slower than without one, so
    the clause is added only when the text holds a wildcard or backslash to escape.
    """
    if any(c in text for c in "%_\\"):
        return f"{column} ILIKE ? ESCAPE '\\'", like_pattern(text)
    return f"{column} ILIKE ?", f"%{text}%"


def json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def clamp_limit(value: int, ceiling: int = 100_000) -> int:
    return max(0, min(int(value), ceiling))


def time_range(where: list[str], params: list, column: str, start: datetime | None,
               end: datetime | None) -> None:
    if start is not None:
        where.append(f"{column} >= ?")
        params.append(utc(start))
    if end is not None:
        where.append(f"{column} < ?")
        params.append(utc(end))


@dataclass(frozen=True)
class Found:
    """Rows a newest-first search found, and how far back it looked."""

    rows: list[tuple]
    complete: bool  # every window down to the oldest candidate was read
    searched_since: datetime | None  # the oldest moment read, when not complete


def newest_first(con: duckdb.DuckDBPyConnection, sql: str, params: list, table: str,
                  column: str, need: int, start: datetime | None, end: datetime | None,
                  seconds: float | None) -> Found:
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
        return Found([], True, None)
    floor = max(utc(span[0]), utc(start)) if start is not None else utc(span[0])
    hi = utc(span[1]) + timedelta(microseconds=1)
    if end is not None:
        hi = min(hi, utc(end))
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
            return Found(found, False, lo)
        read, hi, width = hi - lo, lo, width * _WINDOW_GROWTH
        if deadline is not None and hi > floor:
            now = time.monotonic()
            if now >= deadline:
                return Found(found, False, lo)
            # the next window should fit in the time left, at the pace of the last one
            pace = read / max(now - began, 1e-4)
            # (half of it: a window's cost grows faster than its length on busy days)
            width = max(min(width, pace * (deadline - now) / 2), timedelta(minutes=1))
    return Found(found, True, None)


def show_value(text: str | None, known: bool = True) -> str:
    """Render a stored JSON value for people: strings bare, null as '(empty)'."""
    if not known:
        return _(UNKNOWN_BEFORE)
    if text is None:
        return _("(removed)")
    value = json.loads(text)
    if value is None:
        return _("(empty)")
    if isinstance(value, str):
        return value
    return json_text(value)


def show_items(values: list) -> str:
    """Render list items (tag ids, phones…) for people, comma separated."""
    return ", ".join(show_value(json_text(v)) for v in values)


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


def aware_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def dup_clause(include_duplicates: bool, column: str = "duplicate_of") -> str:
    return "" if include_duplicates else f" AND {column} IS NULL"


def tests_clause(include_tests: bool, column: str = "is_test") -> str:
    """The condition that leaves the Webhooks page's test deliveries out, unless asked."""
    return "" if include_tests else f" AND NOT {column}"


def user_clause(user_id: int | None, column: str = "action_user_id") -> tuple[str, list]:
    # NULL is a real value here: deliveries without an ActionUserId form their own group.
    # Plain equality (not IS NOT DISTINCT FROM) lets DuckDB push the filter into the scan.
    if user_id is None:
        return f" AND {column} IS NULL", []
    return f" AND {column} = ?", [int(user_id)]


def range_clause(since: datetime | None, until: datetime | None,
                  column: str = "received_at") -> tuple[str, list]:
    sql, params = "", []
    if since is not None:
        sql += f" AND {column} >= ?"
        params.append(since)
    if until is not None:
        sql += f" AND {column} < ?"
        params.append(until)
    return sql, params


def change_filters(include_duplicates: bool, include_bookkeeping: bool) -> list[str]:
    where = []
    if not include_duplicates:
        where.append("NOT fc.is_duplicate")
    if not include_bookkeeping:
        where.append("NOT fc.bookkeeping")
    return where


def changes_frame(con: duckdb.DuckDBPyConnection, where: list[str], params: list, limit: int,
                  newest_first: bool = True) -> pd.DataFrame:
    order = "DESC" if newest_first else "ASC"
    # sort and cut on narrow columns first; only the kept rows' values and labels are read
    sql = f"""
        WITH keys AS (
            SELECT fc.rowid AS rid, fc.event_id FROM field_changes fc
            WHERE {' AND '.join(where) or 'true'}
            ORDER BY fc.received_at {order}, fc.event_id {order}, fc.rowid LIMIT ?
        )
        SELECT {CHANGE_COLUMNS} {CHANGE_FROM}
        WHERE fc.event_id IN (SELECT event_id FROM keys) AND fc.rowid IN (SELECT rid FROM keys)
        ORDER BY fc.received_at {order}, fc.event_id {order}, fc.rowid
    """
    return label_changes(con, frame(con, sql, [*params, clamp_limit(limit)]))


def event_accounts(con: duckdb.DuckDBPyConnection, event_ids: list[int]) -> dict[int, object]:
    """Return {event id: AccountId} of these events."""
    if not event_ids:
        return {}
    # the range lets DuckDB skip row groups (ids grow with insertion)
    rows = con.execute("SELECT id, account_id FROM events WHERE id BETWEEN ? AND ? "
                       "AND id IN (SELECT unnest(?::BIGINT[]))",
                       [min(event_ids), max(event_ids), event_ids]).fetchall()
    return dict(rows)


def label_changes(con: duckdb.DuckDBPyConnection, df: pd.DataFrame) -> pd.DataFrame:
    """Add `account_id`, `user_name` and `field_label` to a frame of field changes, each
    named from its own event's account."""
    accounts = event_accounts(con, sorted({int(i) for i in df["event_id"]}))
    names = NamesCache(con)
    df["account_id"] = pd.Series([accounts.get(int(i)) for i in df["event_id"]],
                                 index=df.index, dtype=object)
    df["user_name"] = pd.Series(
        [names(a).user_label(u) or None for a, u in zip(df["account_id"], df["action_user_id"],
                                                        strict=True)],
        index=df.index, dtype=object)
    df["field_label"] = pd.Series(
        [names(a).field(e, f) for a, e, f in zip(df["account_id"], df["entity"], df["field"],
                                                 strict=True)],
        index=df.index, dtype=object)
    return df
