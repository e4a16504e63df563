"""The relay's parts shown on other pages: an event's attempts and replay (Events
detail), and the destinations that paused themselves (Status)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ploomes.actions import NotAllowed
from ploomes.actions import relay as relay_actions
from ploomes.i18n import N_, _, format_number, ngettext
from ploomes.queries import relay as relay_queries
from ploomes.queries.events import EXPORT_LIMIT, EventFilter, export_events
from ploomes.relay.destinations import RelayError, read_config
from ploomes.store import StoreError
from views.access import current
from views.common import clear_query_cache, live_query, run_query, settings, store, to_local
from views.text import VALUE_LIMIT, cut, plain

OUTCOMES = {"delivered": N_("delivered"), "retry": N_("retry"), "failed": N_("failed")}


def attempts_table(found: pd.DataFrame) -> pd.DataFrame:
    """Return attempts as the pages show them (local times, outcomes in words, the
    destination's headers and body as plain cells)."""
    return pd.DataFrame({
        _("When"): to_local(found["attempted_at"]), _("Event"): found["event_id"],
        _("Destination"): found["target_name"], _("Attempt"): found["attempt"],
        _("Outcome"): [_(OUTCOMES[o]) if o in OUTCOMES else o for o in found["outcome"]],
        _("Status"): found["status"], _("Latency (ms)"): found["latency_ms"].round(1),
        _("Error"): [cut(e) for e in found["error"]],
        _("Next"): to_local(found["next_attempt_at"]),
        _("Replay"): found["replay"],
        _("Headers"): [cut(h, 2000) for h in found["response_headers"]],
        _("Body"): [cut(b, 4096) for b in found["response_body"]]})


def event_relay(event_id: int) -> None:
    """Show an event's attempts to every destination, and (admins) a replay button."""
    try:
        config = read_config(settings())
    except RelayError:
        return  # the Relay page says what is wrong with the file
    if not config.destinations:
        return
    st.subheader(_("Relay"))
    found = live_query(relay_queries.attempts, event_id=event_id)
    if found.empty:
        st.caption(_("No attempt to pass this event on (yet, or no filter accepts it)."))
    else:
        st.dataframe(attempts_table(found), hide_index=True, key="event_relay_attempts")
    access = current()
    if not access.is_admin:
        return
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    name = left.selectbox(_("Replay this event to"), [d.name for d in config.destinations],
                          key="event_replay_destination", format_func=lambda n: cut(n, 120))
    if right.button(_("Replay"), key="event_replay"):
        try:
            relay_actions.replay(access.actor, settings(), store(), name, events=(event_id,))
        except (NotAllowed, RelayError, StoreError, ValueError) as exc:
            st.error(plain(str(exc), VALUE_LIMIT))
            return
        clear_query_cache()
        st.success(_("Replay of event #{id} to {name} requested.").format(id=event_id,
                                                                          name=plain(name)))


def paused_by_relay() -> None:
    """Say which destinations the relay paused because they kept failing."""
    try:
        config = read_config(settings())
    except RelayError as exc:
        st.error(_("The relay's destinations cannot be read: {problem}").format(
            problem=plain(exc, VALUE_LIMIT)))
        return
    for destination in config.destinations:
        if destination.paused_by_relay:
            st.warning(_("Relay: the destination **{name}** was paused for failing: {reason} "
                         "Resume it on the Relay page when it answers.").format(
                name=plain(destination.name, VALUE_LIMIT),
                reason=plain(destination.paused_reason or "", VALUE_LIMIT)))


def filtered_replay(event_filter: EventFilter) -> None:
    """(Admins) send the events the Events page's filters select to a destination again."""
    try:
        config = read_config(settings())
    except RelayError:
        return
    if not config.destinations or not current().is_admin:
        return
    with st.expander(_("Replay these events to a relay destination")):
        st.caption(_("The events of the list below, with exactly its filters (at most the "
                     "{limit} newest), with the same webhook-id as before.").format(
            limit=format_number(EXPORT_LIMIT)))
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        name = left.selectbox(_("Destination"), [d.name for d in config.destinations],
                              key="events_replay_destination", format_func=lambda n: cut(n, 120))
        if not right.button(_("Replay"), key="events_replay_filtered"):
            return
        ids = [int(i) for i in run_query(export_events, event_filter)["id"]]
        if not ids:
            st.info(_("No event with these filters."))
            return
        try:
            relay_actions.replay(current().actor, settings(), store(), name, events=ids)
        except (NotAllowed, RelayError, StoreError, ValueError) as exc:
            st.error(plain(str(exc), VALUE_LIMIT))
            return
        st.success(ngettext("Replay of {count} event to {name} requested.",
                             "Replay of {count} events to {name} requested.", len(ids)).format(
            count=format_number(len(ids)), name=plain(name)))
