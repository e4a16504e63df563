"""Query functions of the change model, on real DuckDB files built through the ingest path."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from conftest import SHARED, make_settings, real_deliveries

from ploomes.demo.load import load_demo
from ploomes.queries import base as qbase
from ploomes.queries import events as qevents
from ploomes.queries import records as qrecords
from ploomes.queries import users as qusers
from ploomes.store import Store

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
CONTACT_ID = 2630362
DEAL_ID = 517000123


def seed(tmp_path, deliveries, name="data"):
    """Store (received_at, body) pairs through the real journal + Pipeline path."""
    settings = make_settings(tmp_path / name)
    load_demo(settings, deliveries)
    return settings


def run(settings, fn, *args, **kwargs):
    with Store(settings).reader() as con:
        return fn(con, *args, **kwargs)


def label(settings, users=(), fields=()):
    with Store(settings).writer() as con:
        con.executemany("INSERT INTO users VALUES (?, ?, NULL, false, NULL)", list(users))
        con.executemany("INSERT INTO fields VALUES (?, ?, ?, NULL, NULL)", list(fields))


def contact_update() -> dict:
    path = SHARED / "payloads" / "contact-update.json"
    if not path.exists():
        pytest.skip(f"seed payload not found at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def plain(value):
    """Return a cell as a plain value: SQL NULL (NaN, NA) as None."""
    if isinstance(value, list | dict | tuple):
        return value
    return None if pd.isna(value) else value


def rows(df: pd.DataFrame, columns: list[str]) -> list[tuple]:
    return [tuple(plain(v) for v in r) for r in df[columns].itertuples(index=False)]


CHANGE_COLS = ["field", "old_value", "new_value", "old_known", "new_known", "kind", "summary",
               "added", "removed"]
SEED_CHANGES = [
    ("OtherProperties.contact_check", "false", "true", True, True, "changed", "False → True",
     None, None),
    ("Phones", '[{"PhoneNumber":"(11) 3842-6673","TypeId":1,"CountryId":76}]',
     '[{"PhoneNumber":"(11) 4380-7749","TypeId":1,"CountryId":76}]', True, True, "list",
     "Phones: (11) 3842-6673 → (11) 4380-7749", None, None),
    ("Tags", "[290]", "[287]", True, True, "tags", "+287 −290", "[287]", "[290]"),
    ("LegalName", '"Ploomes"', '"Ploomes Sistemas Empresariais"', True, True, "changed",
     "'Ploomes' → 'Ploomes Sistemas Empresariais'", None, None),
]


# --- a deal's life: create → update → update → win ---------------------------------------


def deal_life() -> list[tuple[datetime, dict]]:
    created = {"Id": DEAL_ID, "Title": "Implantação São Jorge", "StatusId": 1, "StageId": 10,
               "Amount": 1000.0, "OwnerId": 7, "LastUpdateDate": "2026-03-02T09:00:00"}
    staged = dict(created, StageId=11, LastUpdateDate="2026-03-02T09:01:00")
    priced = dict(staged, Amount=1500.0, OtherProperties={"deal_plan": "Plano Pro"},
                  LastUpdateDate="2026-03-02T09:02:00")
    won = dict(priced, StatusId=2, LastUpdateDate="2026-03-02T09:03:00")

    def body(action, old, new, user=7):
        return {"Action": action, "Entity": "Deals", "AccountId": 1, "ActionUserId": user,
                "WebhookId": 55, "WebhookCreatorId": 7, "SecondaryEntityId": None,
                "Old": copy.deepcopy(old), "New": copy.deepcopy(new)}

    return [
        (T0, body("Create", None, created)),
        (T0 + timedelta(minutes=1), body("Update", created, staged)),
        (T0 + timedelta(minutes=2), body("Update", staged, priced, user=8)),
        (T0 + timedelta(minutes=3), body("Win", priced, won)),
    ]


@pytest.fixture
def deal(tmp_path):
    return seed(tmp_path, deal_life())


# --- the seed payload ----------------------------------------------------------------------


def test_seed_payload_history_and_detail(tmp_path):
    settings = seed(tmp_path, [(T0, contact_update())])
    history = run(settings, qrecords.record_history, "Contacts", CONTACT_ID)
    assert rows(history, CHANGE_COLS) == SEED_CHANGES
    assert set(history["event_id"]) == {1}
    assert history["received_at"].iloc[0] == pd.Timestamp(T0)
    assert str(history["received_at"].dt.tz) == "UTC"
    assert list(history["user_name"]) == ["116"] * 4  # no users table: the raw id as text
    assert list(history["field_label"]) == [r[0] for r in SEED_CHANGES]

    detail = run(settings, qevents.event_detail, 1)
    assert detail.event["action"] == "Update" and detail.event["entity"] == "Contacts"
    assert detail.event["record_id"] == CONTACT_ID and detail.event["user_name"] == "116"
    assert detail.event["title"] == "Ploomes Sistemas Empresariais"
    assert detail.event["received_at"] == T0 and detail.event["is_demo"] is True
    assert rows(detail.changes, ["field", "before", "after", "added_items", "removed_items"]) == [
        ("OtherProperties.contact_check", "false", "true", [], []),
        ("Phones", '[{"PhoneNumber":"(11) 3842-6673","TypeId":1,"CountryId":76}]',
         '[{"PhoneNumber":"(11) 4380-7749","TypeId":1,"CountryId":76}]',
         [{"PhoneNumber": "(11) 4380-7749", "TypeId": 1, "CountryId": 76}],
         [{"PhoneNumber": "(11) 3842-6673", "TypeId": 1, "CountryId": 76}]),
        ("Tags", "[290]", "[287]", [287], [290]),
        ("LegalName", "Ploomes", "Ploomes Sistemas Empresariais", [], []),
    ]
    assert detail.duplicates.empty and detail.gaps.empty
    assert detail.payload == contact_update()
    assert run(settings, qevents.event_detail, 99) is None

    snap = run(settings, qrecords.state_at, "Contacts", CONTACT_ID)
    assert snap.state == {
        "OtherProperties": {"contact_check": True},
        "Phones": [{"PhoneNumber": "(11) 4380-7749", "TypeId": 1, "CountryId": 76}],
        "Tags": [{"TagId": 287}], "Id": CONTACT_ID,
        "LegalName": "Ploomes Sistemas Empresariais"}
    assert (snap.event_id, snap.action, snap.deleted, snap.events_folded) == (1, "Update",
                                                                               False, 1)


def test_both_other_properties_forms_give_the_same_rows(tmp_path):
    listed = contact_update()
    listed["Old"]["OtherProperties"] = [{"FieldKey": "contact_check", "BoolValue": False}]
    listed["New"]["OtherProperties"] = [{"FieldKey": "contact_check", "BoolValue": True}]
    as_object = seed(tmp_path, [(T0, contact_update())], "object")
    as_list = seed(tmp_path, [(T0, listed)], "list")
    columns = CHANGE_COLS + ["event_id", "received_at", "user_name", "field_label"]
    assert rows(run(as_list, qrecords.record_history, "Contacts", CONTACT_ID), columns) == rows(
        run(as_object, qrecords.record_history, "Contacts", CONTACT_ID), columns)
    assert run(as_list, qrecords.state_at, "Contacts", CONTACT_ID).state == run(
        as_object, qrecords.state_at, "Contacts", CONTACT_ID).state
    assert len(run(as_list, qrecords.field_changes_of, "OtherProperties.contact_check",
                   new_value=True)) == 1


# --- create → update → update → win ---------------------------------------------------------


def test_deal_life_history(deal):
    oldest = run(deal, qrecords.record_history, "Deals", DEAL_ID, newest_first=False)
    assert rows(oldest, ["event_id", "action", "field", "old_value", "new_value", "old_known",
                         "kind"]) == [
        (1, "Create", "Title", None, '"Implantação São Jorge"', False, "set"),
        (1, "Create", "StatusId", None, "1", False, "set"),
        (1, "Create", "StageId", None, "10", False, "set"),
        (1, "Create", "Amount", None, "1000.0", False, "set"),
        (1, "Create", "OwnerId", None, "7", False, "set"),
        (2, "Update", "StageId", "10", "11", True, "changed"),
        (3, "Update", "Amount", "1000.0", "1500.0", True, "changed"),
        (3, "Update", "OtherProperties.deal_plan", None, '"Plano Pro"', False, "changed"),
        (4, "Win", "StatusId", "1", "2", True, "changed"),
    ]
    newest = run(deal, qrecords.record_history, "Deals", DEAL_ID)
    assert list(newest["event_id"]) == [4, 3, 3, 2, 1, 1, 1, 1, 1]
    with_bookkeeping = run(deal, qrecords.record_history, "Deals", DEAL_ID, newest_first=False,
                           include_bookkeeping=True)
    assert list(with_bookkeeping[with_bookkeeping["bookkeeping"]]["event_id"]) == [1, 2, 3, 4]

    events = run(deal, qrecords.record_events, "Deals", DEAL_ID)
    assert rows(events, ["event_id", "action", "action_user_id", "changes",
                         "changed_fields"]) == [
        (1, "Create", 7, 5, "Title, StatusId, StageId, Amount, OwnerId"),
        (2, "Update", 7, 1, "StageId"),
        (3, "Update", 8, 2, "Amount, OtherProperties.deal_plan"),
        (4, "Win", 7, 1, "StatusId"),
    ]
    assert run(deal, qrecords.continuity_gaps, "Deals", DEAL_ID).empty


def test_deal_state_at_each_moment(deal):
    life = deal_life()
    assert run(deal, qrecords.state_at, "Deals", DEAL_ID, T0 - timedelta(seconds=1)) == qrecords.RecordSnapshot(
        "Deals", DEAL_ID, None, None, None, None, False, 0)
    for index, (at, body) in enumerate(life):
        for moment in (at, at + timedelta(seconds=30)):
            snap = run(deal, qrecords.state_at, "Deals", DEAL_ID, moment)
            assert snap.state == body["New"]
            assert (snap.event_id, snap.action, snap.received_at) == (index + 1,
                                                                      body["Action"], at)
            assert snap.events_folded == index + 1
    by_event = run(deal, qrecords.state_at, "Deals", DEAL_ID, event_id=2)
    assert by_event.state["StageId"] == 11 and by_event.state["Amount"] == 1000.0
    assert "OtherProperties" not in by_event.state


def test_changes_by_field_user_and_value(deal):
    stage = run(deal, qrecords.field_changes_of, "StageId")
    assert rows(stage, ["event_id", "action", "old_value", "new_value", "user_name"]) == [
        (2, "Update", "10", "11", "7"), (1, "Create", None, "10", "7")]
    assert list(run(deal, qrecords.field_changes_of, "StageId", new_value=11)["event_id"]) == [2]
    assert run(deal, qrecords.field_changes_of, "StageId", new_value=12).empty
    assert list(run(deal, qrecords.field_changes_of, "StageId", entity="Contacts")["event_id"]) == []
    assert list(run(deal, qrecords.field_changes_of, "StageId",
                    start=T0 + timedelta(seconds=1))["event_id"]) == [2]

    mine = run(deal, qusers.user_changes, 8)
    assert rows(mine, ["event_id", "field"]) == [(3, "Amount"), (3, "OtherProperties.deal_plan")]
    assert run(deal, qusers.user_changes, 8, end=T0 + timedelta(minutes=2)).empty
    assert len(run(deal, qusers.user_changes, 7)) == 7
    assert len(run(deal, qusers.user_changes, 7, include_bookkeeping=True)) == 10

    # case-insensitive, accents kept, on the JSON text of either side
    assert rows(run(deal, qrecords.changes_matching, "SÃO JORGE"), ["event_id", "field"]) == [
        (1, "Title")]
    assert run(deal, qrecords.changes_matching, "sao jorge").empty
    assert rows(run(deal, qrecords.changes_matching, "1000"), ["event_id", "field"]) == [
        (3, "Amount"), (1, "Amount")]
    assert rows(run(deal, qrecords.changes_matching, "1000", side="new"), ["event_id"]) == [(1,)]
    assert run(deal, qrecords.changes_matching, "100%").empty  # wildcards are literal
    assert rows(run(deal, qrecords.changes_matching, "plano", field_path="OtherProperties.deal_plan"),
                ["event_id"]) == [(3,)]


def test_find_records(deal):
    found = run(deal, qrecords.find_records, entity="Deals", record_id=DEAL_ID)
    assert rows(found, ["entity", "record_id", "title", "last_event_id", "deleted"]) == [
        ("Deals", DEAL_ID, "Implantação São Jorge", 4, False)]
    assert list(run(deal, qrecords.find_records, text="são jorge")["record_id"]) == [DEAL_ID]
    assert list(run(deal, qrecords.find_records, text="IMPLANTAÇÃO", entity="Deals")["record_id"]) == [
        DEAL_ID]
    assert run(deal, qrecords.find_records, text="Implantacao").empty
    assert run(deal, qrecords.find_records, text="Plano Pro").empty  # not a name or title
    assert run(deal, qrecords.find_records, text="Jorge", entity="Contacts").empty


# --- duplicates and gaps ----------------------------------------------------------------------


def test_duplicate_pair_counted_once(tmp_path):
    body = contact_update()
    settings = seed(tmp_path, [(T0, body), (T0 + timedelta(seconds=5), body)])
    assert run(settings, qevents.count_events, qevents.EventFilter()) == 1
    assert run(settings, qevents.count_events, qevents.EventFilter(include_duplicates=True)) == 2
    assert list(run(settings, qrecords.record_history, "Contacts", CONTACT_ID)["event_id"]) == [1] * 4
    every = run(settings, qrecords.record_history, "Contacts", CONTACT_ID, include_duplicates=True)
    assert list(every["event_id"]) == [2] * 4 + [1] * 4
    assert [plain(v) for v in every["duplicate_of"]] == [1] * 4 + [None] * 4
    assert len(run(settings, qrecords.field_changes_of, "LegalName")) == 1
    assert len(run(settings, qrecords.field_changes_of, "LegalName", include_duplicates=True)) == 2
    assert run(settings, qrecords.state_at, "Contacts", CONTACT_ID).events_folded == 1

    copy_detail = run(settings, qevents.event_detail, 2)
    assert copy_detail.event["duplicate_of"] == 1
    assert rows(copy_detail.duplicates, ["event_id", "is_original"]) == [(1, True)]
    original = run(settings, qevents.event_detail, 1)
    assert rows(original.duplicates, ["event_id", "duplicate_of", "is_original"]) == [
        (2, 1, False)]


def test_gap_from_a_missing_delivery(tmp_path):
    life = deal_life()
    settings = seed(tmp_path, [life[0], life[1], life[3]])  # the price update never arrived
    gaps = run(settings, qrecords.continuity_gaps, "Deals", DEAL_ID)
    assert rows(gaps, ["event_id", "previous_event_id", "entity", "record_id", "field_labels",
                       "is_demo"]) == [(3, 2, "Deals", DEAL_ID, "Amount", True)]
    assert gaps["fields"].iloc[0] == [
        {"field": "Amount", "expected": 1000.0, "found": 1500.0, "label": "Amount"}]
    assert gaps["explanation"].iloc[0] == (
        "Old said Amount was 1500.0 but our last delivery said 1000.0: a change was missed "
        "between event 2 and event 3.")
    assert list(run(settings, qrecords.continuity_gaps)["event_id"]) == [3]
    assert run(settings, qrecords.continuity_gaps, "Deals", 1).empty
    assert run(settings, qrecords.continuity_gaps, include_demo=False).empty
    assert list(run(settings, qevents.event_detail, 2).gaps["event_id"]) == [3]
    assert list(run(settings, qevents.event_detail, 3).gaps["previous_event_id"]) == [2]
    assert run(settings, qevents.event_detail, 1).gaps.empty


# --- labels -------------------------------------------------------------------------------------


def test_labels_from_users_and_fields(tmp_path):
    settings = seed(tmp_path, [(T0, contact_update())])
    empty = run(settings, qrecords.field_changes_of, "OtherProperties.contact_check", new_value=True)
    assert rows(empty, ["user_name", "field_label"]) == [
        ("116", "OtherProperties.contact_check")]
    assert run(settings, qevents.filter_options)["users"] == [(116, "116")]

    label(settings, users=[(116, "Márcia Conceição")],
          fields=[("contact_check", 1, "Cliente verificado")])
    who = run(settings, qrecords.field_changes_of, "OtherProperties.contact_check", new_value=True)
    assert rows(who, ["event_id", "action_user_id", "user_name", "field_label", "new_value"]) == [
        (1, 116, "Márcia Conceição", "Cliente verificado", "true")]
    assert run(settings, qrecords.field_changes_of, "OtherProperties.contact_check",
               new_value=False).empty
    history = run(settings, qrecords.record_history, "Contacts", CONTACT_ID)
    assert list(history["field_label"]) == ["Cliente verificado", "Phones", "Tags", "LegalName"]
    assert run(settings, qevents.event_detail, 1).event["user_name"] == "Márcia Conceição"
    assert run(settings, qevents.filter_options) == {
        "entities": ["Contacts"], "actions": ["Update"], "users": [(116, "Márcia Conceição")]}
    assert run(settings, qevents.field_options) == [
        ("OtherProperties.contact_check", "Cliente verificado"), ("LegalName", "LegalName"),
        ("Phones", "Phones"), ("Tags", "Tags")]
    page = run(settings, qevents.events_page, qevents.EventFilter())
    assert page.rows["changed_fields"].iloc[0] == "Cliente verificado, Phones, Tags, LegalName"
    assert page.rows["user_name"].iloc[0] == "Márcia Conceição"


def test_gap_explanation_uses_field_labels():
    fields = [{"field": "OtherProperties.x", "expected": True, "found": False,
               "label": "Cliente verificado"},
              {"field": "StatusId", "expected": 2, "found": 1}]
    assert qrecords.explain_gap(fields, 4, 9) == (
        "Old said Cliente verificado was false but our last delivery said true; StatusId was 1 "
        "but our last delivery said 2: a change was missed between event 4 and event 9.")


# --- the Events page query ------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path):
    contact = contact_update()
    deliveries = [(T0 - timedelta(days=1), contact),
                  (T0 - timedelta(days=1) + timedelta(seconds=3), contact), *deal_life()]
    return seed(tmp_path, deliveries)


def test_events_page_filters_and_paging(mixed):
    def ids(**kwargs):
        page = run(mixed, qevents.events_page, qevents.EventFilter(**kwargs), 1, 50)
        assert page.total == len(page.rows)
        return list(page.rows["event_id"])

    assert ids() == [6, 5, 4, 3, 1]
    assert ids(include_duplicates=True) == [6, 5, 4, 3, 2, 1]
    assert ids(entity="Deals") == [6, 5, 4, 3]
    assert ids(action="Update") == [5, 4, 1]
    assert ids(entity="Deals", action="Update") == [5, 4]
    assert ids(action_user_id=8) == [5]
    assert ids(record_id=CONTACT_ID) == [1]
    assert ids(field="StageId") == [4, 3]
    assert ids(field="LastUpdateDate") == [6, 5, 4, 3]
    assert ids(field="LegalName") == [1]
    assert ids(field="LegalName", include_duplicates=True) == [2, 1]
    assert ids(field="StageId", text="são jorge") == [4, 3]
    assert ids(field="StageId", text="sistemas") == []
    assert ids(field="StageId", action="Update", action_user_id=7, record_id=DEAL_ID) == [4]
    assert ids(field="StageId", start=T0 + timedelta(seconds=1)) == [4]
    assert ids(field="StageId", include_demo=False) == []
    assert ids(text="sistemas empresariais") == [1]
    assert ids(text="SÃO JORGE") == [6, 5, 4, 3]
    assert ids(text="%") == []
    assert ids(start=T0) == [6, 5, 4, 3]
    assert ids(end=T0) == [1]
    assert ids(start=T0 + timedelta(minutes=1), end=T0 + timedelta(minutes=3)) == [5, 4]
    assert ids(include_demo=False) == []

    first = run(mixed, qevents.events_page, qevents.EventFilter(), 1, 2)
    assert (first.total, first.pages, first.page) == (5, 3, 1)
    assert list(first.rows["event_id"]) == [6, 5]
    last = run(mixed, qevents.events_page, qevents.EventFilter(), 3, 2)
    assert list(last.rows["event_id"]) == [1]
    clamped = run(mixed, qevents.events_page, qevents.EventFilter(), 99, 2)
    assert clamped.page == 3 and list(clamped.rows["event_id"]) == [1]
    assert list(run(mixed, qevents.list_events, qevents.EventFilter(), limit=2, offset=1)["event_id"]) == [
        5, 4]

    top = run(mixed, qevents.list_events, qevents.EventFilter(), limit=1)
    assert rows(top, ["event_id", "entity", "action", "record_id", "title", "user_name",
                      "changed_fields", "webhook_id", "duplicate_of", "is_demo"]) == [
        (6, "Deals", "Win", DEAL_ID, "Implantação São Jorge", "7", "StatusId", 55, None, True)]
    assert top["received_at"].iloc[0] == pd.Timestamp(T0 + timedelta(minutes=3))


# --- the 51 real Win deliveries ---------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    deliveries = real_deliveries()
    base = datetime(2024, 3, 18, 22, 0, tzinfo=UTC)
    settings = make_settings(tmp_path_factory.mktemp("real") / "data")
    load_demo(settings, [(base + timedelta(seconds=10 * i), body)
                         for i, body in enumerate(deliveries)])
    return settings


REAL_GAPS = [  # (event, previous event, record, fields Old contradicted)
    (32, 28, 406209818, "StatusId, LastStageId, LastOrderId"),
    (31, 29, 406210482,
     "OtherProperties.deal_3D4D7304-3FA7-443F-A5C9-7DCD48214720, StatusId, LastStageId"),
    (25, 24, 406194462, "StatusId, LastQuoteId, LastStageId, Amount, LastOrderId"),
    (23, 22, 405401505, "StatusId, LastQuoteId, LastStageId, Amount"),
    (21, 20, 406019119, "StatusId, LastStageId"),
    (20, 19, 406019119, "StatusId, LastStageId, OwnerId"),
    (17, 16, 406008051, "StatusId, LastStageId"),
    (16, 15, 406008051, "StatusId, LastQuoteId, LastStageId"),
]


def test_real_wins_show_only_real_changes(real):
    first = run(real, qevents.event_detail, 1)
    shown = first.changes[~first.changes["bookkeeping"]]
    assert rows(shown, ["field", "before", "after"]) == [
        ("StatusId", "1", "2"), ("LastStageId", "(empty)", "40114886"),
        ("FinishDate", "(empty)", "2024-03-18T19:32:40.31")]
    assert list(first.changes[first.changes["bookkeeping"]]["field"]) == ["LastUpdateDate"]
    assert first.event["title"] == "Negócio #1"
    counts = run(real, qevents.events_page, qevents.EventFilter(), 1, 100).rows["changed_fields"]
    assert counts.str.split(", ").map(len).max() == 5  # never the ~60 snapshot fields
    won = run(real, qrecords.field_changes_of, "StatusId", new_value=2)
    assert len(won) == 50


def test_real_same_change_to_two_subscriptions_counts_once(real):
    assert run(real, qevents.count_events, qevents.EventFilter()) == 50
    assert run(real, qevents.count_events, qevents.EventFilter(include_duplicates=True)) == 51
    second = run(real, qevents.event_detail, 3)
    assert (second.event["duplicate_of"], second.event["webhook_id"]) == (2, 40014791)
    assert rows(second.duplicates, ["event_id", "webhook_id", "is_original"]) == [
        (2, 40014790, True)]
    assert list(run(real, qrecords.record_events, "Deals", 405924850)["event_id"]) == [2]
    assert list(run(real, qrecords.record_events, "Deals", 405924850,
                    include_duplicates=True)["event_id"]) == [2, 3]


def test_real_won_reopened_and_won_again_is_a_gap(real):
    gaps = run(real, qrecords.continuity_gaps)
    assert rows(gaps, ["event_id", "previous_event_id", "record_id", "field_labels"]) == REAL_GAPS
    mine = run(real, qrecords.continuity_gaps, "Deals", 406008051)
    assert mine["explanation"].iloc[-1] == (
        "Old said StatusId was 1 but our last delivery said 2; LastQuoteId was 402954823 but "
        "our last delivery said 402945475; LastStageId was null but our last delivery said "
        "40054572: a change was missed between event 15 and event 16.")
    events = run(real, qrecords.record_events, "Deals", 406008051)
    assert rows(events, ["event_id", "action", "changed_fields"]) == [
        (15, "Win", "StatusId, LastStageId, FinishDate, LastOrderId"),
        (16, "Win", "StatusId, LastStageId, FinishDate, LastOrderId"),
        (17, "Win", "StatusId, WonQuoteId, LastStageId, FinishDate, LastOrderId"),
    ]
    assert run(real, qrecords.state_at, "Deals", 406008051, event_id=16).state["StatusId"] == 2
    found = run(real, qrecords.find_records, text="NEGÓCIO #2", limit=3)  # most recent first
    assert rows(found, ["record_id", "title"]) == [
        (406469273, "Negócio #22"), (406466323, "Negócio #29"), (406466274, "Negócio #28")]
    assert len(run(real, qrecords.find_records, text="negócio #2")) == 14  # #2 and #20–#29
    assert run(real, qrecords.find_records, text="negocio #2").empty


# --- small results are built without DuckDB's pandas conversion: same frames -------------


def _frame_by_pandas(con, sql, params):
    return qbase._normalized(con.execute(sql, params).df())


@pytest.mark.parametrize("zone", ["UTC", "America/Sao_Paulo"])
def test_small_frames_match_duckdbs_conversion(zone):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET TimeZone = '{zone}'")
    con.execute("""CREATE TABLE t AS SELECT * FROM (VALUES
        (1::BIGINT, 2::INTEGER, true, 1.5::DOUBLE, 'ação ☕'::VARCHAR, '{"a": "é"}'::JSON,
         TIMESTAMPTZ '2026-03-02 12:00:00.123456+00', 3::BIGINT, false),
        (NULL, NULL, NULL, NULL, NULL, NULL, NULL, 4::BIGINT, true),
        ((-9223372036854775807 - 1)::BIGINT, (-2147483647 - 1)::INTEGER, false, 'nan'::DOUBLE, '',
         'null'::JSON, TIMESTAMPTZ '1970-01-01 00:00:00+00', 5::BIGINT, true)
        ) v(i, i4, b, d, s, j, ts, n, m)""")
    queries = [
        "SELECT * FROM t",  # NULLs in most columns: nullable dtypes
        "SELECT * FROM t WHERE i IS NOT NULL",  # none: plain numpy dtypes
        "SELECT * FROM t WHERE false",  # empty
        "SELECT n, m, s FROM t WHERE i IS NULL",  # only NULL text
        "SELECT n AS x, n + 1 AS y, ts FROM t ORDER BY n DESC",
        "SELECT i AS a, i AS a FROM t",  # a repeated name: DuckDB's conversion
        "SELECT DATE '2026-01-01' AS d, n FROM t",  # other types: DuckDB's conversion too
        "SELECT range AS r, 'x' AS s FROM range(6000)",  # big: DuckDB's too
        "SELECT 1::BIGINT AS a, 2::BIGINT AS A",  # renamed by DuckDB (A_1): DuckDB's too
        "SELECT TIMESTAMPTZ '10000-01-01 00:00:00+00' AS far",  # fetched as text: DuckDB's
    ]
    for sql in queries:
        pd.testing.assert_frame_equal(qbase._frame(con, sql, []), _frame_by_pandas(con, sql, []),
                                      check_exact=True, obj=sql)


def test_page_queries_give_the_same_frames_either_way(tmp_path, monkeypatch):
    settings = seed(tmp_path, [(T0 + timedelta(minutes=i), body)
                               for i, body in enumerate(real_deliveries())])
    with Store(settings).reader() as con:
        entity, record_id = con.execute(
            "SELECT entity, record_id FROM events ORDER BY id LIMIT 1").fetchall()[0]
        last = con.execute("SELECT max(id) FROM events").fetchall()[0][0]
    calls = [
        lambda con: qevents.events_page(con, qevents.EventFilter(), 1, 50).rows,
        lambda con: qevents.events_page(con, qevents.EventFilter(text="Win"), 1, 10).rows,
        lambda con: qrecords.record_events(con, entity, record_id),
        lambda con: qrecords.record_history(con, entity, record_id, include_bookkeeping=True),
        lambda con: qrecords.find_records(con, entity=entity),
        lambda con: qrecords.continuity_gaps(con),
        lambda con: qevents.event_detail(con, last).changes,
        lambda con: qevents.event_detail(con, last).duplicates,
    ]
    for i, call in enumerate(calls):
        ours = run(settings, call)
        monkeypatch.setattr(h, "_frame", _frame_by_pandas)
        theirs = run(settings, call)
        monkeypatch.undo()
        assert len(ours) > 0 or i in (5, 7)  # the real deliveries hold no gaps or copies
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
