"""Store-wide numbers: the Overview's headline figures and timeline, the Status page's
table counts, positions and refused requests, the accounts seen, and per-subscription
delivery statistics. Test deliveries (the Webhooks page's) are left out of every count
and statistic here except `event_count`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd

from ploomes.config import DEFAULT_TIMEZONE
from ploomes.i18n import N_
from ploomes.queries.base import aware_now, dup_clause, frame
from ploomes.queries.names import ALL_ACCOUNTS, AccountScope, account_clause
from ploomes.store import fetch_row

BUCKETS = ("hour", "day", "week")
TIMELINE_GROUPS = {"entity": "entity", "action": "action"}
STATS_COLUMNS = ["webhook_id", "deliveries_24h", "deliveries_30d", "last_delivery",
                 "median_gap_seconds", "gaps_30d"]


def event_count(con: duckdb.DuckDBPyConnection) -> int:
    """Return how many events the store holds (duplicates and demo rows included)."""
    return int(fetch_row(con, "SELECT count(*) FROM events")[0])


def last_delivery_at(con: duckdb.DuckDBPyConnection, account: AccountScope = ALL_ACCOUNTS
                     ) -> datetime | None:
    """Return when the newest delivery (not a test) was received, or None."""
    scope, params = account_clause(account)
    return fetch_row(con, "SELECT max(received_at) FROM events WHERE NOT is_test" + scope,
                     params)[0]


def overview_summary(con: duckdb.DuckDBPyConnection, now: datetime | None = None,
                     include_duplicates: bool = False, account: AccountScope = ALL_ACCOUNTS
                     ) -> pd.DataFrame:
    """Return the headline numbers for the last 24 h and 7 d, one row per window.

    Columns: window, since, deliveries, records_changed, active_users, duplicates (of
    one account, or all; test deliveries left out), refused (refused deliveries plus
    failed key attempts, whatever their account: a refused request has none),
    refused_deliveries, key_attempts.
    """
    now = aware_now(now)
    scope, scope_params = account_clause(account)
    rows = []
    for label, span in (("24 h", timedelta(hours=24)), ("7 d", timedelta(days=7))):
        since = now - span
        dup = dup_clause(include_duplicates)
        deliveries, records, users, duplicates = fetch_row(
            con, "SELECT count(*) FILTER (WHERE TRUE" + dup + "), "
            "count(DISTINCT (entity, record_id)) FILTER (WHERE record_id IS NOT NULL" + dup
            + "), count(DISTINCT action_user_id) FILTER (WHERE TRUE" + dup + "), "
            "count(*) FILTER (WHERE duplicate_of IS NOT NULL) "
            "FROM events WHERE received_at >= ? AND received_at <= ? AND NOT is_test" + scope,
            [since, now, *scope_params])
        refused, attempts = fetch_row(
            con, "SELECT (SELECT count(*) FROM rejected_deliveries "
            "        WHERE received_at >= ? AND received_at <= ?), "
            "       (SELECT count(*) FROM auth_failures "
            "        WHERE received_at >= ? AND received_at <= ?)",
            [since, now, since, now])
        rows.append({"window": label, "since": since, "deliveries": int(deliveries),
                     "records_changed": int(records), "active_users": int(users),
                     "duplicates": int(duplicates), "refused": int(refused) + int(attempts),
                     "refused_deliveries": int(refused), "key_attempts": int(attempts)})
    return pd.DataFrame(rows).set_index("window")


def table_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return the row count of each public table (columns: table, rows)."""
    tables = ("events", "field_changes", "continuity_gaps", "rejected_deliveries",
              "auth_failures", "users", "fields", "lookups", "accounts")
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
             include_duplicates: bool = False, account: AccountScope = ALL_ACCOUNTS
             ) -> pd.DataFrame:
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
    scope, scope_params = account_clause(account)
    return frame(
        con, f"SELECT date_trunc(?, timezone(?, received_at)) AS bucket, {column} AS \"group\", "
        "count(*) AS events FROM events WHERE received_at >= ? AND received_at < ? "
        "AND NOT is_test" + scope
        + dup_clause(include_duplicates) + " GROUP BY ALL ORDER BY bucket, \"group\"",
        [bucket, tz, start, end, *scope_params])


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
        WHERE webhook_id IS NOT NULL AND received_at <= ? AND NOT is_test
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
              AND NOT e.is_test AND (?::BOOLEAN IS NULL OR e.is_demo = ?::BOOLEAN)
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


# What each refused count includes, in the words the Status page and
# `python -m ploomes status` both print.
# marked for the catalog: pages show them translated, the command line in English
REFUSED_DELIVERIES_MEANING = N_(
    "refused deliveries: requests with an accepted validation key that were not a delivery "
    "(HTTP 400: not JSON, not a Ploomes body…) or too large (413); each is kept with its "
    "body (up to 64 KiB)")
KEY_ATTEMPTS_MEANING = N_(
    "failed key attempts: requests with a missing or wrong validation key (HTTP 401); only "
    "the newest 1,000 are kept, without their body")


def refused_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Return how many refused deliveries and failed key attempts the store keeps."""
    deliveries, attempts = fetch_row(
        con, "SELECT (SELECT count(*) FROM rejected_deliveries), "
        "(SELECT count(*) FROM auth_failures)")
    return {"refused_deliveries": int(deliveries), "failed_key_attempts": int(attempts)}


REFUSED_COLUMNS = ["received_at", "kind", "source", "status", "reason", "raw_size", "raw",
                   "journal_seq"]


def refused_requests(con: duckdb.DuckDBPyConnection, limit: int = 500) -> pd.DataFrame:
    """Return refused deliveries and failed key attempts, newest first, at most `limit`.

    Columns: received_at, kind (`delivery` | `key`), source (the client's address),
    status (HTTP answer), reason, raw_size (bytes of the body; NULL for a key attempt),
    raw (the first 64 KiB of the body as bytes; NULL for a key attempt), journal_seq.
    """
    return frame(con, """
        SELECT received_at, kind, source, status, reason, raw_size, raw, journal_seq FROM (
            SELECT received_at, 'delivery' AS kind, source, status, reason, raw_size, raw,
                   id AS journal_seq FROM rejected_deliveries
            UNION ALL
            SELECT received_at, 'key', source, 401, reason, NULL, NULL, NULL
            FROM auth_failures)
        ORDER BY received_at DESC, journal_seq DESC NULLS LAST LIMIT ?
    """, [int(limit)])


def accounts_seen(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return the AccountIds the stored deliveries carry, most recent first.

    Columns: account_id (NULL: deliveries without one), name (from `accounts`), events,
    last_at, demo (every delivery of the account is demo data), tests (every delivery
    of it is a test).
    """
    return frame(con, """
        WITH seen AS (
            SELECT account_id, count(*) AS events, max(received_at) AS last_at,
                   bool_and(is_demo) AS demo, bool_and(is_test) AS tests
            FROM events GROUP BY account_id)
        SELECT s.account_id, a.name, s.events, s.last_at, s.demo, s.tests FROM seen s
        LEFT JOIN (SELECT id, any_value(name) AS name FROM accounts
                   WHERE name IS NOT NULL GROUP BY id) a ON a.id = s.account_id
        ORDER BY s.demo, s.last_at DESC, s.account_id
    """)


def synced_account(con: duckdb.DuckDBPyConnection) -> int | None:
    """Return the AccountId of the most recent directory sync, or None."""
    found = con.execute("SELECT id FROM accounts WHERE synced_at IS NOT NULL "
                        "ORDER BY synced_at DESC LIMIT 1").fetchall()
    return int(found[0][0]) if found else None
