"""What the Alerts page reads: the rules and every alert sent or pending."""

from __future__ import annotations

import duckdb
import pandas as pd

from ploomes.queries.base import frame


def alert_rules(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return the rules without their addresses (the page masks them separately)."""
    return frame(con, "SELECT id, name, kind, spec::VARCHAR AS spec, muted, per_hour, "
                      "notify IS NOT NULL AS own_notify, created_at FROM alert_rules "
                      "ORDER BY id")


def alert_list(con: duckdb.DuckDBPyConnection, limit: int = 500) -> pd.DataFrame:
    """Return the newest alerts with their delivery: rule, event, channel (the Apprise
    scheme: mailto, json, slack…; NULL: the settings' address), attempts, status (pending
    until the outbox shows an attempt), last error."""
    return frame(con, """
        SELECT a.fired_at, a.rule_name, a.kind, a.event_id, a.title,
               nullif(split_part(r.notify, '://', 1), '') AS channel,
               coalesce(m.attempts, 0) AS attempts,
               CASE WHEN a.state = 'limited' THEN 'limited'
                    ELSE coalesce(m.state, 'pending') END AS status,
               m.last_attempt_at, m.next_attempt_at, m.last_error, a.msg_id
        FROM alerts a LEFT JOIN outbox_messages m USING (msg_id)
        LEFT JOIN alert_rules r ON r.id = a.rule_id
        ORDER BY a.fired_at DESC, a.msg_id LIMIT ?""", [limit])
