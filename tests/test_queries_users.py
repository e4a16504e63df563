"""ploomes.queries.users: the Users page's queries on data dirs seeded through the ingest
path (tests/test_rollups.py compares their rollup-backed and raw counts at length)."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from store_seeds import NOW, T0, deal_life, rows, run, seed, seed_activity

from ploomes.queries import users as qusers


@pytest.fixture(scope="module")
def activity(tmp_path_factory):
    return seed_activity(tmp_path_factory.mktemp("activity") / "data")


@pytest.fixture
def con(activity):
    with activity.reader() as connection:
        yield connection


def test_users_summary_names_and_counts(con):
    users = qusers.users_summary(con)
    found = [(None if pd.isna(r.action_user_id) else int(r.action_user_id), r.user, r.events,
              r.records) for r in users.itertuples()]
    assert found == [(10, "João Araújo", 2, 1), (20, "20", 2, 1), (30, "30", 1, 1),
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
        ["Name", "Nome", 2], ["OtherProperties.contact_vip", "Cliente VIP", 1]]
    assert qusers.user_top_fields(con, 10, limit=1)["field"].tolist() == ["StageId"]
    assert qusers.user_top_fields(con, 10, since=NOW - timedelta(minutes=45))[
        "field"].tolist() == ["StageId"]


def test_user_names_and_field_names(con):
    # names kept without an account label any account's data that has none of its own
    assert qusers.user_names(con, None) == {10: "João Araújo"}
    assert qusers.field_names(con, None) == {"contact_vip": "Cliente VIP"}
    assert qusers.user_names(con, 777) == {10: "João Araújo"}


def test_user_changes(tmp_path):
    deal = seed(tmp_path, deal_life())
    mine = run(deal, qusers.user_changes, 8)
    assert rows(mine, ["event_id", "field"]) == [(3, "Amount"), (3, "OtherProperties.deal_plan")]
    assert run(deal, qusers.user_changes, 8, end=T0 + timedelta(minutes=2)).empty
    assert len(run(deal, qusers.user_changes, 7)) == 7
    assert len(run(deal, qusers.user_changes, 7, include_bookkeeping=True)) == 10
    assert len(run(deal, qusers.user_changes, 7, entity="Contacts")) == 0
