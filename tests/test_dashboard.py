"""The dashboard, run in-process with Streamlit's AppTest on real data dirs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import ROOT, free_port, make_settings
from rendered import rendered
from streamlit.testing.v1 import AppTest

from ploomes.demo.load import load_demo
from ploomes.ingest.pipeline import Pipeline
from ploomes.intake.keys import stored_keys
from ploomes.queries.status import demo_count
from ploomes.store import SCHEMA_VERSION, Store
from views.common import format_bytes

DASHBOARD = ROOT / "dashboard.py"
PAGE_FILES = [p for p in ("views/overview.py", "views/events.py", "views/records.py",
                          "views/users.py", "views/webhooks.py", "views/status.py",
                          "views/audit.py")
              if (ROOT / p).is_file()]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty data dir the dashboard opens, and a receiver URL where nothing listens."""
    path = tmp_path / "data"
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(path))
    monkeypatch.setenv("PLOOMES_RECEIVER_URL", f"http://127.0.0.1:{free_port()}")
    return path


def body(entity, action, user, old, new):
    return {"Action": action, "Entity": entity, "SecondaryEntityId": None, "AccountId": 31,
            "ActionUserId": user, "WebhookId": 5110, "WebhookCreatorId": 10,
            "Old": old, "New": new}


@pytest.fixture
def seeded(data_dir):
    """Deliveries at times far from the 24 h / 7 d edges, plus one failed authentication."""
    now = datetime.now(UTC)
    deal = {"Id": 100, "Title": "Padaria", "StageId": 1}
    move = body("Deals", "Update", 10, deal, {"Id": 100, "StageId": 2})
    deliveries = [
        (now - timedelta(hours=2), body("Deals", "Create", 10, None, deal)),
        (now - timedelta(hours=1), move),
        (now - timedelta(hours=1) + timedelta(seconds=3), move),  # a repeated delivery
        (now - timedelta(days=3), body("Contacts", "Create", 20, None, {"Id": 7, "Name": "A"})),
        (now - timedelta(days=3, hours=-1),
         body("Contacts", "Update", 20, {"Id": 7, "Name": "A"}, {"Id": 7, "Name": "B"})),
        (now - timedelta(days=10), body("Deals", "Win", 30, {"Id": 101, "StatusId": 1},
                                        {"Id": 101, "StatusId": 2})),
    ]
    settings = make_settings(data_dir)
    load_demo(settings, deliveries)
    with Store(settings).writer() as con:
        Pipeline().apply(con, [], auth_failures=[(now - timedelta(hours=3), "10.0.0.9",
                                                  "wrong key")])
    return data_dir


def app() -> AppTest:
    return AppTest.from_file(str(DASHBOARD), default_timeout=30)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "code", "warning", "error", "info",
                                  "success", "title", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(rendered(p) for p in parts)


def test_first_run_key_demo_and_back(data_dir):
    at = app().run()
    assert not at.exception
    assert at.title[0].value == "Boas-vindas ao monitor de webhooks do Ploomes"
    shown = texts(at)
    assert f'python receiver.py --data-dir "{data_dir}"' in shown
    # no PLOOMES_CALLBACK_URL: no made-up address, but what to set and why
    assert not any("/ploomes/webhook" in c.value for c in at.code)
    assert any("PLOOMES_CALLBACK_URL" in w.value and "HTTPS" in w.value for w in at.warning)
    assert "Receptor inacessível" in shown
    assert "Há dados de demonstração" not in shown

    # no key yet: generate one, shown masked, revealed on request
    at.button(key="first_run_generate_key").click().run()
    assert not at.exception
    keys = stored_keys(make_settings(data_dir, validation_keys=()))
    assert len(keys) == 1
    shown = texts(at)
    assert "••••" + keys[0][-4:] in shown and keys[0] not in shown
    at.toggle(key="first_run_reveal").set_value(True).run()
    assert keys[0] in [c.value for c in at.code]

    # demo data: loaded from the button, then labelled on every page
    at.button(key="load_demo").click().run(timeout=60)
    assert not at.exception
    assert at.title[0].value == "Visão geral"
    with Store(make_settings(data_dir)).reader() as con:
        demo = demo_count(con)
    assert demo > 1000
    assert any("Há dados de demonstração — remova-os" in w.value
               and f"{demo:,}".replace(",", ".") in w.value for w in at.warning)
    shown = metrics(at)
    assert int(shown["Entregas (7 d)"].replace(".", "")) > 0
    assert int(shown["Usuários ativos (7 d)"]) >= 1
    at.switch_page("views/status.py").run()
    assert not at.exception
    assert any("Há dados de demonstração" in w.value for w in at.warning)

    # one action removes it and the first-run screen is back
    at.button(key="remove_demo").click().run()
    assert not at.exception
    at.switch_page("views/overview.py").run()
    assert not at.exception
    assert at.title[0].value == "Boas-vindas ao monitor de webhooks do Ploomes"
    assert not any("Há dados de demonstração" in w.value for w in at.warning)


def test_first_run_with_configured_url_and_key(data_dir, monkeypatch):
    monkeypatch.setenv("PLOOMES_CALLBACK_URL", "https://crm-hooks.example.com/ploomes/webhook")
    monkeypatch.setenv("PLOOMES_VALIDATION_KEYS", "env-key-0123456789-abcdefWXYZ")
    at = app().run()
    assert not at.exception
    codes = [c.value for c in at.code]
    assert "https://crm-hooks.example.com/ploomes/webhook" in codes
    assert "env-key-0123456789-abcdefWXYZ" not in codes
    assert "••••WXYZ" in texts(at) and "PLOOMES_VALIDATION_KEYS" in texts(at)
    assert not [b for b in at.button if b.key == "first_run_generate_key"]


def test_overview_metrics_match_the_store(seeded):
    at = app().run()
    assert not at.exception
    shown = metrics(at)
    named = ("Entregas", "Registros alterados", "Usuários ativos", "Duplicatas", "Recusadas")
    assert {k: shown[f"{k} (24 h)"] for k in named} == {
        "Entregas": "2", "Registros alterados": "1", "Usuários ativos": "1", "Duplicatas": "1",
        "Recusadas": "1"}
    assert {k: shown[f"{k} (7 d)"] for k in named} == {
        "Entregas": "4", "Registros alterados": "2", "Usuários ativos": "2", "Duplicatas": "1",
        "Recusadas": "1"}
    assert shown["Última entrega"] == "há 1 hora"
    assert shown["Receptor"] == "inacessível"
    assert any("Receptor inacessível" in e.value for e in at.error)
    assert any("Há dados de demonstração — remova-os" in w.value for w in at.warning)

    at.toggle(key="overview_duplicates").set_value(True).run()
    assert not at.exception
    assert metrics(at)["Entregas (24 h)"] == "3"
    at.segmented_control(key="overview_range").set_value("30 d").run()
    assert not at.exception
    assert "Uma barra por dia" in texts(at)


def test_users_page_counts(seeded):
    at = app().run()
    at.switch_page("views/users.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    rows = {r["ActionUserId"]: r for r in table.to_dict("records")}
    assert [(r["User"], r["Events"], r["Records"]) for r in table.to_dict("records")] == [
        ("10", 2, 1), ("20", 2, 1), ("30", 1, 1)]
    # entities and actions as Ploomes names them
    assert (rows[10]["Negócios · Criação"], rows[10]["Negócios · Alteração"],
            rows[10]["Clientes · Criação"]) == (1, 1, 0)
    assert (rows[20]["Clientes · Criação"], rows[20]["Clientes · Alteração"]) == (1, 1)
    assert rows[30]["Negócios · Ganho"] == 1
    assert at.selectbox(key="users_selected").value == 10
    fields = at.dataframe[1].value
    assert fields[["Field", "Changes"]].values.tolist()[0] == ["Estágio", 2]
    links = [(p.proto.page, p.proto.query_string) for p in at.get("page_link")]
    if (ROOT / "views/events.py").is_file():
        assert any("user=10" in q for _, q in links)
    else:
        assert any("/events?user=10" in m.value for m in at.markdown)


def test_users_page_follows_the_user_in_the_address(seeded):
    at = app()
    at.query_params["user"] = "20"
    at.run()
    at.switch_page("views/users.py").run()
    assert not at.exception
    assert at.selectbox(key="users_selected").value == 20
    fields = at.dataframe[1].value
    assert fields[["Field", "Changes"]].values.tolist() == [["Nome", 2]]


def test_status_page(seeded):
    at = app()
    at.query_params.update({"user": "10", "duplicates": "1"})
    at.run()
    at.switch_page("views/status.py").run()
    assert not at.exception
    shown = metrics(at)
    assert shown["Versão do esquema"] == str(SCHEMA_VERSION)
    assert shown["Registros do diário gravados"] == "6"
    assert str(seeded) in texts(at)
    assert any("Receptor inacessível" in e.value for e in at.error)
    # the refused requests: the one failed key attempt, none refused with a good key
    assert (shown["Entregas recusadas"], shown["Tentativas com chave inválida"]) == ("0", "1")
    assert not at.get("download_button")  # the export lives on the Events page now

    # the Events page exports its list, with the link's filters (user 10, repeats shown)
    at.switch_page("views/events.py").run()
    assert not at.exception
    assert at.selectbox(key="f_user").value == 10 and at.toggle(key="f_dups").value is True
    assert [b.key for b in at.get("download_button")] == ["export_csv", "export_parquet"]
    [listed] = [t.value for t in at.dataframe if "event" in t.value.columns]
    assert len(listed) == 3


@pytest.mark.parametrize("store_state", ["empty", "seeded"])
def test_every_page_renders(store_state, request):
    request.getfixturevalue("seeded" if store_state == "seeded" else "data_dir")
    at = app().run()
    assert not at.exception
    for page in PAGE_FILES:
        at.switch_page(page).run()
        assert not at.exception, f"{page}: {at.exception}"
        assert at.title, f"{page} shows no title"
        if store_state == "empty" and page == "views/users.py":
            assert "Nenhum evento ainda" in texts(at)


def test_format_bytes():
    assert format_bytes(0) == "0 B"
    assert format_bytes(2048) == "2,0 KB"
    assert format_bytes(5.5 * 1024 ** 2) == "5,5 MB"


def test_a_query_that_duckdb_refuses_is_a_message_not_a_traceback(seeded, data_dir):
    # a table a page reads is gone (a user's own SQL dropped it): the query itself fails
    with Store(make_settings(data_dir)).writer() as con:
        con.execute("DROP TABLE users")
    at = AppTest.from_file(str(DASHBOARD), default_timeout=60)
    at.switch_page("views/events.py")
    at.run()
    assert not at.exception
    assert any("não pode ser lida" in e.value and "rebuild" in e.value for e in at.error)
