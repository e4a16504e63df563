"""The audit trail of the dashboard itself: who asked for which change, when, from where,
and how it ended (table `audit_log`, docs/schema.md).

An action is recorded as `started` before it runs and marked `done` or `failed` after: if
the trail cannot be written, the action is not done, so nothing changes unrecorded. A
viewer's attempt is recorded as `refused`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from ploomes.actions.roles import Actor, NotAllowed, Role, role_of
from ploomes.config import Settings
from ploomes.i18n import N_, _
from ploomes.store import Store, StoreError, fetch_row, transaction

log = logging.getLogger(__name__)

# The actions the trail knows, as the sentence "may not …" finishes them.
ACTIONS = {
    "register_subscription": N_("register subscriptions"),
    "edit_subscription": N_("change subscriptions"),
    "pause_subscription": N_("pause subscriptions"),
    "activate_subscription": N_("re-activate subscriptions"),
    "delete_subscription": N_("delete subscriptions"),
    "test_delivery": N_("send test deliveries"),
    "sync_directory": N_("sync users and fields"),
    "generate_key": N_("generate validation keys"),
    "load_demo": N_("load demo data"),
    "remove_demo": N_("remove demo data"),
    "add_destination": N_("add relay destinations"),
    "pause_destination": N_("pause relay destinations"),
    "resume_destination": N_("resume relay destinations"),
    "remove_destination": N_("remove relay destinations"),
    "replay_deliveries": N_("replay deliveries"),
    "add_alert_rule": N_("add alert rules"),
    "mute_alert_rule": N_("mute alert rules"),
    "unmute_alert_rule": N_("unmute alert rules"),
    "remove_alert_rule": N_("remove alert rules"),
}
_TEXT_LIMIT = 500  # characters of a target or detail: an error message can be long


class AuditUnavailable(StoreError):
    """The audit trail cannot be written, so the action was not done."""


@dataclass
class Entry:
    """An action being recorded; set `detail` to say what it changed."""

    id: int
    detail: str | None = None


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= _TEXT_LIMIT:
        return text
    return text[: _TEXT_LIMIT - 1] + "…"


def record(store: Store, actor: Actor, role: Role | None, action: str, target: str | None,
           outcome: str, detail: str | None = None) -> int:
    """Append one entry to the audit trail and return its id."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audited action {action!r}")
    with store.writer() as con, transaction(con):
        entry_id = int(fetch_row(con, "SELECT coalesce(max(id), 0) + 1 FROM audit_log")[0])
        con.execute("INSERT INTO audit_log (id, asked_at, actor, role, client_ip, "
                    "forwarded_for, action, target, outcome, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [entry_id, datetime.now(UTC), actor.name, role and role.value,
                     actor.client_ip, actor.forwarded_for, action, _cut(target), outcome,
                     _cut(detail)])
    return entry_id


def _finish(store: Store, entry: Entry, outcome: str) -> None:
    try:
        with store.writer() as con:
            con.execute("UPDATE audit_log SET outcome = ?, detail = ? WHERE id = ?",
                        [outcome, _cut(entry.detail), entry.id])
    except StoreError as exc:
        # the action itself is over; its entry stays `started`, which still says who
        log.warning("audit entry %s could not be marked %s: %s", entry.id, outcome, exc)


@contextmanager
def admin_action(store: Store, settings: Settings, actor: Actor, action: str,
                 target: str | None) -> Iterator[Entry]:
    """Run the block as `action` by `actor`: refused unless an admin, recorded either way.

    Raises NotAllowed (after recording the refusal) for anyone but an admin, and
    AuditUnavailable, before the block runs, when the trail cannot be written.
    """
    role = role_of(actor, settings)
    if role is not Role.ADMIN:
        try:
            record(store, actor, role, action, target, "refused",
                   f"role {role.value if role else 'none'}")
        except StoreError as exc:
            log.warning("a refused %s by %s could not be recorded: %s", action, actor.name,
                        exc)
        # the page shows this message: in the interface's language
        raise NotAllowed(_("{who} may not {action}: only admins may change things "
                           "(PLOOMES_DASHBOARD_ADMINS)").format(who=actor.name,
                                                               action=_(ACTIONS[action])))
    try:
        entry = Entry(record(store, actor, role, action, target, "started"))
    except StoreError as exc:
        raise AuditUnavailable(_("the audit trail cannot be written ({problem}), so nothing "
                                 "was done; try again in a moment").format(problem=exc)) from exc
    try:
        yield entry
    except BaseException as exc:
        entry.detail = f"{type(exc).__name__}: {exc}"
        _finish(store, entry, "failed")
        raise
    _finish(store, entry, "done")
