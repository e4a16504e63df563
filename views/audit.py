"""Audit: who changed what through this dashboard, when and from where (admins only)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ploomes import i18n
from ploomes.actions import LOCAL
from ploomes.i18n import N_, _
from ploomes.queries.audit import audit_entries
from views import access
from views.common import cached_query, settings, time_column

LIMIT = 1000
COLUMNS = {"When": N_("When"), "Who": N_("Who"), "Action": N_("Action"),
           "Outcome": N_("Outcome"), "From": N_("From"), "Role": N_("Role"),
           "Target": N_("Target"), "Detail": N_("Detail")}
# how an entry ended, as the page says it (the table keeps the English word)
OUTCOMES = {"started": N_("started"), "done": N_("done"), "failed": N_("failed"),
            "refused": N_("refused")}


def _source(row: pd.Series) -> str:
    where = row["client_ip"] or _("this machine")
    if row["forwarded_for"]:
        where = _("{address} (via {proxy})").format(address=row["forwarded_for"], proxy=where)
    return where


def render() -> None:
    """Render the Audit page."""
    access.require_admin(access.current())
    st.title(_("Audit trail"))
    st.caption(_("Every change asked for through this dashboard: subscriptions, validation "
                 "keys, demo data, test deliveries and name syncs, with who asked, from "
                 "where and how it ended. Kept in the data dir's `audit_log` table, across "
                 "rebuilds too."))
    entries = cached_query(audit_entries, LIMIT)
    if entries.empty:
        st.info(_("Nothing has been changed through the dashboard yet."))
        return
    tz = settings().timezone
    local = _("this machine (no sign-in)")
    # what is read first on the left: when, who, what and how it ended
    shown = pd.DataFrame({
        "When": time_column(entries["asked_at"], tz),
        "Who": entries["actor"].map(lambda a: local if a == LOCAL else a),
        "Action": entries["action"],
        "Outcome": entries["outcome"].map(lambda o: _(OUTCOMES[o]) if o in OUTCOMES else o),
        "From": entries.apply(_source, axis=1),
        "Role": entries["role"].map(
            lambda r: _(access.ROLE_NAMES.get(r, r)) if isinstance(r, str) else _("none")),
        "Target": entries["target"],
        "Detail": entries["detail"],
        "#": entries["id"],
    })
    st.dataframe(shown, hide_index=True, key="audit_table", column_config={
        name: st.column_config.TextColumn(_(label)) for name, label in COLUMNS.items()})
    st.caption(_("Newest first, at most {limit} entries; times in {zone}. “From” is the "
                 "connection's address, with what a reverse proxy reported in front of it.")
               .format(limit=i18n.format_number(LIMIT), zone=tz))


render()
