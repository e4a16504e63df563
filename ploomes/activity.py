"""Activity queries behind the dashboard's Overview, Users and Status pages.

Every function takes an open read connection (`with store.reader() as con:`) and plain
parameters, binds every value, and returns a DataFrame (or a scalar for a single
number). Counts leave out repeated deliveries of the same change (`duplicate_of`) unless
asked to include them; demo rows are counted like any other, the dashboard labels them.

Distinct records per user (and per user and field) come from the rollups stage 2 keeps
(`user_records`, `user_fields`) when the range allows it exactly, otherwise from the raw
tables; both give the same numbers (tests/test_user_rollups.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import duckdb
import pandas as pd
import requests

from ploomes.config import DEFAULT_TIMEZONE
from ploomes.history import EventFilter, event_where

EXPORT_LIMIT = 100_000  # rows in one CSV/Parquet export
BUCKETS = ("hour", "day", "week")
TIMELINE_GROUPS = {"entity": "entity", "action": "action"}
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
OTHER_PREFIX = "OtherProperties."


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def _dup_clause(include_duplicates: bool, column: str = "duplicate_of") -> str:
    return "" if include_duplicates else f" AND {column} IS NULL"


def _user_clause(user_id: int | None, column: str = "action_user_id") -> tuple[str, list]:
    # NULL is a real value here: deliveries without an ActionUserId form their own group.
    # Plain equality (not IS NOT DISTINCT FROM) lets DuckDB push the filter into the scan.
    if user_id is None:
        return f" AND {column} IS NULL", []
    return f" AND {column} = ?", [int(user_id)]


def _range_clause(since: datetime | None, until: datetime | None,
                  column: str = "received_at") -> tuple[str, list]:
    sql, params = "", []
    if since is not None:
        sql += f" AND {column} >= ?"
        params.append(since)
    if until is not None:
        sql += f" AND {column} < ?"
        params.append(until)
    return sql, params


# -- store-wide numbers -----------------------------------------------------------------

def event_count(con: duckdb.DuckDBPyConnection) -> int:
    """Return how many events the store holds (duplicates and demo rows included)."""
    return int(con.execute("SELECT count(*) FROM events").fetchone()[0])


def last_delivery_at(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """Return when the newest delivery was received, or None if there is none."""
    return con.execute("SELECT max(received_at) FROM events").fetchone()[0]


def overview_summary(con: duckdb.DuckDBPyConnection, now: datetime | None = None,
                     include_duplicates: bool = False) -> pd.DataFrame:
    """Return the headline numbers for the last 24 h and 7 d, one row per window.

    Columns: window, since, deliveries, records_changed, active_users, duplicates,
    refused (rejected deliveries plus failed authentications).
    """
    now = _now(now)
    rows = []
    for label, span in (("24 h", timedelta(hours=24)), ("7 d", timedelta(days=7))):
        since = now - span
        dup = _dup_clause(include_duplicates)
        deliveries, records, users, duplicates = con.execute(
            "SELECT count(*) FILTER (WHERE TRUE" + dup + "), "
            "count(DISTINCT (entity, record_id)) FILTER (WHERE record_id IS NOT NULL" + dup
            + "), count(DISTINCT action_user_id) FILTER (WHERE TRUE" + dup + "), "
            "count(*) FILTER (WHERE duplicate_of IS NOT NULL) "
            "FROM events WHERE received_at >= ? AND received_at <= ?",
            [since, now]).fetchone()
        refused = con.execute(
            "SELECT (SELECT count(*) FROM rejected_deliveries "
            "        WHERE received_at >= ? AND received_at <= ?) + "
            "       (SELECT count(*) FROM auth_failures "
            "        WHERE received_at >= ? AND received_at <= ?)",
            [since, now, since, now]).fetchone()[0]
        rows.append({"window": label, "since": since, "deliveries": int(deliveries),
                     "records_changed": int(records), "active_users": int(users),
                     "duplicates": int(duplicates), "refused": int(refused)})
    return pd.DataFrame(rows).set_index("window")


def table_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return the row count of each public table (columns: table, rows)."""
    tables = ("events", "field_changes", "continuity_gaps", "rejected_deliveries",
              "auth_failures", "users", "fields")
    rows = []
    for table in tables:  # fixed names from the tuple above, never user input
        rows.append({"table": table,
                     "rows": int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])})
    return pd.DataFrame(rows)


def ingest_positions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return how far ingest got in each journal (columns: name, last_seq, updated_at)."""
    return con.execute(
        "SELECT name, last_seq, updated_at FROM ingest_state ORDER BY name").fetchdf()


# -- timeline -----------------------------------------------------------------------------

def bucket_for(start: datetime, end: datetime) -> str:
    """Return a readable bucket for a time range: hour ≤ 2 days, day ≤ 60 days, else week."""
    span = end - start
    if span <= timedelta(days=2):
        return "hour"
    if span <= timedelta(days=60):
        return "day"
    return "week"


def timeline(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime,
             by: str = "entity", bucket: str | None = None, tz: str = DEFAULT_TIMEZONE,
             include_duplicates: bool = False) -> pd.DataFrame:
    """Count events per time bucket (in local time `tz`) and per entity or action.

    Columns: bucket (naive local start of the bucket), group, events; ordered by bucket.
    Weeks start on Monday.
    """
    if by not in TIMELINE_GROUPS:
        raise ValueError(f"by must be one of {sorted(TIMELINE_GROUPS)}, got {by!r}")
    bucket = bucket or bucket_for(start, end)
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, got {bucket!r}")
    column = TIMELINE_GROUPS[by]
    return con.execute(
        f"SELECT date_trunc(?, timezone(?, received_at)) AS bucket, {column} AS \"group\", "
        "count(*) AS events FROM events WHERE received_at >= ? AND received_at < ?"
        + _dup_clause(include_duplicates) + " GROUP BY ALL ORDER BY bucket, \"group\"",
        [bucket, tz, start, end]).fetchdf()


# -- users --------------------------------------------------------------------------------

_USER_NAME = ("COALESCE(u.name, CAST(e.action_user_id AS VARCHAR), '(no ActionUserId)')")


def _records_raw(where: str, dup: str) -> str:
    # distinct (entity, record) per user, counted on `events e`
    return ("SELECT e.action_user_id, count(DISTINCT (e.entity, e.record_id)) AS records "
            "FROM events e WHERE e.record_id IS NOT NULL" + where + dup + " GROUP BY 1")


def _records_rolled(since: datetime | None, include_duplicates: bool, where: str,
                    dup: str) -> tuple[str, list]:
    """Distinct records per user since `since` (up to now) from `user_records`.

    `user_records` holds every event stage 2 has passed; the few stored events after the
    `derive` position are read from `events` and added when their record is not counted
    yet, so the result is exact while stage 2 catches up.
    """
    if since is None:
        cond, params = ("TRUE" if include_duplicates else "events > 0"), []
    elif include_duplicates:
        cond, params = "(last_at >= ? OR last_duplicate_at >= ?)", [since, since]
    else:
        cond, params = "last_at >= ?", [since]
    sql = (
        "rolled AS (SELECT action_user_id, entity, record_id FROM user_records "
        f"WHERE {cond}), "
        "pending AS (SELECT DISTINCT e.action_user_id, e.entity, e.record_id FROM events e "
        "WHERE e.id > (SELECT coalesce(max(last_seq), 0) FROM ingest_state "
        "WHERE name = 'derive') AND e.record_id IS NOT NULL" + where + dup + "), "
        "touched AS (SELECT action_user_id, count(*) AS records FROM ("
        "SELECT action_user_id FROM rolled UNION ALL SELECT p.action_user_id FROM pending p "
        "ANTI JOIN rolled r ON r.action_user_id IS NOT DISTINCT FROM p.action_user_id "
        "AND r.entity = p.entity AND r.record_id = p.record_id) GROUP BY 1)")
    return sql, params


def users_summary(con: duckdb.DuckDBPyConnection, since: datetime | None = None,
                  until: datetime | None = None, include_duplicates: bool = False,
                  rollups: bool = True) -> pd.DataFrame:
    """Return one row per ActionUserId, busiest first.

    Columns: action_user_id, user (name from `users`, else the id), events, records,
    first_at, last_at. Distinct records come from `user_records` unless `until` is set
    (or `rollups` is False): the same numbers, counted on `events`.
    """
    where, params = _range_clause(since, until, "e.received_at")
    dup = _dup_clause(include_duplicates, "e.duplicate_of")
    if rollups and until is None:
        touched, touched_params = _records_rolled(since, include_duplicates, where, dup)
        touched_params += params
    else:
        touched, touched_params = "touched AS (" + _records_raw(where, dup) + ")", params
    return con.execute(
        "WITH per_user AS (SELECT e.action_user_id, count(*) AS events, "
        "min(e.received_at) AS first_at, max(e.received_at) AS last_at FROM events e "
        "WHERE TRUE" + where + dup + " GROUP BY 1), " + touched + " "
        f"SELECT e.action_user_id, {_USER_NAME} AS user, e.events, "
        "coalesce(t.records, 0) AS records, e.first_at, e.last_at FROM per_user e "
        "LEFT JOIN touched t ON t.action_user_id IS NOT DISTINCT FROM e.action_user_id "
        "LEFT JOIN users u ON u.id = e.action_user_id ORDER BY e.events DESC, e.action_user_id",
        [*params, *touched_params]).fetchdf()


def user_entity_actions(con: duckdb.DuckDBPyConnection, since: datetime | None = None,
                        until: datetime | None = None, include_duplicates: bool = False
                        ) -> pd.DataFrame:
    """Count events per user, entity and action.

    Columns: action_user_id, user, entity, action, events.
    """
    where, params = _range_clause(since, until, "e.received_at")
    # count first, name the few groups after
    return con.execute(
        "WITH counts AS (SELECT e.action_user_id, e.entity, e.action, count(*) AS events "
        "FROM events e WHERE TRUE" + where + _dup_clause(include_duplicates, "e.duplicate_of")
        + f" GROUP BY ALL) SELECT e.action_user_id, {_USER_NAME} AS user, e.entity, e.action, "
        "e.events FROM counts e LEFT JOIN users u ON u.id = e.action_user_id "
        "ORDER BY e.action_user_id, e.entity, e.action", params).fetchdf()


def user_heatmap(con: duckdb.DuckDBPyConnection, user_id: int | None,
                 tz: str = DEFAULT_TIMEZONE, since: datetime | None = None,
                 until: datetime | None = None, include_duplicates: bool = False
                 ) -> pd.DataFrame:
    """Count one user's events per weekday and hour of day in local time `tz`.

    Returns the full 7 × 24 grid. Columns: weekday (1 = Monday … 7 = Sunday),
    weekday_name, hour (0–23), events.
    """
    where, params = _range_clause(since, until)
    user_sql, user_params = _user_clause(user_id)
    found = con.execute(
        "SELECT isodow(timezone(?, received_at)) AS weekday, "
        "hour(timezone(?, received_at)) AS hour, count(*) AS events FROM events WHERE TRUE"
        + user_sql + where + _dup_clause(include_duplicates) + " GROUP BY ALL",
        [tz, tz, *user_params, *params]).fetchall()
    counts = {(int(d), int(h)): int(n) for d, h, n in found}
    grid = [{"weekday": d, "weekday_name": WEEKDAYS[d - 1], "hour": h,
             "events": counts.get((d, h), 0)} for d in range(1, 8) for h in range(24)]
    return pd.DataFrame(grid)


def user_top_fields(con: duckdb.DuckDBPyConnection, user_id: int | None, limit: int = 10,
                    since: datetime | None = None, until: datetime | None = None,
                    rollups: bool = True) -> pd.DataFrame:
    """Return the fields one user changes most (bookkeeping and duplicates left out).

    Columns: entity, field, label (custom field name from `fields` when known, else the
    field path), changes, records. All time comes from `user_fields`; a range (or
    `rollups=False`) counts on `field_changes`, with the same result.
    """
    if rollups and since is None and until is None:
        user_sql, params = _user_clause(user_id, "c.action_user_id")
        agg = ("SELECT c.entity, c.field, c.changes, c.records FROM user_fields c "
               "WHERE TRUE" + user_sql)
    else:
        where, params = _range_clause(since, until, "c.received_at")
        user_sql, user_params = _user_clause(user_id, "c.action_user_id")
        params = [*user_params, *params]
        agg = ("SELECT c.entity, c.field, count(*) AS changes, "
               "count(DISTINCT c.record_id) AS records FROM field_changes c "
               "WHERE NOT c.bookkeeping AND NOT c.is_duplicate" + user_sql + where
               + " GROUP BY c.entity, c.field")
    # count first, label the few groups after
    return con.execute(
        f"WITH agg AS ({agg}) "
        "SELECT a.entity, a.field, COALESCE(f.name, a.field) AS label, a.changes, a.records "
        "FROM agg a LEFT JOIN fields f ON starts_with(a.field, ?) AND f.key = substr(a.field, ?) "
        "ORDER BY a.changes DESC, a.entity, a.field LIMIT ?",
        [*params, OTHER_PREFIX, len(OTHER_PREFIX) + 1, int(limit)]).fetchdf()


# -- the Events filter and its export -----------------------------------------------------

@dataclass(frozen=True)
class ParsedFilter:
    """An EventFilter read from URL query parameters, with what could not be read."""

    filter: EventFilter
    problems: tuple[str, ...] = field(default=())


def _parse_moment(raw: str, tz: ZoneInfo, end: bool) -> datetime:
    text = raw.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=tz)
    # a bare date covers the whole local day: `to=2026-11-28` includes that day
    if end:
        day += timedelta(days=1)
    return datetime.combine(day, time(), tzinfo=tz)


def filter_from_params(params: Mapping[str, str | list[str]], tz: str = DEFAULT_TIMEZONE
                       ) -> ParsedFilter:
    """Read an EventFilter from query parameters.

    Names: `from`, `to` (ISO date or datetime, local time when no offset; a bare `to`
    date includes that day), `entity`, `action`, `user`, `record`, `field`, `q`,
    `duplicates` (1/true includes repeated deliveries), `demo` (0/false leaves demo out).
    """
    zone = ZoneInfo(tz)
    values: dict = {}
    problems: list[str] = []

    def get(name: str) -> str | None:
        raw = params.get(name)
        if isinstance(raw, list):
            raw = raw[-1] if raw else None
        return raw.strip() if isinstance(raw, str) and raw.strip() else None

    for name, attr, end in (("from", "start", False), ("to", "end", True)):
        if (raw := get(name)) is not None:
            try:
                values[attr] = _parse_moment(raw, zone, end)
            except ValueError:
                problems.append(f"`{name}={raw}` is not a date (use YYYY-MM-DD)")
    for name, attr in (("user", "action_user_id"), ("record", "record_id")):
        if (raw := get(name)) is not None:
            try:
                values[attr] = int(raw)
            except ValueError:
                problems.append(f"`{name}={raw}` is not a number")
    for name, attr in (("entity", "entity"), ("action", "action"), ("field", "field"),
                       ("q", "text")):
        if (raw := get(name)) is not None:
            values[attr] = raw
    if (raw := get("duplicates")) is not None:
        values["include_duplicates"] = raw.lower() in ("1", "true", "yes", "on")
    if (raw := get("demo")) is not None:
        values["include_demo"] = raw.lower() not in ("0", "false", "no", "off")
    return ParsedFilter(EventFilter(**values), tuple(problems))


def distinct_values(con: duckdb.DuckDBPyConnection, column: str) -> list[str]:
    """Return the distinct entities or actions seen, for filter choices."""
    if column not in ("entity", "action"):
        raise ValueError(f"column must be entity or action, got {column!r}")
    return [r[0] for r in con.execute(
        f"SELECT DISTINCT {column} FROM events ORDER BY 1").fetchall()]


def count_events(con: duckdb.DuckDBPyConnection, flt: EventFilter) -> int:
    """Return exactly how many events match a filter (the Events page's own conditions)."""
    where, params = event_where(flt)
    return int(con.execute("SELECT count(*) FROM events e WHERE " + where,
                           params).fetchall()[0][0])


EXPORT_COLUMNS = (
    "e.id, e.received_at, e.entity, e.action, e.record_id, e.action_user_id, "
    "u.name AS user_name, e.account_id, e.webhook_id, e.webhook_creator_id, "
    "e.secondary_entity_id, e.duplicate_of, e.is_demo")


def export_events(con: duckdb.DuckDBPyConnection, flt: EventFilter,
                  limit: int = EXPORT_LIMIT, include_payload: bool = False,
                  tz: str | None = None) -> pd.DataFrame:
    """Return the events matching a filter (the Events page's), newest first, at most
    `limit` rows.

    With `tz`, received_at is converted to that time zone. With `include_payload`, the
    delivery body is added as a JSON text column.
    """
    where, params = event_where(flt)
    columns = EXPORT_COLUMNS + (", CAST(e.payload AS VARCHAR) AS payload"
                                if include_payload else "")
    # the filter runs on `events` alone before the join
    frame = con.execute(
        f"SELECT {columns} FROM (SELECT * FROM events e WHERE {where} "
        "ORDER BY received_at DESC, id DESC LIMIT ?) e "
        "LEFT JOIN users u ON u.id = e.action_user_id ORDER BY e.received_at DESC, e.id DESC",
        [*params, int(limit)]).fetchdf()
    if tz and not frame.empty:
        frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True).dt.tz_convert(tz)
    return frame


# -- the receiver ------------------------------------------------------------------------

def receiver_health(receiver_url: str, timeout: float = 1.5) -> dict:
    """GET the receiver's /healthz; return its body plus `reachable` and `error`.

    Never raises: an unreachable receiver is an answer (`reachable=False`), not an error.
    """
    url = receiver_url.rstrip("/") + "/healthz"
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        return {"reachable": False, "url": url, "error": type(exc).__name__}
    try:
        body = response.json()
    except ValueError:
        return {"reachable": False, "url": url,
                "error": f"answered {response.status_code} without a health report"}
    if not isinstance(body, dict):
        body = {}
    return {**body, "reachable": True, "url": url, "http_status": response.status_code,
            "error": None}


def format_bytes(size: float) -> str:
    """Return a size such as '12.3 MB'."""
    if size < 1024:
        return f"{int(size)} B"
    exponent = min(int(math.log(size, 1024)), 4)
    return f"{size / 1024 ** exponent:.1f} {('B', 'KB', 'MB', 'GB', 'TB')[exponent]}"
