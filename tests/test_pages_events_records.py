"""The Events and Records pages, run with Streamlit's AppTest on a seeded data dir."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import hostile
import pytest
from conftest import ROOT, SHARED, make_settings
from hostile import HUGE, NAMES, REFLECTED, SHORT
from rendered import rendered, rendered_all
from streamlit.testing.v1 import AppTest

from ploomes.crm import directory
from ploomes.demo.load import load_demo
from ploomes.store import Store
from views.text import HEADER_LIMIT

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
DEAL_ID = 517000123
CONTACT_ID = 2630362
EVENTS = str(ROOT / "views" / "events.py")
RECORDS = str(ROOT / "views" / "records.py")
DASHBOARD = str(ROOT / "dashboard.py")
HOSTILE_USERS = [7001 + i for i in range(len(NAMES))]


def contact_update() -> dict:
    path = SHARED / "payloads" / "contact-update.json"
    if not path.exists():
        pytest.skip(f"seed payload not found at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def deliveries() -> list[tuple[datetime, dict]]:
    """Events 1 contact update, 2 its repeat, 3 deal create, 4 update, 5 win (gap: the
    price update between 4 and 5 was never delivered)."""
    created = {"Id": DEAL_ID, "Title": "Implantação São Jorge", "StatusId": 1, "StageId": 10,
               "Amount": 1000.0, "LastUpdateDate": "2026-03-02T09:00:00"}
    staged = dict(created, StageId=11, LastUpdateDate="2026-03-02T09:01:00")
    priced = dict(staged, Amount=1500.0, LastUpdateDate="2026-03-02T09:02:00")
    won = dict(priced, StatusId=2, LastUpdateDate="2026-03-02T09:03:00")

    def deal(action, old, new):
        return {"Action": action, "Entity": "Deals", "AccountId": 57, "ActionUserId": 7,
                "WebhookId": 55, "Old": copy.deepcopy(old), "New": copy.deepcopy(new)}

    contact = contact_update()
    return [
        (T0 - timedelta(days=1), contact),
        (T0 - timedelta(days=1) + timedelta(seconds=3), contact),
        (T0, deal("Create", None, created)),
        (T0 + timedelta(minutes=1), deal("Update", created, staged)),
        (T0 + timedelta(minutes=3), deal("Win", priced, won)),
    ]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("pages") / "data"
    load_demo(make_settings(data_dir), deliveries())
    return data_dir


@pytest.fixture
def data_dir(seeded, monkeypatch):
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(seeded))
    return seeded


def run_page(path: str, **params) -> AppTest:
    at = AppTest.from_file(path, default_timeout=30)
    for key, value in params.items():
        at.query_params[key] = str(value)
    at.run(timeout=30)
    assert not at.exception, at.exception
    return at


def run_users_page(user: int) -> AppTest:
    """Run the Users page as the dashboard routes it (it links to the Events page)."""
    at = AppTest.from_file(DASHBOARD, default_timeout=30)
    at.query_params["user"] = str(user)
    at.run(timeout=30)
    at.switch_page("views/users.py").run(timeout=30)
    assert not at.exception, at.exception
    return at


def frame(at: AppTest, column: str):
    """Return the first table on the page that has `column`."""
    for element in at.dataframe:
        if column in element.value.columns:
            return element.value
    raise AssertionError(f"no table with a {column!r} column")


def texts(elements) -> list[str]:
    return [e.value for e in elements]


# --- Events ----------------------------------------------------------------------------------


def test_events_table_and_counts(data_dir):
    at = run_page(EVENTS)
    table = frame(at, "changed fields")
    assert list(table["event"]) == [5, 4, 3, 1]
    assert list(table["action"]) == ["Ganho", "Alteração", "Criação", "Alteração"]
    assert list(table["entity"]) == ["Negócios"] * 3 + ["Clientes"]
    assert list(table["received"]) == ["02/03/2026 09:03:00", "02/03/2026 09:01:00",
                                       "02/03/2026 09:00:00", "01/03/2026 09:00:00"]
    assert table["title"].iloc[3] == "Ploomes Sistemas Empresariais"
    assert list(table["marks"]) == [["demo"]] * 4
    assert any("Eventos 1–4 de 4 (página 1 de 1)" in c for c in texts(at.caption))


def test_events_filters_narrow_the_table(data_dir):
    at = run_page(EVENTS)
    assert at.toggle(key="f_demo").value is True  # demo events shown unless asked
    at.selectbox(key="f_entity").set_value("Deals").run()
    assert list(frame(at, "changed fields")["event"]) == [5, 4, 3]
    at.selectbox(key="f_action").set_value("Update").run()
    assert list(frame(at, "changed fields")["event"]) == [4]
    at.selectbox(key="f_entity").set_value(None).run()
    assert list(frame(at, "changed fields")["event"]) == [4, 1]
    at.selectbox(key="f_action").set_value(None)
    at.text_input(key="f_text").input("sistemas EMPRESARIAIS").run()
    assert list(frame(at, "changed fields")["event"]) == [1]
    at.text_input(key="f_text").input("")
    at.toggle(key="f_dups").set_value(True).run()
    assert list(frame(at, "changed fields")["event"]) == [5, 4, 3, 2, 1]
    at.selectbox(key="f_field").set_value("StageId").run()
    assert list(frame(at, "changed fields")["event"]) == [4, 3]
    at.selectbox(key="f_field").set_value(None)
    at.text_input(key="f_record").input(str(CONTACT_ID)).run()
    assert list(frame(at, "changed fields")["event"]) == [2, 1]
    at.text_input(key="f_record").input("abc").run()
    assert "O código do registro deve ser um número inteiro" in at.error[0].value
    at.text_input(key="f_record").input("").run()
    at.date_input(key="f_from").set_value(datetime(2026, 3, 2).date()).run()
    assert list(frame(at, "changed fields")["event"]) == [5, 4, 3]
    at.toggle(key="f_demo").set_value(False).run()
    assert not at.exception
    assert "Nenhum evento atende a estes filtros" in at.info[0].value


def test_events_filters_come_from_the_link(data_dir):
    """The Users page links to /events?user=<id>: the filters start from the link."""
    at = run_page(EVENTS, user=116)
    assert list(frame(at, "changed fields")["event"]) == [1]
    at = run_page(EVENTS, entity="Deals", action="Update", **{"from": "2026-03-02"})
    assert list(frame(at, "changed fields")["event"]) == [4]
    assert at.date_input(key="f_from").value == datetime(2026, 3, 2).date()
    at = run_page(EVENTS, user=999, record="abc")
    assert list(frame(at, "changed fields")["event"]) == [5, 4, 3, 1]  # nothing applied
    warnings = rendered_all(at.warning)
    assert "999" in warnings and "record=abc" in warnings
    at = run_page(EVENTS, field="LastUpdateDate")  # bookkeeping: not offered as a filter
    assert list(frame(at, "changed fields")["event"]) == [5, 4, 3, 1]
    assert "O campo “LastUpdateDate” não é oferecido como filtro" in rendered_all(at.warning)


def test_a_link_setting_the_demo_toggle_raises_no_streamlit_warning(data_dir):
    """`?demo=0` sets the toggle through session state: the widget must not also pass
    a default, or Streamlit logs a warning on every run."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("streamlit.elements.lib.policies")  # does not propagate
    logger.addHandler(handler)
    try:
        at = run_page(EVENTS, demo=0)
    finally:
        logger.removeHandler(handler)
    assert at.toggle(key="f_demo").value is False
    assert not [r.getMessage() for r in records if "f_demo" in r.getMessage()]


def test_event_detail_of_the_seed_payload_from_the_url(data_dir):
    at = run_page(EVENTS, event=1)
    assert "Evento nº 1" in texts(at.header)
    who = at.markdown[0].value
    assert "**Quem:** 116" in who and "**Quando:** 01/03/2026 09:00:00" in who
    assert "Alteração de Clientes (Update Contacts) 2630362 “Ploomes Sistemas Empresariais”" \
        in who
    # the help article's example names no subscription
    assert "**Inscrição:** não informado na entrega, conta 57" in who
    diff = frame(at, "before")
    # fields named as Ploomes shows them, the API's name beside; no "None" anywhere
    assert diff.to_dict("records") == [
        {"field": "OtherProperties.contact_check", "before": "false", "after": "true",
         "added": "", "removed": "", "API name": "OtherProperties.contact_check"},
        {"field": "Telefones",
         "before": '[{"PhoneNumber":"(11) 3842-6673","TypeId":1,"CountryId":76}]',
         "after": '[{"PhoneNumber":"(11) 4380-7749","TypeId":1,"CountryId":76}]',
         "added": '{"PhoneNumber":"(11) 4380-7749","TypeId":1,"CountryId":76}',
         "removed": '{"PhoneNumber":"(11) 3842-6673","TypeId":1,"CountryId":76}',
         "API name": "Phones"},
        {"field": "Marcadores", "before": "290", "after": "287", "added": "287",
         "removed": "290", "API name": "Tags"},
        {"field": "Razão social", "before": "Ploomes", "after": "Ploomes Sistemas Empresariais",
         "added": "", "removed": "", "API name": "LegalName"},
    ]
    assert "A mesma alteração chegou mais 1 vez" in at.info[1].value
    assert list(frame(at, "webhook")["event"]) == [2]
    assert json.loads(at.json[0].value) == contact_update()
    assert any("Evento de demonstração" in i for i in texts(at.info))


def test_event_repeat_gap_and_bookkeeping(data_dir):
    at = run_page(EVENTS, event=2)
    assert "Esta entrega repete o evento nº 1" in at.warning[0].value

    at = run_page(EVENTS, event=5)
    [gap] = [rendered(w.value) for w in at.warning]
    assert all(part in gap for part in ("Valor", "1500.0", "1000.0", " 4 ", " 5"))
    diff = frame(at, "before")
    assert diff.to_dict("records") == [{"field": "Situação", "before": "Em aberto (1)",
                                        "after": "Ganho (2)", "API name": "StatusId"}]
    assert "1 campo de controle oculto." in texts(at.caption)
    at.toggle(key="show_bookkeeping").set_value(True).run()
    diff = frame(at, "before")
    assert list(diff["API name"]) == ["StatusId", "LastUpdateDate"]
    assert list(diff["bookkeeping"]) == [False, True]

    at = run_page(EVENTS, event=3)  # a creation: what each field was set to, nothing else
    diff = frame(at, "value")
    assert list(diff.columns) == ["field", "value", "API name"]
    assert list(diff["value"]) == ["Implantação São Jorge", "Em aberto (1)", "10",
                                   "R$\xa01.000,00"]  # in reais, as Brazil writes it
    assert list(diff["field"]) == ["Título", "Situação", "Estágio", "Valor"]


def test_event_selection_goes_to_the_url(data_dir):
    # picking a row is checked in a real browser (tests/test_browser.py); by id here
    at = run_page(EVENTS)
    at.number_input(key="open_event").set_value(4).run()
    assert not at.exception
    assert at.query_params["event"] == ["4"] or at.query_params["event"] == "4"
    assert "Evento nº 4" in texts(at.header)
    at.number_input(key="open_event").set_value(1).run()
    assert "Evento nº 1" in texts(at.header)


def test_event_bad_links(data_dir):
    for bad in ("abc", "²", "9" * 30):  # "²".isdigit() is true, int("²") fails
        at = run_page(EVENTS, event=bad)
        assert "não é o código de um evento" in at.error[0].value
    at = run_page(EVENTS, event=999)
    assert "Não há evento nº 999" in at.warning[0].value


def test_events_show_user_and_field_names(tmp_path, monkeypatch):
    data = tmp_path / "labelled"
    settings = make_settings(data)
    load_demo(settings, [(T0, contact_update())])
    with Store(settings).writer() as con:
        con.execute("INSERT INTO users (id, name, email, suspended, synced_at) "
                    "VALUES (116, 'Márcia Conceição', NULL, false, NULL)")
        con.execute("INSERT INTO fields (key, entity_id, name, type_id, synced_at) "
                    "VALUES ('contact_check', 1, 'Cliente verificado', "
                    "10, NULL)")
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(data))
    at = run_page(EVENTS, event=1)
    assert "**Quem:** Márcia Conceição (116)" in at.markdown[0].value
    assert frame(at, "before")["field"].iloc[0] == "Cliente verificado"
    assert frame(at, "changed fields")["user"].iloc[0] == "Márcia Conceição"


# --- Records ---------------------------------------------------------------------------------


def test_record_page_shows_the_gap_and_timeline(data_dir):
    at = run_page(RECORDS, entity="Deals", record=DEAL_ID)
    assert f"Negócios {DEAL_ID} — Implantação São Jorge" in texts(at.header)
    [gap] = [rendered(w.value) for w in at.warning]
    assert all(part in gap for part in ("Valor", "1500.0", "1000.0", " 4 ", " 5"))
    timeline = frame(at, "changed fields")
    assert list(timeline["event"]) == [3, 4, 5]
    assert list(timeline["action"]) == ["Criação", "Alteração", "Ganho"]
    assert list(timeline["changed fields"]) == ["Título, Situação, Estágio, Valor", "Estágio",
                                                "Situação"]
    changes = frame(at, "API name")  # newest first, ids named, no "None" as text
    assert [tuple(r) for r in changes[["field", "before", "after"]].to_numpy()[:2]] == [
        ("Situação", "Em aberto (1)", "Ganho (2)"), ("Estágio", "10", "11")]
    assert "None" not in repr(changes.to_dict())
    state = json.loads(at.json[0].value)
    assert (state["StatusId"], state["Amount"], state["StageId"]) == (2, 1500.0, 11)
    assert any("nº 5 (Ganho" in c for c in texts(at.caption))


def test_record_state_at_a_chosen_moment(data_dir):
    at = run_page(RECORDS, entity="Deals", record=DEAL_ID)
    at.select_slider(key="r_moment").set_value(4).run()
    assert not at.exception
    state = json.loads(at.json[0].value)
    assert (state["StatusId"], state["Amount"], state["StageId"]) == (1, 1000.0, 11)
    assert any("nº 4 (Alteração" in c for c in texts(at.caption))


def test_record_search_by_name_and_no_gap(data_dir):
    at = run_page(RECORDS)
    assert "Digite o código de um registro" in at.info[0].value
    at.selectbox(key="r_entity").set_value("Contacts")
    at.text_input(key="r_text").input("SISTEMAS").run()
    assert not at.exception
    assert f"Clientes {CONTACT_ID} — Ploomes Sistemas Empresariais" in texts(at.header)
    assert "Nenhuma lacuna de continuidade" in at.success[0].value
    assert list(frame(at, "changed fields")["event"]) == [1]
    assert at.query_params["record"] in (str(CONTACT_ID), [str(CONTACT_ID)])
    at.text_input(key="r_text").input("nobody here").run()
    assert "Clientes" in at.warning[0].value and "“nobody here”" in at.warning[0].value


def test_record_unknown_and_bad_ids(data_dir):
    at = run_page(RECORDS, entity="Deals", record=1)
    assert "Nenhum evento de Negócios 1 está gravado" in at.warning[0].value
    for bad in ("x1", "²", "9" * 30):
        at = run_page(RECORDS, entity="Deals", record=bad)
        assert "O código do registro deve ser um número inteiro" in at.error[0].value


# --- Text from Ploomes and from links is shown as text ---------------------------------------
# Each value is Markdown (a link and an image, bold, LaTeX, colour, HTML) or 100 KB long;
# AppTest gives the Markdown source of what a page shows: the value must not be in it as
# it is, and what it renders to (escapes resolved) must be the value, whole or cut.
# tests/test_injection_browser.py checks the same in a real browser.


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    settings = make_settings(data_dir)
    bodies = hostile.deliveries(HOSTILE_USERS)
    load_demo(settings, [(T0 + timedelta(minutes=i), body) for i, body in enumerate(bodies)])
    with Store(settings).writer() as con:  # what a sync from the Ploomes API stores
        directory.upsert_directory(con, hostile.users(HOSTILE_USERS),
                                   [hostile.custom_field()], T0)
    return data_dir


@pytest.fixture
def hostile_data(hostile_dir, monkeypatch):
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(hostile_dir))
    return hostile_dir


def update_event(name: str) -> int:
    """Return the event id of the update of the record named `name` (load order)."""
    return 2 * NAMES.index(name) + 2


def as_json(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def shown_as_text(markdown: str, value: str) -> None:
    """Assert the Markdown shows `value` as its text, not as Markdown."""
    assert value not in markdown
    assert value in rendered(markdown)


def test_names_from_ploomes_are_shown_as_text(hostile_data):
    """Record names, actions, entities, user and field names (problem 2)."""
    for name in SHORT:
        at = run_page(EVENTS, event=update_event(name))
        what = at.markdown[0].value
        user = HOSTILE_USERS[NAMES.index(name)]
        for value in (f"“{name}”", f"{name} de Clientes ({name} Contacts)",  # title, action
                      f"{name} ({user})"):  # and the user who made it
            shown_as_text(what, value)
        [gap] = texts(at.warning)  # it quotes the name (as JSON) and the field's name
        shown_as_text(gap, f"Nome era {as_json(f'Antes: {name}')}, mas a nossa última entrega "
                           f"dizia {as_json(name)}")
        shown_as_text(gap, f"{hostile.LINK} era true")

        at = run_page(RECORDS, entity="Contacts", record=hostile.record_id(name))
        [header] = texts(at.header)
        shown_as_text(header, f"Clientes {hostile.record_id(name)} — {name}")
        assert len(at.warning) == 1
        shown_as_text(at.warning[0].value, f"Nome era {as_json(f'Antes: {name}')}")
        state = [c for c in texts(at.caption) if "Como se sabia logo após" in c]
        shown_as_text(state[0], f"({name}, ")

        at = run_users_page(user)
        [subheader] = texts(at.subheader)
        shown_as_text(subheader, f"{name} ({user})")
        [link] = at.get("page_link")
        shown_as_text(link.value, f"Ver os eventos de {name} ({user})")

    at = run_page(EVENTS, event=2 * len(NAMES) + 1)  # the record of an entity named LINK
    shown_as_text(at.markdown[0].value,
                  f"Criação de {hostile.LINK} (Create {hostile.LINK}) {hostile.ENTITY_RECORD}")
    at = run_page(RECORDS, entity=hostile.LINK, record=hostile.ENTITY_RECORD)
    shown_as_text(texts(at.header)[0], f"{hostile.LINK} {hostile.ENTITY_RECORD} — {hostile.RED}")


def test_values_from_the_link_are_shown_as_text(hostile_data):
    """`?event=`, `?entity=`, `?from=` (inside backticks), `/records?entity=`
    (problem 3; the export's filters are the Events page's since issue 18)."""
    cases = [(EVENTS, {"event": REFLECTED}, "error"),
             (EVENTS, {"entity": REFLECTED}, "warning"),
             (EVENTS, {"from": REFLECTED}, "warning"),
             (EVENTS, {"to": REFLECTED}, "warning"),
             (EVENTS, {"user": REFLECTED}, "warning"),
             (EVENTS, {"field": REFLECTED}, "warning"),
             (RECORDS, {"entity": REFLECTED, "record": 1}, "warning")]
    for page, params, kind in cases:
        at = run_page(page, **params)
        messages = texts(getattr(at, kind))
        assert [m for m in messages if REFLECTED in rendered(m)], (params, messages)
        for message in messages:
            assert REFLECTED not in message, (params, message)


def test_a_long_name_is_cut_in_headers_and_whole_in_the_detail(hostile_data):
    """A 100 KB Name (problem 13)."""
    record = hostile.record_id(HUGE)
    at = run_page(RECORDS, entity="Contacts", record=record)
    [header] = [rendered(h) for h in texts(at.header)]
    prefix = f"Clientes {record} — "
    assert header.startswith(prefix + HUGE[:HEADER_LIMIT - 1].rstrip())
    assert header.endswith("…") and len(header) == len(prefix) + HEADER_LIMIT
    assert all(len(w) < 2000 for w in texts(at.warning))  # the gap quotes it cut too
    assert json.loads(at.json[0].value)["Name"] == HUGE  # the state shows it whole

    at = run_page(EVENTS, event=update_event(HUGE))
    what = rendered(at.markdown[0].value)
    assert f"“{HUGE[:HEADER_LIMIT - 1].rstrip()}…”" in what and len(what) < 1000
    assert all(len(w) < 2000 for w in texts(at.warning))
    diff = frame(at, "before")
    assert diff.set_index("API name").loc["Name", "after"] == HUGE  # the field changes: whole

    at = run_users_page(HOSTILE_USERS[NAMES.index(HUGE)])
    [subheader] = [rendered(s) for s in texts(at.subheader)]
    assert subheader.startswith(HUGE[:50]) and len(subheader) < HEADER_LIMIT + 30
