"""Alerts from a POST to the real receiver to a message received: a real SMTP server
(aiosmtpd) and a real JSON webhook endpoint on loopback, one test per rule kind, kill -9
while sending, and a rebuild that sends nothing again."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from collections import Counter
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from ploomes.alerts.rules import add_rule
from ploomes.store import Store
from tests.conftest import (
    ROOT,
    SHARED,
    ReceiverProcess,
    free_port,
    make_settings,
    query,
    wait_for,
)

ALERT_ENV = {
    # every day, all day: the silence test need not wait for office hours
    "PLOOMES_BUSINESS_DAYS": "0-6",
    "PLOOMES_BUSINESS_HOURS": "00:00-24:00",
    "PLOOMES_ALERTS_TICK_SECONDS": "0.2",
    "PLOOMES_ALERTS_RETRY": "0,0.2,0.2,0.5,1,1,1,1",
    "PLOOMES_DASHBOARD_URL": "http://painel.exemplo:8501",
}


def payload(name: str) -> dict:
    return json.loads((SHARED / "payloads" / name).read_text(encoding="utf-8"))


class JsonSink:
    """A real HTTP endpoint for Apprise's json:// channel; records every request.

    `hold` is the number of the request (1 = the first) held without an answer until
    `release`.
    """

    def __init__(self):
        self.requests: list[tuple[dict, dict]] = []
        self.lock = threading.Lock()
        self.hold: int | None = None
        self.holding = threading.Event()
        self.release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with sink.lock:
                    sink.requests.append((dict(self.headers), body))
                    held = len(sink.requests) == sink.hold
                if held:
                    sink.holding.set()
                    sink.release.wait(30)
                try:
                    self.send_response(200)
                    self.end_headers()
                except OSError:
                    pass  # the sender was killed meanwhile

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"json://127.0.0.1:{self.server.server_port}/alertas"

    def ids(self) -> list[str]:
        with self.lock:
            return [h.get("X-Ploomes-Alert-Id") for h, _ in self.requests]

    def bodies(self) -> list[dict]:
        with self.lock:
            return [b for _, b in self.requests]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """A real SMTP server on loopback (aiosmtpd) that keeps every message."""

    def __init__(self):
        self.messages: list = []
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                box.messages.append(message_from_bytes(envelope.content, policy=policy.default))
                return "250 OK"

        def login(server, session, envelope, mechanism, data):
            return AuthResult(success=(data.login, data.password)
                              == (b"alertas", b"senha-do-smtp"))

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     authenticator=login, auth_require_tls=False)
        self.controller.start()
        self.url = (f"mailto://alertas:senha-do-smtp@127.0.0.1:{self.port}"
                    f"?from=alertas@empresa.com.br&to=financeiro@empresa.com.br&mode=insecure")

    def close(self):
        self.controller.stop()


@pytest.fixture
def sink():
    server = JsonSink()
    yield server
    server.close()


@pytest.fixture
def mailbox():
    box = Mailbox()
    yield box
    box.close()


@pytest.fixture
def alert_receiver(tmp_path):
    proc = ReceiverProcess(tmp_path / "data", extra_env=ALERT_ENV).start()
    yield proc
    proc.stop()


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ploomes", "alerts", "--data-dir",
                           str(data_dir), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def store_of(data_dir: Path) -> Store:
    return Store(make_settings(data_dir))


def test_change_rule_from_the_cli_sends_an_email(alert_receiver, mailbox):
    data = alert_receiver.data_dir
    done = cli(data, "add", "Cliente verificado", "--entity", "Contacts", "--action", "Update",
               "--field", "contact_check", "--from", "false", "--to", "true",
               "--notify", mailbox.url)
    assert done.returncode == 0, done.stderr
    assert "senha-do-smtp" not in done.stdout  # the address is shown masked
    listed = cli(data, "list")
    assert "Cliente verificado" in listed.stdout and "senha-do-smtp" not in listed.stdout

    unchanged = payload("contact-update.json")
    unchanged["Old"]["OtherProperties"]["contact_check"] = True  # true → true: no alert
    assert alert_receiver.post(unchanged).status_code == 200
    assert alert_receiver.post(payload("contact-update.json")).status_code == 200
    alert_receiver.wait_ingested()

    wait_for(lambda: mailbox.messages, timeout=20)
    rows = query(data, "SELECT event_id FROM alerts")
    assert len(rows) == 1  # only the change false → true fired
    message = mailbox.messages[0]
    text = message.get_body(preferencelist=("plain", "html")).get_content()
    assert "Cliente verificado" in message["Subject"]
    assert "Clientes · Alteração" in message["Subject"]
    assert "Ploomes Sistemas Empresariais" in text
    assert "contact_check: false → true" in text
    assert "Quem: usuário #116" in text
    assert f"http://painel.exemplo:8501/events?event={rows[0][0]}" in text
    assert message["To"] == "financeiro@empresa.com.br"
    delivered = wait_for(lambda: query(data, "SELECT state, attempts, channel FROM "
                                             "outbox_messages WHERE channel = 'alert'"))
    assert delivered == [("delivered", 1, "alert")]
    assert "senha-do-smtp" not in alert_receiver.log_text()
    assert len(mailbox.messages) == 1


def test_value_rule_sends_json_with_the_alert_id(alert_receiver, sink):
    data = alert_receiver.data_dir
    add_rule(store_of(data), "Negócio grande ganho", "change",
             {"entity": "Deals", "actions": ["Win"], "field": "Amount",
              "condition": "greater", "value": "50000"}, sink.url)
    small = payload("deal-win.json")
    big = copy.deepcopy(small)
    big["New"]["Amount"] = 75000.0
    big["New"]["Id"] = big["Old"]["Id"] = 517003999
    assert alert_receiver.post(small).status_code == 200
    assert alert_receiver.post(big).status_code == 200
    alert_receiver.wait_ingested()
    (event_id,), = query(data, "SELECT event_id FROM alerts")
    body = wait_for(lambda: sink.bodies(), timeout=20)[0]
    assert sink.ids() == [f"alert_1_{event_id}"]
    assert "Negócio grande ganho" in body["title"] and "Negócios · Ganho" in body["title"]
    assert "Renovação anual - Padaria Bom Grão" in body["message"]
    assert "Valor: 12800.0 → 75000.0" in body["message"]
    assert "Situação: Em aberto (1) → Ganho (2)" in body["message"]  # Ploomes' names
    # the rule test over past events agrees with what was decided live
    tested = cli(data, "test", "Negócio grande ganho", "--days", "30")
    assert tested.returncode == 0, tested.stderr
    assert "would have fired 1 times" in tested.stdout
    assert f"event_id={event_id}" in tested.stdout


def test_rate_limit_per_rule_and_mute(alert_receiver, sink):
    data = alert_receiver.data_dir
    add_rule(store_of(data), "Uma por hora", "change", {"entity": "Contacts"}, sink.url,
             per_hour=1)
    for number in range(3):
        body = payload("contact-update.json")
        body["New"]["LegalName"] = f"Nome {number}"
        assert alert_receiver.post(body).status_code == 200
    alert_receiver.wait_ingested()
    assert [r[0] for r in query(data, "SELECT state FROM alerts ORDER BY event_id")] == [
        "queued", "limited", "limited"]
    wait_for(lambda: query(data, "SELECT count(*) FROM outbox_messages WHERE state = "
                                 "'delivered'")[0][0] == 1, timeout=20)
    assert len(sink.ids()) == 1
    assert cli(data, "mute", "Uma por hora").returncode == 0
    assert alert_receiver.post(payload("contact-update.json")).status_code == 200
    alert_receiver.wait_ingested()
    assert query(data, "SELECT count(*) FROM alerts")[0][0] == 3  # muted: nothing fired


def test_burst_is_one_message(alert_receiver, sink):
    data = alert_receiver.data_dir
    add_rule(store_of(data), "Exclusão em massa", "burst",
             {"actions": ["Delete"], "count": 3, "minutes": 10}, sink.url)
    for record_id in range(5):
        body = {"Action": "Delete", "Entity": "Contacts", "AccountId": 57,
                "ActionUserId": 900, "Old": {"Id": 7000 + record_id,
                                             "Name": f"Cliente {record_id}"}, "New": None}
        assert alert_receiver.post(body).status_code == 200
    other = {"Action": "Delete", "Entity": "Contacts", "AccountId": 57, "ActionUserId": 901,
             "Old": {"Id": 8000, "Name": "Outro"}, "New": None}
    assert alert_receiver.post(other).status_code == 200
    alert_receiver.wait_ingested()
    rows = query(data, "SELECT event_ids FROM alerts")
    assert len(rows) == 1  # five deletions by one user: one alert; one by another: none
    assert len(json.loads(rows[0][0])) == 3
    body = wait_for(lambda: sink.bodies(), timeout=20)[0]
    assert "3 eventos de usuário #900" in body["title"]
    assert body["message"].count("/events?event=") == 3
    tested = cli(data, "test", "Exclusão em massa")
    assert "would have fired 1 times" in tested.stdout, tested.stderr


def test_silence_in_business_hours(alert_receiver, sink):
    data = alert_receiver.data_dir
    add_rule(store_of(data), "Webhooks pararam", "silence", {"minutes": 0.01}, sink.url)
    assert alert_receiver.post(payload("contact-update.json")).status_code == 200
    first = wait_for(lambda: sink.bodies(), timeout=20)[0]
    assert "nenhuma entrega há" in first["title"]
    # the next silence (after another delivery) is told again, once per quiet spell
    assert alert_receiver.post(payload("deal-win.json")).status_code == 200
    wait_for(lambda: len(sink.bodies()) >= 2, timeout=20)
    ids = sink.ids()
    assert len(set(ids)) == len(ids)
    events = [row[0] for row in query(data, "SELECT id FROM events ORDER BY id")]
    assert ids[:2] == [f"alert_1_silence_{events[0]}", f"alert_1_silence_{events[1]}"]


def test_refused_deliveries_above_a_count(alert_receiver, mailbox):
    data = alert_receiver.data_dir
    add_rule(store_of(data), "Recusas", "quality",
             {"what": "refused", "count": 2, "minutes": 30}, mailbox.url)
    for _ in range(2):
        assert alert_receiver.post(b'{"Action": ').status_code == 400
    wait_for(lambda: mailbox.messages, timeout=20)
    assert "2 entregas recusadas" in mailbox.messages[0]["Subject"]


def test_continuity_gaps_above_a_count(alert_receiver, sink):
    data = alert_receiver.data_dir
    add_rule(store_of(data), "Lacunas", "quality",
             {"what": "gaps", "count": 1, "minutes": 30}, sink.url)
    first = payload("contact-update.json")
    second = copy.deepcopy(first)
    # the second change starts from a value the first did not leave: a gap
    second["Old"]["LegalName"] = "Outro nome"
    second["New"]["LegalName"] = "Mais um nome"
    for body in (first, second):
        assert alert_receiver.post(body).status_code == 200
    body = wait_for(lambda: sink.bodies(), timeout=20)[0]
    assert "1 lacunas de continuidade" in body["title"]


def test_relay_destination_paused_by_itself(alert_receiver, sink):
    from ploomes.relay.destinations import add_destination, build_destination, set_paused

    data = alert_receiver.data_dir
    settings = make_settings(data)
    add_destination(settings, build_destination(settings, "erp", "http://127.0.0.1:9/hook"))
    add_rule(store_of(data), "Relay parado", "quality", {"what": "relay_paused"}, sink.url)
    set_paused(settings, "erp", True, by="relay", reason="failing for 5 days")
    body = wait_for(lambda: sink.bodies(), timeout=20)[0]
    assert "o relay pausou o destino erp" in body["title"]
    assert "failing for 5 days" in body["message"]


def test_kill_9_while_sending_loses_nothing_and_doubles_nothing(tmp_path, sink):
    data = tmp_path / "data"
    receiver = ReceiverProcess(data, extra_env=ALERT_ENV).start()
    sink.hold = 2  # the second alert's answer never comes back
    try:
        add_rule(store_of(data), "Toda alteração", "change",
                 {"entity": "Contacts", "actions": ["Update"]}, sink.url)
        base = payload("contact-update.json")
        for number in range(3):
            body = copy.deepcopy(base)
            body["New"]["LegalName"] = body["Old"]["LegalName"] = f"Empresa {number}"
            assert receiver.post(body).status_code == 200
        receiver.wait_ingested()
        ids = [row[0] for row in query(data, "SELECT msg_id FROM alerts ORDER BY event_id")]
        assert len(ids) == 3
        wait_for(sink.holding.is_set, timeout=20)
        receiver.kill()
    finally:
        receiver.stop()
    sink.release.set()
    again = ReceiverProcess(data, extra_env=ALERT_ENV).start()
    try:
        wait_for(lambda: len(sink.ids()) >= 4, timeout=30)
        wait_for(lambda: query(data, "SELECT count(*) FROM outbox_messages WHERE "
                                     "state = 'delivered'")[0][0] == 3, timeout=20)
        # confirmed before the kill: not sent again; in flight: sent again, same id
        assert Counter(sink.ids()) == {ids[0]: 1, ids[1]: 2, ids[2]: 1}
        assert sink.ids()[:2] == ids[:2]
    finally:
        again.stop()


def test_rebuild_sends_no_old_alert_again(tmp_path, sink):
    data = tmp_path / "data"
    receiver = ReceiverProcess(data, extra_env=ALERT_ENV).start()
    try:
        add_rule(store_of(data), "Alteração", "change",
                 {"entity": "Contacts", "actions": ["Update"]}, sink.url)
        add_rule(store_of(data), "Ganho", "change", {"entity": "Deals", "actions": ["Win"]},
                 sink.url)
        assert receiver.post(payload("contact-update.json")).status_code == 200
        wait_for(lambda: len(sink.ids()) == 1, timeout=20)
    finally:
        receiver.stop()
    done = subprocess.run([sys.executable, "-m", "ploomes", "rebuild", "--data-dir", str(data)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    receiver = ReceiverProcess(data, extra_env=ALERT_ENV).start()
    try:
        assert receiver.post(payload("deal-win.json")).status_code == 200
        wait_for(lambda: len(sink.ids()) >= 2, timeout=20)
        receiver.wait_ingested()
        assert [i.rsplit("_", 1)[0] for i in sink.ids()] == ["alert_1", "alert_2"]
        assert query(data, "SELECT count(*) FROM alerts")[0][0] == 2
    finally:
        receiver.stop()
