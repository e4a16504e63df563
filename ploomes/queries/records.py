"""Queries about records: a record's events and history, its state at a moment, record
search, field changes across records, and continuity gaps explained."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pandas as pd

from ploomes.i18n import _
from ploomes.model.state import merge_state
from ploomes.queries.base import (
    CHANGE_COLUMNS,
    CHANGE_FROM,
    DEFAULT_LIMIT,
    TEXT_SEARCH_SECONDS,
    change_filters,
    changes_frame,
    clamp_limit,
    event_accounts,
    frame,
    ilike,
    json_text,
    label_changes,
    newest_first,
    normalized,
    tests_clause,
    time_range,
    user_join,
    user_label,
    utc,
)
from ploomes.queries.display import add_display_columns
from ploomes.queries.names import NamesCache
from ploomes.store import fetch_row


def field_changes_of(con: duckdb.DuckDBPyConnection, field_path: str, *,
                     entity: str | None = None, new_value: object = ...,
                     start: datetime | None = None, end: datetime | None = None,
                     limit: int = DEFAULT_LIMIT, include_duplicates: bool = False,
                     include_bookkeeping: bool = True) -> pd.DataFrame:
    """List every change of one field across records, newest first (optionally to a value)."""
    where = ["fc.field = ?", *change_filters(include_duplicates, include_bookkeeping)]
    params: list = [field_path]
    if entity:
        where.append("fc.entity = ?")
        params.append(entity)
    if new_value is not ...:
        # stored values are compact JSON text (ingest's to_json), so text equality is exact
        where.append("CAST(fc.new_value AS VARCHAR) = ?")
        params.append(json_text(new_value))
    time_range(where, params, "fc.received_at", start, end)
    return changes_frame(con, where, params, limit)


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
    sides = {name: ilike(f"CAST(fc.{name}_value AS VARCHAR)", text)[0]
             for name in ("old", "new")}
    pattern = ilike("", text)[1]
    where = change_filters(include_duplicates, include_bookkeeping)
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
    rows_sql = (f"SELECT {CHANGE_COLUMNS} {CHANGE_FROM} WHERE {{window}} AND "
                + " AND ".join(where)
                + " ORDER BY fc.received_at DESC, fc.event_id DESC, fc.rowid LIMIT ?")
    found = newest_first(con, rows_sql, params, "field_changes", "received_at",
                          clamp_limit(limit), start, end, seconds)
    names = [d[0] for d in con.execute(
        f"SELECT {CHANGE_COLUMNS} {CHANGE_FROM} LIMIT 0").description]
    frame = label_changes(con, normalized(pd.DataFrame.from_records(found.rows,
                                                                     columns=names)))
    frame.attrs["complete"] = found.complete
    frame.attrs["searched_since"] = found.searched_since
    return frame


def record_events(con: duckdb.DuckDBPyConnection, entity: str, record_id: int, *,
                  newest_first: bool = False, include_duplicates: bool = False,
                  include_tests: bool = False) -> pd.DataFrame:
    """List the events of one record, one row each, with the fields they changed (named
    from each event's account)."""
    order = "DESC" if newest_first else "ASC"
    dup = "" if include_duplicates else "AND e.duplicate_of IS NULL"
    sql = f"""
        WITH ev AS (
            SELECT id, received_at, action, action_user_id, account_id, webhook_id,
                   duplicate_of, is_demo, is_test
            FROM events e WHERE e.entity = ? AND e.record_id = ? {dup}
                 {tests_clause(include_tests, "e.is_test")}
        ), ch AS (
            SELECT fc.event_id, list(fc.field ORDER BY fc.rowid) AS fields, count(*) AS changes
            FROM field_changes fc
            WHERE fc.entity = ? AND fc.record_id = ? AND NOT fc.bookkeeping
            GROUP BY fc.event_id
        )
        SELECT ev.id AS event_id, ev.received_at, ev.action, ev.action_user_id,
               {user_label("ev.action_user_id")} AS user_name, ev.account_id, ev.webhook_id,
               ev.duplicate_of, ev.is_demo, ev.is_test, coalesce(ch.changes, 0) AS changes,
               coalesce(ch.fields, []) AS changed_paths
        FROM ev LEFT JOIN ch ON ch.event_id = ev.id
        {user_join("ev.action_user_id", "ev.account_id")}
        ORDER BY ev.received_at {order}, ev.id {order}
    """
    rows = frame(con, sql, [entity, int(record_id), entity, int(record_id)])
    names = NamesCache(con)
    rows["changed_paths"] = pd.Series([list(p) for p in rows["changed_paths"]],
                                      index=rows.index, dtype=object)
    rows["changed_fields"] = pd.Series(
        [", ".join(names(a).field(entity, p) for p in paths)
         for a, paths in zip(rows["account_id"], rows["changed_paths"], strict=True)],
        index=rows.index, dtype=object)
    return rows


def record_history(con: duckdb.DuckDBPyConnection, entity: str, record_id: int, *,
                   newest_first: bool = True, include_duplicates: bool = False,
                   include_bookkeeping: bool = False, include_tests: bool = False
                   ) -> pd.DataFrame:
    """List a record's events with their field changes: one row per change (or per event
    that changed nothing shown), newest or oldest first, fields and ids named from the
    events' account (`field_label`, `before`, `after`)."""
    order = "DESC" if newest_first else "ASC"
    dup = "" if include_duplicates else "AND e.duplicate_of IS NULL"
    book = "" if include_bookkeeping else "AND NOT fc.bookkeeping"
    sql = f"""
        WITH ev AS (
            SELECT id, received_at, action, action_user_id, account_id, webhook_id,
                   duplicate_of, is_demo
            FROM events e WHERE e.entity = ? AND e.record_id = ? {dup}
                 {tests_clause(include_tests, "e.is_test")}
        ), fc AS (
            SELECT *, rowid AS seq FROM field_changes fc
            WHERE fc.entity = ? AND fc.record_id = ? {book}
        )
        SELECT ev.id AS event_id, ev.received_at, ev.action, ev.action_user_id,
               {user_label("ev.action_user_id")} AS user_name, ev.account_id, ev.webhook_id,
               ev.duplicate_of, ev.is_demo,
               fc.field, fc.summary,
               CAST(fc.old_value AS VARCHAR) AS old_value,
               CAST(fc.new_value AS VARCHAR) AS new_value,
               fc.old_known, fc.new_known, fc.kind, fc.bookkeeping,
               CAST(fc.added AS VARCHAR) AS added, CAST(fc.removed AS VARCHAR) AS removed
        FROM ev LEFT JOIN fc ON fc.event_id = ev.id
        {user_join("ev.action_user_id", "ev.account_id")}
        ORDER BY ev.received_at {order}, ev.id {order}, fc.seq
    """
    rows = frame(con, sql, [entity, int(record_id), entity, int(record_id)])
    names = NamesCache(con)
    rows["field_label"] = pd.Series(
        [None if f is None else names(a).field(entity, f)
         for a, f in zip(rows["account_id"], rows["field"], strict=True)],
        index=rows.index, dtype=object)
    # a record's events are one account's: name its values with the first one's names
    add_display_columns(con, rows, names(rows["account_id"].iloc[0] if len(rows) else None),
                        entity)
    return rows


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
    count, last_id, last_action, last_at = fetch_row(
        con, "SELECT count(*), max(id), arg_max(action, id), arg_max(received_at, id) "
        "FROM events WHERE entity = ? AND record_id = ? AND duplicate_of IS NULL "
        "AND NOT is_test", [entity, record_id])
    if not count or (upto_event is not None and upto_event < last_id):
        return None
    kept = con.execute(
        "SELECT CAST(state AS VARCHAR), last_event_id, deleted FROM record_state "
        "WHERE entity = ? AND record_id = ?", [entity, record_id]).fetchone()
    if kept is None or kept[1] != last_id:
        return None
    return RecordSnapshot(entity, record_id, json.loads(kept[0]), int(last_id),
                          utc(last_at), last_action, bool(kept[2]), int(count))


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
    where = ["entity = ?", "record_id = ?", "duplicate_of IS NULL", "NOT is_test"]
    params: list = [entity, int(record_id)]
    if at is not None:
        where.append("received_at <= ?")
        params.append(utc(at))
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
    return RecordSnapshot(entity, int(record_id), state, last[0], utc(last[1]), last[2],
                          deleted, len(rows))


def find_records(con: duckdb.DuckDBPyConnection, *, entity: str | None = None,
                 record_id: int | None = None, text: str | None = None,
                 include_deleted: bool = True, limit: int = 50) -> pd.DataFrame:
    """Find records by entity and id, or by text in their Name/LegalName/Title."""
    where: list[str] = []
    params: list = []
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
            found = [ilike(f"(s.state->>'$.{key}')", text)
                     for key in ("Name", "LegalName", "Title")]
            where.append("(" + " OR ".join(cond for cond, _ in found) + ")")
            params += [pattern for _, pattern in found]
        else:
            # Name, LegalName and Title, kept as text by the ingest path (schema v3)
            cond, pattern = ilike("s.names", text)
            where.append(cond)
            params.append(pattern)
    sql = f"""
        SELECT s.entity, s.record_id, s.title,
               s.last_event_id, s.last_received_at, s.deleted, s.is_demo
        FROM record_state s WHERE {' AND '.join(where) or 'true'}
        ORDER BY s.last_received_at DESC, s.entity, s.record_id LIMIT ?
    """
    return frame(con, sql, [*params, clamp_limit(limit)])


def explain_gap(fields: list[dict], previous_event_id: int, event_id: int) -> str:
    """Say in words what a gap means, e.g. 'Old said StatusId was 1 but …'."""
    parts = []
    for item in fields:
        label = item.get("label") or item["field"]
        parts.append(_("{field} was {found} but our last delivery said {expected}").format(
            field=label, found=json_text(item.get("found")),
            expected=json_text(item.get("expected"))))
    said = "; ".join(parts) if parts else _("the record differed from what we knew")
    return _("Old said {said}: a change was missed between event {previous} and event {event}."
             ).format(said=said, previous=previous_event_id, event=event_id)


def continuity_gaps(con: duckdb.DuckDBPyConnection, entity: str | None = None,
                    record_id: int | None = None, *, event_id: int | None = None,
                    start: datetime | None = None, end: datetime | None = None,
                    include_demo: bool = True, limit: int = DEFAULT_LIMIT) -> pd.DataFrame:
    """List continuity gaps (of one record, one event, or all), newest first, explained
    (fields named from the account of the gap's event)."""
    where: list[str] = []
    params: list = []
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
    time_range(where, params, "g.received_at", start, end)
    sql = f"""
        SELECT g.event_id, g.previous_event_id, g.received_at, g.entity, g.record_id,
               CAST(g.fields AS VARCHAR) AS fields, g.is_demo
        FROM continuity_gaps g WHERE {' AND '.join(where) or 'true'}
        ORDER BY g.received_at DESC, g.event_id DESC LIMIT ?
    """
    df = frame(con, sql, [*params, clamp_limit(limit)])
    # fields named from the account of the gap's event
    accounts = event_accounts(con, [int(i) for i in df["event_id"]]) if len(df) else {}
    directory = NamesCache(con)
    explained, names, parsed = [], [], []
    for row in df.itertuples(index=False):
        items = json.loads(row.fields)
        named = directory(accounts.get(int(row.event_id)))
        for item in items:
            item["label"] = named.field(row.entity, item["field"])
        parsed.append(items)
        names.append(", ".join(item["label"] for item in items))
        explained.append(explain_gap(items, row.previous_event_id, row.event_id))
    df["fields"] = pd.Series(parsed, index=df.index, dtype=object)
    df["field_labels"] = pd.Series(names, index=df.index, dtype=object)
    df["explanation"] = pd.Series(explained, index=df.index, dtype=object)
    return df
