"""Overview: what arrived lately, whether the receiver is healthy, and a timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from ploomes import i18n
from ploomes.i18n import N_, _
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
RANGE_NAMES = {"24 h": N_("24 h"), "2 d": N_("2 d"), "7 d": N_("7 d"), "30 d": N_("30 d"),
               "90 d": N_("90 d"), "1 year": N_("1 year")}
BY_NAMES = {"entity": N_("Entity"), "action": N_("Action")}
BUCKET_NAMES = {"hour": N_("hour"), "day": N_("day"), "week": N_("week")}
METRICS = (("deliveries", N_("Deliveries"), N_("Events received, repeated deliveries left out "
            "unless “Include duplicates” is on.")),
           ("records_changed", N_("Records changed"), N_("Distinct records with an event.")),
           ("active_users", N_("Active users"), N_("Distinct ActionUserIds.")),
           ("duplicates", N_("Duplicates"),
            N_("Repeated deliveries of a change already stored.")),
           ("refused", N_("Refused"), N_("Refused deliveries (a valid key, but not a delivery "
            "or too large: HTTP 400/413) plus failed key attempts (missing or wrong key: 401), "
            "of every account. The Status page lists them.")))
RECEIVER_STATES = {"ok": N_("ok"), "degraded": N_("degraded"), "failing": N_("failing"),
                   "starting": N_("starting"), "unknown": N_("unknown")}
WINDOW_NAMES = {"24 h": N_("24 h"), "7 d": N_("7 d")}


def _metrics(summary: pd.DataFrame) -> None:
    for window, row in summary.iterrows():
        columns = st.columns(len(METRICS))
        for column, (name, label, help_text) in zip(columns, METRICS, strict=True):
            shown_window = _(WINDOW_NAMES.get(str(window), str(window)))
            column.metric(f"{_(label)} ({shown_window})", i18n.format_number(int(row[name])),
                          help=_(help_text))


def _health(choice: AccountChoice) -> None:
    health = receiver_health()
    last = live_query(last_delivery_at, choice.scope)
    age = (datetime.now(UTC) - last).total_seconds() if last is not None else None
    first, second, third = st.columns(3)
    first.metric(_("Last delivery"), fmt_ago(age),
                 help=_("Received {time}").format(time=fmt_time(last)))
    if not health["reachable"]:
        second.metric(_("Receiver"), _("not reachable"))
        third.metric(_("Ingest lag"), "—")
        st.error(_("Receiver not reachable at {url}: Ploomes' deliveries are lost while it is "
                   "down. Start it with `python receiver.py` (see Status), or set "
                   "PLOOMES_RECEIVER_URL if it runs elsewhere.")
                 .format(url=code(settings().receiver_url)), icon=":material/power_off:")
        return
    # what the receiver answers is shown as text (a metric's value is Markdown too)
    status = str(health.get("status", "unknown"))
    second.metric(_("Receiver"), plain(_(RECEIVER_STATES[status]) if status in RECEIVER_STATES
                                       else status, VALUE_LIMIT),
                  help=_("Uptime {seconds} s").format(
                      seconds=plain(health.get("uptime_seconds", "?"))))
    lag = float(health.get("ingest_lag_seconds") or 0.0)
    third.metric(_("Ingest lag"), f"{i18n.format_number(lag, 1)} s",
                 help=_("{count} journal records waiting to be stored").format(
                     count=plain(health.get("backlog", 0))))
    problem = health.get("journal_error") or health.get("ingest_error")
    if problem:
        st.error(_("The receiver reports a problem: {problem}. See Status for details.")
                 .format(problem=plain(problem, MESSAGE_LIMIT)))


def _timeline(include_duplicates: bool, account: AccountChoice) -> None:
    st.subheader(_("Timeline"))
    left, right = st.columns([3, 2])
    with left:
        choice = st.segmented_control(_("Range"), list(RANGES), default="7 d", required=True,
                                      key="overview_range",
                                      format_func=lambda r: _(RANGE_NAMES[r]))
    with right:
        by = st.segmented_control(_("By"), ["entity", "action"], default="entity",
                                  required=True, key="overview_by",
                                  format_func=lambda b: _(BY_NAMES[b]))
    # whole minutes keep the cache key stable between quick refreshes
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - RANGES[choice or "7 d"]
    bucket = bucket_for(start, end)
    data = cached_query(timeline, start, end, by=by or "entity", bucket=bucket,
                        tz=settings().timezone, include_duplicates=include_duplicates,
                        account=account.scope)
    if data.empty:
        st.info(_("No events in the last {range}.").format(
            range=_(RANGE_NAMES[choice or "7 d"])))
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
                       when=starts.dt.strftime(i18n.date_pattern(False) if bucket == "hour"
                                               else i18n.date_pattern()))
    # the axis spans the chosen range (same local-as-UTC tagging as the bars)
    local = pd.Timestamp(start).tz_convert(settings().timezone).tz_localize(None)
    domain = [local.tz_localize("UTC"), (local + RANGES[choice or "7 d"]).tz_localize("UTC")]
    # a plain Vega-Lite spec: importing altair would slow the first render
    bucket_name = _(BUCKET_NAMES[bucket])
    group_name = _(BY_NAMES[by or "entity"])
    spec = {
        "mark": {"type": "bar"},
        # axis labels (months, weekdays) and numbers in the interface's language
        "config": {"locale": i18n.vega_locale()},
        "encoding": {
            "x": {"field": "bucket", "type": "temporal",
                  "title": f"{bucket_name} ({settings().timezone})",
                  "scale": {"type": "utc", "domain": [d.isoformat() for d in domain]}},
            "x2": {"field": "bucket_end"},
            "y": {"aggregate": "sum", "field": "events", "type": "quantitative",
                  "title": _("events"), "axis": {"tickMinStep": 1}},  # whole events
            "color": {"field": "group", "type": "nominal", "title": group_name},
            "tooltip": [{"field": "when", "type": "nominal", "title": bucket_name},
                        {"field": "group", "type": "nominal", "title": group_name},
                        {"field": "events", "type": "quantitative", "title": _("events")}],
        },
    }
    st.vega_lite_chart(data, spec, width="stretch")
    st.caption(_("One bar per {bucket}, times in {zone}.").format(
        bucket=bucket_name, zone=settings().timezone))


@st.fragment(run_every=REFRESH_SECONDS)
def live_overview(choice: AccountChoice) -> None:
    """Render the numbers and the chart; reruns by itself every REFRESH_SECONDS."""
    include = st.toggle(_("Include duplicates"), key="overview_duplicates",
                        help=_("Count every delivery, repeated ones too."))
    _metrics(live_query(overview_summary, include_duplicates=include, account=choice.scope))
    _health(choice)
    _timeline(include, choice)
    st.caption(_("Refreshes every {seconds} s. Test deliveries (Webhooks page) are not "
                 "counted.").format(seconds=REFRESH_SECONDS))


if cached_query(event_count) == 0:
    render_first_run()
else:
    st.title(_("Overview"))
    live_overview(account_choice())
