"""Recreate the DuckDB file from the journal (the journal is the source of truth)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from ploomes.alerts.sender import POSITION as ALERTS_POSITION
from ploomes.config import Settings
from ploomes.ingest.bulk import derive_journal, parallel_workers
from ploomes.ingest.pipeline import Pipeline, set_position
from ploomes.ingest.upgrade import UPGRADES
from ploomes.intake.journal import Journal, JournalBusy, first_seq, segment_paths
from ploomes.outbox.tables import POSITION as OUTBOX_POSITION
from ploomes.store import (
    Store,
    StoreError,
    StoreUnreadable,
    fetch_row,
    is_damage,
    transaction,
)
from ploomes.store.db import make_private

# Rows the journal does not carry, kept from the old file across a rebuild.
KEPT_TABLES = ("users", "fields", "lookups", "accounts", "auth_failures", "audit_log",
               "outbox_attempts", "outbox_messages",
               # alerts are decided once, when an event is first derived: a rebuild
               # keeps them and fires none again
               "alert_rules", "alerts")


class RebuildError(StoreError):
    """The store could not be rebuilt; the old file is untouched."""


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild did."""

    journal_records: int
    kept_events: int
    events: int
    field_changes: int
    duplicates: int
    gaps: int
    # the previous file did not open: where it was set aside, and DuckDB's reason
    moved_aside: Path | None = None
    unreadable: str | None = None
    # users, fields and the other kept tables came from the previous file
    carried_over: bool = False
    # seconds per step: carry_over, derive (parse and diff), order (duplicates, state),
    # append (rows into DuckDB), finish (record state, rollups), checkpoint
    seconds: dict[str, float] = field(default_factory=dict)


def rebuild(settings: Settings, workers: int | None = None) -> RebuildReport:
    """Rebuild the store from the journal into a new file and swap it in atomically.

    A previous file that DuckDB cannot read (damaged) is set aside as
    `ploomes.duckdb.broken-<UTC time>` instead of stopping the rebuild. `workers`: processes
    that derive the change model (default: one per core for a large journal, none for a
    small one).
    """
    try:
        journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
    except JournalBusy as exc:
        raise RebuildError("the receiver is running on this data dir: stop it, then rebuild"
                           ) from exc
    try:
        if workers is None:
            workers = parallel_workers(_journal_bytes(settings.journal_dir))
        return _rebuild(settings, journal, workers)
    finally:
        journal.close()


def _journal_bytes(journal_dir: Path) -> int:
    total = 0
    for path in segment_paths(journal_dir):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total


def _rebuild(settings: Settings, journal: Journal, workers: int) -> RebuildReport:
    target = settings.db_path
    tmp = target.with_name(target.name + ".rebuild")
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    new = Store(settings, path=tmp)
    old = Store(settings, upgrades=UPGRADES)
    start = first_seq(settings.journal_dir) or journal.synced_seq + 1
    kept = 0
    unreadable: str | None = None
    carried = False
    started = time.perf_counter()
    with new.writer() as con:
        if target.exists():
            try:
                kept = _carry_over(old, con, start)
                carried = True
            except StoreUnreadable as exc:
                unreadable = str(exc.__cause__ or exc)  # DuckDB's own words
        pipeline = Pipeline(settings.duplicate_window_seconds)
        if kept:
            with transaction(con):
                pipeline.rederive_all(con)
        seconds = {"carry_over": time.perf_counter() - started}
        bulk = derive_journal(con, pipeline, settings.journal_dir, start - 1, workers)
        seconds.update(bulk.seconds)
        started = time.perf_counter()
        con.execute("CHECKPOINT")
        seconds["checkpoint"] = time.perf_counter() - started
        counts = fetch_row(con,
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM field_changes), "
            "(SELECT count(*) FROM events WHERE duplicate_of IS NOT NULL), "
            "(SELECT count(*) FROM continuity_gaps)")
    aside = None
    with old.lock.exclusive(old.busy_timeout):
        if unreadable is not None and target.exists():
            aside = _set_aside(target)
        os.replace(tmp, target)
        target.with_name(target.name + ".wal").unlink(missing_ok=True)
    events, field_changes, duplicates, gaps = counts
    return RebuildReport(bulk.records, kept, events, field_changes, duplicates, gaps,
                         moved_aside=aside, unreadable=unreadable, carried_over=carried,
                         seconds=seconds)


def _set_aside(target: Path) -> Path:
    """Move a damaged file (and its WAL) to a name of its own; return the new path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = target.with_name(f"{target.name}.broken-{stamp}")
    n = 1
    while aside.exists():  # two rebuilds within a second: never overwrite a kept file
        n += 1
        aside = target.with_name(f"{target.name}.broken-{stamp}-{n}")
    os.replace(target, aside)
    wal = target.with_name(target.name + ".wal")
    if wal.exists():
        os.replace(wal, aside.with_name(aside.name + ".wal"))
    make_private(aside)  # still CRM data
    return aside


def _carry_over(old: Store, con: duckdb.DuckDBPyConnection, start: int) -> int:
    """Copy what the journal no longer or never held from the old file; return events kept.

    StoreUnreadable if the old file is damaged: nothing is copied then.
    """
    with old.reader():
        pass  # migrates the old file to the current schema if it is older
    with old.lock.shared(old.busy_timeout):
        try:
            quoted = str(old.path).replace("'", "''")  # a path is no SQL: one quote doubled
            con.execute(f"ATTACH '{quoted}' AS previous (READ_ONLY)")
        except duckdb.Error as exc:
            if is_damage(exc):
                raise StoreUnreadable(f"{old.path.name} does not open: {exc}") from exc
            raise RebuildError(f"cannot read the old store: {exc}") from exc
        try:
            with transaction(con):  # all or nothing: a damaged part copies no row
                for table in KEPT_TABLES:
                    con.execute(f"INSERT INTO {table} SELECT * FROM previous.{table}")
                # the relay's and the alerts' attempts come from their outbox logs, which
                # may be pruned: kept with their positions, so the ingest goes on after them
                con.execute("INSERT INTO ingest_state SELECT * FROM previous.ingest_state "
                            "WHERE name IN (?, ?)", [OUTBOX_POSITION, ALERTS_POSITION])
                # Events older than the journal's first record were pruned from the
                # journal (retention): the old file is their only copy.
                con.execute("INSERT INTO events SELECT * FROM previous.events WHERE id < ?",
                            [start])
                con.execute("INSERT INTO rejected_deliveries SELECT * FROM "
                            "previous.rejected_deliveries WHERE id < ?", [start])
                kept: int = fetch_row(con, "SELECT count(*) FROM events")[0]
                if kept:
                    set_position(con, "main", start - 1)
        except duckdb.Error as exc:
            if is_damage(exc):
                raise StoreUnreadable(f"{old.path.name} is damaged: {exc}") from exc
            raise RebuildError(f"cannot read the old store: {exc}") from exc
        finally:
            try:
                con.execute("DETACH previous")
            except duckdb.Error:
                pass  # a damaged file may leave nothing to detach
    return kept
