"""Status: where the data lives, how healthy the pipeline and the store are, and the
requests the receiver refused (events are exported from the Events page)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

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
    to_local,
)
from views.relay_detail import paused_by_relay
from views.text import MESSAGE_LIMIT, VALUE_LIMIT, code, plain

REFUSED_SHOWN = 500  # newest refused requests listed


def _storage() -> None:
    config = settings()
    st.subheader("Storage")
    st.write(f"Data dir: {code(config.data_dir)}")
    version = cached_query(schema_version)
    first, second, third = st.columns(3)
    first.metric("Database size", format_bytes(store().size_bytes()),
                 help=f"{config.db_path.name} and its write-ahead log")
    second.metric("Schema version", str(version),
                  help=f"This program writes schema version {SCHEMA_VERSION}.")
    positions = cached_query(ingest_positions)
    main = positions[positions["name"] == "main"]
    third.metric("Journal records stored",
                 f"{int(main['last_seq'].iloc[0]):,}" if not main.empty else "0",
                 help="Last journal sequence number applied to the database"
                 + (f", at {fmt_time(main['updated_at'].iloc[0])}" if not main.empty else ""))
    if version < SCHEMA_VERSION:
        st.warning(f"The database is at schema version {version}; it is migrated to "
                   f"{SCHEMA_VERSION} the next time the receiver or a command writes to it.")
    with st.expander("Rows per table"):
        st.dataframe(cached_query(table_counts), hide_index=True, key="status_tables")


def _receiver() -> None:
    config = settings()
    st.subheader("Receiver")
    health = receiver_health()
    if not health["reachable"]:
        st.error(f"Receiver not reachable at {code(config.receiver_url)} "
                 f"({plain(health['error'], MESSAGE_LIMIT)}). "
                 "Start it with `python receiver.py`, or set PLOOMES_RECEIVER_URL if it runs "
                 "elsewhere. Journal backlog and ingest lag are unknown while it is down.",
                 icon=":material/power_off:")
        return
    first, second, third, fourth = st.columns(4)
    # what the receiver answers is shown as text (a metric's value is Markdown too)
    first.metric("Receiver", plain(health.get("status", "unknown"), VALUE_LIMIT),
                 help=f"{code(health['url'])} answered HTTP {plain(health.get('http_status'))}")
    second.metric("Journal backlog", f"{int(health.get('backlog') or 0):,}",
                  help="Durable journal records not yet in the database")
    third.metric("Ingest lag", f"{float(health.get('ingest_lag_seconds') or 0):.1f} s")
    fourth.metric("Journal sequence", f"{int(health.get('journal_seq') or 0):,}",
                  help=f"ingested up to {plain(health.get('ingested_seq'))}")
    for name in ("journal_error", "ingest_error"):
        if health.get(name):
            st.error(f"{name.replace('_', ' ').capitalize()}: "
                     f"{plain(health[name], MESSAGE_LIMIT)}")
    _store_state(health)
    if health.get("worker_alive") is False:
        st.error("The receiver's ingest worker is not running: restart the receiver.")


def _store_state(health: dict) -> None:
    """What the receiver says of the DuckDB file: ok, failing or damaged, and why."""
    state = health.get("store")
    if state is None:
        return
    problem = health.get("store_error")
    if state == "ok" and not problem:
        st.caption("Data store: ok (the ingest stores deliveries in the DuckDB file).")
        return
    text = f"Data store: {plain(state, VALUE_LIMIT)}"
    if problem:
        text += f" — {plain(problem, MESSAGE_LIMIT)}"
    if state == "damaged":
        text += (". Deliveries are kept in the journal; `python -m ploomes rebuild` (receiver "
                 "stopped) recreates the file from it.")
    else:
        text += ". Deliveries are kept in the journal meanwhile."
    st.error(text, icon=":material/database:")


def _refused() -> None:
    st.subheader("Refused requests")
    counts = cached_query(refused_counts)
    first, second = st.columns(2)
    first.metric("Refused deliveries", f"{counts['refused_deliveries']:,}",
                 help="HTTP 400 or 413 with an accepted validation key")
    second.metric("Failed key attempts", f"{counts['failed_key_attempts']:,}",
                  help="HTTP 401: missing or wrong validation key")
    st.caption(f"Counts: {REFUSED_DELIVERIES_MEANING}; {KEY_ATTEMPTS_MEANING}. "
               "`python -m ploomes status` counts the same.")
    rows = cached_query(refused_requests, limit=REFUSED_SHOWN)
    if rows.empty:
        st.info("No request has been refused.")
        return
    zone = settings().timezone
    shown = pd.DataFrame({
        "received": to_local(rows["received_at"], zone).dt.strftime("%d/%m/%Y %H:%M:%S"),
        "kind": rows["kind"].map({"delivery": "refused delivery", "key": "key attempt"}),
        "source": rows["source"],
        "status": rows["status"],
        "reason": rows["reason"],
        "size (bytes)": rows["raw_size"].astype("Int64"),
    })
    state = st.dataframe(shown, hide_index=True, width="stretch", key="refused_table",
                         on_select="rerun", selection_mode="single-row", placeholder="—",
                         column_config={"reason": st.column_config.TextColumn("reason",
                                                                             width="large")})
    st.caption(f"The newest {min(len(rows), REFUSED_SHOWN):,}, times in {zone}. Pick a "
               "refused delivery to see what was sent.")
    picked = [i for i in state.selection.rows if 0 <= i < len(rows)]
    if not picked:
        return
    row = rows.iloc[picked[0]]
    raw = row["raw"]
    if raw is None or (not isinstance(raw, bytes | bytearray | memoryview) and pd.isna(raw)):
        st.write("A failed key attempt: its body is not kept.")
        return
    body = bytes(raw)
    size = int(row["raw_size"]) if not pd.isna(row["raw_size"]) else len(body)
    kept = "" if size <= len(body) else f" (the first {len(body):,} of {size:,} bytes)"
    st.markdown(f"**Body as received{kept}**, shown as text:")
    # st.code shows text as it is: nothing in the body is read as Markdown or HTML
    st.code(body.decode("utf-8", errors="replace"), language=None, wrap_lines=True)
    st.download_button("Download the body", body, key="refused_download",
                       file_name=f"refused-{row['journal_seq'] or 'request'}.bin",
                       mime="application/octet-stream", icon=":material/download:",
                       on_click="ignore")


def render() -> None:
    """Render the Status page."""
    st.title("Status")
    _storage()
    _receiver()
    paused_by_relay()
    _refused()


render()
