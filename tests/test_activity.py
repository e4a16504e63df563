"""The Overview, Users and Status queries on a real store seeded through the real ingest path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from conftest import free_port, make_settings

from ploomes.demo.load import ingest_pending, load_demo
from ploomes.ingest.pipeline import Pipeline
from ploomes.intake import probe
from ploomes.intake.journal import KIND_REJECTED, Journal, rejected_payload
from ploomes.queries import events as qevents
from ploomes.queries import status as qstatus
from ploomes.queries import users as qusers
from ploomes.store import Store

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # a Friday, 12:00 in São Paulo
SP = ZoneInfo("America/Sao_Paulo")


def body(entity, action, user, old, new, webhook=5110):
    return {"Action": action, "Entity": entity, "SecondaryEntityId": None, "AccountId": 31,
            "ActionUserId": user, "WebhookId": webhook, "WebhookCreatorId": 10,
            "Old": old, "New": new}


DEAL_OLD = {"Id": 100, "Title": "Padaria Bom Grão", "StageId": 1, "Amount": 10,
            "LastUpdateDate": "2026-11-20T11:00:00"}
DEAL_NEW = {"Id": 100, "StageId": 2, "LastUpdateDate": "2026-11-20T11:30:00"}
STAGE_MOVE = body("Deals", "Update", 10, DEAL_OLD, DEAL_NEW)

DELIVERIES = [
    # 1 and 2: user 10 creates deal 100, then moves its stage (one delivered twice)
    (NOW - timedelta(hours=1), body("Deals", "Create", 10, None, DEAL_OLD)),
    (NOW - timedelta(minutes=30), STAGE_MOVE),
    (NOW - timedelta(minutes=30) + timedelta(seconds=5), STAGE_MOVE),  # duplicate
    # user 20 on contact 200: Tuesday 12:00 local, then Tuesday 23:30 local (Wednesday UTC)
    (datetime(2026, 11, 17, 15, 0, tzinfo=UTC),
     body("Contacts", "Create", 20, None, {"Id": 200, "Name": "Ana"})),
    (datetime(2026, 11, 18, 2, 30, tzinfo=UTC),
     body("Contacts", "Update", 20, {"Id": 200, "Name": "Ana"},
          {"Id": 200, "Name": "Ana Lima", "OtherProperties": {"contact_vip": True}})),
    # older than 7 days
    (NOW - timedelta(days=10), body("Deals", "Win", 30, {"Id": 101, "StatusId": 1},
                                    {"Id": 101, "StatusId": 2})),
    (NOW - timedelta(days=20), body("Tasks", "Create", None, None,
                                    {"Id": 300, "Subject": "Ligar"})),
]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A data dir with the deliveries above, one rejected delivery and two auth failures."""
    settings = make_settings(tmp_path_factory.mktemp("activity") / "data")
    assert load_demo(settings, DELIVERIES) == len(DELIVERIES)
    journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
    try:
        journal.append_many([rejected_payload(400, "not JSON", b"oops", "127.0.0.1")],
                            kind=KIND_REJECTED,
                            received_ns=[int((NOW - timedelta(hours=1)).timestamp() * 1e9)])
        ingest_pending(settings, journal)
    finally:
        journal.close()
    store = Store(settings)
    with store.writer() as con:
        Pipeline().apply(con, [], auth_failures=[
            (NOW - timedelta(hours=2), "10.0.0.1", "wrong key"),
            (NOW - timedelta(days=5), "10.0.0.2", "missing key")])
        con.execute("INSERT INTO users VALUES (10, 'João Araújo', 'joao@example.com', false, "
                    "now())")
        con.execute("INSERT INTO fields VALUES ('contact_vip', 1, 'Cliente VIP', 10, now())")
    return store


@pytest.fixture
def con(seeded):
    with seeded.reader() as connection:
        yield connection


def test_event_count_and_last_delivery(con, tmp_path):
    assert qstatus.event_count(con) == 7
    assert qstatus.last_delivery_at(con) == NOW - timedelta(minutes=30) + timedelta(seconds=5)
    empty = Store(make_settings(tmp_path / "empty"))
    with empty.reader() as fresh:
        assert qstatus.event_count(fresh) == 0
        assert qstatus.last_delivery_at(fresh) is None


def test_overview_summary_excludes_duplicates_by_default(con):
    summary = qstatus.overview_summary(con, NOW)
    assert summary.loc["24 h", ["deliveries", "records_changed", "active_users",
                                "duplicates", "refused"]].tolist() == [2, 1, 1, 1, 2]
    assert summary.loc["7 d", ["deliveries", "records_changed", "active_users",
                               "duplicates", "refused"]].tolist() == [4, 2, 2, 1, 3]
    assert summary.loc["24 h", "since"] == NOW - timedelta(hours=24)
    with_dups = qstatus.overview_summary(con, NOW, include_duplicates=True)
    assert with_dups.loc["24 h", "deliveries"] == 3
    assert with_dups.loc["7 d", "deliveries"] == 5


def test_bucket_for():
    assert qstatus.bucket_for(NOW - timedelta(days=2), NOW) == "hour"
    assert qstatus.bucket_for(NOW - timedelta(days=2, seconds=1), NOW) == "day"
    assert qstatus.bucket_for(NOW - timedelta(days=60), NOW) == "day"
    assert qstatus.bucket_for(NOW - timedelta(days=61), NOW) == "week"


def test_timeline_buckets_in_local_time(con):
    hourly = qstatus.timeline(con, NOW - timedelta(days=1), NOW, by="entity")
    # 14:00 and 14:30 UTC are both in the 11:00 hour in São Paulo
    assert hourly.to_dict("records") == [
        {"bucket": pd.Timestamp("2026-11-20 11:00"), "group": "Deals", "events": 2}]
    assert qstatus.timeline(con, NOW - timedelta(days=1), NOW,
                             include_duplicates=True)["events"].tolist() == [3]

    daily = qstatus.timeline(con, NOW - timedelta(days=7), NOW, by="action")
    # 02:30 UTC on the 18th is still the 17th in São Paulo
    assert [(r.bucket.strftime("%Y-%m-%d"), r.group, r.events)
            for r in daily.itertuples()] == [
        ("2026-11-17", "Create", 1), ("2026-11-17", "Update", 1),
        ("2026-11-20", "Create", 1), ("2026-11-20", "Update", 1)]

    weekly = qstatus.timeline(con, NOW - timedelta(days=90), NOW, by="entity")
    assert [(r.bucket.strftime("%Y-%m-%d"), r.group, r.events)
            for r in weekly.itertuples()] == [
        ("2026-10-26", "Tasks", 1), ("2026-11-09", "Deals", 1),
        ("2026-11-16", "Contacts", 2), ("2026-11-16", "Deals", 2)]

    utc = qstatus.timeline(con, NOW - timedelta(days=7), NOW, by="entity", tz="UTC")
    assert [(r.bucket.strftime("%Y-%m-%d"), r.group, r.events) for r in utc.itertuples()] == [
        ("2026-11-17", "Contacts", 1), ("2026-11-18", "Contacts", 1), ("2026-11-20", "Deals", 2)]


def test_timeline_rejects_unknown_grouping(con):
    with pytest.raises(ValueError):
        qstatus.timeline(con, NOW - timedelta(days=1), NOW, by="payload")
    with pytest.raises(ValueError):
        qstatus.timeline(con, NOW - timedelta(days=1), NOW, bucket="minute")


def test_users_summary_names_and_counts(con):
    users = qusers.users_summary(con)
    rows = [(None if pd.isna(r.action_user_id) else int(r.action_user_id), r.user, r.events,
             r.records) for r in users.itertuples()]
    assert rows == [(10, "João Araújo", 2, 1), (20, "20", 2, 1), (30, "30", 1, 1),
                    (None, "(no ActionUserId)", 1, 1)]
    recent = qusers.users_summary(con, since=NOW - timedelta(days=7),
                                    include_duplicates=True)
    assert recent[["user", "events"]].values.tolist() == [["João Araújo", 3], ["20", 2]]
    assert recent.loc[0, "last_at"] == NOW - timedelta(minutes=30) + timedelta(seconds=5)


def test_user_entity_actions(con):
    counts = qusers.user_entity_actions(con, since=NOW - timedelta(days=30))
    got = {(None if pd.isna(r.action_user_id) else int(r.action_user_id), r.entity, r.action):
           r.events for r in counts.itertuples()}
    assert got == {(10, "Deals", "Create"): 1, (10, "Deals", "Update"): 1,
                   (20, "Contacts", "Create"): 1, (20, "Contacts", "Update"): 1,
                   (30, "Deals", "Win"): 1, (None, "Tasks", "Create"): 1}


def test_user_heatmap_is_a_full_local_grid(con):
    grid = qusers.user_heatmap(con, 20)
    assert len(grid) == 7 * 24 and grid["events"].sum() == 2
    busy = grid[grid["events"] > 0][["weekday", "weekday_name", "hour", "events"]]
    assert busy.values.tolist() == [[2, "Tue", 12, 1], [2, "Tue", 23, 1]]
    in_utc = qusers.user_heatmap(con, 20, tz="UTC")
    assert in_utc[in_utc["events"] > 0][["weekday", "hour"]].values.tolist() == [[2, 15],
                                                                                [3, 2]]
    assert qusers.user_heatmap(con, 10)["events"].sum() == 2  # duplicate left out
    assert qusers.user_heatmap(con, 10, include_duplicates=True)["events"].sum() == 3
    assert qusers.user_heatmap(con, None)["events"].sum() == 1


def test_user_top_fields(con):
    top = qusers.user_top_fields(con, 10)
    # Create sets Title, StageId, Amount; the Update moves StageId; LastUpdateDate is
    # bookkeeping and the duplicate delivery counts once
    assert top[["entity", "field", "changes", "records"]].values.tolist() == [
        ["Deals", "StageId", 2, 1], ["Deals", "Amount", 1, 1], ["Deals", "Title", 1, 1]]
    labelled = qusers.user_top_fields(con, 20)
    assert labelled[["field", "label", "changes"]].values.tolist() == [
        ["Name", "Name", 2], ["OtherProperties.contact_vip", "Cliente VIP", 1]]
    assert qusers.user_top_fields(con, 10, limit=1)["field"].tolist() == ["StageId"]
    assert qusers.user_top_fields(con, 10, since=NOW - timedelta(minutes=45))[
        "field"].tolist() == ["StageId"]


def test_export_default_order(con):
    # event ids are journal sequence numbers: the deliveries in time order, 7 the duplicate
    frame = qevents.export_events(con, qevents.EventFilter())
    assert frame["id"].tolist() == [6, 5, 4, 3, 2, 1]
    assert frame["is_demo"].all()
    assert list(frame.columns[:7]) == ["id", "received_at", "entity", "action", "record_id",
                                       "action_user_id", "user_name"]


def test_export_and_count_follow_the_events_filter(con):
    def ids(**kw):
        flt = qevents.EventFilter(**kw)
        frame = qevents.export_events(con, flt)
        assert qevents.count_events(con, flt) == len(frame)
        return frame["id"].tolist()

    assert ids(action_user_id=10) == [6, 5]
    assert ids(action_user_id=10, include_duplicates=True) == [7, 6, 5]
    assert ids(entity="Contacts") == [4, 3]
    assert ids(action="Win") == [2]
    assert ids(record_id=100, action="Update") == [6]
    assert ids(text="CONTACT_VIP") == [4]
    assert ids(text="BOM GRÃO") == [6, 5]
    assert ids(field="StageId") == [6, 5]
    assert ids(start=NOW - timedelta(days=7), end=NOW - timedelta(hours=1)) == [4, 3]
    assert ids(include_demo=False) == []
    assert qevents.export_events(con, qevents.EventFilter(), limit=2)["id"].tolist() == [6, 5]


def test_export_converts_times_and_adds_the_payload(con):
    frame = qevents.export_events(con, qevents.EventFilter(action_user_id=10),
                                   include_payload=True, tz="America/Sao_Paulo")
    assert str(frame["received_at"].dt.tz) == "America/Sao_Paulo"
    assert frame["received_at"].iloc[1] == pd.Timestamp("2026-11-20 11:00", tz=SP)
    assert frame["user_name"].tolist() == ["João Araújo", "João Araújo"]
    assert '"Action": "Create"' in frame["payload"].iloc[1]


def test_filter_from_params():
    parsed = qevents.filter_from_params(
        {"user": "10", "entity": "Deals", "from": "2026-11-17", "to": "2026-11-17",
         "q": " bom ", "duplicates": "1", "record": ["1", "100"], "field": "StageId"})
    f = parsed.filter
    assert parsed.problems == ()
    assert (f.action_user_id, f.entity, f.text, f.include_duplicates, f.record_id,
            f.field) == (10, "Deals", "bom", True, 100, "StageId")
    assert f.start == datetime(2026, 11, 17, 0, 0, tzinfo=SP)
    assert f.end == datetime(2026, 11, 18, 0, 0, tzinfo=SP)  # the whole `to` day
    assert f.include_demo is True

    bad = qevents.filter_from_params({"user": "joão", "from": "yesterday", "demo": "0",
                                       "to": "2026-11-20T10:00:00-03:00"})
    assert bad.filter.action_user_id is None and bad.filter.start is None
    assert bad.filter.include_demo is False
    assert bad.filter.end == datetime(2026, 11, 20, 13, 0, tzinfo=UTC)
    assert bad.problems == ("`from=yesterday` is not a date (use YYYY-MM-DD)",
                            "`user=joão` is not a number")
    assert qevents.filter_from_params({}).filter == qevents.EventFilter()


def test_table_counts_and_ingest_positions(con):
    counts = dict(qstatus.table_counts(con).values.tolist())
    assert counts["events"] == 7
    assert counts["rejected_deliveries"] == 1
    assert counts["auth_failures"] == 2
    assert counts["users"] == 1
    positions = qstatus.ingest_positions(con)
    rows = dict(positions[["name", "last_seq"]].values.tolist())
    assert rows["main"] == 8  # the journal position of stage 1
    last_event = con.execute("SELECT max(id) FROM events").fetchall()[0][0]
    assert rows["derive"] == last_event  # stage 2 computed every event's change model


def test_receiver_health_unreachable():
    health = probe.receiver_health(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    assert health["reachable"] is False
    assert health["error"] == "ConnectionError"


def test_receiver_health_of_a_real_receiver(receiver):
    health = probe.receiver_health(receiver.url + "/")
    assert health["reachable"] is True
    assert health["status"] == "ok"
    assert health["http_status"] == 200
    assert health["backlog"] == 0
    assert health["url"] == receiver.url + "/healthz"


def test_format_bytes():
    from views.common import format_bytes

    assert format_bytes(0) == "0 B"
    assert format_bytes(2048) == "2.0 KB"
    assert format_bytes(5.5 * 1024 ** 2) == "5.5 MB"


def test_export_takes_the_events_page_filter(con):
    flt = qevents.EventFilter(action_user_id=10, include_duplicates=True)
    assert qevents.export_events(con, flt)["id"].tolist() == [7, 6, 5]
    assert qevents.count_events(con, qevents.EventFilter(field="StageId")) == 2
