"""ploomes.queries.status: the Overview's figures and timeline, the Status page's counts and
positions, and per-subscription delivery statistics, on real stores."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from conftest import make_settings
from store_seeds import NOW, seed_activity, seed_events

from ploomes.queries import status as qstatus
from ploomes.store import Store


@pytest.fixture(scope="module")
def activity(tmp_path_factory):
    return seed_activity(tmp_path_factory.mktemp("activity") / "data")


@pytest.fixture
def con(activity):
    with activity.reader() as connection:
        yield connection


@pytest.fixture
def store(tmp_path):
    return Store(make_settings(tmp_path / "data"))


def test_event_count_and_last_delivery(con, tmp_path):
    assert qstatus.event_count(con) == 7
    assert qstatus.last_delivery_at(con) == NOW - timedelta(minutes=30) + timedelta(seconds=5)
    assert qstatus.demo_count(con) == 7
    empty = Store(make_settings(tmp_path / "empty"))
    with empty.reader() as fresh:
        assert qstatus.event_count(fresh) == 0
        assert qstatus.last_delivery_at(fresh) is None
        assert qstatus.demo_count(fresh) == 0
        assert qstatus.last_synced_at(fresh) is None


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
    with pytest.raises(ValueError, match="timezone-aware"):
        qstatus.overview_summary(con, NOW.replace(tzinfo=None))


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


# -- per-subscription statistics --------------------------------------------------------

def test_webhook_stats_are_exact(store):
    h = timedelta(hours=1)
    seed_events(store, [
        # 101: every 2 h, the last one 1 h ago; a repeat to itself 5 s later
        (1, NOW - 7 * h, 101, None, False),
        (2, NOW - 5 * h, 101, None, False),
        (3, NOW - 3 * h, 101, None, False),
        (4, NOW - 1 * h, 101, None, False),
        (5, NOW - 1 * h + timedelta(seconds=5), 101, 4, False),
        # 102: the same change seen through a second subscription is its own delivery
        (6, NOW - 1 * h + timedelta(seconds=1), 102, 4, False),
        (7, NOW - 30 * h, 102, None, False),
        # 103: one delivery 40 days ago, one 10 days ago: no gap in the 30-day window
        (8, NOW - timedelta(days=40), 103, None, False),
        (9, NOW - timedelta(days=10), 103, None, False),
        # demo data and deliveries after `now` do not count; no WebhookId is skipped
        (10, NOW - 2 * h, 101, None, True),
        (11, NOW + h, 101, None, False),
        (12, NOW - 2 * h, None, None, False),
    ])
    with store.reader() as con:
        stats = qstatus.webhook_stats(con, now=NOW)
    assert list(stats.columns) == qstatus.STATS_COLUMNS
    by_id = {r.webhook_id: r for r in stats.itertuples(index=False)}
    assert sorted(by_id) == [101, 102, 103]
    assert (by_id[101].deliveries_24h, by_id[101].deliveries_30d) == (5, 5)
    assert by_id[101].last_delivery == NOW - h + timedelta(seconds=5)
    assert (by_id[101].median_gap_seconds, by_id[101].gaps_30d) == (7200.0, 3)
    assert (by_id[102].deliveries_24h, by_id[102].deliveries_30d) == (1, 2)
    assert by_id[102].median_gap_seconds == 29 * 3600 + 1
    assert (by_id[103].deliveries_24h, by_id[103].deliveries_30d) == (0, 1)
    assert by_id[103].last_delivery == NOW - timedelta(days=10)
    assert by_id[103].gaps_30d == 0
    with store.reader() as con:
        with_demo = qstatus.webhook_stats(con, now=NOW, include_demo=True)
    assert int(with_demo.set_index("webhook_id").loc[101, "deliveries_24h"]) == 6


def test_webhook_stats_on_an_empty_store(store):
    with store.reader() as con:
        stats = qstatus.webhook_stats(con, now=NOW)
    assert stats.empty and list(stats.columns) == qstatus.STATS_COLUMNS
