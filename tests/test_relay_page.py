"""The Relay page, the Events detail's relay part and the Status line, through Streamlit's
AppTest, over attempts the real receiver and forwarder made to a real sink."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, ReceiverProcess, make_settings, query, wait_for
from destinations import Reply, Sink
from rendered import rendered_all
from streamlit.testing.v1 import AppTest
from test_access import AUTH, VIEWER, signed_in

from ploomes.relay.destinations import (
    add_destination,
    build_destination,
    generate_secret,
    read_config,
    remove_destination,
    set_options,
    set_paused,
)
from ploomes.relay.replays import read_request, waiting

PAGE = str(ROOT / "views" / "relay.py")
SECRET = generate_secret()
BODY_TEXT = "[clique aqui](https://evil.example) recusado"


def delivery(record: int, title: str) -> dict:
    return {"Action": "Update", "Entity": "Deals", "AccountId": 1, "ActionUserId": 7,
            "WebhookId": 55, "Old": {"Id": record}, "New": {"Id": record, "Title": title}}


@pytest.fixture(scope="module")
def relayed(tmp_path_factory):
    """A data dir whose relay delivered one event to `erp` and failed another for good."""
    data = tmp_path_factory.mktemp("relay-page") / "data"
    settings = make_settings(data)
    set_options(settings, retry_schedule=[0, 0.05])

    def answer(received):
        refused = received.json["New"]["Title"] == "ruim"
        return Reply(422, body=BODY_TEXT.encode()) if refused else Reply()
    with Sink(answer) as sink:
        add_destination(settings, build_destination(settings, "erp", sink.url, secret=SECRET))
        receiver = ReceiverProcess(data).start()
        try:
            good = receiver.post(delivery(1, "bom")).json()["delivery_id"]
            bad = receiver.post(delivery(2, "ruim")).json()["delivery_id"]
            wait_for(lambda: len(query(data, "SELECT * FROM outbox_messages")) == 2)
        finally:
            receiver.stop()
    return data, good, bad


@pytest.fixture
def page_env(relayed, monkeypatch):
    data, good, bad = relayed
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(data))
    settings = make_settings(data)
    for request in waiting(settings):
        request.unlink()
    for destination in read_config(settings).destinations:
        if destination.name != "erp":
            remove_destination(settings, destination.name)
    set_paused(settings, "erp", False)
    return settings, good, bad


def run(path: str = PAGE, **kwargs) -> AppTest:
    at = AppTest.from_file(path, default_timeout=30)
    for name, value in kwargs.items():
        setattr(at, name, value)
    at.run()
    assert not at.exception, at.exception
    return at


def table(at: AppTest, key: str):
    return next(d.value for d in at.dataframe if d.proto.id and key in d.proto.id)


def buttons(at: AppTest) -> set[str]:
    return {b.key for b in at.button if b.key} | {
        b.key for b in at.get("form_submit_button") if getattr(b, "key", None)}


def test_lists_destinations_attempts_and_dead_letters(page_env):
    settings, good, bad = page_env
    at = run()
    shown = at.dataframe[0].value
    row = shown.iloc[0]
    assert (row["Nome"], row["Estado"], row["Endereço"]) == (
        "erp", "ativo", "loopback (esta máquina)")
    assert row["Segredo"].startswith("••••") and SECRET not in shown.to_string()
    assert (row["Entregues"], row["Falharam"]) == (1, 1)
    attempts = at.dataframe[1].value
    assert set(attempts["Evento"]) == {good, bad}
    refused = attempts[attempts["Evento"] == bad].iloc[0]
    assert (refused["Resultado"], refused["Status"]) == ("falhou", 422)
    assert refused["Corpo"] == BODY_TEXT  # the destination's text, as a plain cell
    dead = at.dataframe[2].value
    assert list(dead["Evento"]) == [bad]
    assert "evil.example" not in rendered_all(at.markdown)
    assert "loopback" in rendered_all(at.caption) or "privada" in rendered_all(at.caption)


def test_bulk_replay_of_dead_letters_is_requested_and_audited(page_env):
    settings, good, bad = page_env
    at = run()
    at.button(key="relay_replay_failed").click().run()
    assert not at.exception, at.exception
    (path,) = waiting(settings)
    request = read_request(path)
    assert request.events == (bad,) and request.destination == "erp"
    assert "Reenvio pedido" in rendered_all(at.success)
    assert ("replay_deliveries", "done") in query(
        settings.data_dir, "SELECT action, outcome FROM audit_log")


def test_replay_since_a_time(page_env):
    settings, _, _ = page_env
    at = run()
    at.button(key="relay_replay_since").click().run()
    (path,) = waiting(settings)
    assert read_request(path).since is not None


def test_pause_resume_add_and_remove(page_env):
    settings, _, _ = page_env
    at = run()
    at.button(key="relay_pause").click().run()
    assert read_config(settings).by_name("erp").paused
    assert at.dataframe[0].value.iloc[0]["Estado"] == "pausado à mão"
    at.button(key="relay_resume").click().run()
    assert not read_config(settings).by_name("erp").paused

    at.text_input(key="relay_add_name").set_value("bi")
    at.text_input(key="relay_add_url").set_value("ftp://10.0.0.1/x")
    at.get("form_submit_button")[0].click()
    at.run()
    assert "only http:// and https://" in rendered_all(at.error)
    assert [d.name for d in read_config(settings).destinations] == ["erp"]
    at.text_input(key="relay_add_url").set_value("http://10.0.0.1:9/bi")
    at.text_input(key="relay_add_secret").set_value(SECRET)
    at.text_input(key="relay_add_accounts").set_value("31, 32")
    at.text_input(key="relay_add_fields").set_value("StageId")
    at.text_area(key="relay_add_headers").set_value("Authorization: Bearer segredo-do-bi-123")
    at.text_input(key="relay_add_retry").set_value("409")
    at.get("form_submit_button")[0].click()
    at.run()
    assert not at.exception, at.exception
    added = read_config(settings).by_name("bi")
    assert added.secret == SECRET and added.accounts == (31, 32)
    assert added.fields == ("StageId",) and added.retry_statuses == (409,)
    assert added.headers == (("Authorization", "Bearer segredo-do-bi-123"),)
    assert "segredo-do-bi-123" not in at.dataframe[0].value.to_string()
    assert "rede privada" in set(at.dataframe[0].value["Endereço"])
    (detail,) = query(settings.data_dir, "SELECT detail FROM audit_log WHERE action = "
                                         "'add_destination' AND outcome = 'done'")
    assert SECRET not in detail[0] and "••••" in detail[0]

    at.selectbox(key="relay_destination").set_value("bi").run()
    at.checkbox(key="relay_remove_sure").check().run()
    at.button(key="relay_remove").click().run()
    assert [d.name for d in read_config(settings).destinations] == ["erp"]


def test_a_viewer_sees_the_relay_but_gets_no_write_action(page_env, monkeypatch):
    settings, _, bad = page_env
    monkeypatch.setenv("PLOOMES_DASHBOARD_ADMINS", "ana@empresa.com.br")
    monkeypatch.setenv("PLOOMES_DASHBOARD_VIEWERS", "@empresa.com.br")
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=30)
    at.secrets["auth"] = AUTH
    at.user = signed_in(VIEWER)
    at.run()
    at.switch_page("views/relay.py").run()
    assert not at.exception, at.exception
    assert at.dataframe[0].value.iloc[0]["Nome"] == "erp"
    assert not buttons(at) & {"relay_pause", "relay_resume", "relay_remove",
                              "relay_replay_failed", "relay_replay_since", "relay_add_submit"}
    assert not at.get("form_submit_button")
    at.switch_page("views/events.py")
    at.query_params["event"] = str(bad)
    at.run()
    assert not at.exception, at.exception
    assert not buttons(at) & {"event_replay", "events_replay_filtered"}


def test_events_detail_shows_the_attempts_and_replays_one(page_env):
    settings, _, bad = page_env
    at = AppTest.from_file(str(ROOT / "views" / "events.py"), default_timeout=30)
    at.query_params["event"] = str(bad)
    at.run()
    assert not at.exception, at.exception
    shown = next(d.value for d in at.dataframe if "Resultado" in d.value.columns)
    assert list(shown["Resultado"]) == ["falhou"] and list(shown["Status"]) == [422]
    at.button(key="event_replay").click().run()
    (path,) = waiting(settings)
    assert read_request(path).events == (bad,)


def test_events_page_replays_what_its_filters_select(page_env):
    settings, good, bad = page_env
    at = AppTest.from_file(str(ROOT / "views" / "events.py"), default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    at.button(key="events_replay_filtered").click().run()
    assert not at.exception, at.exception
    (path,) = waiting(settings)
    request = read_request(path)
    assert sorted(request.events) == sorted([good, bad]) and request.destination == "erp"


def test_status_says_which_destinations_paused_themselves(page_env):
    settings, _, _ = page_env
    set_paused(settings, "erp", True, by="relay", reason="every attempt failed since ontem")
    at = run(str(ROOT / "views" / "status.py"))
    assert "erp" in rendered_all(at.warning) and "ontem" in rendered_all(at.warning)
    set_paused(settings, "erp", False)
    assert "erp" not in rendered_all(run(str(ROOT / "views" / "status.py")).warning)


def test_a_rebuild_keeps_the_relays_attempts(relayed, tmp_path):
    data, _, _ = relayed
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    sql = ("SELECT msg_id, attempt, outcome FROM outbox_attempts ORDER BY log_seq",
           "SELECT * FROM outbox_messages ORDER BY msg_id",
           "SELECT last_seq FROM ingest_state WHERE name = 'outbox'")
    before = [query(copy, s) for s in sql]
    done = subprocess.run([sys.executable, "-m", "ploomes", "rebuild", "--data-dir", str(copy)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [query(copy, s) for s in sql] == before and before[0]
