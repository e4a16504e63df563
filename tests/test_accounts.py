"""Names per Ploomes account (issue 18): each account's deliveries labelled with its own
users, custom fields and lookups, ids resolved to names with the id beside them, and the
account choice once the store holds several accounts. Seeded through the real journal and
ingest path; the pages run with AppTest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import ROOT, SHARED, make_settings
from streamlit.testing.v1 import AppTest

from ploomes.crm.directory import upsert_directory
from ploomes.demo.load import load_demo
from ploomes.queries import events as qevents
from ploomes.queries import status as qstatus
from ploomes.store import Store

T0 = datetime(2026, 11, 3, 14, 0, tzinfo=UTC)
EVENTS = str(ROOT / "views" / "events.py")
SALES = 3100210  # deal-create.json's account
OTHER = 57  # contact-update.json's account
CONTACT = 509913377  # the deal's ContactId


def payload(name: str) -> dict:
    return json.loads((SHARED / "payloads" / f"{name}.json").read_text(encoding="utf-8"))


def contact_create() -> dict:
    """The deal's client, created in the deal's account: its title names the ContactId."""
    return {"Action": "Create", "Entity": "Contacts", "AccountId": SALES,
            "ActionUserId": 31007790, "WebhookId": 31005101, "Old": None,
            "New": {"Id": CONTACT, "Name": "Padaria Pão Dourado", "TypeId": 1,
                    "OtherProperties": {"contact_check": False}}}


@pytest.fixture(scope="module")
def two_accounts(tmp_path_factory):
    """Event 1: account SALES creates a contact; 2: SALES creates a deal for it; 3: account
    OTHER updates its own contact (contact_check, as in Ploomes' help)."""
    settings = make_settings(tmp_path_factory.mktemp("accounts") / "data")
    load_demo(settings, [(T0, contact_create()), (T0 + timedelta(minutes=1),
                                                  payload("deal-create")),
                         (T0 + timedelta(minutes=2), payload("contact-update"))])
    with Store(settings).writer() as con:
        upsert_directory(
            con, [{"Id": 31007790, "Name": "Carla Mendes"}],
            [{"Key": "contact_check", "Name": "Cliente verificado", "EntityId": 1,
              "TypeId": 10}], T0, account_id=SALES, account_name="Vendas Ltda.",
            lookups={"stage": [{"Id": 31088100, "Name": "Proposta enviada",
                                "PipelineId": 31020011}],
                     "pipeline": [{"Id": 31020011, "Name": "Funil de vendas"}]})
        upsert_directory(con, [{"Id": 116, "Name": "Márcia Conceição"}], [], T0,
                         account_id=OTHER, account_name="Ploomes")
    return settings


def detail(settings, event_id: int) -> qevents.EventDetail:
    with Store(settings).reader() as con:
        found = qevents.event_detail(con, event_id)
    assert found is not None
    return found


def changes_by_field(found: qevents.EventDetail) -> dict[str, tuple[str, str | None]]:
    return {r.field: (r.field_label, r.after) for r in found.changes.itertuples()}


def test_ids_are_named_from_the_accounts_lookups_with_the_id_beside(two_accounts):
    deal = changes_by_field(detail(two_accounts, 2))
    assert deal["StageId"] == ("Estágio", "Proposta enviada (31088100)")
    assert deal["PipelineId"] == ("Funil", "Funil de vendas (31020011)")
    assert deal["OwnerId"] == ("Responsável", "Carla Mendes (31007790)")
    assert deal["ContactId"] == ("Cliente", f"Padaria Pão Dourado ({CONTACT})")
    assert deal["StatusId"] == ("Situação", "Em aberto (1)")  # Ploomes' fixed values
    assert deal["Amount"][0] == "Valor"
    # an id nobody names stays the id, never "None"
    assert "None" not in " ".join(str(v) for pair in deal.values() for v in pair)


def test_one_accounts_labels_never_name_another_accounts_data(two_accounts):
    mine = changes_by_field(detail(two_accounts, 1))
    assert mine["OtherProperties.contact_check"][0] == "Cliente verificado"
    theirs = detail(two_accounts, 3)
    # account 57 has no custom field named contact_check: the path, not account SALES' label
    assert changes_by_field(theirs)["OtherProperties.contact_check"][0] == \
        "OtherProperties.contact_check"
    assert theirs.event["user_name"] == "Márcia Conceição"
    assert theirs.event["account_name"] == "Ploomes"
    with Store(two_accounts).reader() as con:
        sales = qevents.events_page(con, qevents.EventFilter(account=SALES)).rows
        other = qevents.events_page(con, qevents.EventFilter(account=OTHER)).rows
        seen = qstatus.accounts_seen(con)
    assert list(sales["event_id"]) == [2, 1] and list(other["event_id"]) == [3]
    assert set(sales["user_name"]) == {"Carla Mendes"}
    assert list(other["user_name"]) == ["Márcia Conceição"]
    assert sorted(int(a) for a in seen["account_id"]) == [OTHER, SALES]


def run_events(settings, monkeypatch, **params) -> AppTest:
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(settings.data_dir))
    at = AppTest.from_file(EVENTS, default_timeout=30)
    for key, value in params.items():
        at.query_params[key] = str(value)
    at.run(timeout=30)
    assert not at.exception, at.exception
    return at


def listed(at: AppTest):
    [table] = [t.value for t in at.dataframe if "event" in t.value.columns]
    return table


def test_the_events_page_offers_the_accounts_and_labels_each_with_its_own(
        two_accounts, monkeypatch):
    at = run_events(two_accounts, monkeypatch)
    choice = at.sidebar.selectbox(key="account")
    assert sorted(choice.options) == sorted(["Vendas Ltda. (3100210)", "Ploomes (57)"])
    choice.set_value(OTHER).run()
    table = listed(at)
    assert list(table["event"]) == [3] and list(table["user"]) == ["Márcia Conceição"]
    assert "Cliente verificado" not in repr(table.to_dict())
    choice = at.sidebar.selectbox(key="account")
    choice.set_value(SALES).run()
    table = listed(at)
    assert list(table["event"]) == [2, 1]
    assert set(table["user"]) == {"Carla Mendes"}
    assert "Cliente verificado" in table["changed fields"].iloc[1]  # its own label
    assert at.query_params["account"] in (str(SALES), [str(SALES)])

    at = run_events(two_accounts, monkeypatch, account=OTHER, event=3)  # from a link
    assert list(listed(at)["event"]) == [3]
    diff = [t.value for t in at.dataframe if "API name" in t.value.columns][0]
    assert "OtherProperties.contact_check" in list(diff.iloc[:, 0])
    assert "Cliente verificado" not in list(diff.iloc[:, 0])


def test_one_account_offers_no_choice(tmp_path, monkeypatch):
    settings = make_settings(tmp_path / "data")
    load_demo(settings, [(T0, payload("deal-create"))])
    at = run_events(settings, monkeypatch)
    assert not [s for s in at.sidebar.selectbox if s.key == "account"]
    assert list(listed(at)["event"]) == [1]


def test_demo_data_and_the_sandbox_are_accounts_of_their_own(tmp_path):
    """The demo data and the sandbox's deliveries in one store: two accounts, nobody under
    two ids, and each account's active users counted apart."""
    from conftest import TEST_KEY, ReceiverProcess

    from ploomes.crm.api import PloomesClient
    from ploomes.crm.directory import sync_directory
    from ploomes.demo.generator import DEMO_ACCOUNT_ID, SANDBOX_ACCOUNT_ID
    from ploomes.demo.sandbox import Sandbox
    from ploomes.queries import users as qusers

    receiver = ReceiverProcess(tmp_path / "data").start()
    try:
        settings = make_settings(receiver.data_dir, receiver_url=receiver.url)
        with Sandbox(user_key="accounts-user-key-0123456789", seed=11, rate_limit=0) as sandbox:
            sandbox.subscribe_all(receiver.webhook_url, TEST_KEY)
            report = sandbox.run_activity(40)
            assert {d["status"] for d in report["deliveries"]} == {200}
            with PloomesClient(sandbox.url, "accounts-user-key-0123456789") as client:
                sync_directory(client, Store(settings))
        assert load_demo(settings) > 1000  # handed to the running receiver
        receiver.wait_ingested(timeout=60)
    finally:
        receiver.stop()
    with Store(settings).reader() as con:
        seen = qstatus.accounts_seen(con)
        everyone = qusers.users_summary(con)
        demo = qstatus.overview_summary(con, account=DEMO_ACCOUNT_ID).loc["7 d"]
        sandbox_users = qstatus.overview_summary(con, account=SANDBOX_ACCOUNT_ID).loc["7 d"]
        both = qstatus.overview_summary(con).loc["7 d"]
    assert sorted(int(a) for a in seen["account_id"]) == sorted([DEMO_ACCOUNT_ID,
                                                                 SANDBOX_ACCOUNT_ID])
    assert list(seen["demo"]) == [False, True]  # the real-looking account first
    named = everyone[everyone["user"] != everyone["action_user_id"].astype(str)]
    assert len(named) == len(everyone)  # every user named, from their own account
    ids_per_name = named.groupby("user")["action_user_id"].nunique()
    assert ids_per_name.max() == 1, ids_per_name[ids_per_name > 1]
    assert 0 < demo["active_users"] <= 7 and 0 < sandbox_users["active_users"] <= 7
    assert both["active_users"] == demo["active_users"] + sandbox_users["active_users"]
