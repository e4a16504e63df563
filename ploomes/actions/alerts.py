"""Alert rules from the Alerts page: add, mute, unmute, remove.

Each is an admin action (`admin_action`): checked, then recorded in the audit trail. An
Apprise address is a secret: the trail keeps it masked.
"""

from __future__ import annotations

from typing import Any

from ploomes.actions.audit import admin_action
from ploomes.actions.roles import Actor
from ploomes.alerts import rules
from ploomes.config import Settings
from ploomes.store import Store


def add(actor: Actor, settings: Settings, store: Store, name: str, kind: str,
        spec: dict[str, Any], notify: str | None, per_hour: int = rules.DEFAULT_PER_HOUR
        ) -> rules.Rule:
    """Check and store a new rule (RuleError says what is wrong)."""
    with admin_action(store, settings, actor, "add_alert_rule", name) as entry:
        rule = rules.add_rule(store, name, kind, spec, notify, per_hour)
        entry.detail = f"{kind} {rule.spec} → {rules.masked_notify(rule.notify)}"
    return rule


def set_muted(actor: Actor, settings: Settings, store: Store, name: str, muted: bool
              ) -> rules.Rule:
    """Mute a rule (it fires nothing) or let it fire again."""
    action = "mute_alert_rule" if muted else "unmute_alert_rule"
    with admin_action(store, settings, actor, action, name):
        return rules.set_muted(store, name, muted)


def remove(actor: Actor, settings: Settings, store: Store, name: str) -> rules.Rule:
    """Remove a rule; the alerts it fired stay listed."""
    with admin_action(store, settings, actor, "remove_alert_rule", name):
        return rules.remove_rule(store, name)
