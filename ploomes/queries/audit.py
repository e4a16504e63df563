"""The dashboard's audit trail (`audit_log`), newest first, for the Audit page."""

from __future__ import annotations

import duckdb
import pandas as pd

from ploomes.queries.base import frame
from ploomes.store import fetch_row

AUDIT_COLUMNS = ["id", "asked_at", "actor", "role", "client_ip", "forwarded_for", "action",
                 "target", "outcome", "detail"]


def audit_entries(con: duckdb.DuckDBPyConnection, limit: int = 1000) -> pd.DataFrame:
    """Return the newest `limit` audit entries, newest first (empty before schema v5)."""
    exists = fetch_row(con, "SELECT count(*) FROM information_schema.tables WHERE "
                            "table_name = 'audit_log' AND table_catalog = current_database()")
    if not exists[0]:
        return pd.DataFrame(columns=AUDIT_COLUMNS)
    return frame(con, f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log "
                      "ORDER BY id DESC LIMIT ?", [int(limit)])
