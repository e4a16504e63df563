"""Status: where the data lives, how healthy the pipeline is, and exports of events."""

from __future__ import annotations

import io
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import streamlit as st

from ploomes.queries.events import (
    EXPORT_LIMIT,
    EventFilter,
    count_events,
    distinct_values,
    export_events,
    filter_from_params,
)
from ploomes.queries.status import ingest_positions, table_counts
from ploomes.store import SCHEMA_VERSION, Store, StoreError, schema_version
from views.common import cached_query, fmt_time, format_bytes, receiver_health, settings, store
from views.text import HEADER_LIMIT, MESSAGE_LIMIT, VALUE_LIMIT, code, cut, plain

ANY = "Any"


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
    if health.get("worker_alive") is False:
        st.error("The receiver's ingest worker is not running: restart the receiver.")


def _day(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


def _int_or_error(raw: str, name: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        st.error(f"{name} must be a number, got “{plain(raw, VALUE_LIMIT)}”.")
        st.stop()
    raise RuntimeError("unreachable")


def _filter_widgets() -> EventFilter:
    """Read the Events filter from the URL, let the user adjust it, and return it."""
    tz = settings().timezone
    parsed = filter_from_params(st.query_params.to_dict(), tz)
    for problem in parsed.problems:
        st.warning(f"Ignored a filter from the address: {plain(problem, VALUE_LIMIT)}.")
    base = parsed.filter
    entities = [ANY, *cached_query(distinct_values, "entity")]
    actions = [ANY, *cached_query(distinct_values, "action")]
    first, second, third, fourth = st.columns(4)
    start = first.date_input("From", value=_day(base.start), key="export_from",
                             format="DD/MM/YYYY")
    end_default = _day(base.end - timedelta(microseconds=1)) if base.end else None
    end = second.date_input("To (included)", value=end_default, key="export_to",
                            format="DD/MM/YYYY")
    # options show as text (no Markdown): only cut, so a long name keeps the menu usable
    entity = third.selectbox("Entity", entities, key="export_entity",
                             index=entities.index(base.entity) if base.entity in entities
                             else 0, format_func=lambda name: cut(name, HEADER_LIMIT))
    action = fourth.selectbox("Action", actions, key="export_action",
                              index=actions.index(base.action) if base.action in actions
                              else 0, format_func=lambda name: cut(name, HEADER_LIMIT))
    first, second, third, fourth = st.columns(4)
    user = first.text_input("ActionUserId", value=str(base.action_user_id or ""),
                            key="export_user")
    record = second.text_input("Record id", value=str(base.record_id or ""),
                               key="export_record")
    field = third.text_input("Changed field", value=base.field or "", key="export_field",
                             help="A field path such as StageId or OtherProperties.<key>")
    text = fourth.text_input("Free text", value=base.text or "", key="export_text",
                             help="Any part of the delivery body, any case")
    first, second, third = st.columns(3)
    duplicates = first.checkbox("Include duplicates", value=base.include_duplicates,
                                key="export_duplicates")
    demo = second.checkbox("Include demo data", value=base.include_demo, key="export_demo")
    zone = ZoneInfo(tz)
    return EventFilter(
        start=datetime.combine(start, time(), tzinfo=zone) if start else None,
        end=datetime.combine(end + timedelta(days=1), time(), tzinfo=zone) if end else None,
        entity=None if entity == ANY else entity, action=None if action == ANY else action,
        action_user_id=_int_or_error(user, "ActionUserId"),
        record_id=_int_or_error(record, "Record id"),
        field=field.strip() or None, text=text.strip() or None,
        include_duplicates=duplicates, include_demo=demo)


def _exporter(target: Store, flt: EventFilter, payload: bool, tz: str, kind: str):
    """Return a callable building the export file when the user clicks download."""
    def build() -> bytes:
        # runs on its own thread after the click, outside the page script
        try:
            with target.reader() as con:
                frame = export_events(con, flt, include_payload=payload, tz=tz)
        except StoreError as exc:
            return f"error\nthe export failed: {exc}; try again\n".encode()
        if kind == "csv":
            return frame.to_csv(index=False).encode("utf-8")
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    return build


def _export() -> None:
    st.subheader("Export events")
    st.caption("The Events page's filter; an Events address such as "
               "`?user=31007702&entity=Deals&from=2026-11-01` opens this page pre-filled.")
    flt = _filter_widgets()
    payload = st.checkbox("Include the full delivery body (payload column)", value=False,
                          key="export_payload", help="Makes the file much larger.")
    matched = cached_query(count_events, flt)
    if matched == 0:
        st.info("No events match this filter.")
        return
    rows = min(matched, EXPORT_LIMIT)
    note = (f" Only the newest {EXPORT_LIMIT:,} are exported: narrow the filter (e.g. "
            "the dates) and export the rest separately." if matched > EXPORT_LIMIT else "")
    st.write(f"**{matched:,}** events match; the file holds {rows:,} rows, newest first, "
             f"times in {settings().timezone}.{note}")
    tz = settings().timezone
    stamp = datetime.now(ZoneInfo(tz)).strftime("%Y%m%d-%H%M")
    first, second = st.columns(2)
    first.download_button("Download CSV", _exporter(store(), flt, payload, tz, "csv"),
                          file_name=f"ploomes-events-{stamp}.csv", mime="text/csv",
                          key="export_csv", icon=":material/download:", on_click="ignore")
    second.download_button("Download Parquet",
                           _exporter(store(), flt, payload, tz, "parquet"),
                           file_name=f"ploomes-events-{stamp}.parquet",
                           mime="application/vnd.apache.parquet", key="export_parquet",
                           icon=":material/download:", on_click="ignore")


def render() -> None:
    """Render the Status page."""
    st.title("Status")
    _storage()
    _receiver()
    _export()


render()
