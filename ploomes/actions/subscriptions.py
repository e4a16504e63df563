"""Subscription changes from the Webhooks page: register, edit, pause and re-activate,
delete, test, sync names.

Each is an admin action (`admin_action`): checked, then recorded in the audit trail.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ploomes.actions.audit import admin_action
from ploomes.actions.roles import Actor
from ploomes.config import Settings, mask_secret
from ploomes.crm import directory
from ploomes.crm import subscriptions as crm_subscriptions
from ploomes.crm.api import PloomesClient, validate_callback_url
from ploomes.i18n import _
from ploomes.intake.keys import add_key, generate_key
from ploomes.store import Store


def register(actor: Actor, settings: Settings, store: Store, client: PloomesClient,
             existing: list[dict], entity_id: int, action_ids: Iterable[int],
             callback_url: str, validation_key: str | None,
             catalog: crm_subscriptions.Catalog) -> tuple[list[dict], str]:
    """Create one subscription per action; return them and the validation key they carry.

    Without a key, a new one is generated and stored first so the receiver accepts it.
    """
    action_ids = list(action_ids)
    target = (f"{catalog.entity(entity_id)} "
              f"{', '.join(catalog.action(a) for a in action_ids) or '(no action)'} → "
              f"{callback_url}")
    with admin_action(store, settings, actor, "register_subscription", target) as entry:
        callback_url = validate_callback_url(callback_url)
        if not action_ids:
            raise ValueError(_("choose at least one action"))
        notes = []
        if not validation_key:  # checked first: a refused form stores no key
            validation_key = generate_key()
            add_key(settings, validation_key)
            notes.append(f"generated and stored the new key {mask_secret(validation_key)}")
        created = crm_subscriptions.register_subscriptions(
            client, existing, entity_id, action_ids, callback_url, validation_key, catalog)
        ids = ", ".join(str(c.get("Id")) for c in created)
        entry.detail = "; ".join([f"created {ids} with key {mask_secret(validation_key)}",
                                  *notes])
    return created, validation_key


def edit(actor: Actor, settings: Settings, store: Store, client: PloomesClient,
         webhook: dict, changes: dict[str, Any]) -> dict | None:
    """Change fields of a subscription (`callback_url`, `active`, `validation_key`)."""
    webhook_id = int(webhook["Id"])
    shown = {name: (mask_secret(value) if name == "validation_key" else value)
             for name, value in changes.items()}
    with admin_action(store, settings, actor, "edit_subscription",
                      f"subscription {webhook_id} → {webhook.get('CallbackUrl')}") as entry:
        if not changes:
            raise ValueError(_("nothing to change"))
        updated = client.update_webhook(webhook_id, **changes)
        entry.detail = ", ".join(f"{name} = {value}" for name, value in shown.items())
    return updated


def set_active(actor: Actor, settings: Settings, store: Store, client: PloomesClient,
               webhook: dict, active: bool) -> dict | None:
    """Pause (`active` False) or re-activate a subscription: Ploomes' `Active`, through
    PATCH /Webhooks(id). A paused subscription keeps its settings and delivers nothing."""
    webhook_id = int(webhook["Id"])
    action = "activate_subscription" if active else "pause_subscription"
    with admin_action(store, settings, actor, action,
                      f"subscription {webhook_id} → {webhook.get('CallbackUrl')}") as entry:
        updated = client.update_webhook(webhook_id, active=bool(active))
        entry.detail = f"active = {bool(active)}"
    return updated


def delete(actor: Actor, settings: Settings, store: Store, client: PloomesClient,
           webhook: dict) -> None:
    """Delete a subscription in Ploomes."""
    webhook_id = int(webhook["Id"])
    with admin_action(store, settings, actor, "delete_subscription",
                      f"subscription {webhook_id} → {webhook.get('CallbackUrl')}") as entry:
        client.delete_webhook(webhook_id)
        entry.detail = (f"EntityId {webhook.get('EntityId')}, ActionId "
                        f"{webhook.get('ActionId')}")


def send_test(actor: Actor, settings: Settings, store: Store, webhook: dict,
              validation_key: str | None, account_id: int | None = None
              ) -> crm_subscriptions.DeliveryAnswer:
    """POST an example delivery for a subscription to its callback URL; return the answer.

    It is an admin action. The delivery says it is a test, and the receiver stores it as
    one (`events.is_test`), out of histories, counts and the subscription's health.
    """
    with admin_action(store, settings, actor, "test_delivery",
                      f"subscription {webhook.get('Id')} → {webhook.get('CallbackUrl')}"
                      ) as entry:
        answer = crm_subscriptions.send_test_delivery(
            webhook["CallbackUrl"], validation_key,
            crm_subscriptions.example_delivery_body(webhook, account_id))
        entry.detail = f"HTTP {answer.status}"
    return answer


def sync_directory(actor: Actor, settings: Settings, store: Store,
                   client: PloomesClient) -> directory.SyncResult:
    """Copy users and custom fields from Ploomes into the store, on an admin's request."""
    with admin_action(store, settings, actor, "sync_directory", settings.api_url) as entry:
        result = directory.sync_directory(client, store)
        entry.detail = f"{result.users} users, {result.fields} custom fields"
    return result
