"""Overview: what arrived lately, whether the receiver is healthy, and a timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from ploomes.queries.status import (
    bucket_for,
    event_count,
    last_delivery_at,
    overview_summary,
    timeline,
)
from views.common import (
    AccountChoice,
    account_choice,
    action_name,
    cached_query,
    entity_name,
    fmt_ago,
    fmt_time,
    live_query,
    receiver_health,
    settings,
)
from views.first_run import render_first_run
from views.text import MESSAGE_LIMIT, VALUE_LIMIT, code, plain

REFRESH_SECONDS = 5
RANGES = {"24 h": timedelta(hours=24), "2 d": timedelta(days=2), "7 d": timedelta(days=7),
          "30 d": timedelta(days=30), "90 d": timedelta(days=90),
          "1 year": timedelta(days=365)}
METRICS = (("deliveries", "Deliveries", "Events received, repeated deliveries left out "
            "unless “Include duplicates” is on."),
           ("records_changed", "Records changed", "Distinct records with an event."),
           ("active_users", "Active users", "Distinct ActionUserIds."),
           ("duplicates", "Duplicates", "Repeated deliveries of a change already stored."),
           ("refused", "Refused", "Refused deliveries (a valid key, but not a delivery or "
            "too large: HTTP 400/413) plus failed key attempts (missing or wrong key: 401), "
            "of every account. The Status page lists them."))


def _metrics(summary: pd.DataFrame) -> None:
    for window, row in summary.iterrows():
        columns = st.columns(len(METRICS))
        for column, (name, label, help_text) in zip(columns, METRICS, strict=True):
            column.metric(f"{label} ({window})", f"{int(row[name]):,}", help=help_text)


def _health(choice: AccountChoice) -> None:
    health = receiver_health()
    last = live_query(last_delivery_at, choice.scope)
    age = (datetime.now(UTC) - last).total_seconds() if last is not None else None
    first, second, third = st.columns(3)
    first.metric("Last delivery", fmt_ago(age), help=f"Received {fmt_time(last)}")
    if not health["reachable"]:
        second.metric("Receiver", "not reachable")
        third.metric("Ingest lag", "—")
        st.error(f"Receiver not reachable at {code(settings().receiver_url)}: Ploomes' deliveries "
                 "are lost while it is down. Start it with `python receiver.py` (see "
                 "Status), or set PLOOMES_RECEIVER_URL if it runs elsewhere.",
                 icon=":material/power_off:")
        return
    # what the receiver answers is shown as text (a metric's value is Markdown too)
    second.metric("Receiver", plain(health.get("status", "unknown"), VALUE_LIMIT),
                  help=f"Uptime {plain(health.get('uptime_seconds', '?'))} s")
    lag = float(health.get("ingest_lag_seconds") or 0.0)
    third.metric("Ingest lag", f"{lag:.1f} s",
                 help=f"{plain(health.get('backlog', 0))} journal records waiting to be stored")
    problem = health.get("journal_error") or health.get("ingest_error")
    if problem:
        st.error(f"The receiver reports a problem: {plain(problem, MESSAGE_LIMIT)}. See Status "
                 "for details.")


def _timeline(include_duplicates: bool, account: AccountChoice) -> None:
    st.subheader("Timeline")
    left, right = st.columns([3, 2])
    with left:
        choice = st.segmented_control("Range", list(RANGES), default="7 d", required=True,
                                      key="overview_range")
    with right:
        by = st.segmented_control("By", ["entity", "action"], default="entity",
                                  required=True, key="overview_by",
                                  format_func=str.capitalize)
    # whole minutes keep the cache key stable between quick refreshes
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - RANGES[choice or "7 d"]
    bucket = bucket_for(start, end)
    data = cached_query(timeline, start, end, by=by or "entity", bucket=bucket,
                        tz=settings().timezone, include_duplicates=include_duplicates,
                        account=account.scope)
    if data.empty:
        st.info(f"No events in the last {choice}.")
        return
    # Ploomes' own names for entities and actions
    data = data.assign(group=data["group"].map(entity_name if by != "action" else action_name))
    # buckets are local wall-clock times; tagging them UTC and plotting on a UTC scale
    # shows them unchanged, whatever the browser's time zone. Each bar spans its bucket.
    starts = pd.to_datetime(data["bucket"])
    width = {"hour": pd.Timedelta(hours=1), "day": pd.Timedelta(days=1),
             "week": pd.Timedelta(weeks=1)}[bucket]
    data = data.assign(bucket=starts.dt.tz_localize("UTC"),
                       bucket_end=(starts + width * 0.9).dt.tz_localize("UTC"),
                       when=starts.dt.strftime("%d/%m/%Y %H:%M" if bucket == "hour"
                                               else "%d/%m/%Y"))
    # the axis spans the chosen range (same local-as-UTC tagging as the bars)
    local = pd.Timestamp(start).tz_convert(settings().timezone).tz_localize(None)
    domain = [local.tz_localize("UTC"), (local + RANGES[choice or "7 d"]).tz_localize("UTC")]
    # a plain Vega-Lite spec: importing altair would slow the first render
    spec = {
        "mark": {"type": "bar"},
        "encoding": {
            "x": {"field": "bucket", "type": "temporal",
                  "title": f"{bucket} ({settings().timezone})",
                  "scale": {"type": "utc", "domain": [d.isoformat() for d in domain]}},
            "x2": {"field": "bucket_end"},
            "y": {"aggregate": "sum", "field": "events", "type": "quantitative",
                  "title": "events"},
            "color": {"field": "group", "type": "nominal",
                      "title": (by or "entity").capitalize()},
            "tooltip": [{"field": "when", "type": "nominal", "title": bucket},
                        {"field": "group", "type": "nominal", "title": by},
                        {"field": "events", "type": "quantitative"}],
        },
    }
    st.vega_lite_chart(data, spec, width="stretch")
    st.caption(f"One bar per {bucket}, times in {settings().timezone}.")


@st.fragment(run_every=REFRESH_SECONDS)
def live_overview(choice: AccountChoice) -> None:
    """Render the numbers and the chart; reruns by itself every REFRESH_SECONDS."""
    include = st.toggle("Include duplicates", key="overview_duplicates",
                        help="Count every delivery, repeated ones too.")
    _metrics(live_query(overview_summary, include_duplicates=include, account=choice.scope))
    _health(choice)
    _timeline(include, choice)
    st.caption(f"Refreshes every {REFRESH_SECONDS} s. Test deliveries (Webhooks page) are "
               "not counted.")


if cached_query(event_count) == 0:
    render_first_run()
else:
    st.title("Overview")
    live_overview(account_choice())
