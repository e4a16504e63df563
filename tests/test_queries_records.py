"""ploomes.queries.records: a record's events, history and state, field changes across
records, record search and continuity gaps, on data dirs seeded through the ingest path."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest
from store_seeds import (
    CHANGE_COLS,
    CONTACT_ID,
    DEAL_ID,
    SEED_CHANGES,
    T0,
    contact_update,
    deal_life,
    label,
    plain,
    rows,
    run,
    seed,
    seed_real_wins,
)

from ploomes.queries import records as qrecords


@pytest.fixture
def deal(tmp_path):
    return seed(tmp_path, deal_life())


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return seed_real_wins(tmp_path_factory.mktemp("real"))


# --- the seed payload ----------------------------------------------------------------------


def test_seed_payload_history_and_state(tmp_path):
    settings = seed(tmp_path, [(T0, contact_update())])
    history = run(settings, qrecords.record_history, "Contacts", CONTACT_ID)
    assert rows(history, CHANGE_COLS) == SEED_CHANGES
    assert set(history["event_id"]) == {1}
    assert history["received_at"].iloc[0] == pd.Timestamp(T0)
    assert str(history["received_at"].dt.tz) == "UTC"
    assert list(history["user_name"]) == ["116"] * 4  # no users table: the raw id as text
    # built-in fields as Ploomes names them; a custom field without a name keeps its path
    assert list(history["field_label"]) == ["OtherProperties.contact_check", "Telefones",
                                            "Marcadores", "Razão social"]

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
    # SQL NULL text is None in the frame, not NaN
    assert oldest["old_value"].iloc[0] is None and oldest["added"].iloc[0] is None
    newest = run(deal, qrecords.record_history, "Deals", DEAL_ID)
    assert list(newest["event_id"]) == [4, 3, 3, 2, 1, 1, 1, 1, 1]
    with_bookkeeping = run(deal, qrecords.record_history, "Deals", DEAL_ID, newest_first=False,
                           include_bookkeeping=True)
    assert list(with_bookkeeping[with_bookkeeping["bookkeeping"]]["event_id"]) == [1, 2, 3, 4]

    events = run(deal, qrecords.record_events, "Deals", DEAL_ID)
    assert rows(events, ["event_id", "action", "action_user_id", "changes",
                         "changed_fields"]) == [
        (1, "Create", 7, 5, "Título, Situação, Estágio, Valor, Responsável"),
        (2, "Update", 7, 1, "Estágio"),
        (3, "Update", 8, 2, "Valor, OtherProperties.deal_plan"),
        (4, "Win", 7, 1, "Situação"),
    ]
    assert run(deal, qrecords.continuity_gaps, "Deals", DEAL_ID).empty


def test_deal_state_at_each_moment(deal):
    life = deal_life()
    before = run(deal, qrecords.state_at, "Deals", DEAL_ID, T0 - timedelta(seconds=1))
    assert before == qrecords.RecordSnapshot("Deals", DEAL_ID, None, None, None, None, False, 0)
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


def test_changes_by_field_and_value(deal):
    stage = run(deal, qrecords.field_changes_of, "StageId")
    assert rows(stage, ["event_id", "action", "old_value", "new_value", "user_name"]) == [
        (2, "Update", "10", "11", "7"), (1, "Create", None, "10", "7")]
    assert list(run(deal, qrecords.field_changes_of, "StageId", new_value=11)["event_id"]) == [2]
    assert run(deal, qrecords.field_changes_of, "StageId", new_value=12).empty
    assert list(run(deal, qrecords.field_changes_of, "StageId",
                    entity="Contacts")["event_id"]) == []
    assert list(run(deal, qrecords.field_changes_of, "StageId",
                    start=T0 + timedelta(seconds=1))["event_id"]) == [2]

    # case-insensitive, accents kept, on the JSON text of either side
    assert rows(run(deal, qrecords.changes_matching, "SÃO JORGE"), ["event_id", "field"]) == [
        (1, "Title")]
    assert run(deal, qrecords.changes_matching, "sao jorge").empty
    assert rows(run(deal, qrecords.changes_matching, "1000"), ["event_id", "field"]) == [
        (3, "Amount"), (1, "Amount")]
    assert rows(run(deal, qrecords.changes_matching, "1000", side="new"),
                ["event_id"]) == [(1,)]
    assert run(deal, qrecords.changes_matching, "100%").empty  # wildcards are literal
    assert rows(run(deal, qrecords.changes_matching, "plano",
                    field_path="OtherProperties.deal_plan"), ["event_id"]) == [(3,)]


def test_find_records(deal):
    found = run(deal, qrecords.find_records, entity="Deals", record_id=DEAL_ID)
    assert rows(found, ["entity", "record_id", "title", "last_event_id", "deleted"]) == [
        ("Deals", DEAL_ID, "Implantação São Jorge", 4, False)]
    assert list(run(deal, qrecords.find_records, text="são jorge")["record_id"]) == [DEAL_ID]
    assert list(run(deal, qrecords.find_records, text="IMPLANTAÇÃO",
                    entity="Deals")["record_id"]) == [DEAL_ID]
    assert run(deal, qrecords.find_records, text="Implantacao").empty
    assert run(deal, qrecords.find_records, text="Plano Pro").empty  # not a name or title
    assert run(deal, qrecords.find_records, text="Jorge", entity="Contacts").empty


# --- duplicates and gaps ----------------------------------------------------------------------


def test_duplicate_pair_counted_once(tmp_path):
    body = contact_update()
    settings = seed(tmp_path, [(T0, body), (T0 + timedelta(seconds=5), body)])
    history = run(settings, qrecords.record_history, "Contacts", CONTACT_ID)
    assert list(history["event_id"]) == [1] * 4
    every = run(settings, qrecords.record_history, "Contacts", CONTACT_ID,
                include_duplicates=True)
    assert list(every["event_id"]) == [2] * 4 + [1] * 4
    assert [plain(v) for v in every["duplicate_of"]] == [1] * 4 + [None] * 4
    assert len(run(settings, qrecords.field_changes_of, "LegalName")) == 1
    assert len(run(settings, qrecords.field_changes_of, "LegalName",
                   include_duplicates=True)) == 2
    assert run(settings, qrecords.state_at, "Contacts", CONTACT_ID).events_folded == 1


def test_gap_from_a_missing_delivery(tmp_path):
    life = deal_life()
    settings = seed(tmp_path, [life[0], life[1], life[3]])  # the price update never arrived
    gaps = run(settings, qrecords.continuity_gaps, "Deals", DEAL_ID)
    assert rows(gaps, ["event_id", "previous_event_id", "entity", "record_id", "field_labels",
                       "is_demo"]) == [(3, 2, "Deals", DEAL_ID, "Valor", True)]
    assert gaps["fields"].iloc[0] == [
        {"field": "Amount", "expected": 1000.0, "found": 1500.0, "label": "Valor"}]
    # the field by the name Ploomes shows, both values and both events
    explanation = gaps["explanation"].iloc[0]
    assert "Valor" in explanation and "Amount" not in explanation
    assert all(part in explanation for part in ("1500.0", "1000.0", " 2 ", " 3"))
    assert list(run(settings, qrecords.continuity_gaps)["event_id"]) == [3]
    assert run(settings, qrecords.continuity_gaps, "Deals", 1).empty
    assert run(settings, qrecords.continuity_gaps, include_demo=False).empty
    assert list(run(settings, qrecords.continuity_gaps, event_id=2)["event_id"]) == [3]
    assert list(run(settings, qrecords.continuity_gaps, start=T0 + timedelta(minutes=3),
                    end=T0 + timedelta(minutes=4))["event_id"]) == [3]
    assert run(settings, qrecords.continuity_gaps, end=T0 + timedelta(minutes=3)).empty


# --- labels -------------------------------------------------------------------------------------


def test_labels_from_users_and_fields(tmp_path):
    settings = seed(tmp_path, [(T0, contact_update())])
    empty = run(settings, qrecords.field_changes_of, "OtherProperties.contact_check",
                new_value=True)
    assert rows(empty, ["user_name", "field_label"]) == [
        ("116", "OtherProperties.contact_check")]

    label(settings, users=[(116, "Márcia Conceição")],
          fields=[("contact_check", 1, "Cliente verificado")])
    who = run(settings, qrecords.field_changes_of, "OtherProperties.contact_check",
              new_value=True)
    assert rows(who, ["event_id", "action_user_id", "user_name", "field_label", "new_value"]) == [
        (1, 116, "Márcia Conceição", "Cliente verificado", "true")]
    assert run(settings, qrecords.field_changes_of, "OtherProperties.contact_check",
               new_value=False).empty
    history = run(settings, qrecords.record_history, "Contacts", CONTACT_ID)
    assert list(history["field_label"]) == ["Cliente verificado", "Telefones", "Marcadores",
                                            "Razão social"]


def test_gap_explanation_uses_field_labels():
    fields = [{"field": "OtherProperties.x", "expected": True, "found": False,
               "label": "Cliente verificado"},
              {"field": "StatusId", "expected": 2, "found": 1}]
    assert qrecords.explain_gap(fields, 4, 9) == (
        "O Old dizia Cliente verificado era false, mas a nossa última entrega dizia true; "
        "StatusId era 1, mas a nossa última entrega dizia 2: uma alteração se perdeu entre o "
        "evento 4 e o evento 9.")


# --- the 51 real Win deliveries ---------------------------------------------------------


# (event, previous event, record, fields Old contradicted, as Ploomes names them)
REAL_GAPS = [
    (32, 28, 406209818, "Situação, Último estágio, LastOrderId"),
    (31, 29, 406210482,
     "OtherProperties.deal_3D4D7304-3FA7-443F-A5C9-7DCD48214720, Situação, Último estágio"),
    (25, 24, 406194462, "Situação, LastQuoteId, Último estágio, Valor, LastOrderId"),
    (23, 22, 405401505, "Situação, LastQuoteId, Último estágio, Valor"),
    (21, 20, 406019119, "Situação, Último estágio"),
    (20, 19, 406019119, "Situação, Último estágio, Responsável"),
    (17, 16, 406008051, "Situação, Último estágio"),
    (16, 15, 406008051, "Situação, LastQuoteId, Último estágio"),
]


def test_real_wins_change_the_status_once_each(real):
    won = run(real, qrecords.field_changes_of, "StatusId", new_value=2)
    assert len(won) == 50  # 51 deliveries, one of them the same change twice


def test_real_same_change_to_two_subscriptions_is_one_event_of_the_record(real):
    assert list(run(real, qrecords.record_events, "Deals", 405924850)["event_id"]) == [2]
    assert list(run(real, qrecords.record_events, "Deals", 405924850,
                    include_duplicates=True)["event_id"]) == [2, 3]


def test_real_won_reopened_and_won_again_is_a_gap(real):
    gaps = run(real, qrecords.continuity_gaps)
    assert rows(gaps, ["event_id", "previous_event_id", "record_id", "field_labels"]) == REAL_GAPS
    mine = run(real, qrecords.continuity_gaps, "Deals", 406008051)
    assert mine["explanation"].iloc[-1] == (
        "O Old dizia Situação era 1, mas a nossa última entrega dizia 2; LastQuoteId era "
        "402954823, mas a nossa última entrega dizia 402945475; Último estágio era null, mas a "
        "nossa última entrega dizia 40054572: uma alteração se perdeu entre o evento 15 e o "
        "evento 16.")
    events = run(real, qrecords.record_events, "Deals", 406008051)
    assert rows(events, ["event_id", "action", "changed_fields"]) == [
        (15, "Win", "Situação, Último estágio, Data de finalização, LastOrderId"),
        (16, "Win", "Situação, Último estágio, Data de finalização, LastOrderId"),
        (17, "Win", "Situação, WonQuoteId, Último estágio, Data de finalização, LastOrderId"),
    ]
    assert run(real, qrecords.state_at, "Deals", 406008051, event_id=16).state["StatusId"] == 2
    found = run(real, qrecords.find_records, text="NEGÓCIO #2", limit=3)  # most recent first
    assert rows(found, ["record_id", "title"]) == [
        (406469273, "Negócio #22"), (406466323, "Negócio #29"), (406466274, "Negócio #28")]
    assert len(run(real, qrecords.find_records, text="negócio #2")) == 14  # #2 and #20–#29
    assert run(real, qrecords.find_records, text="negocio #2").empty


def test_state_at_a_moment_before_any_event_of_an_unknown_record(deal):
    unknown = run(deal, qrecords.state_at, "Deals", 1, datetime(2030, 1, 1, tzinfo=T0.tzinfo))
    assert unknown == qrecords.RecordSnapshot("Deals", 1, None, None, None, None, False, 0)
    assert run(deal, qrecords.state_at, "Deals", 1).events_folded == 0
