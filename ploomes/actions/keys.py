"""Validation keys from the dashboard: generating one is an admin action, recorded."""

from __future__ import annotations

from ploomes.actions.audit import admin_action
from ploomes.actions.roles import Actor
from ploomes.config import Settings, mask_secret
from ploomes.intake.keys import add_key, generate_key, key_file
from ploomes.store import Store


def generate(actor: Actor, settings: Settings, store: Store) -> str:
    """Generate a validation key, store it so the receiver accepts it, and return it."""
    with admin_action(store, settings, actor, "generate_key", str(key_file(settings))
                      ) as entry:
        key = generate_key()
        add_key(settings, key)
        entry.detail = f"key {mask_secret(key)}"
    return key
