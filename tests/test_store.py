"""The store: schema migration, the read API, rebuild from the journal, demo data."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from conftest import example_payloads, make_settings, run_script

from ploomes.demo.load import ingest_pending, load_demo, remove_demo
from ploomes.ingest.rebuild import RebuildError, rebuild
from ploomes.ingest.upgrade import UPGRADES
from ploomes.intake.journal import Journal, prune_segments, segment_paths
from ploomes.queries.status import demo_count
from ploomes.store import (
    SCHEMA_VERSION,
    Store,
    StoreError,
    fetch_one,
    migrate,
    schema,
    schema_version,
)

DERIVED = ["events", "field_changes", "continuity_gaps", "record_state", "rejected_deliveries"]


def snapshot(store: Store) -> dict:
    """Every row of the tables a rebuild must reproduce, as comparable text."""
    out = {}
    with store.reader() as con:
        for table in DERIVED:
            rows = con.execute(f"SELECT * FROM {table}").fetchall()
            out[table] = sorted(map(repr, rows))
    return out


def journal_deliveries(settings, bodies, start=None):
    """Append bodies to the journal at one-minute steps and ingest them like the worker."""
    start = start or datetime(2026, 11, 2, 12, tzinfo=UTC)
    journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
    try:
        stamps = [int((start + timedelta(minutes=i)).timestamp() * 1e9)
                  for i in range(len(bodies))]
        payloads = [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]
        journal.append_many(payloads, received_ns=stamps)
        ingest_pending(settings, journal)
    finally:
        journal.close()


def test_new_store_has_the_current_schema(settings):
    store = Store(settings)
    with store.reader() as con:
        assert schema_version(con) == SCHEMA_VERSION
        assert fetch_one(con, "SELECT count(*) FROM events")[0] == 0


def _json_compression(settings) -> dict[str, list[str]]:
    """Return how each segment of events' JSON columns is compressed, by column."""
    with Store(settings).reader() as con:
        return dict(con.execute(
            "SELECT column_name, list(DISTINCT compression ORDER BY compression) FROM "
            "pragma_storage_info('events') WHERE column_name IN ('old', 'new', 'payload') "
            "AND segment_type <> 'VALIDITY' GROUP BY ALL").fetchall())


def test_the_json_columns_of_a_new_or_rebuilt_store_are_kept_with_zstd(tmp_path, monkeypatch):
    bodies = [json.loads(b) for b in example_payloads().values()]
    zstd = {"old": ["ZSTD"], "new": ["ZSTD"], "payload": ["ZSTD"]}
    new = make_settings(tmp_path / "new")
    journal_deliveries(new, bodies)
    assert _json_compression(new) == zstd
    # a store created before: DuckDB's own choice, until a rebuild writes a new file
    older = make_settings(tmp_path / "older")
    monkeypatch.setattr(schema, "SCHEMA_V1",
                        schema.SCHEMA_V1.replace(" USING COMPRESSION zstd", ""))
    journal_deliveries(older, bodies)
    assert all(kinds != ["ZSTD"] for kinds in _json_compression(older).values())
    monkeypatch.undo()
    rebuild(older)
    assert _json_compression(older) == zstd


def test_v1_data_dir_is_migrated_forward_with_its_change_model(tmp_path):
    settings = make_settings(tmp_path / "data")
    old = Store(settings, schema_target=1)
    old.ensure_ready()
    raw = example_payloads()["contact-update.json"]
    with old.writer() as con:
        assert schema_version(con) == 1
        con.execute("""INSERT INTO events (id, received_at, action, entity, account_id,
            action_user_id, record_id, old, new, payload, body_sha256)
            VALUES (1, now(), 'Update', 'Contacts', 57, 116, 2630362, ?, ?, ?, 'x')""",
                    [json.dumps(json.loads(raw)["Old"]), json.dumps(json.loads(raw)["New"]),
                     raw.decode()])
    # the store alone cannot recompute the change model: it says what to do, file untouched
    with pytest.raises(StoreError, match="older version.*rebuild"):
        Store(settings).ensure_ready()
    store = Store(settings, upgrades=UPGRADES)  # a newer program opens the old data dir
    with store.reader() as con:
        assert schema_version(con) == SCHEMA_VERSION
        fields = [r[0] for r in con.execute(
            "SELECT field FROM field_changes ORDER BY field").fetchall()]
    assert fields == ["LegalName", "OtherProperties.contact_check", "Phones", "Tags"]


def _other_program_opens(path, sql: str) -> str:
    """Run `sql` on the file read-write from another process; return its output or error."""
    code = ("import duckdb, sys\n"
            "try:\n"
            "    con = duckdb.connect(sys.argv[1])\n"
            "    print(con.execute(sys.argv[2]).fetchall())\n"
            "except duckdb.Error as exc:\n"
            "    print('refused:', exc)\n")
    return run_script(code, str(path), sql)


def test_a_closed_store_is_checkpointed_and_free_for_other_programs(settings):
    store = Store(settings)
    wal = store.path.with_name(store.path.name + ".wal")
    with store.writer() as con:
        con.execute("INSERT INTO auth_failures VALUES (now(), 'tester', 'á ç ã')")
        # open read-write: another program is kept out
        assert _other_program_opens(store.path, "SELECT 1").startswith("refused:")
        temp = fetch_one(con, "SELECT current_setting('temp_directory')")[0]
    assert temp == str(store.path) + ".tmp"  # spills stay beside the file, as before
    assert not wal.exists()  # closing checkpointed it
    assert _other_program_opens(store.path, "SELECT reason FROM auth_failures") == \
        "[('á ç ã',)]"


def test_readers_in_threads_share_the_file_and_let_it_go_after_the_last(settings):
    store = Store(settings)
    store.ensure_ready()
    inside, leave = threading.Barrier(3), threading.Event()
    seen, errors = [], []

    def read() -> None:
        try:
            with store.reader() as con:
                inside.wait(30)
                leave.wait(30)
                seen.append(fetch_one(con, "SELECT count(*) FROM events")[0])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait(30)  # both readers hold the file at once
    with pytest.raises(StoreError, match="read-only"):  # a DuckDB error, named ours
        with store.reader() as con:
            con.execute("INSERT INTO auth_failures VALUES (now(), NULL, 'x')")
    leave.set()
    for t in threads:
        t.join(30)
    assert (seen, errors) == ([0, 0], [])
    assert _other_program_opens(store.path, "SELECT count(*) FROM events") == "[(0,)]"


def test_a_failed_writer_block_rolls_back_and_the_next_one_works(settings):
    store = Store(settings)
    with pytest.raises(RuntimeError), store.writer() as con:
        con.execute("BEGIN")
        con.execute("INSERT INTO auth_failures VALUES (now(), NULL, 'lost')")
        raise RuntimeError("the block failed")
    with store.writer() as con:
        assert fetch_one(con, "SELECT count(*) FROM auth_failures")[0] == 0


def test_a_checkpoint_that_fails_on_close_keeps_the_rows_and_the_next_writer_works(tmp_path):
    # As a connection's close did: the rows are committed (in the WAL), so closing says
    # nothing and the next open replays them. A file-size limit makes the checkpoint fail.
    code = """if True:
        import resource, signal, sys
        from pathlib import Path
        from ploomes.config import load_settings
        from ploomes.store import Store, fetch_one
        settings = load_settings(env={}, data_dir=Path(sys.argv[1]), validation_keys=("k" * 24,))
        store = Store(settings, busy_timeout=2)
        rows = ("INSERT INTO auth_failures SELECT now(), "
                "md5(i::varchar) || md5((i + {})::varchar), 'r' FROM range({}) t(i)")
        with store.writer() as con:
            con.execute(rows.format(1, 60000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        size = settings.db_path.stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 64 * 1024, resource.RLIM_INFINITY))
        with store.writer() as con:
            con.execute(rows.format(7, 20000))
        print("closed;", "wal kept:", settings.db_path.with_name("ploomes.duckdb.wal").exists())
        with store.writer() as con:
            print("next writer sees", fetch_one(con, "SELECT count(*) FROM auth_failures")[0])
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        with store.reader() as con:
            print("reader sees", fetch_one(con, "SELECT count(*) FROM auth_failures")[0])
    """
    assert run_script(code, str(tmp_path / "data")).splitlines() == [
        "closed; wal kept: True", "next writer sees 80000", "reader sees 80000"]


def test_stores_of_one_file_with_other_settings_read_at_once(settings):
    dashboard = Store(settings, memory_limit="256MB")
    plain = Store(settings)
    plain.ensure_ready()  # its first open migrates, as a writer
    with dashboard.reader() as con:
        with plain.reader() as con2:
            assert fetch_one(con2, "SELECT count(*) FROM events")[0] == 0
        # the second reader left: the file is still open for the first one
        assert _other_program_opens(
            settings.db_path, "INSERT INTO auth_failures VALUES (now(), NULL, 'x')"
        ).startswith("refused:")
        assert fetch_one(con, "SELECT count(*) FROM auth_failures")[0] == 0
    # each Store alone runs with its own settings
    for store, dashboards in ((plain, False), (dashboard, True), (plain, False)):
        with store.reader() as con:
            got = fetch_one(con, "SELECT current_setting('memory_limit')")[0]
        assert (got == "244.1 MiB") == dashboards, (store, got)  # 256MB as DuckDB shows it


def test_newer_schema_is_refused(settings):
    store = Store(settings)
    with store.writer() as con:
        con.execute("UPDATE schema_meta SET value = '99' WHERE key = 'version'")
        with pytest.raises(StoreError, match="newer"):
            migrate(con)


def test_rebuild_reproduces_live_ingestion(settings):
    bodies = [json.loads(b) for b in example_payloads().values()]
    update = json.loads(example_payloads()["contact-update.json"])
    bodies += [update, update]  # a duplicate pair
    journal_deliveries(settings, bodies)
    load_demo(settings, [(datetime(2026, 11, 1, 9, tzinfo=UTC), bodies[0])])
    store = Store(settings)
    before = snapshot(store)
    assert len(before["events"]) == 7
    report = rebuild(settings)
    assert report.events == 7 and report.duplicates >= 1
    assert snapshot(store) == before


def test_rebuild_keeps_events_pruned_from_the_journal(tmp_path):
    settings = make_settings(tmp_path / "data", journal_segment_bytes=4096)
    bodies = [json.loads(b) for b in example_payloads().values()]
    journal_deliveries(settings, bodies)
    # a day later: the segment is full, the same bodies start the next one
    journal_deliveries(settings, bodies, start=datetime(2026, 11, 3, 12, tzinfo=UTC))
    first = segment_paths(settings.journal_dir)[0]
    assert len(segment_paths(settings.journal_dir)) == 2
    store = Store(settings)
    before = snapshot(store)
    assert len(before["events"]) == 2 * len(bodies)
    # retention removes the first segment: ingested, and older than the retention period
    week_ago = datetime.now(UTC).timestamp() - 7 * 86400
    os.utime(first, (week_ago, week_ago))
    assert prune_segments(settings.journal_dir, 2 * len(bodies), 86400) == [first]
    report = rebuild(settings)
    assert (report.kept_events, report.journal_records) == (len(bodies), len(bodies))
    assert snapshot(store) == before


def test_rebuild_refuses_while_a_receiver_writes(settings):
    journal = Journal(settings.journal_dir)
    try:
        with pytest.raises(RebuildError, match="stop it"):
            rebuild(settings)
    finally:
        journal.close()


def test_default_demo_names_its_users_and_removal_takes_them(settings):
    with Store(settings).writer() as con:
        con.execute("INSERT INTO users (id, name, email, suspended, synced_at) "
                    "VALUES (1, 'Sincronizado', NULL, false, now())")
    count = load_demo(settings)
    store = Store(settings)
    with store.reader() as con:
        assert demo_count(con) == count > 1000
        names = {r[0] for r in con.execute("SELECT name FROM users").fetchall()}
        unnamed = con.execute(
            "SELECT count(DISTINCT action_user_id) FROM events WHERE action_user_id NOT IN "
            "(SELECT id FROM users)").fetchall()[0][0]
        assert con.execute("SELECT count(*) FROM fields").fetchall()[0][0] > 0
    assert unnamed == 0 and "Sincronizado" in names and len(names) > 3
    remove_demo(settings)
    with store.reader() as con:
        assert con.execute("SELECT name FROM users").fetchall() == [("Sincronizado",)]
        assert con.execute("SELECT count(*) FROM fields").fetchall()[0][0] == 0


def test_demo_data_is_flagged_removed_and_stays_removed(settings):
    from ploomes.demo.generator import demo_deliveries

    deliveries = demo_deliveries(seed=3, days=3, end=datetime(2026, 11, 20, tzinfo=UTC))
    journal_deliveries(settings, [json.loads(example_payloads()["deal-win.json"])])
    assert load_demo(settings, deliveries) == len(deliveries)
    store = Store(settings)
    with store.reader() as con:
        assert demo_count(con) == len(deliveries)
        assert fetch_one(con, "SELECT count(*) FROM field_changes WHERE NOT is_demo")[0]
    remove_demo(settings)
    with store.reader() as con:
        assert demo_count(con) == 0
        assert fetch_one(con, "SELECT count(*) FROM events")[0] == 1
        assert fetch_one(con, "SELECT count(*) FROM field_changes WHERE is_demo")[0] == 0
    rebuild(settings)
    with store.reader() as con:
        assert demo_count(con) == 0
        assert fetch_one(con, "SELECT count(*) FROM events")[0] == 1


