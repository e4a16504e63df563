"""Subscriptions (Ploomes webhooks): names, the table and coverage grid the Webhooks page
shows, registration with a duplicate check, the silent-subscription rule, and a test
delivery to a callback URL. Free of Streamlit.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pandas as pd
import requests

from ploomes.config import mask_secret
from ploomes.crm.api import KNOWN_ACTIONS, PloomesClient, PloomesNotFound, validate_callback_url
from ploomes.i18n import _, format_number
from ploomes.model.vocabulary import (
    ACTION_NAMES,
    ENTITY_NAMES,
    TEST_HEADER,
    VALIDATION_HEADER,
    WEBHOOK_PATH,
)

log = logging.getLogger(__name__)
_V = TypeVar("_V")

# Used when GET /Fields@Entities fails with 404 [DOC names and ids].
KNOWN_ENTITIES: dict[int, str] = {
    1: "Contacts", 2: "Deals", 3: "Leads", 4: "Orders", 5: "OrderSections", 7: "Quotes",
    8: "QuoteSections", 10: "Products", 12: "Tasks", 14: "QuoteProducts",
    20: "OrderProducts", 36: "InteractionRecords",
}
# Entities always shown in the coverage grid; others appear once subscribed.
GRID_ENTITIES = (1, 2, 4, 10, 12)


class DuplicateSubscription(ValueError):
    """A subscription for the same EntityId, ActionId and CallbackUrl already exists."""


class CallbackUnreachable(ConnectionError):
    """A delivery could not be posted to a callback URL (refused, timed out, no route)."""


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _get(mapping: Mapping[int, _V], key: int | None) -> _V | None:
    """`mapping.get(key)` for an id a subscription may lack (None is never a key)."""
    return None if key is None else mapping.get(key)


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
        if row is None or last is None:
            made = created.get(webhook_id)
            if others_receive and made is not None and now - made >= quiet:
                warnings[webhook_id] = _("no delivery since it was created {days} ago, while "
                                         "other subscriptions receive").format(
                                             days=_days(now - made))
            continue
        silent = now - last
        if silent >= quiet and others_receive:
            warnings[webhook_id] = _("no delivery for {days}, while other subscriptions "
                                     "receive").format(days=_days(silent))
            continue
        median = row.median_gap_seconds
        if row.gaps_30d >= min_gaps and median is not None and not pd.isna(median):
            limit = max(factor * float(median), floor_seconds)
            if silent.total_seconds() > limit:
                warnings[webhook_id] = _(
                    "silent for {span}, more than {factor}× its usual gap of {gap} (median, "
                    "last 30 days)").format(span=_span(silent.total_seconds()),
                                            factor=format_number(factor),
                                            gap=_span(float(median)))
    return warnings


def _timestamp(value: Any) -> datetime | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(UTC)
    return stamp.to_pydatetime()


def _days(delta: timedelta) -> str:
    return _("{count} days").format(count=format_number(delta.total_seconds() / 86400, 1))


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{format_number(seconds, 0)} s"
    if seconds < 7200:
        return f"{format_number(seconds / 60, 0)} min"
    if seconds < 172800:
        return f"{format_number(seconds / 3600, 1)} h"
    return _days(timedelta(seconds=seconds))


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
        seen = _get(by_id, webhook_id)
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
            "Creator": _get(users, creator) or (str(creator) if creator is not None else "—"),
            "Created": parse_ploomes_time(hook.get("CreateDate"), tz),
            "Deliveries 24 h": int(seen.deliveries_24h) if seen is not None else 0,
            "Last delivery": _timestamp(seen.last_delivery) if seen is not None else None,
            "Warning": _get(warnings, webhook_id) or "",
        })
    # what people look for first: what it is and whether it delivers, then the details
    columns = ["Id", "Entity", "Action", "Deliveries 24 h", "Last delivery", "Active",
               "Callback URL", "Validation key", "Key accepted here", "Creator", "Created",
               "Warning"]
    return pd.DataFrame(rows, columns=columns)


def coverage_grid(webhooks: list[dict], callback_url: str | None,
                  catalog: Catalog) -> pd.DataFrame:
    """Return an entity × action grid: '✓' subscribed (active), 'paused' (inactive), ''.

    Only subscriptions for `callback_url` count; None counts every subscription.
    """
    mine = [w for w in webhooks
            if callback_url is None or same_callback(w.get("CallbackUrl"), callback_url)]
    entity_ids = list(GRID_ENTITIES)
    entity_ids += sorted({e for w in mine if (e := _int_or_none(w.get("EntityId"))) is not None}
                         - set(entity_ids))
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
        raise ValueError(_("choose at least one action"))
    if not validation_key:
        raise ValueError(_("a validation key is needed so the receiver accepts the deliveries"))
    catalog = catalog or Catalog({}, {})
    duplicates = [(a, hook) for a in action_ids
                  if (hook := find_existing(existing, entity_id, a, callback_url))]
    if duplicates:
        listed = ", ".join(f"{catalog.entity(entity_id)} {catalog.action(a)} (Id {h.get('Id')})"
                           for a, h in duplicates)
        raise DuplicateSubscription(
            _("already subscribed for {url}: {listed}. Nothing was created; unselect the "
              "action(s) that already exist").format(url=callback_url, listed=listed))
    return [client.create_webhook(entity_id, a, callback_url, validation_key)
            for a in action_ids]


# A test record: what each action looks like, with values nobody would take for real data.
_TEST_NAME = "Teste de entrega (Ploomes webhook monitor)"
_TEST_RECORD = {"Id": 0, "Name": _TEST_NAME}
_TEST_SIDES: dict[str, tuple[dict | None, dict | None]] = {
    "Create": (None, {**_TEST_RECORD, "StatusId": 1}),
    "Update": ({**_TEST_RECORD, "StatusId": 1}, {**_TEST_RECORD, "StatusId": 1,
                                                 "Name": _TEST_NAME + " ✓"}),
    "Delete": ({**_TEST_RECORD, "StatusId": 1}, None),
    "Win": ({**_TEST_RECORD, "StatusId": 1}, {**_TEST_RECORD, "StatusId": 2}),
    "Lose": ({**_TEST_RECORD, "StatusId": 1}, {**_TEST_RECORD, "StatusId": 3}),
    "Reopen": ({**_TEST_RECORD, "StatusId": 3}, {**_TEST_RECORD, "StatusId": 1}),
}


def example_delivery_body(webhook: dict, account_id: int | None = None) -> dict:
    """Return a test delivery for a subscription, shaped as Ploomes sends its action
    (`account_id`: the subscription's account, when known)."""
    entity_id = _int_or_none(webhook.get("EntityId"))
    action_id = _int_or_none(webhook.get("ActionId"))
    entity = _get(ENTITY_NAMES, entity_id) or _get(KNOWN_ENTITIES, entity_id) or "Contacts"
    action = _get(ACTION_NAMES, action_id) or "Update"
    # copies: a caller changing its body must not change the next one
    old, new = copy.deepcopy(_TEST_SIDES[action])
    return {"Action": action, "Entity": entity, "SecondaryEntityId": None,
            "AccountId": account_id,
            "ActionUserId": _int_or_none(webhook.get("CreatorId")),
            "WebhookId": _int_or_none(webhook.get("Id")),
            "WebhookCreatorId": _int_or_none(webhook.get("CreatorId")), "Old": old, "New": new}


@dataclass(frozen=True)
class DeliveryAnswer:
    """The receiver's answer to a delivery: HTTP status and body."""

    status: int
    body: Any  # decoded JSON, or the text when it is not JSON


def send_test_delivery(callback_url: str, validation_key: str | None, body: dict,
                       timeout: float = 10.0) -> DeliveryAnswer:
    """POST a delivery body to a callback URL as Ploomes does, marked as a test (the
    receiver journals it as one: left out of histories, counts and health); return the
    answer."""
    callback_url = validate_callback_url(callback_url)
    headers = {"Content-Type": "application/json; charset=utf-8", TEST_HEADER: "1"}
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
