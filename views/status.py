"""Status: where the data lives, how healthy the pipeline and the store are, and the
requests the receiver refused (events are exported from the Events page)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ploomes import i18n
from ploomes.i18n import N_, _
from ploomes.queries.status import (
    KEY_ATTEMPTS_MEANING,
    REFUSED_DELIVERIES_MEANING,
    ingest_positions,
    refused_counts,
    refused_requests,
    table_counts,
)
from ploomes.store import SCHEMA_VERSION, schema_version
from views.common import (
    cached_query,
    fmt_time,
    format_bytes,
    receiver_health,
    settings,
    store,
    time_column,
)
from views.relay_detail import paused_by_relay
from views.text import MESSAGE_LIMIT, VALUE_LIMIT, code, plain

REFUSED_SHOWN = 500  # newest refused requests listed
RECEIVER_STATES = {"ok": N_("ok"), "degraded": N_("degraded"), "failing": N_("failing"),
                   "starting": N_("starting"), "unknown": N_("unknown")}
STORE_STATES = {"ok": N_("ok"), "failing": N_("failing"), "damaged": N_("damaged")}


def _storage() -> None:
    config = settings()
    st.subheader(_("Storage"))
    st.write(_("Data dir: {path}").format(path=code(config.data_dir)))
    version = cached_query(schema_version)
    first, second, third = st.columns(3)
    first.metric(_("Database size"), format_bytes(store().size_bytes()),
                 help=_("{file} and its write-ahead log").format(file=config.db_path.name))
    second.metric(_("Schema version"), str(version),
                  help=_("This program writes schema version {version}.").format(
                      version=SCHEMA_VERSION))
    positions = cached_query(ingest_positions)
    main = positions[positions["name"] == "main"]
    third.metric(_("Journal records stored"),
                 i18n.format_number(int(main["last_seq"].iloc[0]) if not main.empty else 0),
                 help=_("Last journal sequence number applied to the database") + (
                     _(", at {time}").format(time=fmt_time(main["updated_at"].iloc[0]))
                     if not main.empty else ""))
    if version < SCHEMA_VERSION:
        st.warning(_("The database is at schema version {version}; it is migrated to "
                     "{latest} the next time the receiver or a command writes to it.")
                   .format(version=version, latest=SCHEMA_VERSION))
    with st.expander(_("Rows per table")):
        counts = cached_query(table_counts)
        st.dataframe(counts, hide_index=True, key="status_tables", column_config={
            "table": st.column_config.TextColumn(_("table")),
            "rows": st.column_config.NumberColumn(_("rows"))})


def _receiver() -> None:
    config = settings()
    st.subheader(_("Receiver"))
    health = receiver_health()
    if not health["reachable"]:
        st.error(_("Receiver not reachable at {url} ({problem}). Start it with `python "
                   "receiver.py`, or set PLOOMES_RECEIVER_URL if it runs elsewhere. Journal "
                   "backlog and ingest lag are unknown while it is down.").format(
                       url=code(config.receiver_url),
                       problem=plain(health["error"], MESSAGE_LIMIT)),
                 icon=":material/power_off:")
        return
    first, second, third, fourth = st.columns(4)
    # what the receiver answers is shown as text (a metric's value is Markdown too)
    status = str(health.get("status", "unknown"))
    first.metric(_("Receiver"), plain(_(RECEIVER_STATES[status]) if status in RECEIVER_STATES
                                      else status, VALUE_LIMIT),
                 help=_("{url} answered HTTP {status}").format(
                     url=code(health["url"]), status=plain(health.get("http_status"))))
    second.metric(_("Journal backlog"), i18n.format_number(int(health.get("backlog") or 0)),
                  help=_("Durable journal records not yet in the database"))
    third.metric(_("Ingest lag"),
                 f"{i18n.format_number(float(health.get('ingest_lag_seconds') or 0), 1)} s")
    fourth.metric(_("Journal sequence"),
                  i18n.format_number(int(health.get("journal_seq") or 0)),
                  help=_("ingested up to {seq}").format(seq=plain(health.get("ingested_seq"))))
    for name, label in (("journal_error", _("Journal error")),
                        ("ingest_error", _("Ingest error"))):
        if health.get(name):
            st.error(f"{label}: {plain(health[name], MESSAGE_LIMIT)}")
    _store_state(health)
    if health.get("worker_alive") is False:
        st.error(_("The receiver's ingest worker is not running: restart the receiver."))


def _store_state(health: dict) -> None:
    """What the receiver says of the DuckDB file: ok, failing or damaged, and why."""
    state = health.get("store")
    if state is None:
        return
    problem = health.get("store_error")
    if state == "ok" and not problem:
        st.caption(_("Data store: ok (the ingest stores deliveries in the DuckDB file)."))
        return
    shown_state = _(STORE_STATES[state]) if state in STORE_STATES else state
    text = _("Data store: {state}").format(state=plain(shown_state, VALUE_LIMIT))
    if problem:
        text += f" — {plain(problem, MESSAGE_LIMIT)}"
    if state == "damaged":
        text += _(". Deliveries are kept in the journal; `python -m ploomes rebuild` (receiver "
                  "stopped) recreates the file from it.")
    else:
        text += _(". Deliveries are kept in the journal meanwhile.")
    st.error(text, icon=":material/database:")


def _refused() -> None:
    st.subheader(_("Refused requests"))
    counts = cached_query(refused_counts)
    first, second = st.columns(2)
    first.metric(_("Refused deliveries"), i18n.format_number(counts["refused_deliveries"]),
                 help=_("HTTP 400 or 413 with an accepted validation key"))
    second.metric(_("Failed key attempts"), i18n.format_number(counts["failed_key_attempts"]),
                  help=_("HTTP 401: missing or wrong validation key"))
    st.caption(_("Counts: {deliveries}; {attempts}. `python -m ploomes status` counts the "
                 "same.").format(deliveries=_(REFUSED_DELIVERIES_MEANING),
                                 attempts=_(KEY_ATTEMPTS_MEANING)))
    rows = cached_query(refused_requests, limit=REFUSED_SHOWN)
    if rows.empty:
        st.info(_("No request has been refused."))
        return
    zone = settings().timezone
    shown = pd.DataFrame({
        "received": time_column(rows["received_at"], zone),
        "kind": rows["kind"].map({"delivery": _("refused delivery"), "key": _("key attempt")}),
        "source": rows["source"],
        "status": rows["status"],
        "reason": rows["reason"],
        "size (bytes)": rows["raw_size"].astype("Int64"),
    })
    state = st.dataframe(shown, hide_index=True, width="stretch", key="refused_table",
                         on_select="rerun", selection_mode="single-row", placeholder="—",
                         column_config={
                             "received": st.column_config.TextColumn(_("received")),
                             "kind": st.column_config.TextColumn(_("kind")),
                             "source": st.column_config.TextColumn(_("source")),
                             "status": st.column_config.NumberColumn(_("status")),
                             "reason": st.column_config.TextColumn(_("reason"), width="large"),
                             "size (bytes)": st.column_config.NumberColumn(_("size (bytes)"))})
    st.caption(_("The newest {count}, times in {zone}. Pick a refused delivery to see what "
                 "was sent.").format(count=i18n.format_number(min(len(rows), REFUSED_SHOWN)),
                                     zone=zone))
    picked = [i for i in state.selection.rows if 0 <= i < len(rows)]
    if not picked:
        return
    row = rows.iloc[picked[0]]
    raw = row["raw"]
    if raw is None or (not isinstance(raw, bytes | bytearray | memoryview) and pd.isna(raw)):
        st.write(_("A failed key attempt: its body is not kept."))
        return
    body = bytes(raw)
    size = int(row["raw_size"]) if not pd.isna(row["raw_size"]) else len(body)
    if size <= len(body):
        st.markdown(_("**Body as received**, shown as text:"))
    else:
        st.markdown(_("**Body as received (the first {kept} of {size} bytes)**, shown as text:")
                    .format(kept=i18n.format_number(len(body)), size=i18n.format_number(size)))
    # st.code shows text as it is: nothing in the body is read as Markdown or HTML
    st.code(body.decode("utf-8", errors="replace"), language=None, wrap_lines=True)
    st.download_button(_("Download the body"), body, key="refused_download",
                       file_name=f"refused-{row['journal_seq'] or 'request'}.bin",
                       mime="application/octet-stream", icon=":material/download:",
                       on_click="ignore")


def render() -> None:
    """Render the Status page."""
    settings()
    st.title(_("Status"))
    _storage()
    _receiver()
    paused_by_relay()
    _refused()


render()
