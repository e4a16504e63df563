"""Demo data from the dashboard's buttons: loading and removing it are admin actions."""

from __future__ import annotations

from ploomes.actions.audit import admin_action
from ploomes.actions.roles import Actor
from ploomes.config import Settings
from ploomes.demo.load import load_demo, remove_demo
from ploomes.store import Store


def load(actor: Actor, settings: Settings, store: Store) -> int:
    """Store the demo month as demo data; return how many deliveries."""
    with admin_action(store, settings, actor, "load_demo", str(settings.data_dir)) as entry:
        count = load_demo(settings)
        entry.detail = f"{count} demo deliveries"
    return count


def remove(actor: Actor, settings: Settings, store: Store) -> None:
    """Remove every demo row, now and in any later rebuild."""
    with admin_action(store, settings, actor, "remove_demo", str(settings.data_dir)):
        remove_demo(settings)
