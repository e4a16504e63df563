"""Events: every delivery, filtered and paged, refreshed live; a row opens one event in
detail (`?event=<id>`); the list exports as CSV or Parquet with exactly its filters."""

from __future__ import annotations

import io
import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import streamlit as st

from ploomes import i18n
from ploomes.i18n import N_, _, ngettext
from ploomes.queries import events
from ploomes.queries.events import EXPORT_LIMIT, export_events
from ploomes.store import Store, StoreError
from views.common import (
    LIVE_SECONDS,
    AccountChoice,
    account_choice,
    action_name,
    cached_query,
    entity_name,
    fmt_time,
    live_query,
    settings,
    store,
    time_column,
    to_local,
)
from views.relay_detail import event_relay, filtered_replay
from views.text import HEADER_LIMIT, VALUE_LIMIT, cut, gap_message, plain

PAGE_SIZES = (25, 50, 100, 200)
ANY = N_("Any")
TABLE_KEY = "events_table"
SHOWN_KEY = "events_table_shown"  # (event ids, selected rows) as last drawn
DIFF_COLUMNS = {"before": N_("before"), "after": N_("after"), "value": N_("value"),
                "value before": N_("value before"), "added": N_("added"),
                "removed": N_("removed"), "bookkeeping": N_("bookkeeping")}
TEST_MARK, DEMO_MARK = N_("test"), N_("demo")


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
                        format_func=lambda v: _(ANY) if v is None else cut(fmt(v), HEADER_LIMIT))


def _user_text(users: dict[int, str], uid: int) -> str:
    return users[uid] if users[uid] == str(uid) else f"{cut(users[uid], HEADER_LIMIT)} ({uid})"


def _field_text(labels: dict[str, str], path: str) -> str:
    return labels[path] if labels[path] == path else f"{labels[path]} ({path})"


def _seed_from_link(options: dict, choice: AccountChoice, zone: str) -> None:
    """Fill the filter widgets once from the link (`?user=7&entity=Deals…`)."""
    if st.session_state.get("_filters_seeded"):
        return
    st.session_state["_filters_seeded"] = True
    parsed = events.filter_from_params(st.query_params.to_dict(), zone)
    for problem in parsed.problems:
        st.warning(_("Ignored in the link: {problem}.").format(
            problem=plain(problem, VALUE_LIMIT)))
    f = parsed.filter
    users = dict(options["users"])
    choices = {"f_entity": (f.entity, options["entities"]),
               "f_action": (f.action, options["actions"]),
               "f_user": (f.action_user_id, list(users))}
    for key, (value, allowed) in choices.items():
        if value is not None and value in allowed:
            st.session_state[key] = value
        elif value is not None:
            st.warning(_("No event has “{value}” yet; that filter from the link was left "
                         "out.").format(value=plain(value, VALUE_LIMIT)))
    if f.record_id is not None:
        st.session_state["f_record"] = str(f.record_id)
    fields = dict(cached_query(events.field_options, st.session_state.get("f_entity"),
                               choice.account_id))
    if f.field and f.field in fields:
        st.session_state["f_field"] = f.field
    elif f.field:
        st.warning(_("The field “{field}” is not offered as a filter (no change to it yet, or "
                     "a bookkeeping field); that filter from the link was left out.")
                   .format(field=plain(f.field, VALUE_LIMIT)))
    if f.text:
        st.session_state["f_text"] = f.text
    if f.start is not None:
        st.session_state["f_from"] = to_local(f.start, zone).date()
    if f.end is not None:  # the parsed end is exclusive: the day before is the last one
        st.session_state["f_to"] = (to_local(f.end, zone) - timedelta(microseconds=1)).date()
    st.session_state["f_dups"] = f.include_duplicates
    st.session_state["f_demo"] = f.include_demo
    st.session_state["f_tests"] = f.include_tests


def _filters(choice: AccountChoice, zone: str) -> events.EventFilter | None:
    """Draw the filter widgets; return the filter, or None when an input is invalid."""
    options = cached_query(events.filter_options, choice.scope)
    users = dict(options["users"])
    _seed_from_link(options, choice, zone)
    day_format = "YYYY-MM-DD" if i18n.is_english() else "DD/MM/YYYY"
    with st.expander(_("Filters"), expanded=True):
        c1, c2, c3, c4 = st.columns(4)
        start_day = c1.date_input(_("From (day)"), value=None, key="f_from", format=day_format)
        end_day = c2.date_input(_("To (day, inclusive)"), value=None, key="f_to",
                                format=day_format)
        with c3:
            entity = _choose(_("Entity"), options["entities"], "f_entity", fmt=entity_name)
        with c4:
            action = _choose(_("Action"), options["actions"], "f_action", fmt=action_name)
        c5, c6, c7, c8 = st.columns(4)
        with c5:
            user = _choose(_("User"), list(users), "f_user",
                           fmt=lambda uid: _user_text(users, uid))
        record_text = c6.text_input(_("Record id"), key="f_record")
        field_labels = dict(cached_query(events.field_options, entity, choice.account_id))
        with c7:
            field = _choose(_("Changed field"), list(field_labels), "f_field",
                            fmt=lambda path: _field_text(field_labels, path))
        text = c8.text_input(_("Text in payload"), key="f_text",
                             help=_("Any case; accents count. Slow on large stores without "
                                    "other filters."))
        c9, c10, c11 = st.columns(3)
        include_duplicates = c9.toggle(_("Show repeated deliveries"), key="f_dups")
        # on by default; a value passed here as well would clash with a link's (a warning)
        st.session_state.setdefault("f_demo", True)
        include_demo = c10.toggle(_("Show demo events"), key="f_demo")
        include_tests = c11.toggle(_("Show test deliveries"), key="f_tests",
                                   help=_("Deliveries sent with “Send a test delivery” on the "
                                          "Webhooks page: marked “test”, left out of every "
                                          "count and history unless shown here."))
    record_id = _int_or_none(record_text)
    if record_text.strip() and record_id is None:
        st.error(_("Record id must be a whole number, such as 405531355. Fix it to filter."))
        return None
    if start_day and end_day and end_day < start_day:
        st.error(_("The 'To' day is before the 'From' day: swap them to filter."))
        return None
    return events.EventFilter(
        start=_day_bounds(start_day, zone, False), end=_day_bounds(end_day, zone, True),
        entity=entity, action=action, action_user_id=user, record_id=record_id,
        field=field, text=text.strip() or None, include_duplicates=include_duplicates,
        include_demo=include_demo, include_tests=include_tests, account=choice.scope)


# -- export -----------------------------------------------------------------------------

def _exporter(target: Store, flt: events.EventFilter, payload: bool, tz: str, kind: str):
    """Return a callable building the export file when the user clicks download."""
    def build() -> bytes:
        # runs on its own thread after the click, outside the page script
        try:
            with target.reader() as con:
                frame = export_events(con, flt, include_payload=payload, tz=tz)
        except StoreError as exc:
            return _("error\nthe export failed: {problem}; try again\n").format(
                problem=exc).encode()
        if kind == "csv":
            return frame.to_csv(index=False).encode("utf-8")
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    return build


def _export(flt: events.EventFilter, zone: str) -> None:
    with st.expander(_("Export these events")):
        payload = st.checkbox(_("Include the full delivery body (payload column)"), value=False,
                              key="export_payload", help=_("Makes the file much larger."))
        st.caption(_("The file holds the events of the list below, with exactly its filters, "
                     "newest first, times in {zone}: at most the newest {limit} (narrow the "
                     "dates to export more in several files).").format(
                         zone=zone, limit=i18n.format_number(EXPORT_LIMIT)))
        stamp = datetime.now(ZoneInfo(zone)).strftime("%Y%m%d-%H%M")
        first, second = st.columns(2)
        first.download_button(_("Download CSV"), _exporter(store(), flt, payload, zone, "csv"),
                              file_name=f"ploomes-events-{stamp}.csv", mime="text/csv",
                              key="export_csv", icon=":material/download:", on_click="ignore")
        second.download_button(_("Download Parquet"),
                               _exporter(store(), flt, payload, zone, "parquet"),
                               file_name=f"ploomes-events-{stamp}.parquet",
                               mime="application/vnd.apache.parquet", key="export_parquet",
                               icon=":material/download:", on_click="ignore")


# -- the list ---------------------------------------------------------------------------

def _select_event(event_id: int | None) -> None:
    if event_id is None:
        st.query_params.pop("event", None)
    else:
        st.query_params["event"] = str(event_id)


def _on_open() -> None:
    _select_event(st.session_state.get("open_event") or None)


def _marks(row) -> list[str]:
    return [_(mark) for mark, on in ((TEST_MARK, row.is_test), (DEMO_MARK, row.is_demo)) if on]


def _table(page: events.EventsPage, zone: str, selected: int | None) -> int | None:
    """Draw the page's events; a row picked opens its event. Return the event to show."""
    rows = page.rows
    ids = [int(i) for i in rows["event_id"]]
    shown = pd.DataFrame({
        "event": rows["event_id"],
        "received": time_column(rows["received_at"], zone),
        "entity": rows["entity"].map(entity_name),
        "action": rows["action"].map(action_name),
        "record": rows["record_id"],
        "title": rows["title"],
        "user": rows["user_name"],
        "changed fields": rows["changed_fields"],
        "repeat of": rows["duplicate_of"].astype("Int64"),
        "marks": [_marks(r) for r in rows.itertuples(index=False)],
    })
    wanted = [ids.index(selected)] if selected in ids else []
    previous = st.session_state.get(SHOWN_KEY)
    if previous is None or previous[0] != ids:
        # other rows than last time (new deliveries, another page or filter): keep the
        # open event's row selected, wherever it moved
        st.session_state[TABLE_KEY] = {"selection": {"rows": wanted, "columns": []}}
        before = wanted
    else:
        before = previous[1]
    state = st.dataframe(
        shown, hide_index=True, width="stretch", key=TABLE_KEY, on_select="rerun",
        selection_mode="single-row", placeholder="—", column_config={
            "event": st.column_config.NumberColumn(_("event"), format="%d", width="small",
                                                   pinned=True),
            "received": st.column_config.TextColumn(_("received"), width="medium"),
            "entity": st.column_config.TextColumn(_("entity")),
            "action": st.column_config.TextColumn(_("action")),
            "record": st.column_config.NumberColumn(_("record"), format="%d"),
            "title": st.column_config.TextColumn(_("title"), width="medium"),
            "user": st.column_config.TextColumn(
                _("user"), width="medium",
                help=_("The Ploomes user who made the change, named from this account's "
                       "users; the id (ActionUserId) is in the event's detail.")),
            "changed fields": st.column_config.TextColumn(_("changed fields"), width="large"),
            "repeat of": st.column_config.NumberColumn(
                _("repeat of"), format="%d", help=_("The event this delivery repeats.")),
            "marks": st.column_config.MultiselectColumn(
                _("marks"), options=[_(TEST_MARK), _(DEMO_MARK)], color=["orange", "blue"],
                help=_("test: sent from the Webhooks page; demo: generated sample data.")),
        })
    picked = [i for i in state.selection.rows if 0 <= i < len(ids)]
    if picked != before:  # the user picked a row, or unpicked the open one
        selected = ids[picked[0]] if picked else None
        _select_event(selected)
    st.session_state[SHOWN_KEY] = (ids, picked)
    return selected


def _caption(result: events.EventsPage, zone: str) -> None:
    first = (result.page - 1) * result.page_size + 1
    number = i18n.format_number
    last = first + len(result.rows) - 1
    if result.exact:
        st.caption(_("Events {first}–{last} of {total} (page {page} of {pages}), newest first; "
                     "times in {zone}. Refreshes every {seconds} s; pick a row to open its "
                     "event.").format(first=number(first), last=number(last),
                                      total=number(result.total), page=number(result.page),
                                      pages=number(result.pages), zone=zone,
                                      seconds=LIVE_SECONDS))
    else:
        # the text search stopped early (page filled, or time up): a lower bound
        more = (_("it stopped once this page was full: the next page searches further")
                if result.total > result.page * result.page_size else
                _("it stopped there to answer quickly: choose dates to search older events"))
        st.caption(_("Events {first}–{last} of at least {total}, newest first. The text search "
                     "read events back to {time}; {more}. Times in {zone}.").format(
                         first=number(first), last=number(last), total=number(result.total),
                         time=fmt_time(result.searched_since), more=more, zone=zone))


# -- one event --------------------------------------------------------------------------

def _who_when_what(event: dict) -> None:
    # names and titles come from Ploomes: shown as text, cut like a header (the field
    # changes and the raw payload below show them whole)
    user = plain(event["user_name"] or _("unknown user"), HEADER_LIMIT)
    if event["action_user_id"] is not None and event["user_name"] != str(event["action_user_id"]):
        user = f"{user} ({event['action_user_id']})"
    title = f" “{plain(event['title'], HEADER_LIMIT)}”" if event["title"] else ""
    hook = (f"WebhookId {event['webhook_id']}" if event["webhook_id"] is not None
            else _("not named in the delivery"))
    account = ""
    if event["account_id"] is not None:
        name = event.get("account_name")
        account = (_(", account {name} ({id})").format(name=plain(name, HEADER_LIMIT),
                                                      id=event["account_id"]) if name
                   else _(", account {id}").format(id=event["account_id"]))
    what = _("{action} of {entity}").format(action=plain(action_name(event["action"])),
                                            entity=plain(entity_name(event["entity"])))
    st.markdown(
        _("**Who:** {user}").format(user=user) + "  \n"
        + _("**When:** {time} (received)").format(time=fmt_time(event["received_at"]))
        + "  \n"
        + _("**What:** {what}").format(what=what)
        + f" ({plain(event['action'])} {plain(event['entity'])}) {event['record_id']}{title}"
        + "  \n" + _("**Subscription:** {hook}").format(hook=hook) + account)
    if event.get("is_test"):
        st.warning(_("Test delivery: sent from the Webhooks page (“Send a test delivery”), not "
                     "a change made in Ploomes. It is left out of histories, counts and the "
                     "subscription's health."), icon=":material/science:")
    if event["is_demo"]:
        st.info(_("Demo event: generated sample data, not a delivery from Ploomes."))


def _diff_columns(changes: pd.DataFrame) -> pd.DataFrame:
    """The columns that mean something for the kinds of change this event holds."""
    kinds = set(changes["kind"])
    items = bool(changes["added_items"].map(len).sum() or changes["removed_items"].map(len).sum())
    table = pd.DataFrame({"field": changes["field_label"]})
    if kinds <= {"set"}:  # a creation: what each field was set to
        table["value"] = changes["after"].to_numpy()
    elif kinds <= {"cleared"}:  # a deletion: what each field held
        table["value before"] = changes["before"].to_numpy()
    elif kinds <= {"tags"}:
        pass
    else:
        table["before"] = changes["before"].to_numpy()
        table["after"] = changes["after"].to_numpy()
    if (items or kinds & {"tags"}) and not (kinds <= {"set"} or kinds <= {"cleared"}):
        table["added"] = changes["added_items"].map(", ".join).to_numpy()
        table["removed"] = changes["removed_items"].map(", ".join).to_numpy()
    table["API name"] = changes["field"].to_numpy()
    return table


def _diff(changes: pd.DataFrame) -> None:
    st.subheader(_("Field changes"))
    show_bookkeeping = st.toggle(
        _("Show bookkeeping fields"), key="show_bookkeeping",
        help=_("Fields Ploomes rewrites on almost every delivery, such as LastUpdateDate."))
    hidden = int(changes["bookkeeping"].sum()) if len(changes) else 0
    if not show_bookkeeping:
        changes = changes[~changes["bookkeeping"]]
    if changes.empty:
        st.write(ngettext("No field changed in this delivery (besides {count} bookkeeping "
                          "field).", "No field changed in this delivery (besides {count} "
                          "bookkeeping fields).", hidden).format(count=hidden) if hidden
                 else _("No field changed in this delivery."))
        return
    table = _diff_columns(changes)
    if show_bookkeeping:
        table["bookkeeping"] = changes["bookkeeping"].to_numpy()
    # values get room, but beside added and removed items not so much that those are
    # pushed out of sight on a laptop screen (the table scrolls; the field stays pinned)
    room = "medium" if "added" in table else "large"
    wide = {name: st.column_config.TextColumn(_(DIFF_COLUMNS[name]), width=room)
            for name in ("before", "after", "value", "value before") if name in table}
    named = {name: st.column_config.TextColumn(_(DIFF_COLUMNS[name]),
                                               width="small" if name == "bookkeeping" else room)
             for name in ("added", "removed", "bookkeeping") if name in table}
    st.dataframe(table, hide_index=True, width="stretch", key="diff_table", placeholder="—",
                 column_config={
                     "field": st.column_config.TextColumn(_("field"), width="medium",
                                                          pinned=True),
                     "API name": st.column_config.TextColumn(
                         _("API name"), help=_("The field as the API and deliveries name it.")),
                     **named, **wide})
    if hidden and not show_bookkeeping:
        st.caption(ngettext("{count} bookkeeping field hidden.",
                            "{count} bookkeeping fields hidden.", hidden).format(count=hidden))
    if (~changes["old_known"]).any() and "before" in table:
        st.caption(_("“previous value unknown”: Ploomes sent no Old value for that field."))


def _copies(event: dict, duplicates: pd.DataFrame, zone: str) -> None:
    if event["duplicate_of"] is not None:
        st.warning(_("This delivery repeats event #{id}: the same change arrived again (a "
                     "resend or a second subscription). It is counted once.")
                   .format(id=event["duplicate_of"]))
    elif not duplicates.empty:
        st.info(ngettext("The same change arrived {count} more time; only this event counts.",
                         "The same change arrived {count} more times; only this event counts.",
                         len(duplicates)).format(count=len(duplicates)))
    if not duplicates.empty:
        st.subheader(_("Other copies of this change"))
        st.dataframe(pd.DataFrame({
            "event": duplicates["event_id"],
            "received": time_column(duplicates["received_at"], zone),
            "webhook": duplicates["webhook_id"].astype("Int64"),
            "original": duplicates["is_original"],
        }), hide_index=True, key="copies_table", placeholder="—", column_config={
            "event": st.column_config.NumberColumn(_("event"), format="%d"),
            "received": st.column_config.TextColumn(_("received")),
            "webhook": st.column_config.NumberColumn(_("webhook"), format="%d"),
            "original": st.column_config.CheckboxColumn(_("original"))})


def _detail_view(event_id: int, zone: str) -> None:
    detail = live_query(events.event_detail, event_id)
    if detail is None:
        st.warning(_("There is no event #{id} in this store. Pick one from the table, or check "
                     "the link.").format(id=event_id))
        return
    event = detail.event
    st.header(_("Event #{id}").format(id=event_id))
    _who_when_what(event)
    _diff(detail.changes)
    _copies(event, detail.duplicates, zone)
    event_relay(event_id)
    if not detail.gaps.empty:
        st.subheader(_("Continuity gaps"))
        for gap in detail.gaps.itertuples(index=False):
            st.warning(gap_message(gap.fields, gap.previous_event_id, gap.event_id))
    with st.expander(_("Raw payload (JSON as received)")):
        st.json(detail.payload)


@st.fragment(run_every=LIVE_SECONDS)
def _live(event_filter: events.EventFilter | None, size: int, number: int, zone: str) -> None:
    """The list and the open event; reruns by itself every LIVE_SECONDS seconds."""
    selected_raw = st.query_params.get("event")
    selected = _int_or_none(selected_raw)
    if event_filter is not None:
        result = live_query(events.events_page, event_filter, number, size)
        if result.total == 0:
            st.info(_("No event matches these filters. Widen the time range or clear a "
                      "filter."))
        else:
            _caption(result, zone)
            picked = _table(result, zone, selected)
            if picked != selected:  # a row picked: the link's value (even a bad one) is gone
                selected_raw = None if picked is None else str(picked)
            selected = picked
    if selected_raw is not None and selected is None:
        st.error(_("“{value}” in the link is not an event id. Use a link like ?event=123.")
                 .format(value=plain(selected_raw, VALUE_LIMIT)))
    elif selected is not None:
        _detail_view(selected, zone)
    else:
        st.caption(_("Pick a row to see who changed what; the link then points to it."))


def render() -> None:
    """Render the Events page."""
    config = settings()
    st.title(_("Events"))
    zone = config.timezone
    choice = account_choice()
    event_filter = _filters(choice, zone)
    size, number = 50, 1
    if event_filter is not None:
        c1, c2, c3 = st.columns(3)
        size = int(c1.selectbox(_("Rows per page"), PAGE_SIZES, index=1, key="page_size"))
        number = int(c2.number_input(_("Page"), min_value=1, value=1, step=1,
                                     key="page_number"))
        c3.number_input(_("Open event by id"), min_value=0, value=None, step=1,
                        key="open_event", on_change=_on_open)
        _export(event_filter, zone)
        filtered_replay(event_filter)
    _live(event_filter, size, number, zone)


render()
