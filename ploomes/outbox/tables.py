"""The outbox log's attempts as DuckDB rows (`outbox_attempts`, `outbox_messages`).

Written by the ingest process (the store's single writer) and by a rebuild: one
transaction per batch that also stores the log position (`ingest_state`, name
`outbox`), applied only if the stored position is where the caller expects it, so every
attempt lands exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb
import orjson
import pyarrow as pa

from ploomes.intake.journal import Record
from ploomes.outbox.records import KIND_ATTEMPT, Attempt
from ploomes.outbox.schedule import Verdict
from ploomes.store import StoreError, fetch_one, transaction

POSITION = "outbox"  # the ingest_state row of the outbox log
TIMESTAMP = pa.timestamp("us", tz="UTC")
STATES = {Verdict.DELIVERED: "delivered", Verdict.RETRY: "retrying", Verdict.FAILED: "failed"}


class OutboxPositionMoved(StoreError):
    """The stored outbox position is not where the writer expected it."""


def _micros(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1_000_000)


def _attempt_table(log_seqs: list[int], attempts: list[Attempt]) -> pa.Table:
    return pa.table({
        "log_seq": pa.array(log_seqs, pa.int64()),
        "channel": pa.array([a.channel for a in attempts], pa.string()),
        "msg_id": pa.array([a.msg_id for a in attempts], pa.string()),
        "event_id": pa.array([a.seq for a in attempts], pa.int64()),
        "target_id": pa.array([a.target for a in attempts], pa.string()),
        "target_name": pa.array([a.target_name for a in attempts], pa.string()),
        "attempt": pa.array([a.number for a in attempts], pa.int32()),
        "attempted_at": pa.array([_micros(a.at) for a in attempts], TIMESTAMP),
        "status": pa.array([a.status for a in attempts], pa.int32()),
        "latency_ms": pa.array([None if a.latency is None else a.latency * 1000
                                for a in attempts], pa.float64()),
        "outcome": pa.array([a.verdict.value for a in attempts], pa.string()),
        "error": pa.array([a.error for a in attempts], pa.string()),
        "response_headers": pa.array([orjson.dumps(a.headers).decode() for a in attempts],
                                     pa.string()),
        "response_body": pa.array([a.body for a in attempts], pa.string()),
        "next_attempt_at": pa.array([_micros(a.next_at) for a in attempts], TIMESTAMP),
        "replay": pa.array([a.replay for a in attempts], pa.bool_()),
    })


def _message_table(attempts: list[Attempt]) -> pa.Table:
    """One row per message: its latest attempt in this batch (with the first one's time
    when the batch holds the message's first attempt)."""
    latest: dict[str, Attempt] = {}
    first: dict[str, float] = {}
    for attempt in attempts:
        latest[attempt.msg_id] = attempt
        if attempt.number == 1:
            first.setdefault(attempt.msg_id, attempt.at)
    rows = list(latest.values())
    return pa.table({
        "msg_id": pa.array([a.msg_id for a in rows], pa.string()),
        "channel": pa.array([a.channel for a in rows], pa.string()),
        "event_id": pa.array([a.seq for a in rows], pa.int64()),
        "target_id": pa.array([a.target for a in rows], pa.string()),
        "target_name": pa.array([a.target_name for a in rows], pa.string()),
        "state": pa.array([STATES[a.verdict] for a in rows], pa.string()),
        "attempts": pa.array([a.number for a in rows], pa.int32()),
        "first_attempt_at": pa.array([_micros(first.get(a.msg_id)) for a in rows], TIMESTAMP),
        "last_attempt_at": pa.array([_micros(a.at) for a in rows], TIMESTAMP),
        "last_status": pa.array([a.status for a in rows], pa.int32()),
        "last_error": pa.array([a.error for a in rows], pa.string()),
        "next_attempt_at": pa.array([_micros(a.next_at) for a in rows], TIMESTAMP),
        "replay": pa.array([a.replay for a in rows], pa.bool_()),
    })


def outbox_position(con: duckdb.DuckDBPyConnection, position: str = POSITION) -> int:
    """Return the last outbox log record stored (0: none); `position` names the log
    (the alerts have their own)."""
    row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = ?", [position])
    return int(row[0]) if row else 0


def store_attempts(con: duckdb.DuckDBPyConnection, records: Sequence[Record],
                   expect_seq: int | None = None, position: str = POSITION) -> int:
    """Store a batch of outbox log records in one transaction with the new position;
    return the attempts stored. Records of other kinds only move the position."""
    if not records:
        return 0
    seqs: list[int] = []
    attempts: list[Attempt] = []
    for record in records:
        if record.kind == KIND_ATTEMPT:
            seqs.append(record.seq)
            attempts.append(Attempt.from_payload(record.payload))
    with transaction(con):
        current = outbox_position(con, position)
        if expect_seq is not None and current != expect_seq:
            raise OutboxPositionMoved(f"the outbox position is {current}, expected "
                                      f"{expect_seq}")
        if attempts:
            rows = _attempt_table(seqs, attempts)  # noqa: F841 - read by DuckDB by name
            con.execute("INSERT INTO outbox_attempts BY NAME SELECT * FROM rows")
            messages = _message_table(attempts)  # noqa: F841 - read by DuckDB by name
            con.execute("""
                INSERT INTO outbox_messages BY NAME SELECT * FROM messages
                ON CONFLICT (msg_id) DO UPDATE SET
                    state = excluded.state, attempts = excluded.attempts,
                    first_attempt_at = CASE WHEN excluded.attempts = 1
                        THEN excluded.first_attempt_at ELSE outbox_messages.first_attempt_at
                        END,
                    last_attempt_at = excluded.last_attempt_at,
                    last_status = excluded.last_status, last_error = excluded.last_error,
                    next_attempt_at = excluded.next_attempt_at, replay = excluded.replay
            """)
        if fetch_one(con, "UPDATE ingest_state SET last_seq = ?, updated_at = now() "
                     "WHERE name = ? RETURNING 1", [records[-1].seq, position]) is None:
            con.execute("INSERT INTO ingest_state VALUES (?, ?, ?)",
                        [position, records[-1].seq, datetime.now(UTC)])
    return len(attempts)
