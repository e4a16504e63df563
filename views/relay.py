"""Relay: the destinations every accepted delivery is forwarded to, their attempts, the
deliveries that failed for good, and replays. Changes are admins' (ploomes.actions.relay:
role checked in the server, audited); a viewer sees everything but secrets.

Names, URLs, response headers and bodies are outside text: shown in tables or as text.
"""

from __future__ import annotations

from datetime import date, datetime, time

import pandas as pd
import streamlit as st

from ploomes.actions import NotAllowed
from ploomes.actions import relay as relay_actions
from ploomes.i18n import N_, _, format_number, ngettext
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS
from ploomes.queries import relay as relay_queries
from ploomes.relay.destinations import Destination, RelayConfig, RelayError, read_config
from ploomes.store import StoreError
from views.access import Access, current
from views.common import cached_query, clear_query_cache, settings, store, to_local
from views.relay_detail import attempts_table
from views.text import VALUE_LIMIT, cut, plain

FLASH = "relay_flash"
STATES = {"active": N_("active"), "paused": N_("paused by hand"),
          "paused by the relay": N_("paused by the relay (failing)")}
ADDRESSES = {"loopback": N_("loopback (this machine)"), "private": N_("private network"),
             "link-local": N_("link-local"), "public": N_("public"),
             "unresolved": N_("does not resolve")}


def _state(value: str) -> str:
    return _(STATES[value]) if value in STATES else value


def _address(value: str) -> str:
    return _(ADDRESSES[value]) if value in ADDRESSES else value


def _flash(kind: str, text: str) -> None:
    st.session_state.setdefault(FLASH, []).append((kind, text))


def _show_flash() -> None:
    for kind, text in st.session_state.pop(FLASH, []):
        getattr(st, kind)(text)


def _done(text: str) -> None:
    clear_query_cache()
    _flash("success", text)
    st.rerun()


def _refused(exc: Exception) -> None:
    st.error(plain(str(exc), VALUE_LIMIT))


def _config() -> RelayConfig:
    try:
        return read_config(settings())
    except RelayError as exc:
        st.error(_("The destinations could not be read: {problem}").format(
            problem=plain(exc, VALUE_LIMIT)))
        st.stop()
        raise RuntimeError("unreachable") from exc


def _destinations(config: RelayConfig) -> None:
    st.subheader(_("Destinations"))
    if not config.destinations:
        st.info(_("No destination yet. A destination receives every accepted delivery, with "
                  "retries, order per record and replays."))
        return
    counts = cached_query(relay_queries.message_counts).set_index("target_id")
    rows = []
    for destination in config.destinations:
        shown = destination.masked()
        found = counts.loc[destination.id] if destination.id in counts.index else None
        rows.append({
            _("Name"): destination.name, _("State"): _state(shown["state"]),
            _("URL"): destination.url, _("Address"): _address(shown["address"]),
            _("Filter"): shown["filter"], _("Authentication"): shown["auth"],
            _("Secret"): shown["secret"] or shown["ploomes_key"] or "—",
            _("Delivered"): int(found["delivered"]) if found is not None else 0,
            _("Retrying"): int(found["retrying"]) if found is not None else 0,
            _("Failed"): int(found["failed"]) if found is not None else 0,
            _("Why paused"): shown["paused_reason"] or ""})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="relay_destinations")
    for destination in config.destinations:
        if destination.paused_by_relay:
            st.warning(_("**{name}** was paused by the relay: {reason}").format(
                name=plain(destination.name, VALUE_LIMIT),
                reason=plain(destination.paused_reason or "", VALUE_LIMIT)))
    local = [d.name for d in config.destinations
             if d.masked()["address"] in ("loopback", "private", "link-local")]
    if local:
        st.caption(_("At a local or private network address (allowed: a local ERP is a real "
                     "destination): {names}").format(names=plain(", ".join(local), VALUE_LIMIT)))


def _listed(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in _listed(text)]
    except ValueError:
        raise ValueError(_("use whole numbers separated by commas, not {text}").format(
            text=repr(text))) from None


def _headers(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        if line.strip():
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(_("an extra header is 'Name: value', not {line}").format(
                    line=repr(line.strip())))
            pairs.append((name.strip(), value.strip()))
    return pairs


def _add_form(access: Access) -> None:
    with st.expander(_("Add a destination")), st.form("relay_add", clear_on_submit=False):
        name = st.text_input(_("Name"), key="relay_add_name",
                             help=_("Letters, digits, '.', '_' or '-'"))
        url = st.text_input(_("URL"), key="relay_add_url", placeholder="https://erp.empresa/hook")
        entities = st.multiselect(_("Entities (empty: all)"), list(ENTITY_IDS),
                                  key="relay_add_entities")
        actions = st.multiselect(_("Actions (empty: all)"), list(ACTION_IDS),
                                 key="relay_add_actions")
        fields = st.text_input(_("Changed fields (empty: any), separated by commas"),
                               key="relay_add_fields", placeholder="StageId, Amount")
        accounts = st.text_input(_("Accounts (AccountId; empty: all), separated by commas"),
                                 key="relay_add_accounts")
        headers = st.text_area(_("Extra headers, one a line (Name: value)"),
                               key="relay_add_headers")
        retry = st.text_input(_("4xx statuses to retry (besides 408 and 429)"),
                              key="relay_add_retry", placeholder="409, 423")
        secret = st.text_input(_("Standard Webhooks secret (whsec_…)"), type="password",
                               key="relay_add_secret")
        ploomes_key = st.text_input(_("Key passed on as X-Ploomes-Validation-Key"),
                                    type="password", key="relay_add_ploomes_key")
        timeout = st.number_input(_("Timeout (s)"), 1.0, 300.0, 15.0,
                                  key="relay_add_timeout")
        rate = st.number_input(_("Deliveries a second at most (0: no limit)"), 0.0,
                               10_000.0, 0.0, key="relay_add_rate")
        if not st.form_submit_button(_("Add"), key="relay_add_submit"):
            return
    try:
        added = relay_actions.add(access.actor, settings(), store(), name, url,
                                  entities=entities, actions=actions,
                                  fields=_listed(fields), accounts=_numbers(accounts),
                                  headers=_headers(headers),
                                  retry_statuses=_numbers(retry),
                                  secret=secret or None, ploomes_key=ploomes_key or None,
                                  timeout=timeout, rate=rate or None)
    except (NotAllowed, RelayError, StoreError, ValueError) as exc:
        _refused(exc)
        return
    _done(_("Destination {name} added: it receives the next deliveries within a few "
            "seconds.").format(name=plain(added.name)))


def _manage(access: Access, destination: Destination) -> None:
    left, middle, right = st.columns(3)
    try:
        if destination.paused:
            if left.button(_("Resume"), key="relay_resume"):
                relay_actions.set_active(access.actor, settings(), store(), destination.name,
                                         True)
                _done(_("{name} resumed: what waited is sent in order.").format(
                    name=plain(destination.name)))
        elif left.button(_("Pause"), key="relay_pause"):
            relay_actions.set_active(access.actor, settings(), store(), destination.name,
                                     False)
            _done(_("{name} paused: deliveries wait for it.").format(name=plain(destination.name)))
        sure = middle.checkbox(_("I confirm the removal"), key="relay_remove_sure")
        if right.button(_("Remove"), key="relay_remove", disabled=not sure):
            relay_actions.remove(access.actor, settings(), store(), destination.name)
            _done(_("{name} removed.").format(name=plain(destination.name)))
    except (NotAllowed, RelayError, StoreError, ValueError) as exc:
        _refused(exc)


def _attempts(destination: Destination) -> None:
    st.markdown(_("**Attempts** (newest first; the response's headers and body as text)"))
    found = cached_query(relay_queries.attempts, target_id=destination.id)
    if found.empty:
        st.caption(_("No attempt yet."))
        return
    st.dataframe(attempts_table(found), hide_index=True, key="relay_attempts")


def _dead_letters(access: Access, destination: Destination) -> None:
    st.markdown(_("**Failed for good** (retries exhausted or refused)"))
    dead = cached_query(relay_queries.dead_letters, destination.id)
    if dead.empty:
        st.caption(_("None."))
        return
    st.dataframe(pd.DataFrame({
        _("Event"): dead["event_id"], _("Attempts"): dead["attempts"],
        _("Last"): to_local(dead["last_attempt_at"]), _("Status"): dead["last_status"],
        _("Error"): [cut(e) for e in dead["last_error"]]}), hide_index=True, key="relay_dead")
    label = ngettext("Replay the {count} delivery", "Replay the {count} deliveries",
                     len(dead)).format(count=format_number(len(dead)))
    if access.is_admin and st.button(label, key="relay_replay_failed"):
        _replay(access, destination, events=[int(e) for e in dead["event_id"]])


def _replay(access: Access, destination: Destination, events: list[int] | None = None,
            since: datetime | None = None) -> None:
    try:
        request = relay_actions.replay(access.actor, settings(), store(), destination.name,
                                       events=events or (), since=since)
    except (NotAllowed, RelayError, StoreError, ValueError) as exc:
        _refused(exc)
        return
    what = (ngettext("{count} delivery", "{count} deliveries", len(events)).format(
        count=format_number(len(events))) if events else _("what was not confirmed since then"))
    _done(_("Replay requested for {name} ({what}; request {request}): the relay does it within "
            "a second.").format(name=plain(destination.name), what=what,
                                 request=plain(request.id)))


def _replay_since(access: Access, destination: Destination) -> None:
    st.markdown(_("**Replay what was not confirmed since…**"))
    left, right, button = st.columns([2, 2, 1], vertical_alignment="bottom")
    day = left.date_input(_("Day"), value=date.today(), key="relay_since_day")
    moment = right.time_input(_("Time"), value=time(0, 0), key="relay_since_time")
    if button.button(_("Replay"), key="relay_replay_since"):
        since = datetime.combine(day, moment, tzinfo=settings().tz)
        _replay(access, destination, since=since)


def render() -> None:
    """Render the Relay page."""
    access = current()
    st.title(_("Relay"))
    st.caption(_("Every accepted delivery is passed on to the company's destinations: at "
                 "least once, in order per record, with retries and a record of every "
                 "attempt. Command line: `python -m ploomes relay`."))
    _show_flash()
    config = _config()
    _destinations(config)
    if access.is_admin:
        _add_form(access)
    if not config.destinations:
        return
    names = [d.name for d in config.destinations]
    chosen = st.selectbox(_("Destination"), names, key="relay_destination",
                          format_func=lambda n: cut(n, 120))
    destination = config.by_name(chosen)
    if access.is_admin:
        _manage(access, destination)
    _attempts(destination)
    _dead_letters(access, destination)
    if access.is_admin:
        _replay_since(access, destination)


render()
