"""What the Relay page, the Events detail and the Status page read of the outbox tables
(`outbox_attempts`, `outbox_messages`, docs/schema.md): attempts, dead letters, counts.

Response headers and bodies are the destination's own text: pages show them as text.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from ploomes.queries.base import frame

RELAY = "relay"  # the outbox channel of the relay
ATTEMPT_COLUMNS = ("attempted_at, target_id, target_name, event_id, msg_id, attempt, outcome, "
                   "status, latency_ms, error, next_attempt_at, replay, response_headers, "
                   "response_body")


def attempts(con: duckdb.DuckDBPyConnection, *, target_id: str | None = None,
             event_id: int | None = None, limit: int = 200) -> pd.DataFrame:
    """Return the newest attempts (of one destination, or for one event), newest first."""
    where: list[str] = ["channel = ?"]
    params: list[object] = [RELAY]
    if target_id is not None:
        where.append("target_id = ?")
        params.append(target_id)
    if event_id is not None:
        where.append("event_id = ?")
        params.append(event_id)
    return frame(con, f"SELECT {ATTEMPT_COLUMNS} FROM outbox_attempts "  # noqa: S608
                      f"WHERE {' AND '.join(where)} ORDER BY log_seq DESC LIMIT ?",
                 [*params, int(limit)])


def dead_letters(con: duckdb.DuckDBPyConnection, target_id: str | None = None,
                 limit: int = 1000) -> pd.DataFrame:
    """Return the deliveries that failed for good (retries exhausted or refused), newest
    first: what a bulk replay sends again."""
    where: list[str] = ["channel = ?", "state = 'failed'"]
    params: list[object] = [RELAY]
    if target_id is not None:
        where.append("target_id = ?")
        params.append(target_id)
    return frame(con, "SELECT event_id, target_id, target_name, attempts, last_attempt_at, "
                      "last_status, last_error FROM outbox_messages "  # noqa: S608
                      f"WHERE {' AND '.join(where)} ORDER BY last_attempt_at DESC LIMIT ?",
                 [*params, int(limit)])


def message_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return, per destination, how many deliveries are delivered, retrying and failed,
    and when the last attempt was."""
    return frame(con, """
        SELECT target_id,
               count(*) FILTER (WHERE state = 'delivered') AS delivered,
               count(*) FILTER (WHERE state = 'retrying') AS retrying,
               count(*) FILTER (WHERE state = 'failed') AS failed,
               max(last_attempt_at) AS last_attempt_at
        FROM outbox_messages WHERE channel = ? GROUP BY target_id""", [RELAY])

