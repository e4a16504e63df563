"""The whole loop: register on the Webhooks page → sandbox activity → real receiver →
events and field diffs in the store → per-subscription counts back on the page."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import ROOT, ReceiverProcess, make_settings, query
from rendered import rendered_all
from streamlit.testing.v1 import AppTest

from ploomes.demo.sandbox import Sandbox
from ploomes.intake.keys import stored_keys
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS

PAGE = str(ROOT / "views" / "webhooks.py")
USER_KEY = "e2e-user-key-0123456789abcdef"


@pytest.fixture
def sandbox():
    with Sandbox(user_key=USER_KEY, seed=21, rate_limit=0) as sb:
        yield sb


@pytest.fixture
def live(tmp_path, monkeypatch, sandbox):
    receiver = ReceiverProcess(tmp_path / "data").start()
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("PLOOMES_API_URL", sandbox.url)
    monkeypatch.setenv("PLOOMES_USER_KEY", USER_KEY)
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(receiver.data_dir))
    monkeypatch.setenv("PLOOMES_CALLBACK_URL", receiver.webhook_url)
    yield sandbox, receiver
    receiver.stop()


def text(elements) -> str:
    return rendered_all(elements)


def submit(at: AppTest, entity: str, actions: list[str]) -> None:
    at.selectbox(key="register_entity").set_value(ENTITY_IDS[entity])
    at.multiselect(key="register_actions").set_value(
        [ACTION_IDS[a] for a in actions])
    at.button(key="register_submit").click().run()
    assert not at.exception, at.exception
    assert f"{len(actions)} inscriç" in text(at.success)


def subscription_table(at: AppTest):
    return next(d.value for d in at.dataframe if "Deliveries 24 h" in d.value.columns)


def top_level_changes(body: dict) -> set[str]:
    old, new = body["Old"], body["New"]
    return {k for k, v in new.items() if k != "Id" and old.get(k) != v}


def test_register_activity_receive_and_count(live):
    sandbox, receiver = live
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    assert at.text_input(key="register_callback_url").value == receiver.webhook_url

    # The receiver was started with its own env key; the page's key is generated here,
    # stored in the data dir, and must be accepted by the running receiver.
    at.button(key="generate_key").click().run()
    [key] = stored_keys(make_settings(receiver.data_dir))
    submit(at, "Deals", ["Create", "Update", "Win"])
    submit(at, "Contacts", ["Update"])
    hooks = {(w["EntityId"], w["ActionId"]): w for w in sandbox.webhooks()}
    assert len(hooks) == 4
    assert {w["CallbackUrl"] for w in hooks.values()} == {receiver.webhook_url}
    assert {w["ValidationKey"] for w in hooks.values()} == {key}

    sandbox.run_activity(1, "Deals", "Create")
    sandbox.run_activity(3, "Deals", "Update")
    sandbox.run_activity(1, "Deals", "Win")
    sandbox.run_activity(2, "Contacts", "Update")
    sandbox.run_activity(1, "Tasks", "Create")  # nobody subscribed: no delivery
    deliveries = sandbox.deliveries()
    assert len(deliveries) == 7
    assert {(d["state"], d["status"]) for d in deliveries} == {("sent", 200)}
    receiver.wait_ingested()

    expected = Counter(d["webhook_id"] for d in deliveries)
    stored = dict(query(receiver.data_dir,
                        "SELECT webhook_id, count(*) FROM events GROUP BY webhook_id"))
    assert stored == dict(expected)

    # Every update's changed fields are in field_changes, attached to its event.
    updates = [d for d in deliveries if d["action"] == "Update"]
    assert len(updates) == 5
    events = query(receiver.data_dir,
                   "SELECT id, webhook_id, record_id FROM events WHERE action = 'Update' "
                   "ORDER BY id")
    assert [(w, r) for _, w, r in events] == [(d["webhook_id"], d["record_id"])
                                             for d in updates]
    for (event_id, _, _), delivery in zip(events, updates, strict=True):
        fields = {f for (f,) in query(receiver.data_dir,
                                      "SELECT field FROM field_changes WHERE event_id = ?",
                                      [event_id])}
        changed = top_level_changes(delivery["body"])
        assert changed, "the sandbox's update changed nothing"
        for name in changed:
            assert any(f == name or f.startswith(name + ".") for f in fields), (name, fields)
    win = query(receiver.data_dir,
                "SELECT count(*) FROM field_changes f JOIN events e ON e.id = f.event_id "
                "WHERE e.action = 'Win' AND f.field = 'StatusId'")
    assert win == [(1,)]

    # Back on the page: the per-subscription counts match what was delivered.
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    table = subscription_table(at).set_index("Id")
    for webhook_id, count in expected.items():
        assert table.loc[webhook_id, "Deliveries 24 h"] == count
        assert table.loc[webhook_id, "Last delivery"] != "nunca"
    assert set(table["Key accepted here"]) == {"sim"}
    assert not any("looks silent" in w.value for w in at.warning)
    names = {u["Name"] for u in sandbox.sim.users}
    assert set(table["Creator"]) <= names

    # A test delivery for the Win subscription reaches the receiver and is counted.
    win_id = hooks[(2, 4)]["Id"]
    at.selectbox(key="manage_subscription").set_value(win_id)
    at.button(key="test_delivery").click().run()
    assert not at.exception, at.exception
    assert f"HTTP 200 à entrega de teste da inscrição {win_id}" in text(at.success)
    assert at.json[0].value and '"accepted"' in at.json[0].value
    receiver.wait_ingested()
    assert query(receiver.data_dir, "SELECT count(*) FROM events WHERE webhook_id = ?",
                 [win_id]) == [(expected[win_id] + 1,)]
