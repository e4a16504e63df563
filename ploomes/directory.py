"""The account's directory (users, custom fields) and what the Webhooks page shows.

`sync_directory` copies users and custom fields from the Ploomes API into the store's
`users` and `fields` tables (upsert by id / key, names kept exactly as Ploomes spells
them), so every page can show a name instead of an `ActionUserId` or a field key.

The rest are the Webhooks page's building blocks, free of Streamlit: per-subscription
delivery statistics from the store (`webhook_stats`), the silent-subscription rule
(`silence_warnings`), the subscription table and the entity × action coverage grid,
registration with a duplicate check, and a test delivery to a callback URL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import duckdb
import pandas as pd
import requests

from ploomes import generator
from ploomes.api import (
    KNOWN_ACTIONS,
    PloomesClient,
    PloomesNotFound,
    fetch_directory,
    validate_callback_url,
)
from ploomes.keys import mask_secret
from ploomes.store import Store, StoreError, transaction

log = logging.getLogger(__name__)

# The receiver's webhook path (receiver.WEBHOOK_PATH; the core must not import Flask).
WEBHOOK_PATH = "/ploomes/webhook"
VALIDATION_HEADER = "X-Ploomes-Validation-Key"
# Used when GET /Fields@Entities fails with 404 [DOC names and ids].
KNOWN_ENTITIES: dict[int, str] = {
    1: "Contacts", 2: "Deals", 3: "Leads", 4: "Orders", 5: "OrderSections", 7: "Quotes",
    8: "QuoteSections", 10: "Products", 12: "Tasks", 14: "QuoteProducts",
    20: "OrderProducts", 36: "InteractionRecords",
}
# Entities always shown in the coverage grid; others appear once subscribed.
GRID_ENTITIES = (1, 2, 4, 10, 12)
# Plural names the deliveries' `Entity` carries, by EntityId [PROD for 1, 2, 4, 10, 12].
DELIVERY_ENTITY_NAMES = {i: n for n, i in generator.ENTITY_IDS.items()}

STATS_COLUMNS = ["webhook_id", "deliveries_24h", "deliveries_30d", "last_delivery",
                 "median_gap_seconds", "gaps_30d"]


class DuplicateSubscription(ValueError):
    """A subscription for the same EntityId, ActionId and CallbackUrl already exists."""


class CallbackUnreachable(ConnectionError):
    """A delivery could not be posted to a callback URL (refused, timed out, no route)."""


# -- directory sync ----------------------------------------------------------------------

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


def last_synced_at(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """Return when the directory was last synced, or None if never."""
    row = con.execute("SELECT greatest((SELECT max(synced_at) FROM users), "
                      "(SELECT max(synced_at) FROM fields))").fetchone()
    return row[0] if row else None


def sync_due(last: datetime | None, every_minutes: float, now: datetime | None = None) -> bool:
    """Return whether an automatic sync is due (never synced, or older than the interval)."""
    if last is None:
        return True
    now = now or datetime.now(UTC)
    return now - last >= timedelta(minutes=every_minutes)


def user_names(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    """Return {user id: name} from the synced directory."""
    rows = con.execute("SELECT id, name FROM users WHERE name IS NOT NULL").fetchall()
    return {int(i): n for i, n in rows}


def field_names(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Return {custom field key: label} from the synced directory."""
    rows = con.execute("SELECT key, name FROM fields WHERE name IS NOT NULL").fetchall()
    return dict(rows)


# -- per-subscription statistics ---------------------------------------------------------

def webhook_stats(con: duckdb.DuckDBPyConnection, now: datetime | None = None,
                  history_days: int = 30, include_demo: bool = False) -> pd.DataFrame:
    """Return, per WebhookId seen in the store, deliveries in 24 h and 30 days, the last
    delivery, and the median gap between distinct deliveries over the last 30 days."""
    now = now or datetime.now(UTC)
    day_ago = now - timedelta(hours=24)
    history_start = now - timedelta(days=history_days)
    demo = None if include_demo else False
    totals = con.execute(
        """
        SELECT webhook_id,
               count(*) FILTER (WHERE received_at > ?) AS deliveries_24h,
               count(*) FILTER (WHERE received_at > ?) AS deliveries_30d,
               max(received_at) AS last_delivery
        FROM events
        WHERE webhook_id IS NOT NULL AND received_at <= ?
          AND (?::BOOLEAN IS NULL OR is_demo = ?::BOOLEAN)
        GROUP BY webhook_id
        """, [day_ago, history_start, now, demo, demo]).df()
    # A repeat of a delivery to the same subscription is not a new arrival: leaving it in
    # would put near-zero gaps into the median. A repeat seen through another
    # subscription is that subscription's own delivery and stays.
    gaps = con.execute(
        """
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
        """, [history_start, now, demo, demo]).df()
    stats = totals.merge(gaps, on="webhook_id", how="left")
    stats["gaps_30d"] = stats["gaps_30d"].fillna(0).astype("int64")
    for column in ("webhook_id", "deliveries_24h", "deliveries_30d"):
        stats[column] = stats[column].astype("int64")
    return stats[STATS_COLUMNS].sort_values("webhook_id").reset_index(drop=True)


def silence_warnings(subscription_ids: Iterable[int], stats: pd.DataFrame,
                     now: datetime | None = None, *, factor: float = 3.0,
                     floor_seconds: float = 3600.0, min_gaps: int = 3,
                     quiet_days: float = 7.0,
                     created: Mapping[int, datetime | None] | None = None) -> dict[int, str]:
    """Return {WebhookId: why it looks silent} for subscriptions silent unusually long.

    Silent when the time since its last delivery exceeds `factor` × its median gap over
    the last 30 days (with at least `min_gaps` gaps to trust the median, and never less
    than `floor_seconds`), or when it got nothing for `quiet_days` (or nothing at all
    since it was created that long ago) while another subscription did receive.
    """
    now = now or datetime.now(UTC)
    created = created or {}
    by_id = {int(r.webhook_id): r for r in stats.itertuples(index=False)}
    ids = [int(i) for i in subscription_ids]
    quiet = timedelta(days=quiet_days)
    warnings: dict[int, str] = {}
    for webhook_id in ids:
        row = by_id.get(webhook_id)
        last = _timestamp(row.last_delivery) if row is not None else None
        others_receive = any(
            other != webhook_id and other in by_id
            and (t := _timestamp(by_id[other].last_delivery)) is not None and now - t < quiet
            for other in ids)
        if last is None:
            made = created.get(webhook_id)
            if others_receive and made is not None and now - made >= quiet:
                warnings[webhook_id] = (f"no delivery since it was created {_days(now - made)} "
                                        "ago, while other subscriptions receive")
            continue
        silent = now - last
        if silent >= quiet and others_receive:
            warnings[webhook_id] = (f"no delivery for {_days(silent)}, while other "
                                    "subscriptions receive")
            continue
        median = row.median_gap_seconds
        if row.gaps_30d >= min_gaps and median is not None and not pd.isna(median):
            limit = max(factor * float(median), floor_seconds)
            if silent.total_seconds() > limit:
                warnings[webhook_id] = (
                    f"silent for {_span(silent.total_seconds())}, more than {factor:g}× its "
                    f"usual gap of {_span(float(median))} (median, last 30 days)")
    return warnings


def _timestamp(value: Any) -> datetime | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(UTC)
    return stamp.to_pydatetime()


def _days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.1f} days"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# -- subscriptions: names, table, grid ---------------------------------------------------

@dataclass(frozen=True)
class Catalog:
    """Entity and action names by id, from the API or the known tables."""

    entities: dict[int, str]
    actions: dict[int, str]

    def entity(self, entity_id: Any) -> str:
        """Return an entity's name, or 'Entity <id>'."""
        entity_id = _int_or_none(entity_id)
        return self.entities.get(entity_id) or KNOWN_ENTITIES.get(entity_id) or (
            f"Entity {entity_id}")

    def action(self, action_id: Any) -> str:
        """Return an action's name, or 'Action <id>'."""
        action_id = _int_or_none(action_id)
        known = {int(a["Id"]): a["Name"] for a in KNOWN_ACTIONS}
        return self.actions.get(action_id) or known.get(action_id) or f"Action {action_id}"


def _names(rows: Iterable[dict]) -> dict[int, str]:
    out = {}
    for row in rows:
        key = _int_or_none(row.get("Id"))
        if key is not None and row.get("Name"):
            out[key] = str(row["Name"])
    return out


def load_catalog(client: PloomesClient) -> Catalog:
    """Return entity and action names from the API, falling back to the known tables."""
    try:
        entities = _names(client.list_entities()) or dict(KNOWN_ENTITIES)
    except PloomesNotFound:
        log.info("GET /Fields@Entities answered 404; using the known entity table")
        entities = dict(KNOWN_ENTITIES)
    actions = _names(client.list_actions()) or _names(KNOWN_ACTIONS)
    return Catalog(entities, actions)


def parse_ploomes_time(value: Any, tz: str) -> datetime | None:
    """Return an aware datetime for a Ploomes date; a date without offset is local to tz."""
    if value in (None, ""):
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if pd.isna(stamp):
        return None
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(ZoneInfo(tz), ambiguous="NaT", nonexistent="shift_forward")
        if pd.isna(stamp):
            return None
    return stamp.to_pydatetime()


def same_callback(a: str | None, b: str | None) -> bool:
    """Return whether two callback URLs name the same endpoint (scheme/host case, '/' end)."""
    if not a or not b:
        return False

    def norm(url: str) -> tuple:
        parts = urlsplit(url.strip())
        return (parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"),
                parts.query)

    return norm(a) == norm(b)


def subscriptions_frame(webhooks: list[dict], catalog: Catalog, users: Mapping[int, str],
                        stats: pd.DataFrame, warnings: Mapping[int, str], tz: str,
                        accepted: Iterable[str] = ()) -> pd.DataFrame:
    """Return one row per subscription: names, URL, state, creator, and what the store saw."""
    by_id = {int(r.webhook_id): r for r in stats.itertuples(index=False)}
    accepted = set(accepted)
    rows = []
    for hook in sorted(webhooks, key=lambda w: (_int_or_none(w.get("Id")) or 0)):
        webhook_id = _int_or_none(hook.get("Id"))
        seen = by_id.get(webhook_id)
        creator = _int_or_none(hook.get("CreatorId"))
        key = hook.get("ValidationKey")
        # Ploomes may not return the key [PROD]: then whether it matches is unknown.
        matches = "unknown" if not key else ("yes" if key in accepted else "no")
        rows.append({
            "Id": webhook_id,
            "Entity": catalog.entity(hook.get("EntityId")),
            "Action": catalog.action(hook.get("ActionId")),
            "Callback URL": hook.get("CallbackUrl"),
            "Active": bool(hook.get("Active", True)),
            "Validation key": mask_secret(key),
            "Key accepted here": matches,
            "Creator": users.get(creator) or (str(creator) if creator is not None else "—"),
            "Created": parse_ploomes_time(hook.get("CreateDate"), tz),
            "Deliveries 24 h": int(seen.deliveries_24h) if seen is not None else 0,
            "Last delivery": _timestamp(seen.last_delivery) if seen is not None else None,
            "Warning": warnings.get(webhook_id, ""),
        })
    # what people look for first: what it is and whether it delivers, then the details
    columns = ["Id", "Entity", "Action", "Deliveries 24 h", "Last delivery", "Active",
               "Callback URL", "Validation key", "Key accepted here", "Creator", "Created",
               "Warning"]
    return pd.DataFrame(rows, columns=columns)


def coverage_grid(webhooks: list[dict], callback_url: str | None,
                  catalog: Catalog) -> pd.DataFrame:
    """Return an entity × action grid: '✓' subscribed (active), 'paused' (inactive), ''."""
    mine = [w for w in webhooks if same_callback(w.get("CallbackUrl"), callback_url)]
    entity_ids = list(GRID_ENTITIES)
    entity_ids += sorted({_int_or_none(w.get("EntityId")) for w in mine} - set(entity_ids)
                         - {None})
    action_ids = sorted(catalog.actions) or [int(a["Id"]) for a in KNOWN_ACTIONS]
    grid = pd.DataFrame("", index=[catalog.entity(e) for e in entity_ids],
                        columns=[catalog.action(a) for a in action_ids])
    for hook in mine:
        entity = catalog.entity(hook.get("EntityId"))
        action = catalog.action(hook.get("ActionId"))
        if entity not in grid.index or action not in grid.columns:
            continue
        mark = "✓" if hook.get("Active", True) else "paused"
        if grid.at[entity, action] != "✓":
            grid.at[entity, action] = mark
    grid.index.name = "Entity"
    return grid


# -- registration and test deliveries ----------------------------------------------------

def default_callback_url(callback_url: str | None, receiver_url: str) -> str:
    """Return the configured callback URL, else the receiver's own webhook address."""
    if callback_url:
        return callback_url
    return receiver_url.rstrip("/") + WEBHOOK_PATH


def find_existing(webhooks: list[dict], entity_id: int, action_id: int,
                  callback_url: str) -> dict | None:
    """Return the subscription with this EntityId, ActionId and CallbackUrl, if any."""
    for hook in webhooks:
        if (_int_or_none(hook.get("EntityId")) == int(entity_id)
                and _int_or_none(hook.get("ActionId")) == int(action_id)
                and same_callback(hook.get("CallbackUrl"), callback_url)):
            return hook
    return None


def register_subscriptions(client: PloomesClient, existing: list[dict], entity_id: int,
                           action_ids: Iterable[int], callback_url: str,
                           validation_key: str, catalog: Catalog | None = None) -> list[dict]:
    """Create one subscription per action; refuse a bad URL or any existing duplicate."""
    callback_url = validate_callback_url(callback_url)
    action_ids = list(dict.fromkeys(int(a) for a in action_ids))
    if not action_ids:
        raise ValueError("choose at least one action")
    if not validation_key:
        raise ValueError("a validation key is needed so the receiver accepts the deliveries")
    catalog = catalog or Catalog({}, {})
    duplicates = [(a, hook) for a in action_ids
                  if (hook := find_existing(existing, entity_id, a, callback_url))]
    if duplicates:
        listed = ", ".join(f"{catalog.entity(entity_id)} {catalog.action(a)} (Id {h.get('Id')})"
                           for a, h in duplicates)
        raise DuplicateSubscription(
            f"already subscribed for {callback_url}: {listed}. Nothing was created; "
            "unselect the action(s) that already exist")
    return [client.create_webhook(entity_id, a, callback_url, validation_key)
            for a in action_ids]


def example_delivery_body(webhook: dict, seed: int | None = None) -> dict:
    """Return an example delivery for a subscription, carrying its WebhookId."""
    entity_id = _int_or_none(webhook.get("EntityId"))
    action_id = _int_or_none(webhook.get("ActionId"))
    entity = DELIVERY_ENTITY_NAMES.get(entity_id, KNOWN_ENTITIES.get(entity_id, "Contacts"))
    action = {i: n for n, i in generator.ACTION_IDS.items()}.get(action_id, "Update")
    sim = generator.Simulation(seed=seed if seed is not None else int(datetime.now().timestamp()))
    simulated = entity if entity in generator.SIMULATED_ENTITIES else "Deals"
    try:
        if action == "Reopen" and simulated == "Deals":
            sim.step(entity="Deals", action="Lose")  # only a closed deal can be reopened
        change = sim.step(entity=simulated, action=action)
    except (ValueError, LookupError):
        # e.g. Win on a Contact: keep a realistic record, label it as subscribed
        change = sim.step(entity=simulated)
    body = generator.delivery_body(change, account_id=sim.account_id,
                                   webhook_id=_int_or_none(webhook.get("Id")),
                                   webhook_creator_id=_int_or_none(webhook.get("CreatorId")))
    return {**body, "Entity": entity, "Action": action}


@dataclass(frozen=True)
class DeliveryAnswer:
    """The receiver's answer to a delivery: HTTP status and body."""

    status: int
    body: Any  # decoded JSON, or the text when it is not JSON


def send_test_delivery(callback_url: str, validation_key: str | None, body: dict,
                       timeout: float = 10.0) -> DeliveryAnswer:
    """POST a delivery body to a callback URL as Ploomes does; return the answer."""
    callback_url = validate_callback_url(callback_url)
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if validation_key:
        headers[VALIDATION_HEADER] = validation_key
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    with requests.Session() as session:
        session.trust_env = False  # straight to the callback, as Ploomes would
        try:
            response = session.post(callback_url, data=data, headers=headers,
                                    timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            detail = str(exc)
            if validation_key:
                detail = detail.replace(validation_key, mask_secret(validation_key))
            raise CallbackUnreachable(f"cannot reach {callback_url}: {detail[:300]}") from None
    try:
        answer: Any = response.json()
    except ValueError:
        answer = response.text[:2000]
    return DeliveryAnswer(response.status_code, answer)
