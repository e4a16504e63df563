"""Users: who does what in Ploomes, by ActionUserId, and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

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
    to_local,
)
from views.text import HEADER_LIMIT, cut, plain

RANGES = {"7 d": timedelta(days=7), "30 d": timedelta(days=30),
          "90 d": timedelta(days=90), "All": None}
EVENTS_PAGE = "views/events.py"


def _user_label(user_id, name: str) -> str:
    """Return the user's name (from Ploomes, cut) and id as text; not yet Markdown."""
    if user_id is None:
        return "(no ActionUserId)"
    return name if name == str(user_id) else f"{cut(name, HEADER_LIMIT)} ({user_id})"


def _id(value) -> int | None:
    return None if pd.isna(value) else int(value)


def _table(summary: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    """Join the per-user totals with one column per entity · action."""
    key = summary["action_user_id"].astype("Int64").astype(str)
    table = pd.DataFrame({
        "User": summary["user"], "ActionUserId": summary["action_user_id"].astype("Int64"),
        "Events": summary["events"], "Records": summary["records"],
        "Last activity": to_local(summary["last_at"]).dt.strftime("%d/%m/%Y %H:%M"),
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
        st.page_link(EVENTS_PAGE, label=f"See {plain(label)}'s events",
                     icon=":material/list_alt:", query_params={"user": str(user_id)})
    else:
        st.markdown(f"[See {plain(label)}'s events](/events?user={user_id})")


def _heatmap(user_id: int | None, since: datetime | None, include: bool,
             account: AccountChoice) -> None:
    tz = settings().timezone
    grid = cached_query(user_heatmap, user_id, tz=tz, since=since, include_duplicates=include,
                        account=account.scope)
    st.markdown(f"**When they work** (hour × weekday, {tz})")
    # a plain Vega-Lite spec: importing altair would slow the page's first render
    spec = {
        "mark": {"type": "rect"},
        "height": 7 * 28,  # one readable row per weekday
        "encoding": {
            "x": {"field": "hour", "type": "ordinal", "title": "hour"},
            "y": {"field": "weekday_name", "type": "ordinal", "title": None,
                  "sort": list(grid["weekday_name"].unique())},
            "color": {"field": "events", "type": "quantitative", "title": "events",
                      "scale": {"scheme": "blues"}},
            "tooltip": [{"field": "weekday_name", "type": "nominal", "title": "day"},
                        {"field": "hour", "type": "ordinal"},
                        {"field": "events", "type": "quantitative"}],
        },
    }
    st.vega_lite_chart(grid, spec, width="stretch")


def _top_fields(user_id: int | None, since: datetime | None, account: AccountChoice) -> None:
    fields = cached_query(user_top_fields, user_id, limit=10, since=since,
                          account=account.account_id)
    fields = fields.assign(entity=fields["entity"].map(entity_name))
    st.markdown("**Fields they change most** (bookkeeping fields and duplicates left out)")
    if fields.empty:
        st.caption("No field changes.")
        return
    st.dataframe(fields.rename(columns={"entity": "Entity", "label": "Field",
                                        "changes": "Changes", "records": "Records"})
                 [["Entity", "Field", "Changes", "Records"]],
                 hide_index=True, key="users_top_fields")


def _selected_user(ids: list[int | None]) -> int:
    """Return the index of the user asked for in the URL (`?user=<id>`), else 0."""
    wanted = st.query_params.get("user")
    for index, user_id in enumerate(ids):
        if wanted is not None and str(user_id) == wanted:
            return index
    return 0


def render() -> None:
    """Render the Users page."""
    st.title("Users")
    account = account_choice()
    if cached_query(event_count) == 0:
        st.info("No events yet: the Overview page shows how to connect Ploomes or load "
                "demo data.")
        st.page_link("views/overview.py", label="Go to Overview", icon=":material/dashboard:")
        return
    left, right = st.columns([3, 2])
    with left:
        choice = st.segmented_control("Range", list(RANGES), default="All", required=True,
                                      key="users_range")
    with right:
        include = st.toggle("Include duplicates", key="users_duplicates")
    span = RANGES.get(choice or "All")
    # whole minutes keep the cache key stable between reruns
    since = (datetime.now(UTC).replace(second=0, microsecond=0) - span) if span else None
    summary = cached_query(users_summary, since=since, include_duplicates=include,
                           account=account.scope)
    if summary.empty:
        st.info(f"No events in the last {choice}.")
        return
    counts = cached_query(user_entity_actions, since=since, include_duplicates=include,
                          account=account.scope)
    st.caption("Events per user (ActionUserId: the Ploomes user who made the change, an "
               "integration user included), by entity and action.")
    # wide (a column per entity · action): the user stays in view while scrolling
    st.dataframe(_table(summary, counts), hide_index=True, key="users_table",
                 placeholder="—", column_config={
                     "User": st.column_config.TextColumn("User", pinned=True),
                     "ActionUserId": st.column_config.NumberColumn("ActionUserId",
                                                                   format="%d")})

    ids = [_id(v) for v in summary["action_user_id"]]
    labels = {uid: _user_label(uid, name) for uid, name in zip(ids, summary["user"],
                                                                 strict=True)}
    user_id = st.selectbox("User", ids, index=_selected_user(ids),
                           format_func=lambda uid: labels[uid], key="users_selected")
    st.subheader(plain(labels[user_id]))
    _events_link(user_id, labels[user_id])
    first, second = st.columns([3, 2], gap="large")
    with first:
        _heatmap(user_id, since, include, account)
    with second:
        _top_fields(user_id, since, account)


render()
