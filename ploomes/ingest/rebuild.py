"""Recreate the DuckDB file from the journal (the journal is the source of truth)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ploomes.config import Settings
from ploomes.ingest.pipeline import Pipeline, set_position
from ploomes.ingest.upgrade import UPGRADES
from ploomes.intake.journal import Journal, JournalBusy, first_seq, iter_records
from ploomes.store import Store, StoreError, fetch_row, transaction

# Rows the journal does not carry, kept from the old file across a rebuild.
KEPT_TABLES = ("users", "fields", "auth_failures")


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


def rebuild(settings: Settings, batch_size: int = 5000) -> RebuildReport:
    """Rebuild the store from the journal into a new file and swap it in atomically."""
    try:
        journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
    except JournalBusy as exc:
        raise RebuildError("the receiver is running on this data dir: stop it, then rebuild"
                           ) from exc
    try:
        return _rebuild(settings, journal, batch_size)
    finally:
        journal.close()


def _rebuild(settings: Settings, journal: Journal, batch_size: int) -> RebuildReport:
    target = settings.db_path
    tmp = target.with_name(target.name + ".rebuild")
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    new = Store(settings, path=tmp)
    old = Store(settings, upgrades=UPGRADES)
    start = first_seq(settings.journal_dir) or journal.synced_seq + 1
    kept = 0
    with new.writer() as con:
        if target.exists():
            kept = _carry_over(old, con, tmp, start)
        pipeline = Pipeline(settings.duplicate_window_seconds)
        if kept:
            with transaction(con):
                pipeline.rederive_all(con)
        records = 0
        batch = []
        for record in iter_records(settings.journal_dir, after_seq=start - 1):
            batch.append(record)
            if len(batch) >= batch_size:
                pipeline.apply(con, batch)
                records += len(batch)
                batch = []
        if batch:
            pipeline.apply(con, batch)
            records += len(batch)
        while pipeline.derive_pending(con, batch_size) is not None:
            pass  # stage 2, in id order: the same result as live ingestion
        con.execute("CHECKPOINT")
        counts = fetch_row(con,
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM field_changes), "
            "(SELECT count(*) FROM events WHERE duplicate_of IS NOT NULL), "
            "(SELECT count(*) FROM continuity_gaps)")
    with old.lock.exclusive(old.busy_timeout):
        os.replace(tmp, target)
        target.with_name(target.name + ".wal").unlink(missing_ok=True)
    return RebuildReport(records, kept, *counts)


def _carry_over(old: Store, con: duckdb.DuckDBPyConnection, tmp: Path, start: int) -> int:
    """Copy what the journal no longer or never held from the old file; return events kept."""
    with old.reader():
        pass  # migrates the old file to the current schema if it is older
    with old.lock.shared(old.busy_timeout):
        try:
            quoted = str(old.path).replace("'", "''")  # a path is no SQL: one quote doubled
            con.execute(f"ATTACH '{quoted}' AS previous (READ_ONLY)")
        except duckdb.Error as exc:
            raise RebuildError(f"cannot read the old store: {exc}") from exc
        try:
            for table in KEPT_TABLES:
                con.execute(f"INSERT INTO {table} SELECT * FROM previous.{table}")
            # Events older than the journal's first record were pruned from the journal
            # (retention): the old file is their only copy.
            con.execute("INSERT INTO events SELECT * FROM previous.events WHERE id < ?", [start])
            con.execute("INSERT INTO rejected_deliveries SELECT * FROM "
                        "previous.rejected_deliveries WHERE id < ?", [start])
            kept = fetch_row(con, "SELECT count(*) FROM events")[0]
            if kept:
                set_position(con, "main", start - 1)
        finally:
            con.execute("DETACH previous")
    return kept
