"""Events: every delivery, filtered and paged, and one event in detail (`?event=<id>`)."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import streamlit as st

from ploomes.queries import base, events
from views.common import QUERY_TTL, fmt_time, run_query, settings, to_local
from views.text import HEADER_LIMIT, VALUE_LIMIT, cut, gap_message, plain

PAGE_SIZES = (25, 50, 100, 200)
ANY = "Any"


@st.cache_data(ttl=QUERY_TTL, show_spinner=False)
def _options(data_dir: str) -> dict:
    return run_query(events.filter_options)


@st.cache_data(ttl=QUERY_TTL, show_spinner=False)
def _fields(data_dir: str, entity: str | None) -> list[tuple[str, str]]:
    return run_query(events.field_options, entity)


@st.cache_data(ttl=QUERY_TTL, show_spinner=False)
def _page(data_dir: str, f: events.EventFilter, page: int, size: int) -> events.EventsPage:
    return run_query(events.events_page, f, page, size)


@st.cache_data(ttl=QUERY_TTL, show_spinner=False)
def _detail(data_dir: str, event_id: int) -> events.EventDetail | None:
    return run_query(events.event_detail, event_id)


def _int_or_none(text: str | None) -> int | None:
    # ASCII digits only, and few enough for a BIGINT: `str.isdigit` also takes "²", which
    # int() refuses
    text = (text or "").strip()
    return int(text) if re.fullmatch(r"-?[0-9]{1,18}", text) else None


def _day_bounds(day: date | None, zone: str, next_day: bool) -> datetime | None:
    if day is None:
        return None
    moment = datetime.combine(day, time.min, tzinfo=ZoneInfo(zone))
    return moment + timedelta(days=1) if next_day else moment


def _choose(label: str, options: list, key: str, fmt=str):
    # options show as text (no Markdown): only cut, so a long name keeps the menu usable
    return st.selectbox(label, [None, *options], key=key,
                        format_func=lambda v: ANY if v is None else cut(fmt(v), HEADER_LIMIT))


def _seed_from_link(options: dict, data_dir: str, zone: str) -> None:
    """Fill the filter widgets once from the link (`?user=7&entity=Deals…`)."""
    if st.session_state.get("_filters_seeded"):
        return
    st.session_state["_filters_seeded"] = True
    parsed = events.filter_from_params(st.query_params.to_dict(), zone)
    for problem in parsed.problems:
        st.warning(f"Ignored in the link: {plain(problem, VALUE_LIMIT)}.")
    f = parsed.filter
    users = dict(options["users"])
    choices = {"f_entity": (f.entity, options["entities"]),
               "f_action": (f.action, options["actions"]),
               "f_user": (f.action_user_id, list(users))}
    for key, (value, allowed) in choices.items():
        if value is not None and value in allowed:
            st.session_state[key] = value
        elif value is not None:
            st.warning(f"No event has “{plain(value, VALUE_LIMIT)}” yet; that filter from the "
                       "link was left out.")
    if f.record_id is not None:
        st.session_state["f_record"] = str(f.record_id)
    if f.field and f.field in dict(_fields(data_dir, st.session_state.get("f_entity"))):
        st.session_state["f_field"] = f.field
    elif f.field:
        st.warning(f"The field “{plain(f.field, VALUE_LIMIT)}” is not offered as a filter (no "
                   "change to it yet, or a bookkeeping field); that filter from the link was "
                   "left out.")
    if f.text:
        st.session_state["f_text"] = f.text
    if f.start is not None:
        st.session_state["f_from"] = to_local(f.start, zone).date()
    if f.end is not None:  # the parsed end is exclusive: the day before is the last one
        st.session_state["f_to"] = (to_local(f.end, zone) - timedelta(microseconds=1)).date()
    st.session_state["f_dups"] = f.include_duplicates
    st.session_state["f_demo"] = f.include_demo


def _filters(data_dir: str, zone: str) -> events.EventFilter | None:
    """Draw the filter widgets; return the filter, or None when an input is invalid."""
    options = _options(data_dir)
    users = dict(options["users"])
    _seed_from_link(options, data_dir, zone)
    with st.expander("Filters", expanded=True):
        c1, c2, c3, c4 = st.columns(4)
        start_day = c1.date_input("From (day)", value=None, key="f_from", format="DD/MM/YYYY")
        end_day = c2.date_input("To (day, inclusive)", value=None, key="f_to",
                                format="DD/MM/YYYY")
        with c3:
            entity = _choose("Entity", options["entities"], "f_entity")
        with c4:
            action = _choose("Action", options["actions"], "f_action")
        c5, c6, c7, c8 = st.columns(4)
        with c5:
            user = _choose("User", list(users), "f_user",
                           fmt=lambda uid: users[uid] if users[uid] == str(uid)
                           else f"{cut(users[uid], HEADER_LIMIT)} ({uid})")
        record_text = c6.text_input("Record id", key="f_record")
        field_labels = dict(_fields(data_dir, entity))
        with c7:
            field = _choose("Changed field", list(field_labels), "f_field",
                            fmt=lambda path: field_labels[path] if field_labels[path] == path
                            else f"{field_labels[path]} ({path})")
        text = c8.text_input("Text in payload", key="f_text",
                             help="Any case; accents count. Slow on large stores without "
                                  "other filters.")
        c9, c10 = st.columns(2)
        include_duplicates = c9.toggle("Show repeated deliveries", key="f_dups")
        # on by default; a value passed here as well would clash with a link's (a warning)
        st.session_state.setdefault("f_demo", True)
        include_demo = c10.toggle("Show demo events", key="f_demo")
    record_id = _int_or_none(record_text)
    if record_text.strip() and record_id is None:
        st.error("Record id must be a whole number, such as 405531355. Fix it to filter.")
        return None
    if start_day and end_day and end_day < start_day:
        st.error("The 'To' day is before the 'From' day: swap them to filter.")
        return None
    return events.EventFilter(
        start=_day_bounds(start_day, zone, False), end=_day_bounds(end_day, zone, True),
        entity=entity, action=action, action_user_id=user, record_id=record_id,
        field=field, text=text.strip() or None, include_duplicates=include_duplicates,
        include_demo=include_demo)


def _select_event(event_id: int | None) -> None:
    if event_id is None:
        st.query_params.pop("event", None)
    else:
        st.query_params["event"] = str(event_id)


def _on_pick() -> None:
    _select_event(st.session_state.get("pick_event"))


def _on_open() -> None:
    _select_event(st.session_state.get("open_event") or None)


def _table(page: events.EventsPage, zone: str) -> None:
    rows = page.rows
    shown = pd.DataFrame({
        "event": rows["event_id"],
        "received": to_local(rows["received_at"], zone).dt.strftime("%d/%m/%Y %H:%M:%S"),
        "entity": rows["entity"],
        "action": rows["action"],
        "record": rows["record_id"],
        "title": rows["title"],
        "user": rows["user_name"],
        "changed fields": rows["changed_fields"],
        "repeat of": rows["duplicate_of"],
        "demo": rows["is_demo"],
    })
    st.dataframe(shown, hide_index=True, width="stretch", key="events_table")


def _who_when_what(event: dict) -> None:
    # names and titles come from Ploomes: shown as text, cut like a header (the field
    # changes and the raw payload below show them whole)
    user = plain(event["user_name"] or "unknown user", HEADER_LIMIT)
    if event["action_user_id"] is not None and event["user_name"] != str(event["action_user_id"]):
        user = f"{user} ({event['action_user_id']})"
    title = f" “{plain(event['title'], HEADER_LIMIT)}”" if event["title"] else ""
    hook = (f"WebhookId {event['webhook_id']}" if event["webhook_id"] is not None
            else "not named in the delivery")
    account = f", account {event['account_id']}" if event["account_id"] is not None else ""
    st.markdown(
        f"**Who:** {user}  \n"
        f"**When:** {fmt_time(event['received_at'])} (received)  \n"
        f"**What:** {plain(event['action'])} of {plain(event['entity'])} "
        f"{event['record_id']}{title}  \n"
        f"**Subscription:** {hook}{account}")
    if event["is_demo"]:
        st.info("Demo event: generated sample data, not a delivery from Ploomes.")


def _diff(changes: pd.DataFrame) -> None:
    st.subheader("Field changes")
    show_bookkeeping = st.toggle(
        "Show bookkeeping fields", key="show_bookkeeping",
        help="Fields Ploomes rewrites on almost every delivery, such as LastUpdateDate.")
    hidden = int(changes["bookkeeping"].sum()) if len(changes) else 0
    if not show_bookkeeping:
        changes = changes[~changes["bookkeeping"]]
    if changes.empty:
        st.write("No field changed in this delivery" +
                 (f" (besides {hidden} bookkeeping fields)." if hidden else "."))
        return

    table = pd.DataFrame({
        "field": changes["field_label"],
        "before": changes["before"],
        "after": changes["after"],
        "added": changes["added_items"].map(base.show_items),
        "removed": changes["removed_items"].map(base.show_items),
        "key": changes["field"],
    })
    if show_bookkeeping:
        table["bookkeeping"] = changes["bookkeeping"].to_numpy()
    st.dataframe(table, hide_index=True, width="stretch", key="diff_table")
    if hidden and not show_bookkeeping:
        st.caption(f"{hidden} bookkeeping field(s) hidden.")
    if (~changes["old_known"]).any():
        st.caption("“previous value unknown”: Ploomes sent no Old value for that field.")


def _copies(event: dict, duplicates: pd.DataFrame, zone: str) -> None:
    if event["duplicate_of"] is not None:
        st.warning(f"This delivery repeats event #{event['duplicate_of']}: the same change "
                   "arrived again (a resend or a second subscription). It is counted once.")
    elif not duplicates.empty:
        st.info(f"The same change arrived {len(duplicates)} more time(s); only this event "
                "counts.")
    if not duplicates.empty:
        st.subheader("Other copies of this change")
        st.dataframe(pd.DataFrame({
            "event": duplicates["event_id"],
            "received": to_local(duplicates["received_at"], zone).dt.strftime(
                "%d/%m/%Y %H:%M:%S"),
            "webhook": duplicates["webhook_id"],
            "original": duplicates["is_original"],
        }), hide_index=True, key="copies_table")


def _detail_view(event_id: int, data_dir: str, zone: str) -> None:
    detail = _detail(data_dir, event_id)
    if detail is None:
        st.warning(f"There is no event #{event_id} in this store. Pick one from the table, "
                   "or check the link.")
        return
    event = detail.event
    st.header(f"Event #{event_id}")
    _who_when_what(event)
    _diff(detail.changes)
    _copies(event, detail.duplicates, zone)
    if not detail.gaps.empty:
        st.subheader("Continuity gaps")
        for gap in detail.gaps.itertuples(index=False):
            st.warning(gap_message(gap.fields, gap.previous_event_id, gap.event_id))
    with st.expander("Raw payload (JSON as received)"):
        st.json(detail.payload)


st.title("Events")
config = settings()
data_dir, zone = str(config.data_dir), config.timezone
selected_raw = st.query_params.get("event")
selected = _int_or_none(selected_raw)

event_filter = _filters(data_dir, zone)
if event_filter is not None:
    c1, c2 = st.columns(2)
    size = c1.selectbox("Rows per page", PAGE_SIZES, index=1, key="page_size")
    number = c2.number_input("Page", min_value=1, value=1, step=1, key="page_number")
    result = _page(data_dir, event_filter, int(number), int(size))
    if result.total == 0:
        st.info("No event matches these filters. Widen the time range or clear a filter.")
    else:
        first = (result.page - 1) * result.page_size + 1
        if result.exact:
            st.caption(f"Events {first}–{first + len(result.rows) - 1} of {result.total} "
                       f"(page {result.page} of {result.pages}), newest first; times in "
                       f"{zone}.")
        else:
            # the text search stopped early (page filled, or time up): a lower bound
            more = ("it stopped once this page was full: the next page searches further"
                    if result.total > result.page * result.page_size else
                    "it stopped there to answer quickly: choose dates to search older events")
            st.caption(f"Events {first}–{first + len(result.rows) - 1} of at least "
                       f"{result.total}, newest first. The text search read events back to "
                       f"{fmt_time(result.searched_since)}; {more}. Times in {zone}.")
        _table(result, zone)
        ids = [int(i) for i in result.rows["event_id"]]
        labels = {int(r.event_id): cut(f"#{r.event_id} · {r.action} {r.entity} {r.record_id}",
                                       HEADER_LIMIT)
                  for r in result.rows.itertuples(index=False)}
        p1, p2 = st.columns(2)
        p1.selectbox("Show event", [None, *ids], key="pick_event", on_change=_on_pick,
                     index=ids.index(selected) + 1 if selected in ids else 0,
                     format_func=lambda v: "—" if v is None else labels[v])
        p2.number_input("…or open event id", min_value=0, value=None, step=1,
                        key="open_event", on_change=_on_open)

if selected_raw is not None and selected is None:
    st.error(f"“{plain(selected_raw, VALUE_LIMIT)}” in the link is not an event id. Use a link "
             "like ?event=123.")
elif selected is not None:
    _detail_view(selected, data_dir, zone)
else:
    st.caption("Choose an event to see who changed what; the link then points to it.")
