"""Records: one record's change history, its state at a moment, and its continuity gaps.

`?entity=Deals&record=123` in the URL selects a record. The history refreshes by itself;
a row of its timeline opens that event on the Events page.
"""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from ploomes.i18n import _, ngettext
from ploomes.queries import events as event_queries
from ploomes.queries import records
from views.common import (
    LIVE_SECONDS,
    QUERY_TTL,
    account_choice,
    action_name,
    entity_name,
    fmt_time,
    live_query,
    page_available,
    run_query,
    settings,
    time_column,
)
from views.text import HEADER_LIMIT, VALUE_LIMIT, cut, gap_message, plain

EVENTS_PAGE = "views/events.py"
TIMELINE_KEY = "timeline_table"


@st.cache_data(ttl=QUERY_TTL, show_spinner=False)
def _entities(data_dir: str) -> list[str]:
    return run_query(event_queries.distinct_values, "entity")  # not users and actions too


@st.cache_data(ttl=QUERY_TTL, show_spinner=False)
def _find(data_dir: str, entity: str | None, record_id: int | None, text: str | None
          ) -> pd.DataFrame:
    return run_query(records.find_records, entity=entity, record_id=record_id, text=text)


def _events(entity: str, record_id: int) -> pd.DataFrame:
    return live_query(records.record_events, entity, record_id)


def _history(entity: str, record_id: int, bookkeeping: bool) -> pd.DataFrame:
    return live_query(records.record_history, entity, record_id,
                      include_bookkeeping=bookkeeping)


def _gaps(entity: str, record_id: int) -> pd.DataFrame:
    return live_query(records.continuity_gaps, entity, record_id)


def _state(entity: str, record_id: int, event_id: int) -> records.RecordSnapshot:
    return live_query(records.state_at, entity, record_id, event_id=event_id)


def _select(entity: str, record_id: int) -> None:
    st.query_params["entity"] = entity
    st.query_params["record"] = str(record_id)


def _search(data_dir: str) -> tuple[str, int] | None:
    """Draw the search inputs; return the chosen (entity, record id), if any."""
    entities = _entities(data_dir)
    wanted_entity = st.query_params.get("entity")
    wanted_record = (st.query_params.get("record") or "").strip()
    # the URL seeds the inputs on first load; afterwards the inputs drive the URL
    st.session_state.setdefault("r_record", wanted_record)
    choices = sorted(set(entities) | ({wanted_entity} if wanted_entity else set()))
    c1, c2, c3 = st.columns([1, 1, 2])
    entity = c1.selectbox(_("Entity"), choices or ["Deals"], key="r_entity",
                          index=choices.index(wanted_entity) if wanted_entity in choices else 0,
                          format_func=lambda name: cut(entity_name(name), HEADER_LIMIT))
    record_text = c2.text_input(_("Record id"), key="r_record").strip()
    text = c3.text_input(_("…or a name or title in the record"), key="r_text").strip()
    if record_text:
        # ASCII digits that fit a BIGINT: `str.isdigit` also takes "²", which int() refuses
        if not re.fullmatch(r"[0-9]{1,18}", record_text):
            st.error(_("Record id must be a whole number, such as 405531355."))
            return None
        return entity, int(record_text)
    if not text:
        st.info(_("Type a record id, or part of a name (Name, LegalName or Title), to find "
                  "a record."))
        return None
    found = _find(data_dir, entity, None, text)
    if found.empty:
        st.warning(_("No record of {entity} has “{text}” in its name or title. Try another "
                     "entity or fewer letters.").format(
                         entity=plain(entity_name(entity), VALUE_LIMIT),
                         text=plain(text, VALUE_LIMIT)))
        return None
    untitled = _("untitled")
    labels = {int(r.record_id): f"{r.record_id} · {cut(r.title or untitled, HEADER_LIMIT)}"
              for r in found.itertuples(index=False)}
    chosen = st.selectbox(ngettext("{count} record found", "{count} records found",
                                   len(found)).format(count=len(found)),
                          list(labels), key="r_pick",
                          format_func=labels.get)
    return entity, int(chosen)


def _open_event(event_id: int) -> None:
    """Show one event of the history on the Events page."""
    if page_available(EVENTS_PAGE):
        st.switch_page(EVENTS_PAGE, query_params={"event": str(event_id)})
    st.markdown(_("[Open event #{id}](events?event={id})").format(id=event_id))


def _timeline(events: pd.DataFrame, zone: str) -> None:
    st.subheader(_("Timeline"))
    state = st.dataframe(pd.DataFrame({
        "event": events["event_id"],
        "received": time_column(events["received_at"], zone),
        "action": events["action"].map(action_name),
        "user": events["user_name"],
        "changed fields": events["changed_fields"],
        "demo": events["is_demo"],
    }), hide_index=True, width="stretch", key=TIMELINE_KEY, on_select="rerun",
        selection_mode="single-row", placeholder="—", column_config={
            "event": st.column_config.NumberColumn(_("event"), format="%d", pinned=True),
            "received": st.column_config.TextColumn(_("received")),
            "action": st.column_config.TextColumn(_("action")),
            "user": st.column_config.TextColumn(_("user")),
            "changed fields": st.column_config.TextColumn(_("changed fields"), width="large"),
            "demo": st.column_config.CheckboxColumn(_("demo"))})
    st.caption(_("Pick a row to open that event."))
    picked = [i for i in state.selection.rows if 0 <= i < len(events)]
    if picked:
        st.session_state.pop(TIMELINE_KEY, None)  # back on this page, nothing is picked
        _open_event(int(events["event_id"].iloc[picked[0]]))


def _changes(entity: str, record_id: int) -> None:
    with st.expander(_("Every field change")):
        bookkeeping = st.toggle(_("Show bookkeeping fields"), key="r_bookkeeping")
        rows = _history(entity, record_id, bookkeeping)
        rows = rows[rows["field"].notna()]
        if rows.empty:
            st.write(_("No field changes to show."))
            return
        st.dataframe(pd.DataFrame({
            "event": rows["event_id"],
            "received": time_column(rows["received_at"], settings().timezone),
            "user": rows["user_name"],
            "field": rows["field_label"],
            "before": rows["before"],
            "after": rows["after"],
            "API name": rows["field"],
        }), hide_index=True, width="stretch", key="changes_table", placeholder="—",
            column_config={"event": st.column_config.NumberColumn(_("event"), format="%d",
                                                                  pinned=True),
                           "received": st.column_config.TextColumn(_("received")),
                           "user": st.column_config.TextColumn(_("user")),
                           "field": st.column_config.TextColumn(_("field")),
                           "before": st.column_config.TextColumn(_("before"), width="large"),
                           "after": st.column_config.TextColumn(_("after"), width="large"),
                           "API name": st.column_config.TextColumn(_("API name"))})


def _state_view(entity: str, record_id: int, events: pd.DataFrame) -> None:
    st.subheader(_("State at a moment"))
    ids = [int(i) for i in events["event_id"]]
    # a select_slider shows its options as Markdown (unlike a selectbox)
    labels = {int(r.event_id): f"#{r.event_id} · {fmt_time(r.received_at)} · "
                               f"{plain(action_name(r.action), HEADER_LIMIT)}"
              for r in events.itertuples(index=False)}
    if len(ids) > 1:
        if st.session_state.get("r_moment") not in labels:
            st.session_state.pop("r_moment", None)  # a refresh brought a newer event
        chosen = st.select_slider(_("After event"), ids, value=ids[-1], key="r_moment",
                                  format_func=labels.get)
    else:
        chosen = ids[0]
    snapshot = _state(entity, record_id, chosen)
    note = _(" — the record was deleted here") if snapshot.deleted else ""
    st.caption(ngettext(
        "As known right after event #{id} ({action}, {time}), folding {count} event{note}. "
        "[Open the event](events?event={id})",
        "As known right after event #{id} ({action}, {time}), folding {count} events{note}. "
        "[Open the event](events?event={id})", snapshot.events_folded).format(
            id=snapshot.event_id, action=plain(action_name(snapshot.action), HEADER_LIMIT),
            time=fmt_time(snapshot.received_at), count=snapshot.events_folded, note=note))
    st.json(snapshot.state or {}, expanded=False)


@st.fragment(run_every=LIVE_SECONDS)
def _record(data_dir: str, entity: str, record_id: int, zone: str) -> None:
    """One record's history; reruns by itself every LIVE_SECONDS seconds."""
    events = _events(entity, record_id)
    if events.empty:
        st.warning(_("No event of {entity} {id} is stored. Check the entity and id, or "
                     "search by name.").format(entity=plain(entity_name(entity), VALUE_LIMIT),
                                               id=record_id))
        return
    found = _find(data_dir, entity, record_id, None)
    title = found["title"].iloc[0] if not found.empty else None
    # the name is cut here; the state below and the field changes show it whole
    st.header(f"{plain(entity_name(entity), HEADER_LIMIT)} {record_id}"
              + (f" — {plain(title, HEADER_LIMIT)}" if title else ""))
    if bool(events["is_demo"].any()):
        st.info(_("Demo record: generated sample data."))
    if not found.empty and bool(found["deleted"].iloc[0]):
        st.caption(_("This record was deleted."))
    st.caption(ngettext(
        "{count} event, first {first}, last {last}; times in {zone}. Refreshes every "
        "{seconds} s.",
        "{count} events, first {first}, last {last}; times in {zone}. Refreshes every "
        "{seconds} s.", len(events)).format(
            count=len(events), first=fmt_time(events["received_at"].iloc[0]),
            last=fmt_time(events["received_at"].iloc[-1]), zone=zone, seconds=LIVE_SECONDS))
    gaps = _gaps(entity, record_id)
    if gaps.empty:
        st.success(_("No continuity gap: each delivery's Old matched what we knew."))
    else:
        st.subheader(_("Continuity gaps"))
        for gap in gaps.itertuples(index=False):
            st.warning(gap_message(gap.fields, gap.previous_event_id, gap.event_id))
    _timeline(events, zone)
    _changes(entity, record_id)
    _state_view(entity, record_id, events)


config = settings()
data_dir, zone = str(config.data_dir), config.timezone
st.title(_("Records"))
account_choice()  # the sidebar's account choice stays in place on every page
chosen = _search(data_dir)
if chosen is not None:
    entity, record_id = chosen
    _select(entity, record_id)
    _record(data_dir, entity, record_id, zone)
