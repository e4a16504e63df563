"""ploomes.queries.events: the Events page's filter, pages, event detail and export, on data
dirs seeded through the ingest path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from store_seeds import (
    CONTACT_ID,
    DEAL_ID,
    NOW,
    SP,
    T0,
    contact_update,
    deal_life,
    label,
    mixed_deliveries,
    rows,
    run,
    seed,
    seed_activity,
    seed_real_wins,
)

from ploomes.queries import events as qevents
from ploomes.queries.events import EventFilter


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return seed(tmp_path_factory.mktemp("mixed"), mixed_deliveries())


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return seed_real_wins(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module")
def activity(tmp_path_factory):
    return seed_activity(tmp_path_factory.mktemp("activity") / "data")


@pytest.fixture
def con(activity):
    with activity.reader() as connection:
        yield connection


# --- one event's detail ---------------------------------------------------------------------


def test_seed_payload_event_detail(tmp_path):
    settings = seed(tmp_path, [(T0, contact_update())])
    detail = run(settings, qevents.event_detail, 1)
    assert detail.event["action"] == "Update" and detail.event["entity"] == "Contacts"
    assert detail.event["record_id"] == CONTACT_ID and detail.event["user_name"] == "116"
    assert detail.event["title"] == "Ploomes Sistemas Empresariais"
    assert detail.event["received_at"] == T0 and detail.event["is_demo"] is True
    # built-in fields as Ploomes names them; ids no lookup names (tags here) stay ids
    assert rows(detail.changes, ["field", "field_label", "before", "after", "added_items",
                                 "removed_items"]) == [
        ("OtherProperties.contact_check", "OtherProperties.contact_check", "false", "true",
         [], []),
        ("Phones", "Telefones", '[{"PhoneNumber":"(11) 3842-6673","TypeId":1,"CountryId":76}]',
         '[{"PhoneNumber":"(11) 4380-7749","TypeId":1,"CountryId":76}]',
         ['{"PhoneNumber":"(11) 4380-7749","TypeId":1,"CountryId":76}'],
         ['{"PhoneNumber":"(11) 3842-6673","TypeId":1,"CountryId":76}']),
        ("Tags", "Marcadores", "290", "287", ["287"], ["290"]),
        ("LegalName", "Razão social", "Ploomes", "Ploomes Sistemas Empresariais", [], []),
    ]
    assert detail.duplicates.empty and detail.gaps.empty
    assert detail.payload == contact_update()
    assert run(settings, qevents.event_detail, 99) is None


def test_duplicate_pair_counted_once(tmp_path):
    body = contact_update()
    settings = seed(tmp_path, [(T0, body), (T0 + timedelta(seconds=5), body)])
    assert run(settings, qevents.count_events, EventFilter()) == 1
    assert run(settings, qevents.count_events, EventFilter(include_duplicates=True)) == 2
    copy_detail = run(settings, qevents.event_detail, 2)
    assert copy_detail.event["duplicate_of"] == 1
    assert rows(copy_detail.duplicates, ["event_id", "is_original"]) == [(1, True)]
    original = run(settings, qevents.event_detail, 1)
    assert rows(original.duplicates, ["event_id", "duplicate_of", "is_original"]) == [
        (2, 1, False)]


def test_a_gap_shows_on_both_events_around_it(tmp_path):
    life = deal_life()
    settings = seed(tmp_path, [life[0], life[1], life[3]])  # the price update never arrived
    assert list(run(settings, qevents.event_detail, 2).gaps["event_id"]) == [3]
    assert list(run(settings, qevents.event_detail, 3).gaps["previous_event_id"]) == [2]
    assert run(settings, qevents.event_detail, 1).gaps.empty


def test_labels_from_users_and_fields(tmp_path):
    settings = seed(tmp_path, [(T0, contact_update())])
    assert run(settings, qevents.filter_options)["users"] == [(116, "116")]
    label(settings, users=[(116, "Márcia Conceição")],
          fields=[("contact_check", 1, "Cliente verificado")])
    assert run(settings, qevents.event_detail, 1).event["user_name"] == "Márcia Conceição"
    assert run(settings, qevents.filter_options) == {
        "entities": ["Contacts"], "actions": ["Update"], "users": [(116, "Márcia Conceição")]}
    assert run(settings, qevents.field_options) == [
        ("OtherProperties.contact_check", "Cliente verificado"), ("Tags", "Marcadores"),
        ("LegalName", "Razão social"), ("Phones", "Telefones")]
    assert run(settings, qevents.field_options, "Deals") == []
    page = run(settings, qevents.events_page, EventFilter())
    assert page.rows["changed_fields"].iloc[0] == (
        "Cliente verificado, Telefones, Marcadores, Razão social")
    assert page.rows["user_name"].iloc[0] == "Márcia Conceição"


# --- the Events page ------------------------------------------------------------------------


def test_events_page_filters_and_paging(mixed):
    def ids(**kwargs):
        page = run(mixed, qevents.events_page, EventFilter(**kwargs), 1, 50)
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

    first = run(mixed, qevents.events_page, EventFilter(), 1, 2)
    assert (first.total, first.pages, first.page) == (5, 3, 1)
    assert list(first.rows["event_id"]) == [6, 5]
    last = run(mixed, qevents.events_page, EventFilter(), 3, 2)
    assert list(last.rows["event_id"]) == [1]
    clamped = run(mixed, qevents.events_page, EventFilter(), 99, 2)
    assert clamped.page == 3 and list(clamped.rows["event_id"]) == [1]
    assert list(run(mixed, qevents.list_events, EventFilter(), limit=2,
                    offset=1)["event_id"]) == [5, 4]

    top = run(mixed, qevents.list_events, EventFilter(), limit=1)
    assert rows(top, ["event_id", "entity", "action", "record_id", "title", "user_name",
                      "changed_fields", "webhook_id", "duplicate_of", "is_demo"]) == [
        (6, "Deals", "Win", DEAL_ID, "Implantação São Jorge", "7", "Situação", 55, None, True)]
    assert top["received_at"].iloc[0] == pd.Timestamp(T0 + timedelta(minutes=3))
    assert str(top["received_at"].dt.tz) == "UTC"


def test_a_field_filter_counts_what_its_page_lists(mixed):
    # with a field and no text the filter runs on field_changes alone: the same events
    for flt in (EventFilter(field="StageId"), EventFilter(field="LegalName", end=T0),
                EventFilter(field="LegalName", include_duplicates=True),
                EventFilter(field="Amount", entity="Deals", action_user_id=8)):
        page = run(mixed, qevents.events_page, flt, 1, 50)
        assert run(mixed, qevents.count_events, flt) == page.total == len(page.rows) > 0
        export = run(mixed, qevents.export_events, flt)
        assert export["id"].tolist() == page.rows["event_id"].tolist(), flt


# --- the 51 real Win deliveries ---------------------------------------------------------


def test_real_wins_show_only_real_changes(real):
    first = run(real, qevents.event_detail, 1)
    shown = first.changes[~first.changes["bookkeeping"]]
    assert rows(shown, ["field", "before", "after"]) == [
        ("StatusId", "Em aberto (1)", "Ganho (2)"), ("LastStageId", "(vazio)", "40114886"),
        ("FinishDate", "(vazio)", "2024-03-18T19:32:40.31")]
    assert list(first.changes[first.changes["bookkeeping"]]["field"]) == ["LastUpdateDate"]
    assert first.event["title"] == "Negócio #1"
    counts = run(real, qevents.events_page, EventFilter(), 1, 100).rows["changed_fields"]
    assert counts.str.split(", ").map(len).max() == 5  # never the ~60 snapshot fields


def test_real_same_change_to_two_subscriptions_counts_once(real):
    assert run(real, qevents.count_events, EventFilter()) == 50
    assert run(real, qevents.count_events, EventFilter(include_duplicates=True)) == 51
    second = run(real, qevents.event_detail, 3)
    assert (second.event["duplicate_of"], second.event["webhook_id"]) == (2, 40014791)
    assert rows(second.duplicates, ["event_id", "webhook_id", "is_original"]) == [
        (2, 40014790, True)]


# --- the export and the filter in the address ------------------------------------------


def test_export_default_order(con):
    # event ids are journal sequence numbers: the deliveries in time order, 7 the duplicate
    frame = qevents.export_events(con, EventFilter())
    assert frame["id"].tolist() == [6, 5, 4, 3, 2, 1]
    assert frame["is_demo"].all()
    assert list(frame.columns[:7]) == ["id", "received_at", "entity", "action", "record_id",
                                       "action_user_id", "user_name"]


def test_export_and_count_follow_the_events_filter(con):
    def ids(**kw):
        flt = EventFilter(**kw)
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
    assert qevents.export_events(con, EventFilter(), limit=2)["id"].tolist() == [6, 5]


def test_export_converts_times_and_adds_the_payload(con):
    frame = qevents.export_events(con, EventFilter(action_user_id=10),
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
    assert bad.problems == ("`from=yesterday` não é uma data (use AAAA-MM-DD)",
                            "`user=joão` não é um número")
    assert qevents.filter_from_params({}).filter == EventFilter()
