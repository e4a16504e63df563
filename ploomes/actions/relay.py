"""Relay changes from the dashboard: add, pause, resume and remove destinations, replay
deliveries. Each is an admin action (`admin_action`): checked, then recorded in the audit
trail; secrets appear there masked only.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ploomes.actions.audit import admin_action
from ploomes.actions.roles import Actor
from ploomes.config import Settings
from ploomes.relay.destinations import (
    Destination,
    add_destination,
    build_destination,
    read_config,
    remove_destination,
    set_paused,
)
from ploomes.relay.replays import ReplayRequest, request_replay
from ploomes.store import Store


def add(actor: Actor, settings: Settings, store: Store, name: str, url: str,
        **options: Any) -> Destination:
    """Add a destination (`options`: those of `build_destination`)."""
    with admin_action(store, settings, actor, "add_destination", f"{name} → {url}") as entry:
        destination = add_destination(settings, build_destination(settings, name, url,
                                                                  **options))
        shown = destination.masked()
        entry.detail = (f"{shown['filter']}; authentication {shown['auth']}"
                        + (f" (secret {shown['secret']})" if shown["secret"] else "")
                        + (f" (Ploomes key {shown['ploomes_key']})"
                           if shown["ploomes_key"] else ""))
    return destination


def set_active(actor: Actor, settings: Settings, store: Store, name: str, active: bool
               ) -> Destination:
    """Resume (`active`) or pause a destination by hand."""
    action = "resume_destination" if active else "pause_destination"
    with admin_action(store, settings, actor, action, name):
        return set_paused(settings, name, not active, by=None if active else actor.name,
                          reason=None if active else f"paused by {actor.name}")


def remove(actor: Actor, settings: Settings, store: Store, name: str) -> Destination:
    """Remove a destination; what it had queued is dropped."""
    with admin_action(store, settings, actor, "remove_destination", name):
        return remove_destination(settings, name)


def replay(actor: Actor, settings: Settings, store: Store, name: str, *,
           events: Iterable[int] = (), since: datetime | None = None) -> ReplayRequest:
    """Ask the forwarder to send deliveries to a destination again: these events, or
    everything it did not confirm since a time."""
    chosen = tuple(int(e) for e in events)
    what = (f"{len(chosen)} event(s)" if chosen else
            f"since {since.isoformat() if since else '?'}")
    with admin_action(store, settings, actor, "replay_deliveries", f"{name}: {what}") as entry:
        destination = read_config(settings).by_name(name)
        request = request_replay(settings, destination.id, destination.name, events=chosen,
                                 since=since, requested_by=actor.name)
        entry.detail = f"request {request.id}"
    return request
