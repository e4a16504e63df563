"""The relay's parts shown on other pages: an event's attempts and replay (Events
detail), and the destinations that paused themselves (Status)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ploomes.actions import NotAllowed
from ploomes.actions import relay as relay_actions
from ploomes.queries import relay as relay_queries
from ploomes.queries.events import EXPORT_LIMIT, EventFilter, export_events
from ploomes.relay.destinations import RelayError, read_config
from ploomes.store import StoreError
from views.access import current
from views.common import clear_query_cache, live_query, run_query, settings, store, to_local
from views.text import VALUE_LIMIT, cut, plain

OUTCOMES = {"delivered": "entregue", "retry": "nova tentativa", "failed": "falhou"}


def attempts_table(found: pd.DataFrame) -> pd.DataFrame:
    """Return attempts as the pages show them (local times, outcomes in words, the
    destination's headers and body as plain cells)."""
    return pd.DataFrame({
        "Quando": to_local(found["attempted_at"]), "Evento": found["event_id"],
        "Destino": found["target_name"], "Tentativa": found["attempt"],
        "Resultado": [OUTCOMES.get(o, o) for o in found["outcome"]],
        "Status": found["status"], "Latência (ms)": found["latency_ms"].round(1),
        "Erro": [cut(e) for e in found["error"]],
        "Próxima": to_local(found["next_attempt_at"]),
        "Reenvio": found["replay"],
        "Cabeçalhos": [cut(h, 2000) for h in found["response_headers"]],
        "Corpo": [cut(b, 4096) for b in found["response_body"]]})


def event_relay(event_id: int) -> None:
    """Show an event's attempts to every destination, and (admins) a replay button."""
    try:
        config = read_config(settings())
    except RelayError:
        return  # the Relay page says what is wrong with the file
    if not config.destinations:
        return
    st.subheader("Relay")
    found = live_query(relay_queries.attempts, event_id=event_id)
    if found.empty:
        st.caption("Nenhuma tentativa de repassar este evento (ainda, ou nenhum filtro o "
                   "aceita).")
    else:
        st.dataframe(attempts_table(found), hide_index=True, key="event_relay_attempts")
    access = current()
    if not access.is_admin:
        return
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    name = left.selectbox("Reenviar este evento para", [d.name for d in config.destinations],
                          key="event_replay_destination", format_func=lambda n: cut(n, 120))
    if right.button("Reenviar", key="event_replay"):
        try:
            relay_actions.replay(access.actor, settings(), store(), name, events=(event_id,))
        except (NotAllowed, RelayError, StoreError, ValueError) as exc:
            st.error(plain(str(exc), VALUE_LIMIT))
            return
        clear_query_cache()
        st.success(f"Reenvio do evento #{event_id} para {plain(name)} pedido.")


def paused_by_relay() -> None:
    """Say which destinations the relay paused because they kept failing."""
    try:
        config = read_config(settings())
    except RelayError as exc:
        st.error(f"Os destinos do relay não podem ser lidos: {plain(exc, VALUE_LIMIT)}")
        return
    for destination in config.destinations:
        if destination.paused_by_relay:
            st.warning(f"Relay: o destino **{plain(destination.name, VALUE_LIMIT)}** foi "
                       f"pausado por falhar: {plain(destination.paused_reason or '', VALUE_LIMIT)}"
                       " Retome-o na página Relay quando ele responder.")


def filtered_replay(event_filter: EventFilter) -> None:
    """(Admins) send the events the Events page's filters select to a destination again."""
    try:
        config = read_config(settings())
    except RelayError:
        return
    if not config.destinations or not current().is_admin:
        return
    with st.expander("Reenviar estes eventos a um destino do relay"):
        st.caption(f"Os eventos da lista abaixo, com exatamente os seus filtros (no máximo os "
                   f"{EXPORT_LIMIT:,} mais recentes), com o mesmo webhook-id de antes.")
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        name = left.selectbox("Destino", [d.name for d in config.destinations],
                              key="events_replay_destination", format_func=lambda n: cut(n, 120))
        if not right.button("Reenviar", key="events_replay_filtered"):
            return
        ids = [int(i) for i in run_query(export_events, event_filter)["id"]]
        if not ids:
            st.info("Nenhum evento com estes filtros.")
            return
        try:
            relay_actions.replay(current().actor, settings(), store(), name, events=ids)
        except (NotAllowed, RelayError, StoreError, ValueError) as exc:
            st.error(plain(str(exc), VALUE_LIMIT))
            return
        st.success(f"Reenvio de {len(ids):,} evento(s) para {plain(name)} pedido.")
