"""Test deliveries and subscription changes against real parts (issue 18): the receiver
on a loopback port, the sandbox as the Ploomes API. A test delivery is marked from the
moment it is sent and stays out of histories, counts, rollups, continuity and health
unless asked for; a subscription is paused, re-activated and edited through the API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED, TEST_KEY, ReceiverProcess, make_settings, wait_for
from streamlit.testing.v1 import AppTest

from ploomes.actions import Actor
from ploomes.actions import subscriptions as subscription_actions
from ploomes.crm.api import PloomesClient
from ploomes.demo.sandbox import Sandbox
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS
from ploomes.queries import events as qevents
from ploomes.queries import records as qrecords
from ploomes.queries import status as qstatus
from ploomes.queries import users as qusers
from ploomes.queries.audit import audit_entries
from ploomes.store import Store

USER_KEY = "test-deliveries-user-key-0123456789"
ADMIN = Actor("ana@empresa.com.br")


@pytest.fixture
def receiver(tmp_path):
    proc = ReceiverProcess(tmp_path / "data").start()
    yield proc
    proc.stop()


@pytest.fixture
def settings(receiver):
    return make_settings(receiver.data_dir, dashboard_admins=("ana@empresa.com.br",),
                         validation_keys=(TEST_KEY,))


def payload(name: str) -> dict:
    return json.loads((SHARED / "payloads" / f"{name}.json").read_text(encoding="utf-8"))


def test_a_test_delivery_is_marked_and_left_out_unless_asked(receiver, settings, monkeypatch):
    real = payload("deal-create")
    assert receiver.post(real).status_code == 200
    # the same subscription, sent a test from the Webhooks page by another user
    webhook = {"Id": real["WebhookId"], "EntityId": ENTITY_IDS["Deals"],
               "ActionId": ACTION_IDS["Win"], "CreatorId": 31007700,
               "CallbackUrl": receiver.webhook_url}
    answer = subscription_actions.send_test(ADMIN, settings, Store(settings), webhook,
                                            TEST_KEY, account_id=real["AccountId"])
    assert answer.status == 200
    test_id = answer.body["delivery_id"]
    receiver.wait_ingested()
    store = Store(settings)
    with store.reader() as con:
        marks = con.execute("SELECT id, is_test FROM events ORDER BY id").fetchall()
        assert marks == [(1, False), (test_id, True)]
        # left out of the list, the Overview, the timeline, the users and the health
        assert list(qevents.events_page(con, qevents.EventFilter()).rows["event_id"]) == [1]
        asked = qevents.events_page(con, qevents.EventFilter(include_tests=True)).rows
        assert list(asked["event_id"]) == [test_id, 1]
        assert list(asked["is_test"]) == [True, False]
        summary = qstatus.overview_summary(con)
        assert summary.loc["24 h", "deliveries"] == 1
        assert summary.loc["24 h", "active_users"] == 1
        stats = qstatus.webhook_stats(con)
        assert stats.set_index("webhook_id").loc[real["WebhookId"], "deliveries_24h"] == 1
        assert list(qusers.users_summary(con)["action_user_id"]) == [real["ActionUserId"]]
        assert 31007700 not in set(qusers.users_summary(con, rollups=False)["action_user_id"])
        # no change model: no field changes, record state, gaps or rollups
        for table in ("field_changes", "continuity_gaps", "user_fields"):
            assert con.execute(f"SELECT count(*) FROM {table} WHERE "  # names from the tuple
                               + ("event_id = ?" if table != "user_fields"
                                  else "action_user_id = ?"),
                               [test_id if table != "user_fields" else 31007700]
                               ).fetchall() == [(0,)]
        assert qrecords.record_history(con, "Deals", 0).empty
        assert qrecords.record_history(con, "Deals", 0, include_tests=True).empty is False
        # opened, it is diffed on the spot and says it is a test
        test = qevents.event_detail(con, test_id)
        assert test is not None and test.event["is_test"] is True
        assert "StatusId" in set(test.changes["field"])
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "ploomes", "status", "--data-dir", str(settings.data_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout)
    assert status["events"] == 2 and status["test_deliveries"] == 1
    assert any("test deliveries" in line for line in status["counts_include"])
    assert list(audit_entries_of(store)) == ["test_delivery"]

    # the Events page: left out of the list, shown with its badge when asked for
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(settings.data_dir))
    at = AppTest.from_file(str(ROOT / "views" / "events.py"), default_timeout=30).run()
    assert not at.exception, at.exception
    assert list(listed(at)["event"]) == [1]
    at.toggle(key="f_tests").set_value(True).run()
    table = listed(at)
    assert list(table["event"]) == [test_id, 1]
    badges = table.iloc[:, -1]  # the marks column, in the interface's language
    assert set(badges.iloc[0]) in ({"teste"}, {"test"}) and list(badges.iloc[1]) == []
    at = AppTest.from_file(str(ROOT / "views" / "events.py"), default_timeout=30)
    at.query_params.update({"event": str(test_id), "tests": "1"})
    at.run()
    assert not at.exception, at.exception
    assert any("Webhooks" in w.value for w in at.warning)  # says where it came from


def listed(at: AppTest):
    [table] = [t.value for t in at.dataframe if "event" in t.value.columns]
    return table


def audit_entries_of(store: Store) -> list[str]:
    with store.reader() as con:
        return list(audit_entries(con)["action"])


@pytest.fixture
def sandbox():
    with Sandbox(user_key=USER_KEY, seed=5, rate_limit=0) as sb:
        yield sb


@pytest.fixture
def client(sandbox):
    with PloomesClient(sandbox.url, USER_KEY, retry_total=0) as api:
        yield api


def stored_events(receiver) -> int:
    with Store(make_settings(receiver.data_dir)).reader() as con:
        return int(con.execute("SELECT count(*) FROM events").fetchall()[0][0])


def test_pause_reactivate_and_edit_a_subscription(receiver, settings, sandbox, client):
    [hook] = [sandbox.create_webhook({"EntityId": ENTITY_IDS["Deals"],
                                      "ActionId": ACTION_IDS["Create"],
                                      "CallbackUrl": receiver.webhook_url,
                                      "ValidationKey": TEST_KEY})]
    store = Store(settings)
    paused = subscription_actions.set_active(ADMIN, settings, store, client, hook, False)
    assert paused is not None and paused["Active"] is False
    assert sandbox.webhooks()[0]["Active"] is False
    report = sandbox.run_activity(3, entity="Deals", action="Create")
    assert len(report["changes"]) == 3 and report["deliveries"] == []  # paused: nothing
    subscription_actions.set_active(ADMIN, settings, store, client, hook, True)
    report = sandbox.run_activity(2, entity="Deals", action="Create")
    assert [d["status"] for d in report["deliveries"]] == [200, 200]
    wait_for(lambda: stored_events(receiver) == 2)

    # edit: another callback URL and key, checked before they reach Ploomes
    new_key = "edited-validation-key-0123456789abcdef"
    with pytest.raises(ValueError, match="https"):
        subscription_actions.edit(ADMIN, settings, store, client, hook,
                                  {"callback_url": "http://hooks.example.com/x"})
    edited = subscription_actions.edit(
        ADMIN, settings, store, client, hook,
        {"callback_url": "https://hooks.empresa.com.br/ploomes/webhook",
         "validation_key": new_key})
    assert edited is not None
    [now] = sandbox.webhooks()
    assert (now["CallbackUrl"], now["ValidationKey"], now["Active"]) == (
        "https://hooks.empresa.com.br/ploomes/webhook", new_key, True)
    with store.reader() as con:
        trail = audit_entries(con)
    done = trail[trail["outcome"] == "done"]
    assert list(done["action"])[::-1] == ["pause_subscription", "activate_subscription",
                                          "edit_subscription"]
    assert new_key not in repr(trail.to_dict())  # keys only masked in the trail
