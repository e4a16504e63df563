"""The store's schema: table definitions and the migrations between versions.

Versions: 1 = receiver tables; 2 = change model; 3 = record titles and names; 4 = user
rollups; 5 = the dashboard's audit trail; 6 = names per account, test deliveries; 7 = the
outbox's attempts (the relay); 8 = alert rules and the alerts they fired. A
migration that must recompute rows from events (2 and 4) is given the code that does it
(`Upgrades`, from `ploomes.ingest`) instead of importing it: the store sits below the
ingest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb


class StoreError(Exception):
    """The event store cannot do what was asked; the message says what to do."""


class StoreBusy(StoreError):
    """The DuckDB file stayed locked by another program for too long."""


class StoreUnreadable(StoreError):
    """The DuckDB file is damaged (not a DuckDB file, truncated, failing its checksums).

    The journal still holds every delivery: `python -m ploomes rebuild` sets the file
    aside and rebuilds it.
    """


# How DuckDB words a file whose bytes are wrong, as opposed to one it may not open
# (permissions, a lock) or a query that is wrong.
_DAMAGE_MARKS = ("not a valid DuckDB database file", "Could not read enough bytes",
                 "Corrupt database file", "Corrupt WAL file", "Failure while replaying WAL")


def is_damage(exc: BaseException) -> bool:
    """Return whether a DuckDB error says the file itself is damaged."""
    text = str(exc)
    return isinstance(exc, duckdb.Error) and any(mark in text for mark in _DAMAGE_MARKS)


Recompute = Callable[[duckdb.DuckDBPyConnection], None]


@dataclass(frozen=True)
class Upgrades:
    """What migrations of old files need from the ingest: recomputing derived rows."""

    rederive: Recompute  # the whole change model from `events` (v2)
    refill_user_rollups: Recompute  # `user_records` and `user_fields` (v4)


SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id BIGINT NOT NULL,                -- journal sequence number = delivery_id
    received_at TIMESTAMPTZ NOT NULL,  -- when the receiver accepted it (Ploomes sends no time)
    action VARCHAR NOT NULL,
    entity VARCHAR NOT NULL,
    account_id BIGINT,
    action_user_id BIGINT,
    webhook_id BIGINT,
    webhook_creator_id BIGINT,
    secondary_entity_id BIGINT,
    record_id BIGINT,                  -- New.Id, else Old.Id
    -- zstd for the three JSON columns: DuckDB's default string compression analyses
    -- every segment it writes, which made each checkpoint (one per reader letting the
    -- ingest go) cost twice as much; see ARCHITECTURE.md, "Column compression"
    old JSON USING COMPRESSION zstd,
    new JSON USING COMPRESSION zstd,
    payload JSON USING COMPRESSION zstd NOT NULL,  -- the whole body as received
    body_sha256 VARCHAR NOT NULL,
    is_demo BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS rejected_deliveries (
    id BIGINT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    status INTEGER NOT NULL,
    reason VARCHAR NOT NULL,
    raw BLOB,                          -- at most the first 64 KiB of the body
    raw_size BIGINT,
    source VARCHAR
);
CREATE TABLE IF NOT EXISTS auth_failures (
    received_at TIMESTAMPTZ NOT NULL,
    source VARCHAR,
    reason VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_state (
    name VARCHAR PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
"""

SCHEMA_V2 = """
ALTER TABLE events ADD COLUMN IF NOT EXISTS change_fingerprint VARCHAR;
ALTER TABLE events ADD COLUMN IF NOT EXISTS duplicate_of BIGINT;
CREATE TABLE IF NOT EXISTS field_changes (
    event_id BIGINT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    entity VARCHAR NOT NULL,
    record_id BIGINT,
    action VARCHAR NOT NULL,
    action_user_id BIGINT,
    field VARCHAR NOT NULL,
    old_value JSON,                    -- NULL: nothing before / previous value unknown
    new_value JSON,                    -- NULL: nothing after (cleared)
    old_known BOOLEAN NOT NULL,
    new_known BOOLEAN NOT NULL,
    kind VARCHAR NOT NULL,             -- set | changed | cleared | list | tags
    summary VARCHAR NOT NULL,
    bookkeeping BOOLEAN NOT NULL,
    added JSON,
    removed JSON,
    is_duplicate BOOLEAN NOT NULL,
    is_demo BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS record_state (
    entity VARCHAR NOT NULL,
    record_id BIGINT NOT NULL,
    state JSON NOT NULL,
    last_event_id BIGINT NOT NULL,
    last_received_at TIMESTAMPTZ NOT NULL,
    deleted BOOLEAN NOT NULL,
    is_demo BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS continuity_gaps (
    event_id BIGINT NOT NULL,
    previous_event_id BIGINT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    entity VARCHAR NOT NULL,
    record_id BIGINT NOT NULL,
    fields JSON NOT NULL,              -- [{"field", "expected", "found"}]
    is_demo BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id BIGINT PRIMARY KEY, name VARCHAR, email VARCHAR, suspended BOOLEAN,
    synced_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS fields (
    key VARCHAR PRIMARY KEY, entity_id BIGINT, name VARCHAR, type_id BIGINT,
    synced_at TIMESTAMPTZ
);
"""


# v3: a record's title and searchable names, kept beside its state by the ingest path so
# a name search reads one short text column instead of parsing every state's JSON.
SCHEMA_V3 = """
ALTER TABLE record_state ADD COLUMN IF NOT EXISTS title VARCHAR;  -- Name/LegalName/Title/…
ALTER TABLE record_state ADD COLUMN IF NOT EXISTS names VARCHAR;  -- Name, LegalName, Title
"""
# The same values ingest.record_names computes, for rows stored before v3.
FILL_V3 = """
UPDATE record_state SET
    title = coalesce(state->>'$.Name', state->>'$.LegalName', state->>'$.Title',
                     state->>'$.ContactName'),
    names = nullif(concat_ws(chr(10), state->>'$.Name', state->>'$.LegalName',
                             state->>'$.Title'), '')
"""


# v4: per-user rollups of the change model, kept by ingest stage 2 beside field_changes,
# so the Users page reads a few thousand rows instead of counting distinct records among
# millions (see ingest.fold_user_event and ARCHITECTURE.md).
SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS user_records (
    action_user_id BIGINT,             -- NULL: deliveries without an ActionUserId
    entity VARCHAR NOT NULL,
    record_id BIGINT NOT NULL,
    events BIGINT NOT NULL,            -- original deliveries (duplicate_of IS NULL)
    duplicates BIGINT NOT NULL,        -- repeated deliveries
    first_at TIMESTAMPTZ,              -- first and last original delivery (NULL if none)
    last_at TIMESTAMPTZ,
    last_duplicate_at TIMESTAMPTZ,     -- last repeated delivery (NULL if none)
    fields JSON NOT NULL               -- [field, …] changed, sorted; no bookkeeping or repeats
);
CREATE TABLE IF NOT EXISTS user_fields (
    action_user_id BIGINT,
    entity VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    changes BIGINT NOT NULL,           -- field changes, bookkeeping and repeats left out
    records BIGINT NOT NULL            -- distinct records among them
);
"""


# A store written before two-stage ingest computed each event's change model as it stored
# the event, and has no `derive` position: every event it holds is derived. Without the
# position, stage 2 would diff them all again (duplicating their field changes) and the
# rollups would leave them out. A store of today has the position once anything is derived.
DERIVED_BEFORE_V4 = """
INSERT INTO ingest_state SELECT 'derive', max(id), now() FROM events
WHERE NOT EXISTS (SELECT 1 FROM ingest_state WHERE name = 'derive')
  AND (EXISTS (SELECT 1 FROM field_changes) OR EXISTS (SELECT 1 FROM record_state))
HAVING max(id) IS NOT NULL
"""

# v5: the dashboard's own audit trail (ploomes.actions): who changed what through it.
# Ids are given by the writer (max + 1 under the store's write lock), not a sequence: a
# rebuild copies the rows into a new file, where a sequence would start again at 1.
SCHEMA_V5 = """
CREATE TABLE IF NOT EXISTS audit_log (
    id BIGINT NOT NULL,
    asked_at TIMESTAMPTZ NOT NULL,     -- when the action was asked for
    actor VARCHAR NOT NULL,            -- signed-in e-mail, or 'local' (no sign-in, loopback)
    role VARCHAR,                      -- admin | viewer; NULL: not on the allow-lists
    client_ip VARCHAR,                 -- the connection's address; NULL: this machine
    forwarded_for VARCHAR,             -- X-Forwarded-For/Forwarded as a proxy passed it
    action VARCHAR NOT NULL,           -- register_subscription, delete_subscription, …
    target VARCHAR,                    -- what it acted on
    outcome VARCHAR NOT NULL,          -- started | done | failed | refused
    detail VARCHAR                     -- what changed, or why it failed
);
"""

# v6: names per Ploomes account, and test deliveries. `users` and `fields` are keyed by
# AccountId (a custom field key such as `contact_check` exists in many accounts, each with
# its own label); `lookups` holds the API's other names (stages, pipelines, tags…) and
# `accounts` the accounts' own names. NULL as account_id is "unknown account": rows kept
# from before v6 that no single account could claim; they label any account's data that
# has no name of its own. `events.is_test` marks the Webhooks page's test deliveries.
SCHEMA_V6_TEST = """
ALTER TABLE events ADD COLUMN IF NOT EXISTS is_test BOOLEAN DEFAULT false;
"""
SCHEMA_V6 = """
CREATE TABLE users_v6 (
    account_id BIGINT,                 -- NULL: unknown account
    id BIGINT NOT NULL,
    name VARCHAR, email VARCHAR, suspended BOOLEAN,
    synced_at TIMESTAMPTZ              -- NULL: written by a demo load
);
CREATE TABLE fields_v6 (
    account_id BIGINT,
    key VARCHAR NOT NULL,
    entity_id BIGINT, name VARCHAR, type_id BIGINT,
    synced_at TIMESTAMPTZ
);
-- names written before v6 go to the one account seen in the events they name: demo names
-- (no sync time) to the demo events' account, synced ones to the other events' account
CREATE TEMP TABLE _v6_accounts AS SELECT
    (SELECT CASE WHEN count(DISTINCT account_id) = 1 THEN min(account_id) END FROM events
     WHERE is_demo AND account_id IS NOT NULL) AS demo,
    (SELECT CASE WHEN count(DISTINCT account_id) = 1 THEN min(account_id) END FROM events
     WHERE NOT is_demo AND account_id IS NOT NULL) AS synced;
INSERT INTO users_v6 SELECT CASE WHEN u.synced_at IS NULL THEN a.demo ELSE a.synced END,
    u.id, u.name, u.email, u.suspended, u.synced_at FROM users u, _v6_accounts a;
INSERT INTO fields_v6 SELECT CASE WHEN f.synced_at IS NULL THEN a.demo ELSE a.synced END,
    f.key, f.entity_id, f.name, f.type_id, f.synced_at FROM fields f, _v6_accounts a;
DROP TABLE _v6_accounts;
DROP TABLE users;
DROP TABLE fields;
ALTER TABLE users_v6 RENAME TO users;
ALTER TABLE fields_v6 RENAME TO fields;
CREATE TABLE IF NOT EXISTS lookups (
    account_id BIGINT,
    kind VARCHAR NOT NULL,             -- stage | pipeline | tag | loss_reason | task_type | …
    id BIGINT NOT NULL,
    name VARCHAR,
    parent_id BIGINT,                  -- a stage's PipelineId
    synced_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS accounts (
    id BIGINT NOT NULL,                -- AccountId
    name VARCHAR,
    synced_at TIMESTAMPTZ
);
"""


# v7: the outbox (ploomes.outbox, used by the relay): every attempt to send a delivery
# onward, and each message's latest state, read by the ingest from `data/outbox/` (its
# position is `ingest_state` 'outbox'). A message is one delivery to one destination.
SCHEMA_V7 = """
CREATE TABLE IF NOT EXISTS outbox_attempts (
    log_seq BIGINT NOT NULL,           -- the outbox log record it came from
    channel VARCHAR NOT NULL,          -- relay
    msg_id VARCHAR NOT NULL,           -- msg_<event id>_<destination id>: sent as webhook-id
    event_id BIGINT,                   -- events.id of the delivery sent
    target_id VARCHAR NOT NULL,        -- the destination's id
    target_name VARCHAR NOT NULL,
    attempt INTEGER NOT NULL,          -- 1, 2, … (a replay starts again at 1)
    attempted_at TIMESTAMPTZ NOT NULL,
    status INTEGER,                    -- HTTP status; NULL: no answer (timeout, reset, …)
    latency_ms DOUBLE,
    outcome VARCHAR NOT NULL,          -- delivered | retry | failed
    error VARCHAR,                     -- why there was no usable answer, or why it gave up
    response_headers JSON,             -- as the destination sent them (untrusted text)
    response_body VARCHAR,             -- its first 4 KB, as text (untrusted text)
    next_attempt_at TIMESTAMPTZ,       -- outcome retry: when the next attempt is due
    replay BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_messages (
    msg_id VARCHAR PRIMARY KEY,
    channel VARCHAR NOT NULL,
    event_id BIGINT,
    target_id VARCHAR NOT NULL,
    target_name VARCHAR NOT NULL,
    state VARCHAR NOT NULL,            -- delivered | retrying | failed (a dead letter)
    attempts INTEGER NOT NULL,
    first_attempt_at TIMESTAMPTZ,
    last_attempt_at TIMESTAMPTZ NOT NULL,
    last_status INTEGER,
    last_error VARCHAR,
    next_attempt_at TIMESTAMPTZ,
    replay BOOLEAN NOT NULL
);
"""


# v8: alerts (ploomes.alerts). Rules are data the dashboard and the CLI edit; an alert is
# the decision that a rule fired, written in the same transaction as the stage-2 position
# (a crash decides it again, identically) and sent through the alerts' outbox (its
# attempts are `outbox_attempts`/`outbox_messages` rows of channel 'alert', same msg_id).
SCHEMA_V8 = """
CREATE TABLE IF NOT EXISTS alert_rules (
    id BIGINT PRIMARY KEY,             -- max + 1 (a rebuild copies the rows)
    name VARCHAR NOT NULL UNIQUE,
    kind VARCHAR NOT NULL,             -- change | burst | silence | quality
    spec JSON NOT NULL,                -- the kind's conditions (ploomes.alerts.rules)
    notify VARCHAR,                    -- Apprise URL (a secret); NULL: PLOOMES_ALERTS_NOTIFY
    muted BOOLEAN NOT NULL,
    per_hour INTEGER NOT NULL,         -- messages per hour at most (the rest: 'limited')
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    msg_id VARCHAR PRIMARY KEY,        -- alert_<rule id>_<what fired it>: the outbox message
    rule_id BIGINT NOT NULL,
    rule_name VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    event_id BIGINT,                   -- the event that fired it (NULL: a time-based rule)
    event_ids JSON,                    -- a burst: every event it groups
    fired_at TIMESTAMPTZ NOT NULL,
    title VARCHAR NOT NULL,            -- the message, in Portuguese, as sent
    body VARCHAR NOT NULL,
    state VARCHAR NOT NULL             -- queued | limited (over the rule's rate: not sent)
);
"""

def _steps(upgrades: Upgrades | None) -> list[tuple[int, Recompute]]:
    def needs(what: str) -> Recompute:
        def step(con: duckdb.DuckDBPyConnection) -> None:
            if not con.execute("SELECT count(*) FROM events").fetchall()[0][0]:
                return  # nothing to recompute (a new file)
            if upgrades is None:
                raise StoreError("this data file was written by an older version and must "
                                 f"be upgraded ({what}): start the receiver, or run "
                                 "`python -m ploomes rebuild`")
            getattr(upgrades, what)(con)
        return step

    def v1(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(SCHEMA_V1)

    def v2(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(SCHEMA_V2)
        # rederive writes the current code's record_state columns and user rollups, and
        # reads events.is_test
        con.execute(SCHEMA_V3)
        con.execute(SCHEMA_V4)
        con.execute(SCHEMA_V6_TEST)
        needs("rederive")(con)

    def v3(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(SCHEMA_V3)
        con.execute(FILL_V3)

    def v4(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(SCHEMA_V4)
        con.execute(SCHEMA_V6_TEST)  # the rollups leave test deliveries out
        con.execute(DERIVED_BEFORE_V4)
        needs("refill_user_rollups")(con)

    def v5(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(SCHEMA_V5)

    def v6(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(SCHEMA_V6_TEST)
        con.execute(SCHEMA_V6)

    def v7(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(SCHEMA_V7)

    def v8(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(SCHEMA_V8)

    return [(1, v1), (2, v2), (3, v3), (4, v4), (5, v5), (6, v6), (7, v7), (8, v8)]


SCHEMA_VERSION = 8


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the block in one transaction; a failed COMMIT's error is the one raised."""
    con.execute("BEGIN")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # a failed COMMIT already ended the transaction: keep the first error
        raise


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params: object = None
              ) -> tuple[Any, ...] | None:
    """Run a query and return its first row (the result is read to its end).

    DuckDB 2 keeps a result open after `fetchone()`, and the connection refuses the next
    statement until it is finished; `fetchall()` always finishes it.
    """
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def fetch_row(con: duckdb.DuckDBPyConnection, sql: str, params: object = None
              ) -> tuple[Any, ...]:
    """Like `fetch_one`, for a query that always yields a row (an aggregate without GROUP
    BY, a count of changed rows)."""
    row = fetch_one(con, sql, params)
    if row is None:
        raise StoreError(f"no row from a query that always has one: {sql}")
    return row


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """Return the schema version of an open store (0 for an empty file)."""
    found = fetch_one(con,
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_meta' "
        "AND table_catalog = current_database()"
    )
    if not found or not found[0]:
        return 0
    row = fetch_one(con, "SELECT value FROM schema_meta WHERE key = 'version'")
    return int(row[0]) if row else 0


def migrate(con: duckdb.DuckDBPyConnection, target: int = SCHEMA_VERSION,
            upgrades: Upgrades | None = None) -> int:
    """Bring an open read-write store up to `target`, one version per transaction."""
    current = schema_version(con)
    if current > SCHEMA_VERSION:
        raise StoreError(f"the data dir holds schema version {current}, newer than this "
                         f"program ({SCHEMA_VERSION}): upgrade the program")
    for version, step in _steps(upgrades):
        if current < version <= target:
            with transaction(con):
                step(con)
                con.execute("INSERT OR REPLACE INTO schema_meta VALUES ('version', ?)",
                            [str(version)])
            current = version
    return current


