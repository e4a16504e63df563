"""The account's directory: users, custom fields and lookups copied from the Ploomes API.

`sync_directory` asks which account the User-Key belongs to (`GET /Account`, else the
`AccountId` its users carry) and copies that account's users, custom fields and the
lookups that name built-in ids (stages, pipelines, tags…) into the store's `users`,
`fields` and `lookups` tables, keyed by AccountId, so every page can show a name
instead of an id, and one account's names never label another's data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from ploomes.crm.api import PloomesClient, fetch_directory, fetch_lookups
from ploomes.store import Store, StoreError, transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    """What one directory sync stored."""

    users: int
    fields: int
    synced_at: datetime
    account_id: int | None = None  # None: the API did not say which account
    account_name: str | None = None
    lookups: int = 0


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def account_of(account: Mapping[str, Any] | None, users: Iterable[Mapping[str, Any]]
               ) -> int | None:
    """Return the AccountId of `GET /Account`'s answer, else the one all users carry."""
    found = _int_or_none(account.get("Id")) if account else None
    if found is not None:
        return found
    ids = {_int_or_none(u.get("AccountId")) for u in users} - {None}
    return ids.pop() if len(ids) == 1 else None


def _replace(con: duckdb.DuckDBPyConnection, table: str, key: str, account_id: int | None,
             rows: list[tuple], columns: str, kind: str | None = None) -> None:
    """Replace this account's rows with these keys (other rows stay: old events still
    name users and fields gone from Ploomes)."""
    keys = [row[1] for row in rows]
    where = f"account_id IS NOT DISTINCT FROM ? AND {key} IN (SELECT unnest(?))"
    params: list[Any] = [account_id, keys]
    if kind is not None:
        where += " AND kind = ?"
        params.append(kind)
    # table, key and columns come from this module, never from input
    con.execute(f"DELETE FROM {table} WHERE {where}", params)
    marks = ", ".join("?" * len(rows[0]))
    con.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)


def upsert_directory(con: duckdb.DuckDBPyConnection, users: Iterable[dict],
                     fields: Iterable[dict], synced_at: datetime | None, *,
                     account_id: int | None = None, account_name: str | None = None,
                     lookups: Mapping[str, Iterable[dict]] | None = None) -> tuple[int, int]:
    """Insert or update one account's users (by Id), custom fields (by Key) and lookups
    (by kind and Id); return how many users and fields.

    `account_id` None is the "unknown account". `synced_at` None marks rows written by a
    demo load (removing demo data removes them).
    """
    user_rows = [(account_id, int(u["Id"]), u.get("Name"), u.get("Email"),
                  None if u.get("Suspended") is None else bool(u["Suspended"]), synced_at)
                 for u in users if _int_or_none(u.get("Id")) is not None]
    field_rows = [(account_id, str(f["Key"]), _int_or_none(f.get("EntityId")), f.get("Name"),
                   _int_or_none(f.get("TypeId")), synced_at)
                  for f in fields if f.get("Key")]
    with transaction(con):
        if user_rows:
            _replace(con, "users", "id", account_id, user_rows,
                     "account_id, id, name, email, suspended, synced_at")
        if field_rows:
            _replace(con, "fields", "key", account_id, field_rows,
                     "account_id, key, entity_id, name, type_id, synced_at")
        for kind, found in (lookups or {}).items():
            rows = [(account_id, int(row["Id"]), kind, row.get("Name"),
                     _int_or_none(row.get("PipelineId")), synced_at)
                    for row in found if _int_or_none(row.get("Id")) is not None]
            if rows:
                _replace(con, "lookups", "id", account_id, rows,
                         "account_id, id, kind, name, parent_id, synced_at", kind=kind)
        if account_id is not None:
            con.execute("DELETE FROM accounts WHERE id = ?", [account_id])
            con.execute("INSERT INTO accounts (id, name, synced_at) VALUES (?, ?, ?)",
                        [account_id, account_name, synced_at])
    return len(user_rows), len(field_rows)


def sync_directory(client: PloomesClient, store: Store,
                   now: datetime | None = None) -> SyncResult:
    """Fetch the key's account, its users, custom fields and lookups; store them by
    AccountId."""
    # before the write lock: the API may be slow
    account = client.get_account()
    users, fields = fetch_directory(client)
    lookups = fetch_lookups(client)
    account_id = account_of(account, users)
    name = account.get("Name") if account else None
    synced_at = now or datetime.now(UTC)
    try:
        with store.writer() as con:
            n_users, n_fields = upsert_directory(
                con, users, fields, synced_at, account_id=account_id,
                account_name=str(name) if name is not None else None, lookups=lookups)
    except duckdb.Error as exc:
        raise StoreError(f"users and fields could not be saved: {exc}") from exc
    log.info("directory of account %s synced: %d users, %d custom fields, %d lookups",
             account_id, n_users, n_fields, len(lookups))
    return SyncResult(n_users, n_fields, synced_at, account_id,
                      str(name) if name is not None else None,
                      sum(len(rows) for rows in lookups.values()))


def sync_due(last: datetime | None, every_minutes: float, now: datetime | None = None) -> bool:
    """Return whether an automatic sync is due (never synced, or older than the interval)."""
    if last is None:
        return True
    now = now or datetime.now(UTC)
    return now - last >= timedelta(minutes=every_minutes)
