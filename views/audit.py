"""Audit: who changed what through this dashboard, when and from where (admins only)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ploomes.actions import LOCAL
from ploomes.queries.audit import audit_entries
from views import access
from views.common import cached_query, settings, to_local

LIMIT = 1000


def _source(row: pd.Series) -> str:
    where = row["client_ip"] or "this machine"
    if row["forwarded_for"]:
        where = f"{row['forwarded_for']} (via {where})"
    return where


def render() -> None:
    """Render the Audit page."""
    access.require_admin(access.current())
    st.title("Audit trail")
    st.caption("Every change asked for through this dashboard: subscriptions, validation "
               "keys, demo data, test deliveries and name syncs, with who asked, from "
               "where and how it ended. Kept in the data dir's `audit_log` table, across "
               "rebuilds too.")
    entries = cached_query(audit_entries, LIMIT)
    if entries.empty:
        st.info("Nothing has been changed through the dashboard yet.")
        return
    tz = settings().timezone
    # what is read first on the left: when, who, what and how it ended
    shown = pd.DataFrame({
        "When": to_local(entries["asked_at"], tz).dt.strftime("%d/%m/%Y %H:%M:%S"),
        "Who": entries["actor"].map(lambda a: "this machine (no sign-in)" if a == LOCAL
                                    else a),
        "Action": entries["action"],
        "Outcome": entries["outcome"],
        "From": entries.apply(_source, axis=1),
        "Role": entries["role"].fillna("none"),
        "Target": entries["target"],
        "Detail": entries["detail"],
        "#": entries["id"],
    })
    st.dataframe(shown, hide_index=True, key="audit_table")
    st.caption(f"Newest first, at most {LIMIT:,} entries; times in {tz}. “From” is the "
               "connection's address, with what a reverse proxy reported in front of it.")


render()
