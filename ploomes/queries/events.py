"""The Events page's queries: one filter, its pages, one event's detail, its export.

`EventFilter` is translated to SQL in one place (`_conditions`), for `events` or, when
a filter names a field and no text, for `field_changes` alone: it repeats every event
column a filter needs except the payload, and a field appears at most once per event.
A free-text filter over payloads reads the newest events first, window by window, and
stops once the page is full or its time is up, saying so (`EventsPage.exact`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import duckdb
import pandas as pd

from ploomes.config import DEFAULT_TIMEZONE
from ploomes.i18n import _
from ploomes.model.diff import diff_record
from ploomes.queries.base import (
    CHANGE_COLUMNS,
    CHANGE_FROM,
    MAX_PAGE_SIZE,
    TEXT_SEARCH_SECONDS,
    TITLE_SQL,
    clamp_limit,
    frame,
    ilike,
    json_text,
    newest_first,
    time_range,
    user_join,
    user_label,
    utc,
)
from ploomes.queries.display import add_display_columns
from ploomes.queries.names import ALL_ACCOUNTS, AccountScope, NamesCache, load_names
from ploomes.queries.records import continuity_gaps
from ploomes.store import fetch_row

EXPORT_LIMIT = 100_000  # rows in one CSV/Parquet export


@dataclass(frozen=True)
class EventFilter:
    """What the Events page narrows events to; None means "any".

    `account`: one AccountId (None: deliveries without one) or ALL_ACCOUNTS. Test
    deliveries (the Webhooks page's) are left out unless `include_tests`.
    """

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
    include_tests: bool = False
    account: AccountScope = ALL_ACCOUNTS


def _conditions(f: EventFilter, table: str = "events") -> tuple[str, list]:
    """Return the WHERE conditions a filter means over `events e` or `field_changes fc`
    (the latter only for a filter with a field, no text and every account; test
    deliveries have no field changes), and their parameters."""
    on_events = table == "events"
    a = "e" if on_events else "fc"
    where: list[str] = []
    params: list = []
    if not on_events:
        where.append("fc.field = ?")
        params.append(f.field)
    if not f.include_duplicates:
        where.append("e.duplicate_of IS NULL" if on_events else "NOT fc.is_duplicate")
    if not f.include_demo:
        where.append(f"NOT {a}.is_demo")
    if on_events and not f.include_tests:
        where.append("NOT e.is_test")
    if on_events and f.account != ALL_ACCOUNTS:
        if f.account is None:
            where.append("e.account_id IS NULL")
        else:
            where.append("e.account_id = ?")
            params.append(int(f.account))
    time_range(where, params, f"{a}.received_at", f.start, f.end)
    for column, value in (("entity", f.entity), ("action", f.action)):
        if value:
            where.append(f"{a}.{column} = ?")
            params.append(value)
    for column, number in (("action_user_id", f.action_user_id), ("record_id", f.record_id)):
        if number is not None:
            where.append(f"{a}.{column} = ?")
            params.append(int(number))
    if on_events and f.field:
        # the same filter on field_changes, whose scan then prunes by time and entity too
        sub, sub_params = _conditions(replace(f, account=ALL_ACCOUNTS), "field_changes")
        where.append(f"e.id IN (SELECT fc.event_id FROM field_changes fc WHERE {sub})")
        params += sub_params
    if on_events and f.text:
        cond, pattern = ilike("CAST(e.payload AS VARCHAR)", f.text)
        where.append(cond)
        params.append(pattern)
    return " AND ".join(where) or "true", params


def _keys(f: EventFilter) -> tuple[str, str, list]:
    """Return (FROM clause, WHERE clause, params) selecting the filter's events as
    `id, received_at`."""
    if f.field and not f.text and f.account == ALL_ACCOUNTS:
        where, params = _conditions(f, "field_changes")
        source = (f"(SELECT fc.event_id AS id, fc.received_at FROM field_changes fc "
                  f"WHERE {where}) e")
        return source, "true", params
    where, params = _conditions(f)
    return "events e", where, params


def count_events(con: duckdb.DuckDBPyConnection, f: EventFilter) -> int:
    """Count the events a filter selects."""
    source, where, params = _keys(f)
    return int(fetch_row(con, f"SELECT count(*) FROM {source} WHERE {where}", params)[0])


def list_events(con: duckdb.DuckDBPyConnection, f: EventFilter, *, limit: int = 50,
                offset: int = 0) -> pd.DataFrame:
    """Return one page of events (newest first), named, with the fields they changed."""
    source, where, params = _keys(f)
    # sort and cut on narrow columns; wide JSON is read for the page's rows only
    keys = (f"SELECT e.id FROM {source} WHERE {where} "
            "ORDER BY e.received_at DESC, e.id DESC LIMIT ? OFFSET ?")
    return _event_rows(con, keys, [*params, clamp_limit(limit, MAX_PAGE_SIZE), max(0, int(offset))])


def _event_rows(con: duckdb.DuckDBPyConnection, keys: str, params: list) -> pd.DataFrame:
    """Return the Events table's rows for the event ids `keys` selects, newest first.

    `changed_fields` names the fields each event changed (bookkeeping left out), from the
    event's own account; `changed_paths` lists their paths.
    """
    sql = f"""
        WITH keys AS ({keys}), page AS (
            SELECT e.id, e.received_at, e.entity, e.action, e.record_id, e.action_user_id,
                   e.account_id, e.webhook_id, e.duplicate_of, e.is_demo, e.is_test, e.old,
                   e.new
            FROM events e WHERE e.id IN (SELECT id FROM keys)
        ), ch AS (
            SELECT fc.event_id, list(fc.field ORDER BY fc.rowid) AS fields
            FROM field_changes fc
            WHERE fc.event_id IN (SELECT id FROM page) AND NOT fc.bookkeeping
              -- a range lets DuckDB skip row groups (event_id grows with insertion)
              AND fc.event_id BETWEEN (SELECT min(id) FROM page) AND (SELECT max(id) FROM page)
            GROUP BY fc.event_id
        )
        SELECT page.id AS event_id, page.received_at, page.entity, page.action,
               page.record_id, {TITLE_SQL.format(s="coalesce(page.new, page.old)")} AS title,
               page.action_user_id, {user_label("page.action_user_id")} AS user_name,
               page.account_id, coalesce(ch.fields, []) AS changed_paths, page.webhook_id,
               page.duplicate_of, page.is_demo, page.is_test
        FROM page LEFT JOIN ch ON ch.event_id = page.id
        {user_join("page.action_user_id", "page.account_id")}
        ORDER BY page.received_at DESC, page.id DESC
    """
    rows = frame(con, sql, params)
    names = NamesCache(con)
    rows["changed_paths"] = pd.Series([list(p) for p in rows["changed_paths"]],
                                      index=rows.index, dtype=object)
    rows["changed_fields"] = pd.Series(
        [", ".join(names(a).field(e, p) for p in paths)
         for a, e, paths in zip(rows["account_id"], rows["entity"], rows["changed_paths"],
                                strict=True)], index=rows.index, dtype=object)
    return rows


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
    where, params = _conditions(f)
    found = newest_first(con, f"""
        SELECT e.id FROM events e WHERE {{window}} AND {where}
        ORDER BY e.received_at DESC, e.id DESC LIMIT ?
    """, params, "events", "received_at", page * page_size + 1, f.start, f.end, seconds)
    total = len(found.rows)
    page = min(page, max(1, -(-total // page_size)))
    ids = [r[0] for r in found.rows[(page - 1) * page_size:page * page_size]]
    rows = _event_rows(con, "SELECT unnest(?::BIGINT[]) AS id", [ids])
    return EventsPage(rows, total, page, page_size, found.complete, found.searched_since)


def filter_options(con: duckdb.DuckDBPyConnection, account: AccountScope = ALL_ACCOUNTS
                   ) -> dict[str, list]:
    """Return the entities, actions and users (id, name) the events hold, for selectors
    (of one account, or all)."""
    scope, params = _account_where(account)
    entities = [r[0] for r in con.execute(
        f"SELECT DISTINCT entity FROM events WHERE {scope} ORDER BY entity",
        params).fetchall()]
    actions = [r[0] for r in con.execute(
        f"SELECT DISTINCT action FROM events WHERE {scope} ORDER BY action",
        params).fetchall()]
    users = con.execute(
        f"SELECT e.action_user_id, {user_label('e.action_user_id')} "
        "FROM (SELECT DISTINCT action_user_id, account_id FROM events "
        f"WHERE action_user_id IS NOT NULL AND {scope}) e "
        f"{user_join('e.action_user_id', 'e.account_id')} ORDER BY 2, 1", params).fetchall()
    named: dict[int, str] = {}
    for uid, label in users:
        named.setdefault(int(uid), label)
    return {"entities": entities, "actions": actions,
            "users": sorted(named.items(), key=lambda item: (item[1], item[0]))}


def _account_where(account: AccountScope) -> tuple[str, list]:
    if account == ALL_ACCOUNTS:
        return "true", []
    if account is None:
        return "account_id IS NULL", []
    return "account_id = ?", [int(account)]


def field_options(con: duckdb.DuckDBPyConnection, entity: str | None = None,
                  names_account: int | None = None) -> list[tuple[str, str]]:
    """Return (field path, name) of every field with a change (of one entity), by name;
    names from the account `names_account` (Ploomes' own for built-in fields).

    Bookkeeping fields (`diff.BOOKKEEPING_FIELDS`: LastUpdateDate and the like change on
    nearly every delivery) are left out. Read from the `user_fields` rollup (a few
    thousand rows, kept by ingest stage 2 with `field_changes`) instead of a DISTINCT
    over millions of field changes.
    """
    where = "WHERE entity = ?" if entity else ""
    rows = con.execute(f"SELECT DISTINCT entity, field FROM user_fields {where}",
                       [entity] if entity else []).fetchall()
    names = load_names(con, names_account)
    labels: dict[str, str] = {}
    for row_entity, path in sorted(rows, key=lambda r: (r[1], r[0])):
        labels.setdefault(path, names.field(row_entity, path))
    return sorted(labels.items(), key=lambda item: (item[1].casefold(), item[0]))


@dataclass(frozen=True)
class EventDetail:
    """Everything the Events page shows about one event."""

    event: dict
    changes: pd.DataFrame
    duplicates: pd.DataFrame
    gaps: pd.DataFrame
    payload: dict = field(default_factory=dict)


def event_detail(con: duckdb.DuckDBPyConnection, event_id: int) -> EventDetail | None:
    """Return one event with its field changes (named from the event's account), copies,
    gaps and raw payload; None if absent.

    A test delivery has no stored field changes: its diff is computed here.
    """
    # one row: plain Python values (a DataFrame would cost more than the query)
    cursor = con.execute(f"""
        SELECT e.id AS event_id, e.received_at, e.entity, e.action, e.record_id,
               e.account_id, e.action_user_id,
               {user_label("e.action_user_id")} AS user_name, e.webhook_id,
               e.webhook_creator_id, e.secondary_entity_id, e.duplicate_of, e.is_demo,
               e.is_test, e.body_sha256,
               {TITLE_SQL.format(s="coalesce(e.new, e.old)")} AS title,
               CAST(e.payload AS VARCHAR) AS payload
        FROM events e {user_join("e.action_user_id", "e.account_id")} WHERE e.id = ?
    """, [int(event_id)])
    found = cursor.fetchone()
    if found is None:
        return None
    row = dict(zip([d[0] for d in cursor.description], found, strict=True))
    payload = json.loads(row.pop("payload"))
    row["received_at"] = utc(row["received_at"])
    names = load_names(con, row["account_id"])
    row["account_name"] = _account_name(con, row["account_id"])

    if row["is_test"]:
        changes = _test_changes(row, payload)
    else:
        changes = frame(con, f"""
            SELECT {CHANGE_COLUMNS} {CHANGE_FROM} WHERE fc.event_id = ? ORDER BY fc.rowid
        """, [int(event_id)])
    changes["field_label"] = pd.Series([names.field(row["entity"], p) for p in changes["field"]],
                                       index=changes.index, dtype=object)
    add_display_columns(con, changes, names, row["entity"])

    original = row["duplicate_of"] if row["duplicate_of"] is not None else row["event_id"]
    duplicates = frame(con, f"""
        SELECT e.id AS event_id, e.received_at, e.webhook_id, e.action_user_id,
               {user_label("e.action_user_id")} AS user_name,
               e.duplicate_of, e.duplicate_of IS NULL AS is_original
        FROM events e {user_join("e.action_user_id", "e.account_id")}
        WHERE (e.id = ? OR e.duplicate_of = ?) AND e.id <> ?
        ORDER BY e.received_at, e.id
    """, [original, original, row["event_id"]])
    gaps = continuity_gaps(con, row["entity"], row["record_id"], event_id=row["event_id"]) \
        if row["record_id"] is not None else continuity_gaps(con, event_id=row["event_id"])
    return EventDetail(row, changes, duplicates, gaps, payload)


def _account_name(con: duckdb.DuckDBPyConnection, account_id: int | None) -> str | None:
    if account_id is None:
        return None
    found = con.execute("SELECT name FROM accounts WHERE id = ? AND name IS NOT NULL "
                        "ORDER BY synced_at DESC NULLS LAST LIMIT 1", [account_id]).fetchall()
    return found[0][0] if found else None


def _test_changes(row: dict, payload: dict) -> pd.DataFrame:
    """The field changes of a test delivery, as stage 2 would have stored them."""
    old = payload.get("Old") if isinstance(payload.get("Old"), dict) else None
    new = payload.get("New") if isinstance(payload.get("New"), dict) else None
    try:
        found = diff_record(row["action"], old, new)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        found = []
    records = []
    for c in found:
        added, removed = list(c.added or ()), list(c.removed or ())
        records.append({
            "event_id": row["event_id"], "received_at": row["received_at"],
            "entity": row["entity"], "record_id": row["record_id"], "action": row["action"],
            "action_user_id": row["action_user_id"], "field": c.field, "summary": c.summary,
            "old_value": json_text(c.old_value) if c.old_known else None,
            "new_value": json_text(c.new_value) if c.new_known else None,
            "old_known": c.old_known, "new_known": c.new_known, "kind": c.kind,
            "bookkeeping": c.bookkeeping, "added": json_text(added) if added else None,
            "removed": json_text(removed) if removed else None, "is_duplicate": False,
            "is_demo": row["is_demo"]})
    columns = ["event_id", "received_at", "entity", "record_id", "action", "action_user_id",
               "field", "summary", "old_value", "new_value", "old_known", "new_known", "kind",
               "bookkeeping", "added", "removed", "is_duplicate", "is_demo"]
    return pd.DataFrame(records, columns=columns)


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
    `duplicates` (1/true includes repeated deliveries), `demo` (0/false leaves demo out),
    `tests` (1/true includes test deliveries), `account` (an AccountId, or `none`:
    deliveries without one).
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
                problems.append(_("`{name}={raw}` is not a date (use YYYY-MM-DD)").format(
                    name=name, raw=raw))
    for name, attr in (("user", "action_user_id"), ("record", "record_id")):
        if (raw := get(name)) is not None:
            try:
                values[attr] = int(raw)
            except ValueError:
                problems.append(_("`{name}={raw}` is not a number").format(name=name, raw=raw))
    for name, attr in (("entity", "entity"), ("action", "action"), ("field", "field"),
                       ("q", "text")):
        if (raw := get(name)) is not None:
            values[attr] = raw
    if (raw := get("duplicates")) is not None:
        values["include_duplicates"] = raw.lower() in ("1", "true", "yes", "on")
    if (raw := get("demo")) is not None:
        values["include_demo"] = raw.lower() not in ("0", "false", "no", "off")
    if (raw := get("tests")) is not None:
        values["include_tests"] = raw.lower() in ("1", "true", "yes", "on")
    if (raw := get("account")) is not None:
        if raw.lower() == "none":
            values["account"] = None
        else:
            try:
                values["account"] = int(raw)
            except ValueError:
                problems.append(_("`{name}={raw}` is not a number").format(name="account",
                                                                            raw=raw))
    return ParsedFilter(EventFilter(**values), tuple(problems))


def distinct_values(con: duckdb.DuckDBPyConnection, column: str) -> list[str]:
    """Return the distinct entities or actions seen, for filter choices."""
    if column not in ("entity", "action"):
        raise ValueError(f"column must be entity or action, got {column!r}")
    return [r[0] for r in con.execute(
        f"SELECT DISTINCT {column} FROM events ORDER BY 1").fetchall()]


EXPORT_COLUMNS = (
    "e.id, e.received_at, e.entity, e.action, e.record_id, e.action_user_id, "
    "coalesce(u.name, u0.name) AS user_name, e.account_id, e.webhook_id, "
    "e.webhook_creator_id, e.secondary_entity_id, e.duplicate_of, e.is_demo, e.is_test")


def export_events(con: duckdb.DuckDBPyConnection, flt: EventFilter,
                  limit: int = EXPORT_LIMIT, include_payload: bool = False,
                  tz: str | None = None) -> pd.DataFrame:
    """Return the events matching a filter (the Events page's), newest first, at most
    `limit` rows.

    With `tz`, received_at is converted to that time zone. With `include_payload`, the
    delivery body is added as a JSON text column.
    """
    where, params = _conditions(flt)
    columns = EXPORT_COLUMNS + (", CAST(e.payload AS VARCHAR) AS payload"
                                if include_payload else "")
    # the filter runs on `events` alone before the join
    rows = frame(
        con, f"SELECT {columns} FROM (SELECT * FROM events e WHERE {where} "
        f"ORDER BY received_at DESC, id DESC LIMIT ?) e "
        f"{user_join('e.action_user_id', 'e.account_id')} "
        "ORDER BY e.received_at DESC, e.id DESC",
        [*params, int(limit)])
    if tz and not rows.empty:
        rows["received_at"] = rows["received_at"].dt.tz_convert(tz)
    return rows
