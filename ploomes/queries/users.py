"""The Users page's queries: who did what, when, and which fields they change.

Counts leave out repeated deliveries of the same change (`duplicate_of`) unless asked
to include them. Distinct records per user (and per user and field) come from the
rollups stage 2 keeps (`user_records`, `user_fields`) when the range allows it exactly,
otherwise from the raw tables; both give the same numbers (tests/test_rollups.py).
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd

from ploomes.config import DEFAULT_TIMEZONE
from ploomes.queries.base import (
    DEFAULT_LIMIT,
    change_filters,
    changes_frame,
    dup_clause,
    frame,
    range_clause,
    tests_clause,
    time_range,
    user_clause,
    user_join,
)
from ploomes.queries.names import ALL_ACCOUNTS, AccountScope, account_clause, load_names

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


_USER_NAME = ("COALESCE(u.name, u0.name, CAST(e.action_user_id AS VARCHAR), "
              "'(no ActionUserId)')")
_USER_JOIN = user_join("e.action_user_id", "e.account_id")


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
        "WHERE name = 'derive') AND e.record_id IS NOT NULL AND NOT e.is_test" + where + dup
        + "), "
        "touched AS (SELECT action_user_id, count(*) AS records FROM ("
        "SELECT action_user_id FROM rolled UNION ALL SELECT p.action_user_id FROM pending p "
        "ANTI JOIN rolled r ON r.action_user_id IS NOT DISTINCT FROM p.action_user_id "
        "AND r.entity = p.entity AND r.record_id = p.record_id) GROUP BY 1)")
    return sql, params


def users_summary(con: duckdb.DuckDBPyConnection, since: datetime | None = None,
                  until: datetime | None = None, include_duplicates: bool = False,
                  rollups: bool = True, account: AccountScope = ALL_ACCOUNTS
                  ) -> pd.DataFrame:
    """Return one row per ActionUserId (of one account, or all), busiest first; test
    deliveries left out.

    Columns: action_user_id, user (name from the account's `users`, else the id),
    account_id, events, records, first_at, last_at. Distinct records come from
    `user_records` unless `until` is set (or `rollups` is False): the same numbers,
    counted on `events`.
    """
    where, params = range_clause(since, until, "e.received_at")
    scope, scope_params = account_clause(account, "e.account_id")
    where += scope + tests_clause(False, "e.is_test")
    params += scope_params
    dup = dup_clause(include_duplicates, "e.duplicate_of")
    if rollups and until is None:
        touched, touched_params = _records_rolled(since, include_duplicates, where, dup)
        touched_params += params
    else:
        touched, touched_params = "touched AS (" + _records_raw(where, dup) + ")", params
    # a user id is one account's: the account it acted in names it
    return frame(
        con, "WITH per_user AS (SELECT e.action_user_id, max(e.account_id) AS account_id, "
        "count(*) AS events, "
        "min(e.received_at) AS first_at, max(e.received_at) AS last_at FROM events e "
        "WHERE TRUE" + where + dup + " GROUP BY 1), " + touched + " "
        f"SELECT e.action_user_id, {_USER_NAME} AS user, e.account_id, e.events, "
        "coalesce(t.records, 0) AS records, e.first_at, e.last_at FROM per_user e "
        "LEFT JOIN touched t ON t.action_user_id IS NOT DISTINCT FROM e.action_user_id "
        f"{_USER_JOIN} ORDER BY e.events DESC, e.action_user_id",
        [*params, *touched_params])


def user_entity_actions(con: duckdb.DuckDBPyConnection, since: datetime | None = None,
                        until: datetime | None = None, include_duplicates: bool = False,
                        account: AccountScope = ALL_ACCOUNTS) -> pd.DataFrame:
    """Count events per user, entity and action (test deliveries left out).

    Columns: action_user_id, user, entity, action, events.
    """
    where, params = range_clause(since, until, "e.received_at")
    scope, scope_params = account_clause(account, "e.account_id")
    # count first, name the few groups after
    return frame(
        con, "WITH counts AS (SELECT e.action_user_id, max(e.account_id) AS account_id, "
        "e.entity, e.action, count(*) AS events "
        "FROM events e WHERE NOT e.is_test" + where + scope
        + dup_clause(include_duplicates, "e.duplicate_of")
        + " GROUP BY e.action_user_id, e.entity, e.action) "
        f"SELECT e.action_user_id, {_USER_NAME} AS user, e.entity, e.action, "
        f"e.events FROM counts e {_USER_JOIN} "
        "ORDER BY e.action_user_id, e.entity, e.action", [*params, *scope_params])


def user_heatmap(con: duckdb.DuckDBPyConnection, user_id: int | None,
                 tz: str = DEFAULT_TIMEZONE, since: datetime | None = None,
                 until: datetime | None = None, include_duplicates: bool = False,
                 account: AccountScope = ALL_ACCOUNTS) -> pd.DataFrame:
    """Count one user's events per weekday and hour of day in local time `tz`.

    Returns the full 7 × 24 grid. Columns: weekday (1 = Monday … 7 = Sunday),
    weekday_name, hour (0–23), events.
    """
    where, params = range_clause(since, until)
    user_sql, user_params = user_clause(user_id)
    scope, scope_params = account_clause(account)
    found = con.execute(
        "SELECT isodow(timezone(?, received_at)) AS weekday, "
        "hour(timezone(?, received_at)) AS hour, count(*) AS events FROM events "
        "WHERE NOT is_test" + user_sql + where + scope + dup_clause(include_duplicates)
        + " GROUP BY ALL",
        [tz, tz, *user_params, *params, *scope_params]).fetchall()
    counts = {(int(d), int(h)): int(n) for d, h, n in found}
    grid = [{"weekday": d, "weekday_name": WEEKDAYS[d - 1], "hour": h,
             "events": counts.get((d, h), 0)} for d in range(1, 8) for h in range(24)]
    return pd.DataFrame(grid)


def user_top_fields(con: duckdb.DuckDBPyConnection, user_id: int | None, limit: int = 10,
                    since: datetime | None = None, until: datetime | None = None,
                    rollups: bool = True, account: AccountScope = ALL_ACCOUNTS
                    ) -> pd.DataFrame:
    """Return the fields one user changes most (bookkeeping and duplicates left out).

    Columns: entity, field, label (the field's name as Ploomes shows it, from the user's
    account: `account`, else the account of the user's events), changes, records. All
    time comes from `user_fields`; a range (or `rollups=False`) counts on
    `field_changes`, with the same result.
    """
    if rollups and since is None and until is None:
        user_sql, params = user_clause(user_id, "c.action_user_id")
        agg = ("SELECT c.entity, c.field, c.changes, c.records FROM user_fields c "
               "WHERE TRUE" + user_sql)
    else:
        where, params = range_clause(since, until, "c.received_at")
        user_sql, user_params = user_clause(user_id, "c.action_user_id")
        params = [*user_params, *params]
        agg = ("SELECT c.entity, c.field, count(*) AS changes, "
               "count(DISTINCT c.record_id) AS records FROM field_changes c "
               "WHERE NOT c.bookkeeping AND NOT c.is_duplicate" + user_sql + where
               + " GROUP BY c.entity, c.field")
    # count first, name the few groups after
    top = frame(
        con, f"WITH agg AS ({agg}) SELECT a.entity, a.field, a.changes, a.records FROM agg a "
        "ORDER BY a.changes DESC, a.entity, a.field LIMIT ?", [*params, int(limit)])
    if account == ALL_ACCOUNTS:
        user_sql, user_params = user_clause(user_id)
        found = con.execute("SELECT account_id FROM events WHERE true" + user_sql
                            + " LIMIT 1", user_params).fetchall()
        account = found[0][0] if found else None
    names = load_names(con, account if isinstance(account, int) else None)
    top.insert(2, "label", pd.Series([names.field(e, f) for e, f in
                                      zip(top["entity"], top["field"], strict=True)],
                                     index=top.index, dtype=object))
    return top


def user_changes(con: duckdb.DuckDBPyConnection, action_user_id: int, *,
                 start: datetime | None = None, end: datetime | None = None,
                 entity: str | None = None, limit: int = DEFAULT_LIMIT,
                 include_duplicates: bool = False,
                 include_bookkeeping: bool = False) -> pd.DataFrame:
    """List the field changes one user made (by ActionUserId), newest first."""
    where = ["fc.action_user_id = ?", *change_filters(include_duplicates, include_bookkeeping)]
    params: list = [int(action_user_id)]
    if entity:
        where.append("fc.entity = ?")
        params.append(entity)
    time_range(where, params, "fc.received_at", start, end)
    return changes_frame(con, where, params, limit)


def user_names(con: duckdb.DuckDBPyConnection, account_id: int | None) -> dict[int, str]:
    """Return {user id: name} of one account (and the unknown account's) directory."""
    return load_names(con, account_id).users


def field_names(con: duckdb.DuckDBPyConnection, account_id: int | None) -> dict[str, str]:
    """Return {custom field key: name} of one account (and the unknown account's)."""
    return load_names(con, account_id).fields
