"""Directory sync against the sandbox, and the Webhooks page's queries on a seeded store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from conftest import make_settings

from ploomes.crm import directory, subscriptions
from ploomes.crm.api import PloomesClient
from ploomes.demo.sandbox import Sandbox
from ploomes.queries import status as qstatus
from ploomes.queries import users as qusers
from ploomes.store import Store

USER_KEY = "directory-test-user-key-0123"
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


@pytest.fixture
def sandbox():
    with Sandbox(user_key=USER_KEY, seed=11, rate_limit=0) as sb:
        yield sb


@pytest.fixture
def client(sandbox):
    with PloomesClient(sandbox.url, USER_KEY, retry_total=0) as c:
        yield c


@pytest.fixture
def store(tmp_path):
    return Store(make_settings(tmp_path / "data"))


def rows(store, sql):
    with store.reader() as con:
        return con.execute(sql).fetchall()


# -- sync -------------------------------------------------------------------------------

def test_sync_fills_users_and_custom_fields_with_accents(sandbox, client, store):
    result = directory.sync_directory(client, store, now=NOW)
    users = dict(rows(store, "SELECT id, name FROM users"))
    assert result.users == len(users) == len(sandbox.sim.users)
    assert users == {u["Id"]: u["Name"] for u in sandbox.sim.users}
    assert "João Araújo" in users.values() and "Integração ERP" in users.values()
    fields = {k: (e, n, t) for k, e, n, t in
              rows(store, "SELECT key, entity_id, name, type_id FROM fields")}
    assert result.fields == len(fields)
    # only custom (Dynamic) fields: the system ones stay out
    assert fields == {f["Key"]: (f["EntityId"], f["Name"], f["TypeId"])
                      for f in sandbox.sim.fields}
    assert fields["contact_employees"][1] == "Nº de funcionários"
    with store.reader() as con:
        assert qstatus.last_synced_at(con) == NOW
        assert qusers.user_names(con)[sandbox.sim.users[1]["Id"]] == "Márcia Conceição"
        assert qusers.field_names(con)["contact_check"] == "Cliente verificado"


def test_second_sync_updates_instead_of_duplicating(sandbox, client, store):
    directory.sync_directory(client, store, now=NOW)
    sandbox.sim.users[0]["Name"] = "João Araújo Júnior"
    sandbox.sim.users[0]["Suspended"] = True
    sandbox.sim.fields[0]["Name"] = "Cliente verificado?"
    sandbox._fields = sandbox._build_fields()  # the sandbox caches its field list
    later = NOW + timedelta(hours=1)
    directory.sync_directory(client, store, now=later)
    assert rows(store, "SELECT count(*), count(DISTINCT id) FROM users") == [
        (len(sandbox.sim.users), len(sandbox.sim.users))]
    assert rows(store, "SELECT count(*) FROM fields") == [(len(sandbox.sim.fields),)]
    user_id = sandbox.sim.users[0]["Id"]
    assert rows(store, f"SELECT name, suspended FROM users WHERE id = {user_id}") == [
        ("João Araújo Júnior", True)]
    assert rows(store, "SELECT name FROM fields WHERE key = 'contact_check'") == [
        ("Cliente verificado?",)]
    assert rows(store, "SELECT DISTINCT synced_at FROM users") == [(later,)]


def test_sync_due():
    assert directory.sync_due(None, 30, NOW)
    assert not directory.sync_due(NOW - timedelta(minutes=29), 30, NOW)
    assert directory.sync_due(NOW - timedelta(minutes=30), 30, NOW)


# -- per-webhook statistics -------------------------------------------------------------

def seed_events(store, events):
    """Insert (id, received_at, webhook_id, duplicate_of, is_demo) event rows."""
    with store.writer() as con:
        con.executemany(
            "INSERT INTO events (id, received_at, action, entity, webhook_id, payload, "
            "body_sha256, is_demo, duplicate_of) VALUES (?, ?, 'Update', 'Deals', ?, '{}', "
            "'x', ?, ?)",
            [(i, at, hook, demo, dup) for i, at, hook, dup, demo in events])


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


def test_silence_warnings(store):
    h = timedelta(hours=1)
    events = []
    # 201: every 10 min for 10 hours, then silent for 6 h (> 3 × 10 min and > the 1 h floor)
    events += [(i, NOW - 16 * h + i * timedelta(minutes=10), 201, None, False)
               for i in range(60)]
    # 202: every 2 h, last 3 h ago: within 3 × its median gap
    events += [(100 + i, NOW - 3 * h - i * 2 * h, 202, None, False) for i in range(5)]
    # 203: its last delivery 8 days ago while the others receive
    events += [(200, NOW - timedelta(days=8), 203, None, False)]
    seed_events(store, events)
    with store.reader() as con:
        stats = qstatus.webhook_stats(con, now=NOW)
    created = {204: NOW - timedelta(days=9), 205: NOW - timedelta(days=2)}
    warnings = subscriptions.silence_warnings([201, 202, 203, 204, 205], stats, NOW,
                                          created=created)
    assert sorted(warnings) == [201, 203, 204]
    assert "more than 3× its usual gap of 10 min" in warnings[201]
    assert "no delivery for 8.0 days" in warnings[203]
    assert "since it was created 9.0 days ago" in warnings[204]
    # alone, a quiet subscription is not singled out: nobody else receives either
    assert subscriptions.silence_warnings([203], stats, NOW) == {}
    # a subscription with too few gaps has no trustworthy median
    assert 201 not in subscriptions.silence_warnings([201], stats, NOW, min_gaps=100)


# -- subscriptions ----------------------------------------------------------------------

CATALOG = subscriptions.Catalog({1: "Contacts", 2: "Deals", 12: "Tasks"},
                            {1: "Create", 2: "Update", 4: "Win"})
URL = "https://hooks.example.com/ploomes/webhook"


def test_coverage_grid_marks_this_receivers_subscriptions():
    hooks = [
        {"Id": 1, "EntityId": 2, "ActionId": 4, "CallbackUrl": URL, "Active": True},
        {"Id": 2, "EntityId": 1, "ActionId": 1, "CallbackUrl": URL + "/", "Active": False},
        {"Id": 3, "EntityId": 12, "ActionId": 2, "CallbackUrl": "https://other.example.com/"},
        {"Id": 4, "EntityId": 36, "ActionId": 2, "CallbackUrl": URL, "Active": True},
    ]
    grid = subscriptions.coverage_grid(hooks, URL, CATALOG)
    assert list(grid.columns) == ["Create", "Update", "Win"]
    assert list(grid.index) == ["Contacts", "Deals", "Orders", "Products", "Tasks",
                                "InteractionRecords"]
    assert grid.loc["Deals", "Win"] == "✓"
    assert grid.loc["Contacts", "Create"] == "paused"
    assert grid.loc["Tasks", "Update"] == ""  # another receiver's subscription
    assert grid.loc["InteractionRecords", "Update"] == "✓"
    assert (grid != "").sum().sum() == 3


def test_subscriptions_frame_joins_names_and_stats():
    hooks = [{"Id": 7, "EntityId": 2, "ActionId": 4, "CallbackUrl": URL, "Active": True,
              "ValidationKey": "k" * 20, "CreatorId": 55, "CreateDate": "2026-11-01T09:30:00"},
             {"Id": 8, "EntityId": 99, "ActionId": 9, "CallbackUrl": URL, "Active": False,
              "ValidationKey": None, "CreatorId": 56, "CreateDate": None}]
    seen = pd.DataFrame([{"webhook_id": 7, "deliveries_24h": 4, "deliveries_30d": 9,
                          "last_delivery": NOW, "median_gap_seconds": 60.0, "gaps_30d": 8}])
    frame = subscriptions.subscriptions_frame(hooks, CATALOG, {55: "Fernanda Brandão"}, seen,
                                          {8: "quiet"}, "America/Sao_Paulo", ["k" * 20])
    first, second = frame.to_dict("records")
    assert (first["Entity"], first["Action"], first["Creator"]) == ("Deals", "Win",
                                                                    "Fernanda Brandão")
    assert first["Created"].isoformat() == "2026-11-01T09:30:00-03:00"
    assert (first["Deliveries 24 h"], first["Last delivery"]) == (4, NOW)
    assert (first["Validation key"], first["Key accepted here"]) == ("••••kkkk", "yes")
    assert (second["Entity"], second["Action"], second["Creator"]) == ("Entity 99",
                                                                       "Action 9", "56")
    assert second["Deliveries 24 h"] == 0 and second["Warning"] == "quiet"
    assert (second["Key accepted here"], second["Active"]) == ("unknown", False)


def test_register_refuses_bad_urls_and_duplicates(sandbox, client):
    key = "registration-key-0123456789"
    made = subscriptions.register_subscriptions(client, [], 2, [1, 4, 4], URL, key, CATALOG)
    assert [(w["EntityId"], w["ActionId"]) for w in made] == [(2, 1), (2, 4)]
    with pytest.raises(subscriptions.DuplicateSubscription, match=r"Deals Win \(Id \d+\)"):
        subscriptions.register_subscriptions(client, client.list_webhooks(), 2, [5, 4],
                                         URL + "/", key, CATALOG)
    with pytest.raises(ValueError, match="https://"):
        subscriptions.register_subscriptions(client, [], 2, [5], "http://example.com/x", key)
    with pytest.raises(ValueError, match="at least one action"):
        subscriptions.register_subscriptions(client, [], 2, [], URL, key)
    assert len(sandbox.webhooks()) == 2


def test_example_delivery_body_carries_the_webhook():
    body = subscriptions.example_delivery_body(
        {"Id": 31005101, "EntityId": 2, "ActionId": 4, "CreatorId": 9}, seed=1)
    assert (body["Entity"], body["Action"], body["WebhookId"], body["WebhookCreatorId"]) == (
        "Deals", "Win", 31005101, 9)
    assert body["New"]["StatusId"] == 2
    reopen = subscriptions.example_delivery_body({"Id": 6, "EntityId": 2, "ActionId": 6}, seed=1)
    assert (reopen["Action"], reopen["Old"]["StatusId"], reopen["New"]["StatusId"]) == (
        "Reopen", 3, 1)
    orders = subscriptions.example_delivery_body({"Id": 5, "EntityId": 4, "ActionId": 2}, seed=1)
    assert (orders["Entity"], orders["Action"], orders["WebhookId"]) == ("Orders", "Update", 5)


def test_load_catalog_falls_back_on_404(tmp_path):
    with Sandbox(user_key=USER_KEY, rate_limit=0, actions_endpoint=False) as sb:
        with PloomesClient(sb.url, USER_KEY, retry_total=0) as c:
            catalog = subscriptions.load_catalog(c)
    assert catalog.actions[4] == "Win" and catalog.entities[2] == "Deals"
