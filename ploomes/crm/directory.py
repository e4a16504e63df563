"""The account's directory: users and custom fields copied from the Ploomes API.

`sync_directory` copies users and custom fields into the store's `users` and `fields`
tables (upsert by id / key, names kept exactly as Ploomes spells them), so every page
can show a name instead of an `ActionUserId` or a field key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from ploomes.crm.api import PloomesClient, fetch_directory
from ploomes.store import Store, StoreError, transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    """What one directory sync stored."""

    users: int
    fields: int
    synced_at: datetime


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def upsert_directory(con: duckdb.DuckDBPyConnection, users: Iterable[dict],
                     fields: Iterable[dict], synced_at: datetime) -> tuple[int, int]:
    """Insert or update users (by Id) and custom fields (by Key); return how many of each."""
    user_rows = [(int(u["Id"]), u.get("Name"), u.get("Email"),
                  None if u.get("Suspended") is None else bool(u["Suspended"]), synced_at)
                 for u in users if _int_or_none(u.get("Id")) is not None]
    field_rows = [(str(f["Key"]), _int_or_none(f.get("EntityId")), f.get("Name"),
                   _int_or_none(f.get("TypeId")), synced_at)
                  for f in fields if f.get("Key")]
    with transaction(con):
        if user_rows:
            # Users gone from Ploomes stay: old events still name them.
            con.executemany(
                "INSERT INTO users (id, name, email, suspended, synced_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                "email = excluded.email, suspended = excluded.suspended, "
                "synced_at = excluded.synced_at", user_rows)
        if field_rows:
            con.executemany(
                "INSERT INTO fields (key, entity_id, name, type_id, synced_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "entity_id = excluded.entity_id, name = excluded.name, "
                "type_id = excluded.type_id, synced_at = excluded.synced_at", field_rows)
    return len(user_rows), len(field_rows)


def sync_directory(client: PloomesClient, store: Store,
                   now: datetime | None = None) -> SyncResult:
    """Fetch users and custom fields from Ploomes and upsert them into the store."""
    users, fields = fetch_directory(client)  # before the write lock: the API may be slow
    synced_at = now or datetime.now(UTC)
    try:
        with store.writer() as con:
            n_users, n_fields = upsert_directory(con, users, fields, synced_at)
    except duckdb.Error as exc:
        raise StoreError(f"users and fields could not be saved: {exc}") from exc
    log.info("directory synced: %d users, %d custom fields", n_users, n_fields)
    return SyncResult(n_users, n_fields, synced_at)


def sync_due(last: datetime | None, every_minutes: float, now: datetime | None = None) -> bool:
    """Return whether an automatic sync is due (never synced, or older than the interval)."""
    if last is None:
        return True
    now = now or datetime.now(UTC)
    return now - last >= timedelta(minutes=every_minutes)
