"""Store-wide numbers: the Overview's headline figures and timeline, the Status page's
table counts and positions, and per-subscription delivery statistics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd

from ploomes.config import DEFAULT_TIMEZONE
from ploomes.queries.base import aware_now, dup_clause, frame
from ploomes.store import fetch_row

BUCKETS = ("hour", "day", "week")
TIMELINE_GROUPS = {"entity": "entity", "action": "action"}
STATS_COLUMNS = ["webhook_id", "deliveries_24h", "deliveries_30d", "last_delivery",
                 "median_gap_seconds", "gaps_30d"]


def event_count(con: duckdb.DuckDBPyConnection) -> int:
    """Return how many events the store holds (duplicates and demo rows included)."""
    return int(fetch_row(con, "SELECT count(*) FROM events")[0])


def last_delivery_at(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """Return when the newest delivery was received, or None if there is none."""
    return fetch_row(con, "SELECT max(received_at) FROM events")[0]


def overview_summary(con: duckdb.DuckDBPyConnection, now: datetime | None = None,
                     include_duplicates: bool = False) -> pd.DataFrame:
    """Return the headline numbers for the last 24 h and 7 d, one row per window.

    Columns: window, since, deliveries, records_changed, active_users, duplicates,
    refused (rejected deliveries plus failed authentications).
    """
    now = aware_now(now)
    rows = []
    for label, span in (("24 h", timedelta(hours=24)), ("7 d", timedelta(days=7))):
        since = now - span
        dup = dup_clause(include_duplicates)
        deliveries, records, users, duplicates = fetch_row(
            con, "SELECT count(*) FILTER (WHERE TRUE" + dup + "), "
            "count(DISTINCT (entity, record_id)) FILTER (WHERE record_id IS NOT NULL" + dup
            + "), count(DISTINCT action_user_id) FILTER (WHERE TRUE" + dup + "), "
            "count(*) FILTER (WHERE duplicate_of IS NOT NULL) "
            "FROM events WHERE received_at >= ? AND received_at <= ?",
            [since, now])
        refused = fetch_row(
            con, "SELECT (SELECT count(*) FROM rejected_deliveries "
            "        WHERE received_at >= ? AND received_at <= ?) + "
            "       (SELECT count(*) FROM auth_failures "
            "        WHERE received_at >= ? AND received_at <= ?)",
            [since, now, since, now])[0]
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
                     "rows": int(fetch_row(con, f"SELECT count(*) FROM {table}")[0])})
    return pd.DataFrame(rows)


def ingest_positions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return how far ingest got in each journal (columns: name, last_seq, updated_at)."""
    return frame(
        con, "SELECT name, last_seq, updated_at FROM ingest_state ORDER BY name")


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
    return frame(
        con, f"SELECT date_trunc(?, timezone(?, received_at)) AS bucket, {column} AS \"group\", "
        "count(*) AS events FROM events WHERE received_at >= ? AND received_at < ?"
        + dup_clause(include_duplicates) + " GROUP BY ALL ORDER BY bucket, \"group\"",
        [bucket, tz, start, end])


def last_synced_at(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """Return when the directory was last synced, or None if never."""
    row = con.execute("SELECT greatest((SELECT max(synced_at) FROM users), "
                      "(SELECT max(synced_at) FROM fields))").fetchone()
    return row[0] if row else None


def webhook_stats(con: duckdb.DuckDBPyConnection, now: datetime | None = None,
                  history_days: int = 30, include_demo: bool = False) -> pd.DataFrame:
    """Return, per WebhookId seen in the store, deliveries in 24 h and 30 days, the last
    delivery, and the median gap between distinct deliveries over the last 30 days."""
    now = now or datetime.now(UTC)
    day_ago = now - timedelta(hours=24)
    history_start = now - timedelta(days=history_days)
    demo = None if include_demo else False
    totals = frame(
        con, """
        SELECT webhook_id,
               count(*) FILTER (WHERE received_at > ?) AS deliveries_24h,
               count(*) FILTER (WHERE received_at > ?) AS deliveries_30d,
               max(received_at) AS last_delivery
        FROM events
        WHERE webhook_id IS NOT NULL AND received_at <= ?
          AND (?::BOOLEAN IS NULL OR is_demo = ?::BOOLEAN)
        GROUP BY webhook_id
        """, [day_ago, history_start, now, demo, demo])
    # A repeat of a delivery to the same subscription is not a new arrival: leaving it in
    # would put near-zero gaps into the median. A repeat seen through another
    # subscription is that subscription's own delivery and stays.
    gaps = frame(
        con, """
        WITH arrivals AS (
            SELECT e.webhook_id, e.received_at
            FROM events e LEFT JOIN events d ON d.id = e.duplicate_of
            WHERE e.webhook_id IS NOT NULL AND e.received_at > ? AND e.received_at <= ?
              AND (?::BOOLEAN IS NULL OR e.is_demo = ?::BOOLEAN)
              AND (d.id IS NULL OR d.webhook_id IS DISTINCT FROM e.webhook_id)
        ), spaced AS (
            SELECT webhook_id,
                   epoch(received_at) - epoch(lag(received_at) OVER (
                       PARTITION BY webhook_id ORDER BY received_at)) AS gap
            FROM arrivals
        )
        SELECT webhook_id, median(gap) AS median_gap_seconds, count(gap) AS gaps_30d
        FROM spaced WHERE gap IS NOT NULL GROUP BY webhook_id
        """, [history_start, now, demo, demo])
    stats = totals.merge(gaps, on="webhook_id", how="left")
    stats["gaps_30d"] = stats["gaps_30d"].fillna(0).astype("int64")
    for column in ("webhook_id", "deliveries_24h", "deliveries_30d"):
        stats[column] = stats[column].astype("int64")
    return stats[STATS_COLUMNS].sort_values("webhook_id").reset_index(drop=True)


def demo_count(con: duckdb.DuckDBPyConnection) -> int:
    """Return how many demo events the store holds."""
    return int(con.execute("SELECT count(*) FROM events WHERE is_demo").fetchall()[0][0])
