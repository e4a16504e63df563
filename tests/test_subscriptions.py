"""ploomes.crm.subscriptions: the Webhooks page's building blocks (silent subscriptions, the
coverage grid and table, registration, the test delivery), against the sandbox and a real
store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from conftest import make_settings
from store_seeds import seed_events

from ploomes.crm import subscriptions
from ploomes.crm.api import PloomesClient
from ploomes.demo.sandbox import Sandbox
from ploomes.model.delivery import parse_delivery
from ploomes.queries import status as qstatus
from ploomes.store import Store

USER_KEY = "subscriptions-test-user-key-0123"
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
    assert "mais de 3× o intervalo habitual de 10 min" in warnings[201]
    assert "nenhuma entrega há 8,0 dias" in warnings[203]
    assert "desde que foi criada, há 9,0 dias" in warnings[204]
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
    with pytest.raises(ValueError, match="ao menos uma ação"):
        subscriptions.register_subscriptions(client, [], 2, [], URL, key)
    assert len(sandbox.webhooks()) == 2


def test_example_delivery_body_carries_the_webhook():
    win = subscriptions.example_delivery_body(
        {"Id": 31005101, "EntityId": 2, "ActionId": 4, "CreatorId": 9})
    assert (win["Entity"], win["Action"], win["WebhookId"], win["WebhookCreatorId"]) == (
        "Deals", "Win", 31005101, 9)
    assert (win["Old"]["StatusId"], win["New"]["StatusId"]) == (1, 2)
    reopen = subscriptions.example_delivery_body({"Id": 6, "EntityId": 2, "ActionId": 6})
    assert (reopen["Action"], reopen["Old"]["StatusId"], reopen["New"]["StatusId"]) == (
        "Reopen", 3, 1)
    assert reopen["WebhookCreatorId"] is None  # no creator in the subscription: none sent
    orders = subscriptions.example_delivery_body({"Id": 5, "EntityId": 4, "ActionId": 2})
    assert (orders["Entity"], orders["Action"], orders["WebhookId"]) == ("Orders", "Update", 5)
    assert orders["Old"] != orders["New"]  # an Update changes something
    create = subscriptions.example_delivery_body({"Id": 7, "EntityId": 1, "ActionId": 1})
    delete = subscriptions.example_delivery_body({"Id": 8, "EntityId": 12, "ActionId": 3})
    assert (create["Entity"], create["Action"], create["Old"]) == ("Contacts", "Create", None)
    assert (delete["Entity"], delete["Action"], delete["New"]) == ("Tasks", "Delete", None)
    # each one is a delivery the receiver accepts, of the subscription's entity and action
    for body in (win, reopen, orders, create, delete):
        delivery = parse_delivery(json.dumps(body).encode("utf-8"))
        assert (delivery.entity, delivery.action, delivery.webhook_id) == (
            body["Entity"], body["Action"], body["WebhookId"])
        assert delivery.record_id is not None
    # a body changed by its caller leaves the next one as it was
    win["New"]["StatusId"] = 99
    again = subscriptions.example_delivery_body({"Id": 1, "EntityId": 2, "ActionId": 4})
    assert again["New"]["StatusId"] == 2


def test_load_catalog_falls_back_on_404(tmp_path):
    with Sandbox(user_key=USER_KEY, rate_limit=0, actions_endpoint=False) as sb:
        with PloomesClient(sb.url, USER_KEY, retry_total=0) as c:
            catalog = subscriptions.load_catalog(c)
    assert catalog.actions[4] == "Win" and catalog.entities[2] == "Deals"
