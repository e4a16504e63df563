"""The Users page's rollups, kept by stage 2 beside the field changes they summarise.

`user_records` has one row per (ActionUserId, entity, record) and `user_fields` one per
(ActionUserId, entity, field); see docs/schema.md. Stage 2 folds each event into them
(`fold_user_event`); `refill_user_rollups` recomputes them from stored rows in SQL, for a
migration or after demo data is removed. Both give the same rows; test deliveries are
left out of both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import duckdb


@dataclass
class UserRecord:
    """One `user_records` row: what one ActionUserId did to one record.

    Times are microseconds since the epoch (what the column stores): converting every
    loaded TIMESTAMPTZ to a datetime would cost more than the rest of the rollup.
    """

    events: int = 0
    duplicates: int = 0
    first_us: int | None = None
    last_us: int | None = None
    last_duplicate_us: int | None = None
    fields: set[str] = field(default_factory=set)
    rowid: int | None = None  # where the stored row is, in this transaction

    def add(self, us: int, duplicate: bool) -> None:
        """Count one delivery received at `us`."""
        if duplicate:
            self.duplicates += 1
            self.last_duplicate_us = (us if self.last_duplicate_us is None
                                      else max(self.last_duplicate_us, us))
        else:
            self.events += 1
            self.first_us = us if self.first_us is None else min(self.first_us, us)
            self.last_us = us if self.last_us is None else max(self.last_us, us)


UserKey = tuple[int | None, str, int]  # (action_user_id, entity, record_id)


class RollupRows(Protocol):
    """Where a batch collects its rollup rows (the pipeline's rows of one batch)."""

    user_records: dict[UserKey, UserRecord]
    user_fields: dict[tuple[int | None, str, str], list[int]]


def fold_user_event(rows: RollupRows, stored: dict[UserKey, UserRecord], user: int | None,
                    entity: str, record_id: int | None, ns: int, duplicate: bool,
                    fields: Sequence[str]) -> None:
    """Add one event received at `ns` and its changed fields (bookkeeping left out) to
    the user rollups.

    `stored` holds the `user_records` rows of the batch's records as the store has them.
    A repeated delivery counts as a duplicate and adds no field changes, as the Users
    page counts them.
    """
    if not duplicate:
        for name in fields:
            rows.user_fields.setdefault((user, entity, name), [0, 0])[0] += 1
    if record_id is None:
        return  # no record: counted in `user_fields.changes`, never in `records`
    key = (user, entity, record_id)
    row = rows.user_records.get(key)
    if row is None:
        row = rows.user_records[key] = stored.get(key) or UserRecord()
    row.add(ns // 1000, duplicate)
    if not duplicate:
        for name in fields:
            if name not in row.fields:  # the first change of this field on this record
                row.fields.add(name)
                rows.user_fields[(user, entity, name)][1] += 1


USER_RECORD_KEY = ("action_user_id", "entity", "record_id")
USER_FIELD_KEY = ("action_user_id", "entity", "field")


def same_key(left: str, right: str, columns: Sequence[str]) -> str:
    # deliveries without an ActionUserId are a group of their own: NULL matches NULL
    return " AND ".join(f"{left}.{c} IS NOT DISTINCT FROM {right}.{c}" if c == "action_user_id"
                        else f"{left}.{c} = {right}.{c}" for c in columns)


# Every event stage 2 has passed (id up to the `derive` position), as stage 2 folds them.
_FILL_USER_RECORDS = """
INSERT INTO user_records
WITH derived AS (SELECT coalesce(max(last_seq), 0) AS seq FROM ingest_state
                 WHERE name = 'derive'),
per_record AS (
    SELECT e.action_user_id, e.entity, e.record_id,
           count(*) FILTER (WHERE e.duplicate_of IS NULL) AS events,
           count(*) FILTER (WHERE e.duplicate_of IS NOT NULL) AS duplicates,
           min(e.received_at) FILTER (WHERE e.duplicate_of IS NULL) AS first_at,
           max(e.received_at) FILTER (WHERE e.duplicate_of IS NULL) AS last_at,
           max(e.received_at) FILTER (WHERE e.duplicate_of IS NOT NULL) AS last_duplicate_at
    FROM events e {scope}
    WHERE e.record_id IS NOT NULL AND e.id <= (SELECT seq FROM derived) AND NOT e.is_test
    GROUP BY ALL),
changed AS (
    SELECT action_user_id, entity, record_id, list(field ORDER BY field) AS fields
    FROM (SELECT DISTINCT e.action_user_id, e.entity, e.record_id, e.field
          FROM field_changes e {scope}
          WHERE e.record_id IS NOT NULL AND NOT e.bookkeeping AND NOT e.is_duplicate)
    GROUP BY ALL)
SELECT p.*, coalesce(to_json(c.fields), '[]') FROM per_record p LEFT JOIN changed c ON {join}
"""
_FILL_USER_FIELDS = """
INSERT INTO user_fields
SELECT e.action_user_id, e.entity, e.field, count(*), count(DISTINCT e.record_id)
FROM field_changes e {scope}
WHERE NOT e.bookkeeping AND NOT e.is_duplicate
GROUP BY ALL
"""


def refill_user_rollups(con: duckdb.DuckDBPyConnection, records: str | None = None,
                        fields: str | None = None) -> None:
    """Recompute the user rollups from `events` and `field_changes`.

    Everything (schema migration to v4), or only the keys listed in the tables named
    `records` (action_user_id, entity, record_id) and `fields` (action_user_id, entity,
    field), e.g. what demo rows touched before they were removed. Runs inside the
    caller's transaction; the result is what stage 2 folds event by event.
    """
    everything = records is None and fields is None
    # table names come from this module, never from input
    for keys, table, key, fill in ((records, "user_records", USER_RECORD_KEY,
                                    _FILL_USER_RECORDS),
                                   (fields, "user_fields", USER_FIELD_KEY, _FILL_USER_FIELDS)):
        if everything:
            con.execute(f"DELETE FROM {table}")
            scope = ""
        elif keys is not None:
            con.execute(f"DELETE FROM {table} r USING {keys} k WHERE "
                        + same_key("r", "k", key))
            scope = f"SEMI JOIN {keys} k ON " + same_key("e", "k", key)
        else:
            continue
        con.execute(fill.format(scope=scope, join=same_key("c", "p", USER_RECORD_KEY)))
