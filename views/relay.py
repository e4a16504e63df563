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
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS
from ploomes.queries import relay as relay_queries
from ploomes.relay.destinations import Destination, RelayConfig, RelayError, read_config
from ploomes.store import StoreError
from views.access import Access, current
from views.common import cached_query, clear_query_cache, settings, store, to_local
from views.relay_detail import attempts_table
from views.text import VALUE_LIMIT, cut, plain

FLASH = "relay_flash"
STATES = {"active": "ativo", "paused": "pausado à mão", "paused by the relay":
          "pausado pelo relay (falhando)"}
ADDRESSES = {"loopback": "loopback (esta máquina)", "private": "rede privada",
             "link-local": "link-local", "public": "pública", "unresolved": "não resolve"}


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
        st.error(f"Não foi possível ler os destinos: {plain(exc, VALUE_LIMIT)}")
        st.stop()
        raise RuntimeError("unreachable") from exc


def _destinations(config: RelayConfig) -> None:
    st.subheader("Destinos")
    if not config.destinations:
        st.info("Nenhum destino ainda. Um destino recebe cada entrega aceita, com novas "
                "tentativas, ordem por registro e reenvio.")
        return
    counts = cached_query(relay_queries.message_counts).set_index("target_id")
    rows = []
    for destination in config.destinations:
        shown = destination.masked()
        found = counts.loc[destination.id] if destination.id in counts.index else None
        rows.append({
            "Nome": destination.name, "Estado": STATES.get(shown["state"], shown["state"]),
            "URL": destination.url, "Endereço": ADDRESSES.get(shown["address"],
                                                                shown["address"]),
            "Filtro": shown["filter"], "Autenticação": shown["auth"],
            "Segredo": shown["secret"] or shown["ploomes_key"] or "—",
            "Entregues": int(found["delivered"]) if found is not None else 0,
            "Tentando": int(found["retrying"]) if found is not None else 0,
            "Falharam": int(found["failed"]) if found is not None else 0,
            "Motivo da pausa": shown["paused_reason"] or ""})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="relay_destinations")
    for destination in config.destinations:
        if destination.paused_by_relay:
            st.warning(f"**{plain(destination.name, VALUE_LIMIT)}** foi pausado pelo relay: "
                       f"{plain(destination.paused_reason or '', VALUE_LIMIT)}")
    local = [d.name for d in config.destinations
             if d.masked()["address"] in ("loopback", "private", "link-local")]
    if local:
        st.caption("Em endereço local ou de rede privada (permitido: um ERP local é um "
                   f"destino real): {plain(', '.join(local), VALUE_LIMIT)}")


def _listed(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in _listed(text)]
    except ValueError:
        raise ValueError(f"use whole numbers separated by commas, not {text!r}") from None


def _headers(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        if line.strip():
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"an extra header is 'Name: value', not {line.strip()!r}")
            pairs.append((name.strip(), value.strip()))
    return pairs


def _add_form(access: Access) -> None:
    with st.expander("Adicionar destino"), st.form("relay_add", clear_on_submit=False):
        name = st.text_input("Nome", key="relay_add_name",
                             help="Letras, números, '.', '_' ou '-'")
        url = st.text_input("URL", key="relay_add_url", placeholder="https://erp.empresa/hook")
        entities = st.multiselect("Entidades (vazio: todas)", list(ENTITY_IDS),
                                  key="relay_add_entities")
        actions = st.multiselect("Ações (vazio: todas)", list(ACTION_IDS),
                                 key="relay_add_actions")
        fields = st.text_input("Campos alterados (vazio: qualquer), separados por vírgula",
                               key="relay_add_fields", placeholder="StageId, Amount")
        accounts = st.text_input("Contas (AccountId; vazio: todas), separadas por vírgula",
                                 key="relay_add_accounts")
        headers = st.text_area("Cabeçalhos extras, um por linha (Nome: valor)",
                               key="relay_add_headers")
        retry = st.text_input("Status 4xx a tentar de novo (além de 408 e 429)",
                              key="relay_add_retry", placeholder="409, 423")
        secret = st.text_input("Segredo Standard Webhooks (whsec_…)", type="password",
                               key="relay_add_secret")
        ploomes_key = st.text_input("Chave repassada como X-Ploomes-Validation-Key",
                                    type="password", key="relay_add_ploomes_key")
        timeout = st.number_input("Tempo limite (s)", 1.0, 300.0, 15.0,
                                  key="relay_add_timeout")
        rate = st.number_input("Entregas por segundo no máximo (0: sem limite)", 0.0,
                               10_000.0, 0.0, key="relay_add_rate")
        if not st.form_submit_button("Adicionar", key="relay_add_submit"):
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
    _done(f"Destino {plain(added.name)} adicionado: recebe as próximas entregas em "
          "poucos segundos.")


def _manage(access: Access, destination: Destination) -> None:
    left, middle, right = st.columns(3)
    try:
        if destination.paused:
            if left.button("Retomar", key="relay_resume"):
                relay_actions.set_active(access.actor, settings(), store(), destination.name,
                                         True)
                _done(f"{plain(destination.name)} retomado: o que esperou é enviado em ordem.")
        elif left.button("Pausar", key="relay_pause"):
            relay_actions.set_active(access.actor, settings(), store(), destination.name,
                                     False)
            _done(f"{plain(destination.name)} pausado: as entregas esperam por ele.")
        sure = middle.checkbox("Confirmo a remoção", key="relay_remove_sure")
        if right.button("Remover", key="relay_remove", disabled=not sure):
            relay_actions.remove(access.actor, settings(), store(), destination.name)
            _done(f"{plain(destination.name)} removido.")
    except (NotAllowed, RelayError, StoreError, ValueError) as exc:
        _refused(exc)


def _attempts(destination: Destination) -> None:
    st.markdown("**Tentativas** (as mais recentes primeiro; cabeçalhos e corpo da resposta "
                "como texto)")
    found = cached_query(relay_queries.attempts, target_id=destination.id)
    if found.empty:
        st.caption("Nenhuma tentativa ainda.")
        return
    st.dataframe(attempts_table(found), hide_index=True, key="relay_attempts")


def _dead_letters(access: Access, destination: Destination) -> None:
    st.markdown("**Falharam de vez** (tentativas esgotadas ou recusadas)")
    dead = cached_query(relay_queries.dead_letters, destination.id)
    if dead.empty:
        st.caption("Nenhuma.")
        return
    st.dataframe(pd.DataFrame({
        "Evento": dead["event_id"], "Tentativas": dead["attempts"],
        "Última": to_local(dead["last_attempt_at"]), "Status": dead["last_status"],
        "Erro": [cut(e) for e in dead["last_error"]]}), hide_index=True, key="relay_dead")
    if access.is_admin and st.button(f"Reenviar as {len(dead)} entregas",
                                     key="relay_replay_failed"):
        _replay(access, destination, events=[int(e) for e in dead["event_id"]])


def _replay(access: Access, destination: Destination, events: list[int] | None = None,
            since: datetime | None = None) -> None:
    try:
        request = relay_actions.replay(access.actor, settings(), store(), destination.name,
                                       events=events or (), since=since)
    except (NotAllowed, RelayError, StoreError, ValueError) as exc:
        _refused(exc)
        return
    what = f"{len(events)} entrega(s)" if events else "o que não foi confirmado desde então"
    _done(f"Reenvio pedido para {plain(destination.name)} ({what}; pedido "
          f"{plain(request.id)}): o relay o faz em até um segundo.")


def _replay_since(access: Access, destination: Destination) -> None:
    st.markdown("**Reenviar o que não foi confirmado desde…**")
    left, right, button = st.columns([2, 2, 1], vertical_alignment="bottom")
    day = left.date_input("Dia", value=date.today(), key="relay_since_day")
    moment = right.time_input("Hora", value=time(0, 0), key="relay_since_time")
    if button.button("Reenviar", key="relay_replay_since"):
        since = datetime.combine(day, moment, tzinfo=settings().tz)
        _replay(access, destination, since=since)


def render() -> None:
    """Render the Relay page."""
    access = current()
    st.title("Relay")
    st.caption("Cada entrega aceita é repassada aos destinos da empresa: pelo menos uma "
               "vez, em ordem por registro, com novas tentativas e um registro de cada "
               "tentativa. Linha de comando: `python -m ploomes relay`.")
    _show_flash()
    config = _config()
    _destinations(config)
    if access.is_admin:
        _add_form(access)
    if not config.destinations:
        return
    names = [d.name for d in config.destinations]
    chosen = st.selectbox("Destino", names, key="relay_destination",
                          format_func=lambda n: cut(n, 120))
    destination = config.by_name(chosen)
    if access.is_admin:
        _manage(access, destination)
    _attempts(destination)
    _dead_letters(access, destination)
    if access.is_admin:
        _replay_since(access, destination)


render()
