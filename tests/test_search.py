"""Searches that must stay fast on large stores: record names (schema v3) and the
newest-first payload search of the Events page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conftest import make_settings

from ploomes.demo.load import load_demo
from ploomes.model.state import record_names
from ploomes.queries import events as qevents
from ploomes.queries import records as qrecords
from ploomes.store import Store
from ploomes.store.schema import FILL_V3

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def deal(i: int, title: str) -> dict:
    return {"Action": "Create", "Entity": "Deals", "SecondaryEntityId": None, "AccountId": 31,
            "ActionUserId": 7, "WebhookId": 5110, "WebhookCreatorId": 10, "Old": None,
            "New": {"Id": 1000 + i, "Title": title, "StageId": i}}


def seeded(tmp_path, deliveries):
    settings = make_settings(tmp_path / "data")
    load_demo(settings, deliveries)
    return settings


def test_record_names_follow_the_sql_title():
    assert record_names({"Name": "Ana", "LegalName": "Ana Ltda", "ContactName": "x"}) == (
        "Ana", "Ana\nAna Ltda")
    assert record_names({"Title": "Plano", "Name": None}) == ("Plano", "Plano")
    assert record_names({"ContactName": "Rui"}) == ("Rui", None)
    assert record_names({"Name": 42}) == ("42", "42")
    assert record_names({}) == (None, None)


def test_migration_fill_gives_what_ingest_stored(tmp_path):
    contact = {"Action": "Create", "Entity": "Contacts", "SecondaryEntityId": None,
               "AccountId": 31, "ActionUserId": 7, "WebhookId": 5110, "WebhookCreatorId": 10,
               "Old": None, "New": {"Id": 5, "Name": "Padaria São Jorge", "LegalName": "",
                                    "ContactName": "Rui"}}
    settings = seeded(tmp_path, [(T0, contact), (T0 + timedelta(seconds=1), deal(1, "Açaí"))])
    query = "SELECT entity, record_id, title, names FROM record_state ORDER BY ALL"
    with Store(settings).writer() as con:
        stored = con.execute(query).fetchall()
        con.execute(FILL_V3)
        assert con.execute(query).fetchall() == stored
    assert stored == [("Contacts", 5, "Padaria São Jorge", "Padaria São Jorge\n"),
                      ("Deals", 1001, "Açaí", "Açaí")]
    with Store(settings).reader() as con:
        assert list(qrecords.find_records(con, text="SÃO JORGE")["record_id"]) == [5]
        assert list(qrecords.find_records(con, text="açaí", entity="Deals")["title"]) == ["Açaí"]
        assert qrecords.find_records(con, text="Rui").empty  # ContactName is a title, not a name
        assert qrecords.find_records(con, text="Padaria\nx").empty


def test_text_search_stops_once_the_page_is_full_and_says_so(tmp_path):
    # one match a day for ten days, newest last; the first window (6 h) holds one
    deliveries = [(T0 + timedelta(days=i), deal(i, f"Plano {i}")) for i in range(10)]
    settings = seeded(tmp_path, deliveries)
    with Store(settings).reader() as con:
        first = qevents.events_page(con, qevents.EventFilter(text="plano"), 1, 2)
        assert list(first.rows["title"]) == ["Plano 9", "Plano 8"]
        assert (first.exact, first.total, first.pages) == (False, 3, 2)
        assert first.searched_since is not None
        second = qevents.events_page(con, qevents.EventFilter(text="plano"), 2, 2)
        assert list(second.rows["title"]) == ["Plano 7", "Plano 6"]
        whole = qevents.events_page(con, qevents.EventFilter(text="plano"), 1, 50)
        assert (whole.exact, whole.total, len(whole.rows)) == (True, 10, 10)
        # out of time at once: it answers with the first window it read, as a lower bound
        hurried = qevents.events_page(con, qevents.EventFilter(text="plano"), 1, 50, text_seconds=0)
        assert not hurried.exact and list(hurried.rows["title"]) == ["Plano 9"]
        assert qevents.count_events(con, qevents.EventFilter(text="plano")) == 10


def test_change_search_reads_newest_first_and_says_how_far(tmp_path):
    # one matching change a week for ten weeks, newest last
    settings = seeded(tmp_path, [(T0 + timedelta(weeks=i), deal(i, f"Plano Açaí {i}"))
                                 for i in range(10)])
    with Store(settings).reader() as con:
        everything = qrecords.changes_matching(con, "açaí", field_path="Title", seconds=None)
        assert everything.attrs["complete"] and everything.attrs["searched_since"] is None
        assert list(everything["event_id"]) == list(range(10, 0, -1))  # newest first
        two = qrecords.changes_matching(con, "AÇAÍ", field_path="Title", limit=2, seconds=None)
        assert list(two["event_id"]) == [10, 9]
        assert not two.attrs["complete"]  # stopped once the page was full
        hurried = qrecords.changes_matching(con, "nada disso", seconds=0)  # one window, then stop
        assert hurried.empty and not hurried.attrs["complete"]
        assert hurried.attrs["searched_since"] > T0
