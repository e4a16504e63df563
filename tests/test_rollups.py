"""The rows ingest stage 2 keeps for the pages give exactly what recomputing them gives.

The Users page's rollups (`user_records`, `user_fields`, ploomes.ingest.rollups): every
scenario compares the rollup-backed query functions with the same functions counting on
`events` / `field_changes` (`rollups=False`), across ranges and the duplicates toggle, and
compares the rollup tables stage 2 keeps event by event with a recomputation from scratch
(`refill_user_rollups`). The Records page's latest state (`record_state`) is compared with
folding the record's events.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from conftest import make_settings

from ploomes.demo.generator import demo_deliveries
from ploomes.demo.load import load_demo, remove_demo
from ploomes.ingest.pipeline import Pipeline
from ploomes.ingest.rebuild import rebuild
from ploomes.ingest.rollups import refill_user_rollups
from ploomes.ingest.upgrade import UPGRADES
from ploomes.intake.journal import Journal, iter_records
from ploomes.queries import records as qrecords
from ploomes.queries import users as qusers
from ploomes.store import SCHEMA_VERSION, Store, fetch_one, schema_version, transaction

END = datetime(2026, 11, 20, 18, tzinfo=UTC)
SHARED_USER = 31009901  # acts on real and demo data alike


def body(entity, action, user, old, new):
    return {"Action": action, "Entity": entity, "SecondaryEntityId": None, "AccountId": 31,
            "ActionUserId": user, "WebhookId": 5110, "WebhookCreatorId": 10,
            "Old": old, "New": new}


def real_deliveries() -> list[tuple[datetime, dict]]:
    """A generated month plus the corner cases: no user, no record, repeats, custom fields."""
    out = demo_deliveries(seed=11, days=20, end=END - timedelta(days=1), duplicate_rate=0.05)
    deal = {"Id": 900001, "Title": "Padaria", "StageId": 1, "Amount": 10,
            "OtherProperties": [{"FieldKey": "deal_plan", "StringValue": "Ouro"},
                                {"FieldKey": "deal_região", "StringValue": "Sul"}]}
    move = body("Deals", "Update", SHARED_USER, deal, {"Id": 900001, "StageId": 2,
                                                       "LastUpdateDate": "2026-11-20"})
    out += [
        (END - timedelta(days=40), body("Deals", "Create", SHARED_USER, None, deal)),
        (END - timedelta(hours=5), move),
        (END - timedelta(hours=5) + timedelta(seconds=4), move),  # a repeated delivery
        (END - timedelta(days=3), body("Tasks", "Create", None, None,
                                       {"Id": 700, "Subject": "Ligar"})),
        (END - timedelta(days=2), body("Tasks", "Update", None, {"Id": 700, "Subject": "Ligar"},
                                       {"Id": 700, "Subject": "Ligar de novo"})),
        # no Id in Old or New: an event without a record
        (END - timedelta(days=2, hours=1),
         body("Contacts", "Update", SHARED_USER, {"Name": "A"}, {"Name": "B"})),
    ]
    return sorted(out, key=lambda pair: pair[0])


def ingest(settings, deliveries, batch: int = 97, derive_step: int | None = 61) -> None:
    """Journal (real, not demo) deliveries and store them in small batches, as the worker does.

    Stage 2 runs `derive_step` events after each batch and to the end; None leaves every
    new event for later (a derive backlog).
    """
    ordered = sorted(deliveries, key=lambda pair: pair[0])
    journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
    try:
        journal.append_many([json.dumps(body, ensure_ascii=False).encode("utf-8")
                             for _, body in ordered],
                            received_ns=[int(at.timestamp() * 1e9) for at, _ in ordered])
    finally:
        journal.close()
    with Store(settings).writer() as con:
        pipeline = Pipeline(settings.duplicate_window_seconds)
        pipeline.load_recent(con)
        row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'main'")
        records = list(iter_records(settings.journal_dir, after_seq=row[0] if row else 0))
        for start in range(0, len(records), batch):
            pipeline.apply(con, records[start:start + batch])
            if derive_step:
                pipeline.derive_pending(con, derive_step)
        while derive_step and pipeline.derive_pending(con, derive_step) is not None:
            pass


def derive_all(settings) -> None:
    with Store(settings).writer() as con:
        pipeline = Pipeline(settings.duplicate_window_seconds)
        pipeline.load_recent(con)
        while pipeline.derive_pending(con, 53) is not None:
            pass


def rollup_rows(con) -> dict[str, list]:
    """Every rollup row, sorted, with `fields` read from its JSON."""
    records = con.execute(
        "SELECT * FROM user_records ORDER BY action_user_id, entity, record_id").fetchall()
    return {
        "user_records": [(*r[:-1], json.loads(r[-1])) for r in records],
        "user_fields": con.execute(
            "SELECT * FROM user_fields ORDER BY action_user_id, entity, field").fetchall(),
    }


def boundaries(con) -> list[datetime | None]:
    """Ranges the page offers, plus starts exactly at an original and at a repeat."""
    original, repeat = fetch_one(
        con, "SELECT quantile_disc(received_at, 0.5) FILTER (WHERE duplicate_of IS NULL), "
             "max(received_at) FILTER (WHERE duplicate_of IS NOT NULL) FROM events")
    return [None, END - timedelta(days=1), END - timedelta(days=7), END - timedelta(days=30),
            END - timedelta(days=90), original, repeat]


def assert_exact(store: Store) -> dict[str, list]:
    """Assert rollup-backed answers equal raw ones; return the rollup rows."""
    with store.writer() as con:
        kept = rollup_rows(con)
        with pytest.raises(_Rollback), transaction(con):
            refill_user_rollups(con)
            assert rollup_rows(con) == kept  # stage 2's folding = a recount from scratch
            raise _Rollback
    with store.reader() as con:
        users = [None if pd.isna(u) else int(u) for u in qusers.users_summary(
            con, include_duplicates=True, rollups=False)["action_user_id"]]
        assert users
        for since in boundaries(con):
            for include in (False, True):
                pd.testing.assert_frame_equal(
                    qusers.users_summary(con, since=since, include_duplicates=include),
                    qusers.users_summary(con, since=since, include_duplicates=include,
                                           rollups=False))
        for user in users:
            pd.testing.assert_frame_equal(
                qusers.user_top_fields(con, user, limit=1000),
                qusers.user_top_fields(con, user, limit=1000, rollups=False))
    return kept


class _Rollback(Exception):
    """Ends a transaction that only looked."""


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "data")


def test_rollups_match_raw_counts_after_ingestion(settings):
    ingest(settings, real_deliveries())
    store = Store(settings)
    rows = assert_exact(store)
    with store.reader() as con:
        assert qusers.users_summary(con).shape[0] > 3
        shared = {r[:3]: r for r in rows["user_records"] if r[0] == SHARED_USER}
        # created 40 days ago, moved (and repeated) 5 hours ago
        events, duplicates, first_at, last_at, last_dup, fields = shared[
            (SHARED_USER, "Deals", 900001)][3:]
        assert (events, duplicates) == (2, 1)
        assert first_at == END - timedelta(days=40) and last_at == END - timedelta(hours=5)
        assert last_dup == END - timedelta(hours=5) + timedelta(seconds=4)
        # LastUpdateDate is bookkeeping; the repeat adds nothing
        assert fields == ["Amount", "OtherProperties.deal_plan", "OtherProperties.deal_região",
                          "StageId", "Title"]
        top = qusers.user_top_fields(con, SHARED_USER)
        assert top.set_index("field").loc["StageId", ["changes", "records"]].tolist() == [2, 1]
        # the event without a record counts as a change, not as a record
        assert top.set_index("field").loc["Name", ["changes", "records"]].tolist() == [1, 0]
        nobody = qusers.users_summary(con)
        assert nobody[nobody["action_user_id"].isna()]["records"].tolist() == [1]


def test_events_stage_2_has_not_reached_are_counted(settings):
    deliveries = real_deliveries()
    ingest(settings, deliveries[: len(deliveries) // 2])
    ingest(settings, deliveries[len(deliveries) // 2:], derive_step=None)
    store = Store(settings)
    with store.reader() as con:
        derived = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'derive'")[0]
        assert fetch_one(con, "SELECT count(*) FROM events WHERE id > ?", [derived])[0] > 100
    assert_exact(store)
    derive_all(settings)
    assert_exact(store)


def test_an_event_stage_2_skips_still_counts(settings):
    deliveries = real_deliveries()
    ingest(settings, deliveries[:-30])
    ingest(settings, deliveries[-30:], derive_step=None)
    store = Store(settings)
    with store.writer() as con:
        start = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'derive'")[0]
        # as the worker does with events it cannot diff; until a repeat was skipped too
        repeats = 0
        while not repeats:
            skipped = Pipeline().skip_derive(con)
            assert skipped is not None
            repeats = fetch_one(con, "SELECT count(*) FROM events WHERE id = ? "
                                     "AND duplicate_of IS NOT NULL", [skipped])[0]
        assert fetch_one(con, "SELECT count(*) FROM field_changes WHERE event_id > ?",
                         [start])[0] == 0
    assert_exact(store)
    derive_all(settings)
    assert_exact(store)


def test_demo_removal_and_rebuild_keep_rollups_exact(settings):
    ingest(settings, real_deliveries())
    demo = demo_deliveries(seed=5, days=10, end=END)
    # demo rows on a real record by the same user, and a real repeat of a demo delivery
    shared_move = body("Deals", "Update", SHARED_USER, {"Id": 900001, "Amount": 10},
                       {"Id": 900001, "Amount": 99})
    demo_only = body("Contacts", "Create", SHARED_USER, None, {"Id": 800, "Name": "Demo"})
    demo += [(END - timedelta(hours=2), shared_move), (END - timedelta(hours=1), demo_only)]
    load_demo(settings, demo)
    ingest(settings, [(END - timedelta(hours=1) + timedelta(seconds=9), demo_only)])
    store = Store(settings)
    with store.reader() as con:
        repeat = fetch_one(con, "SELECT duplicate_of FROM events ORDER BY id DESC LIMIT 1")[0]
        assert fetch_one(con, "SELECT is_demo FROM events WHERE id = ?", [repeat])[0]
    with_demo = assert_exact(store)

    remove_demo(settings)
    rows = assert_exact(store)
    assert rows != with_demo
    by_key = {r[:3]: r[3:] for r in rows["user_records"]}
    # the real record keeps its real events and fields only
    assert by_key[(SHARED_USER, "Deals", 900001)][:2] == (2, 1)
    assert by_key[(SHARED_USER, "Deals", 900001)][-1] == [
        "Amount", "OtherProperties.deal_plan", "OtherProperties.deal_região", "StageId", "Title"]
    assert by_key[(SHARED_USER, "Deals", 900001)][3] == END - timedelta(hours=5)
    # the real repeat of a removed demo delivery: no original, one repeat, no fields
    assert by_key[(SHARED_USER, "Contacts", 800)][:2] == (0, 1)
    assert by_key[(SHARED_USER, "Contacts", 800)][-1] == []
    with store.reader() as con:
        assert fetch_one(con, "SELECT count(*) FROM events WHERE is_demo")[0] == 0

    rebuild(settings)
    assert assert_exact(store) == rows


def test_rebuild_reproduces_the_rollups(settings):
    ingest(settings, real_deliveries())
    load_demo(settings, demo_deliveries(seed=5, days=5, end=END))
    store = Store(settings)
    before = assert_exact(store)
    rebuild(settings)
    assert assert_exact(store) == before


def test_rederive_in_one_transaction_reproduces_the_rollups(settings):
    ingest(settings, real_deliveries())
    store = Store(settings)
    with store.reader() as con:
        before = rollup_rows(con)
    with store.writer() as con, transaction(con):
        # small chunks: rows folded, deleted and written again within one transaction
        Pipeline().rederive_all(con, chunk=37)
    assert assert_exact(store) == before


def test_v3_store_gets_its_rollups_on_migration(settings):
    deliveries = real_deliveries()
    ingest(settings, deliveries[:-40])
    ingest(settings, deliveries[-40:], derive_step=None)  # a derive backlog across the upgrade
    store = Store(settings)
    with store.writer() as con:
        expected = rollup_rows(con)
        # what a v3 file is: the same tables without the rollups
        con.execute("DROP TABLE user_records")
        con.execute("DROP TABLE user_fields")
        con.execute("UPDATE schema_meta SET value = '3' WHERE key = 'version'")
    upgraded = Store(settings, upgrades=UPGRADES)  # a newer program opens the data dir
    with upgraded.reader() as con:
        assert schema_version(con) == SCHEMA_VERSION
        assert rollup_rows(con) == expected and expected["user_records"]
    assert_exact(upgraded)
    derive_all(settings)
    assert_exact(upgraded)


def test_store_from_before_two_stage_ingest_counts_as_derived(settings):
    ingest(settings, real_deliveries())
    store = Store(settings)
    with store.writer() as con:
        expected = rollup_rows(con)
        changes = fetch_one(con, "SELECT count(*) FROM field_changes")[0]
        last = fetch_one(con, "SELECT max(id) FROM events")[0]
        # such a v3 file has its change model but no `derive` position
        con.execute("DROP TABLE user_records")
        con.execute("DROP TABLE user_fields")
        con.execute("DELETE FROM ingest_state WHERE name = 'derive'")
        con.execute("UPDATE schema_meta SET value = '3' WHERE key = 'version'")
    upgraded = Store(settings, upgrades=UPGRADES)
    with upgraded.reader() as con:
        assert fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'derive'")[0] == last
        assert rollup_rows(con) == expected
    derive_all(settings)  # nothing is diffed twice
    with upgraded.reader() as con:
        assert fetch_one(con, "SELECT count(*) FROM field_changes")[0] == changes
    assert_exact(upgraded)


def test_an_empty_store_is_migrated_without_a_derive_position(settings):
    store = Store(settings, schema_target=3)
    store.ensure_ready()
    with Store(settings).reader() as con:
        assert schema_version(con) == SCHEMA_VERSION
        assert fetch_one(con, "SELECT count(*) FROM ingest_state")[0] == 0


def _states_agree(store: Store) -> tuple[int, int]:
    """Compare qrecords.state_at's latest state with the fold, for every record.

    Returns (records compared, records whose latest state was read from `record_state`):
    those are told apart by marking every `record_state` row in a transaction that is
    then rolled back.
    """
    with store.reader() as con:
        keys = con.execute("SELECT DISTINCT entity, record_id FROM events "
                           "WHERE record_id IS NOT NULL ORDER BY 1, 2").fetchall()
        for i, (entity, record_id) in enumerate(keys):
            latest = qrecords.state_at(con, entity, record_id)
            assert latest == qrecords.state_at(con, entity, record_id, latest=False), \
                (entity, record_id)
            if latest.event_id is not None and i % 10 == 0:  # as the Records page asks
                for upto in (latest.event_id, latest.event_id - 1, 2**62):
                    assert qrecords.state_at(con, entity, record_id, event_id=upto) == \
                        qrecords.state_at(con, entity, record_id, event_id=upto,
                                          latest=False), (entity, record_id, upto)
    marked = {"marked by the test": True}
    with store.writer() as con, pytest.raises(_Rollback), transaction(con):
        con.execute("UPDATE record_state SET state = ?", [json.dumps(marked)])
        answered = sum(qrecords.state_at(con, entity, record_id).state == marked
                       for entity, record_id in keys)
        raise _Rollback
    return len(keys), answered


def test_latest_state_from_record_state_equals_the_fold(settings):
    deliveries = real_deliveries()
    ingest(settings, deliveries[:-30])
    ingest(settings, deliveries[-30:], derive_step=None)  # stage 2 behind for some records
    store = Store(settings)
    compared, answered = _states_agree(store)
    assert 0 < answered < compared  # both paths were taken
    derive_all(settings)
    compared, answered = _states_agree(store)
    assert answered == compared  # caught up: every latest state comes from record_state
    demo = demo_deliveries(seed=5, days=10, end=END)
    demo.append((END - timedelta(hours=2), body("Deals", "Update", SHARED_USER,
                                               {"Id": 900001, "Amount": 10},
                                               {"Id": 900001, "Amount": 99})))
    load_demo(settings, demo)
    _states_agree(store)
    remove_demo(settings)
    _states_agree(store)
