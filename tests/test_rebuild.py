"""`python -m ploomes rebuild`: the journal's rows, in worker processes or not, and a store
file that no longer opens (set aside, rebuilt, names fetched again from Ploomes)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import ROOT, make_settings

from ploomes.demo.generator import demo_deliveries
from ploomes.demo.load import load_demo, remove_demo
from ploomes.demo.sandbox import Sandbox
from ploomes.ingest.pipeline import Pipeline
from ploomes.ingest.rebuild import rebuild
from ploomes.intake.journal import KIND_REJECTED, Journal, iter_records, rejected_payload
from ploomes.store import Store, StoreError, fetch_one

END = datetime(2026, 11, 20, 18, tzinfo=UTC)
USER_KEY = "rebuild-test-user-key-0123456789"
TABLES = ["events", "field_changes", "continuity_gaps", "record_state", "rejected_deliveries",
          "user_records", "user_fields"]


def snapshot(settings) -> dict:
    """Every row a rebuild must reproduce (and the positions), as comparable text."""
    out = {}
    with Store(settings).reader() as con:
        for table in TABLES:
            out[table] = sorted(map(repr, con.execute(f"SELECT * FROM {table}").fetchall()))
        out["positions"] = con.execute(
            "SELECT name, last_seq FROM ingest_state ORDER BY name").fetchall()
        # rows of one event keep the diff's order
        out["order"] = con.execute(
            "SELECT event_id, list(field ORDER BY rowid) FROM field_changes GROUP BY 1 "
            "ORDER BY 1").fetchall()
    return out


def journal_and_ingest(settings, deliveries, batch: int = 97, derive_step: int = 61) -> None:
    """Journal real deliveries at odd nanoseconds and store them as the ingest worker does:
    small stage-1 batches, stage 2 a few events behind."""
    journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
    try:
        journal.append_many(
            [json.dumps(body, ensure_ascii=False).encode() for _, body in deliveries],
            received_ns=[int(at.timestamp()) * 10**9 + 987_654_321 for at, _ in deliveries])
        # an authenticated body the receiver refused, and one today's rules refuse
        journal.append_entries([
            (rejected_payload(400, "missing Entity", b'{"Action": "Update"}', "10.0.0.7"),
             KIND_REJECTED, 0, None),
            (b'{"Action": "Update", "Entity": "Deals", "AccountId": true}', 1, 0, None)])
    finally:
        journal.close()
    with Store(settings).writer() as con:
        pipeline = Pipeline(settings.duplicate_window_seconds)
        pipeline.load_recent(con)
        row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'main'")
        records = list(iter_records(settings.journal_dir, after_seq=row[0] if row else 0))
        for start in range(0, len(records), batch):
            pipeline.apply(con, records[start:start + batch])
            pipeline.derive_pending(con, derive_step)
        while pipeline.derive_pending(con, derive_step) is not None:
            pass


def busy_data_dir(settings) -> None:
    """A month of real deliveries (repeats, a gap), demo data loaded then removed, more."""
    deliveries = sorted(demo_deliveries(seed=21, days=25, end=END - timedelta(days=5),
                                        duplicate_rate=0.05), key=lambda pair: pair[0])
    journal_and_ingest(settings, deliveries[: len(deliveries) // 2])
    load_demo(settings, demo_deliveries(seed=4, days=3, end=END - timedelta(days=10)))
    remove_demo(settings)
    load_demo(settings, demo_deliveries(seed=6, days=2, end=END))
    journal_and_ingest(settings, deliveries[len(deliveries) // 2:])


@pytest.mark.parametrize("workers", [0, 2])
def test_rebuild_gives_the_rows_of_live_ingestion(tmp_path, workers):
    # small segments: the worker processes get many tasks, finished in any order
    settings = make_settings(tmp_path / "data", journal_segment_bytes=64 * 1024)
    busy_data_dir(settings)
    before = snapshot(settings)
    assert len(before["events"]) > 1000 and len(before["rejected_deliveries"]) == 4
    assert before["continuity_gaps"] and before["user_records"]
    with Store(settings).reader() as con:
        assert fetch_one(con, "SELECT count(*) FROM events WHERE duplicate_of IS NOT NULL")[0]
        assert fetch_one(con, "SELECT count(*) FROM events WHERE is_demo")[0]
    report = rebuild(settings, workers=workers)
    assert report.events == len(before["events"]) and report.carried_over
    assert snapshot(settings) == before


# -- a store file that does not open ---------------------------------------------------

def zero_the_header(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.write(bytes(4096))


def truncate(path: Path) -> None:
    os.truncate(path, 8192)  # the headers stay, what they point to is gone


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def run_rebuild(data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PLOOMES_")}
    return subprocess.run([sys.executable, "-m", "ploomes", "rebuild", "--data-dir",
                           str(data_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**clean, **env})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ingested(tmp_path):
    settings = make_settings(tmp_path / "data")
    journal_and_ingest(settings, demo_deliveries(seed=8, days=10, end=END))
    with Store(settings).writer() as con:
        con.execute("INSERT INTO users (id, name, email, suspended, synced_at) "
                    "VALUES (1, 'Sincronizada', NULL, false, now())")
    return settings


@pytest.mark.parametrize("damage", [zero_the_header, truncate, random_bytes])
def test_a_store_that_does_not_open_is_set_aside_and_rebuilt(ingested, damage):
    settings = ingested
    before = snapshot(settings)
    damage(settings.db_path)
    damaged = settings.db_path.read_bytes()
    with pytest.raises(StoreError, match="ploomes.duckdb"):
        snapshot(settings)  # what the receiver and the pages meet

    done = run_rebuild(settings.data_dir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    aside = [p for p in settings.data_dir.iterdir() if p.name.startswith("ploomes.duckdb.broken-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept as it was
    assert any(f"moved aside to {aside[0]}" in line and "did not open" in line
               for line in lines)
    assert any(line.startswith(f"rebuilt from {len(before['events']) + 2} journal records")
               for line in lines)
    assert any("not re-synced" in line and "PLOOMES_USER_KEY" in line for line in lines)
    assert snapshot(settings) == before  # everything the journal holds is back
    with Store(settings).reader() as con:
        assert con.execute("SELECT count(*) FROM users").fetchall() == [(0,)]
    assert mode(settings.db_path) == mode(aside[0]) == 0o600


def test_the_rebuild_fetches_users_and_fields_again_from_ploomes(ingested):
    settings = ingested
    random_bytes(settings.db_path)
    with Sandbox(user_key=USER_KEY, seed=11, rate_limit=0) as sandbox:
        done = run_rebuild(settings.data_dir, PLOOMES_API_URL=sandbox.url,
                           PLOOMES_USER_KEY=USER_KEY)
        users = {u["Id"]: u["Name"] for u in sandbox.sim.users}
        fields = {f["Key"] for f in sandbox.sim.fields}
    assert done.returncode == 0, done.stderr
    assert (f"users and custom fields re-synced from Ploomes: {len(users)} users, "
            f"{len(fields)} custom fields") in done.stdout.splitlines()
    with Store(settings).reader() as con:
        assert dict(con.execute("SELECT id, name FROM users").fetchall()) == users
        assert {r[0] for r in con.execute("SELECT key FROM fields").fetchall()} == fields
    assert USER_KEY not in done.stdout + done.stderr


def test_ploomes_refusing_the_resync_leaves_the_rebuild_done(ingested):
    settings = ingested
    before = snapshot(settings)
    zero_the_header(settings.db_path)
    with Sandbox(user_key=USER_KEY, seed=11, rate_limit=0) as sandbox:
        wrong = "not-the-key-of-this-account-000"
        done = run_rebuild(settings.data_dir, PLOOMES_API_URL=sandbox.url,
                           PLOOMES_USER_KEY=wrong)
    assert done.returncode == 0, done.stderr
    assert "could not be re-synced" in done.stderr and wrong not in done.stdout + done.stderr
    assert snapshot(settings) == before


def test_a_healthy_store_keeps_its_names_and_asks_ploomes_nothing(ingested):
    settings = ingested
    with Sandbox(user_key=USER_KEY, seed=11, rate_limit=0) as sandbox:
        done = run_rebuild(settings.data_dir, PLOOMES_API_URL=sandbox.url,
                           PLOOMES_USER_KEY=USER_KEY)
        asked = list(sandbox.request_log)
    assert done.returncode == 0, done.stderr
    assert "kept from the previous file" in done.stdout and "re-synced" not in done.stdout
    assert asked == []
    assert not [p for p in settings.data_dir.iterdir() if ".broken-" in p.name]
    with Store(settings).reader() as con:
        assert con.execute("SELECT id, name FROM users").fetchall() == [(1, "Sincronizada")]


def test_the_store_file_and_a_wal_it_leaves_are_private(settings):
    store = Store(settings)
    with store.writer() as con:
        # a WAL that outlives the connection, as after a crash
        con.execute("PRAGMA disable_checkpoint_on_shutdown")
        con.execute("CREATE TABLE scratch AS SELECT 1 AS one")
    wal = settings.db_path.with_name(settings.db_path.name + ".wal")
    assert wal.exists()
    assert mode(settings.db_path) == mode(wal) == 0o600
