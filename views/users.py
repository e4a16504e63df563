"""Users: who does what in Ploomes, by ActionUserId, and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from ploomes import i18n
from ploomes.i18n import N_, _
from ploomes.queries.status import event_count
from ploomes.queries.users import (
    user_entity_actions,
    user_heatmap,
    user_top_fields,
    users_summary,
)
from views.common import (
    AccountChoice,
    account_choice,
    action_name,
    cached_query,
    entity_name,
    page_available,
    settings,
    time_column,
)
from views.text import HEADER_LIMIT, cut, plain

RANGES = {"7 d": timedelta(days=7), "30 d": timedelta(days=30),
          "90 d": timedelta(days=90), "All": None}
RANGE_NAMES = {"7 d": N_("7 d"), "30 d": N_("30 d"), "90 d": N_("90 d"), "All": N_("All")}
EVENTS_PAGE = "views/events.py"


def _user_label(user_id, name: str) -> str:
    """Return the user's name (from Ploomes, cut) and id as text; not yet Markdown."""
    if user_id is None:
        return _("(no ActionUserId)")
    return name if name == str(user_id) else f"{cut(name, HEADER_LIMIT)} ({user_id})"


def _id(value) -> int | None:
    return None if pd.isna(value) else int(value)


def _table(summary: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    """Join the per-user totals with one column per entity · action."""
    key = summary["action_user_id"].astype("Int64").astype(str)
    table = pd.DataFrame({
        "User": summary["user"], "ActionUserId": summary["action_user_id"].astype("Int64"),
        "Events": summary["events"], "Records": summary["records"],
        "Last activity": time_column(summary["last_at"], settings().timezone, seconds=False),
    })
    if not counts.empty:
        counts = counts.assign(key=counts["action_user_id"].astype("Int64").astype(str),
                               column=counts["entity"].map(entity_name) + " · "
                               + counts["action"].map(action_name))
        wide = counts.pivot_table(index="key", columns="column", values="events",
                                  aggfunc="sum", fill_value=0)
        wide = wide.reindex(key).fillna(0).astype(int).reset_index(drop=True)
        table = pd.concat([table.reset_index(drop=True), wide], axis=1)
    return table


def _events_link(user_id: int | None, label: str) -> None:
    if user_id is None:
        return
    if page_available(EVENTS_PAGE):
        st.page_link(EVENTS_PAGE, label=_("See {user}'s events").format(user=plain(label)),
                     icon=":material/list_alt:", query_params={"user": str(user_id)})
    else:
        st.markdown(_("[See {user}'s events](/events?user={id})").format(user=plain(label),
                                                                       id=user_id))


def _heatmap(user_id: int | None, since: datetime | None, include: bool,
             account: AccountChoice) -> None:
    tz = settings().timezone
    grid = cached_query(user_heatmap, user_id, tz=tz, since=since, include_duplicates=include,
                        account=account.scope)
    st.markdown(_("**When they work** (hour × weekday, {zone})").format(zone=tz))
    # weekday names in the interface's language (seg, ter, qua…), Monday first
    days = i18n.weekday_names()
    grid = grid.assign(weekday_name=[days[int(d) - 1] for d in grid["weekday"]])
    # a plain Vega-Lite spec: importing altair would slow the page's first render
    spec = {
        "mark": {"type": "rect"},
        "height": 7 * 28,  # one readable row per weekday
        "config": {"locale": i18n.vega_locale()},
        "encoding": {
            "x": {"field": "hour", "type": "ordinal", "title": _("hour")},
            "y": {"field": "weekday_name", "type": "ordinal", "title": None,
                  "sort": list(grid["weekday_name"].unique())},
            "color": {"field": "events", "type": "quantitative", "title": _("events"),
                      "scale": {"scheme": "blues"}},
            "tooltip": [{"field": "weekday_name", "type": "nominal", "title": _("day")},
                        {"field": "hour", "type": "ordinal", "title": _("hour")},
                        {"field": "events", "type": "quantitative", "title": _("events")}],
        },
    }
    st.vega_lite_chart(grid, spec, width="stretch")


def _top_fields(user_id: int | None, since: datetime | None, account: AccountChoice) -> None:
    fields = cached_query(user_top_fields, user_id, limit=10, since=since,
                          account=account.account_id)
    fields = fields.assign(entity=fields["entity"].map(entity_name))
    st.markdown(_("**Fields they change most** (bookkeeping fields and duplicates left out)"))
    if fields.empty:
        st.caption(_("No field changes."))
        return
    names = {"entity": "Entity", "label": "Field", "changes": "Changes", "records": "Records"}
    st.dataframe(fields[list(names)].rename(columns=names),
                 hide_index=True, key="users_top_fields", column_config={
                     "Entity": st.column_config.TextColumn(_("Entity")),
                     "Field": st.column_config.TextColumn(_("Field")),
                     "Changes": st.column_config.NumberColumn(_("Changes")),
                     "Records": st.column_config.NumberColumn(_("Records"))})


def _selected_user(ids: list[int | None]) -> int:
    """Return the index of the user asked for in the URL (`?user=<id>`), else 0."""
    wanted = st.query_params.get("user")
    for index, user_id in enumerate(ids):
        if wanted is not None and str(user_id) == wanted:
            return index
    return 0


def render() -> None:
    """Render the Users page."""
    settings()
    st.title(_("Users"))
    account = account_choice()
    if cached_query(event_count) == 0:
        st.info(_("No events yet: the Overview page shows how to connect Ploomes or load "
                  "demo data."))
        st.page_link("views/overview.py", label=_("Go to Overview"),
                     icon=":material/dashboard:")
        return
    left, right = st.columns([3, 2])
    with left:
        choice = st.segmented_control(_("Range"), list(RANGES), default="All", required=True,
                                      key="users_range",
                                      format_func=lambda r: _(RANGE_NAMES[r]))
    with right:
        include = st.toggle(_("Include duplicates"), key="users_duplicates")
    span = RANGES.get(choice or "All")
    # whole minutes keep the cache key stable between reruns
    since = (datetime.now(UTC).replace(second=0, microsecond=0) - span) if span else None
    summary = cached_query(users_summary, since=since, include_duplicates=include,
                           account=account.scope)
    if summary.empty:
        st.info(_("No events in the last {range}.").format(
            range=_(RANGE_NAMES[choice or "All"])))
        return
    counts = cached_query(user_entity_actions, since=since, include_duplicates=include,
                          account=account.scope)
    st.caption(_("Events per user (ActionUserId: the Ploomes user who made the change, an "
                 "integration user included), by entity and action."))
    # wide (a column per entity · action): the user stays in view while scrolling
    st.dataframe(_table(summary, counts), hide_index=True, key="users_table",
                 placeholder="—", column_config={
                     "User": st.column_config.TextColumn(_("User"), pinned=True),
                     "Events": st.column_config.NumberColumn(_("Events")),
                     "Records": st.column_config.NumberColumn(_("Records")),
                     "Last activity": st.column_config.TextColumn(_("Last activity")),
                     "ActionUserId": st.column_config.NumberColumn("ActionUserId",
                                                                   format="%d")})

    ids = [_id(v) for v in summary["action_user_id"]]
    labels = {uid: _user_label(uid, name) for uid, name in zip(ids, summary["user"],
                                                                 strict=True)}
    user_id = st.selectbox(_("User"), ids, index=_selected_user(ids),
                           format_func=lambda uid: labels[uid], key="users_selected")
    st.subheader(plain(labels[user_id]))
    _events_link(user_id, labels[user_id])
    first, second = st.columns([3, 2], gap="large")
    with first:
        _heatmap(user_id, since, include, account)
    with second:
        _top_fields(user_id, since, account)


render()
