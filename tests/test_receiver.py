"""The real receiver process: answers, storage in DuckDB, refusals, health and metrics."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, TEST_KEY, example_payloads, query, wait_for


def test_example_payloads_are_stored_with_their_columns(receiver):
    payloads = example_payloads()
    ids = {}
    for name, raw in payloads.items():
        response = receiver.post(raw)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "accepted"
        ids[name] = body["delivery_id"]
    # The time to visible is measured by bench/receiver_load.py (p99 answer -> visible);
    # tests do not assert wall-clock limits on this shared machine.
    rows = wait_for(lambda: len(r := query(receiver.data_dir, "SELECT id FROM events")) == 4
                    and r, timeout=15, interval=0.01)
    assert sorted(r[0] for r in rows) == sorted(ids.values())
    got = {r[0]: r for r in query(receiver.data_dir, """
        SELECT id, action, entity, account_id, action_user_id, webhook_id, record_id,
               old::VARCHAR, new::VARCHAR, payload::VARCHAR, body_sha256, typeof(received_at)
        FROM events""")}
    update = got[ids["contact-update.json"]]
    assert update[1:7] == ("Update", "Contacts", 57, 116, None, 2630362)
    assert json.loads(update[7])["LegalName"] == "Ploomes"
    assert json.loads(update[8])["LegalName"] == "Ploomes Sistemas Empresariais"
    assert json.loads(update[9]) == json.loads(payloads["contact-update.json"])
    assert update[11] == "TIMESTAMP WITH TIME ZONE"
    delete = got[ids["contact-delete.json"]]
    assert delete[1:7] == ("Delete", "Contacts", 3100210, 31007781, 31005122, 509918830)
    assert delete[8] is None  # New is null: record_id comes from Old.Id
    create = got[ids["deal-create.json"]]
    assert create[1:7] == ("Create", "Deals", 3100210, 31007790, 31005118, 517004410)
    assert create[7] is None
    assert "Implantação - Clínica Santa Luzia" in create[9]
    win = got[ids["deal-win.json"]]
    assert win[1:7] == ("Win", "Deals", 3100210, 31007781, 31005120, 517003321)
    import hashlib
    assert win[10] == hashlib.sha256(payloads["deal-win.json"]).hexdigest()


GOOD = {"Action": "Update", "Entity": "Contacts", "ActionUserId": 1, "New": {"Id": 5}}
BAD_INPUTS = [
    ("empty body", b"", 400, "empty body"),
    ("invalid JSON", b'{"Action": ', 400, "invalid JSON"),
    ("array", b"[1, 2]", 400, "JSON object"),
    ("string", b'"Update"', 400, "JSON object"),
    ("number", b"42", 400, "JSON object"),
    ("no Action", json.dumps({"Entity": "Deals"}).encode(), 400, "missing Action"),
    ("no Entity", json.dumps({"Action": "Update"}).encode(), 400, "missing Entity"),
    ("wrong type", json.dumps({**GOOD, "ActionUserId": "abc"}).encode(), 400, "ActionUserId"),
    ("Old not object", json.dumps({**GOOD, "Old": [1]}).encode(), 400, "Old"),
    ("deep array", b"[" * 100_000 + b"]" * 100_000, 400, "nested"),
    ("deep", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400, "nested"),
    ("deep object", (b'{"Action":"Update","Entity":"X","New":' + b'{"a":' * 200 + b"1"
                     + b"}" * 201), 400, "nested"),
    ("invalid UTF-8", b'{"Action": "Upd\xff\xfe", "Entity": "Deals"}', 400, "UTF-8"),
    ("raw NUL", b'{"Action": "Update\x00", "Entity": "Deals"}', 400, "invalid JSON"),
    ("lone surrogate", b'{"Action": "Update", "Entity": "Deals", "N": "\\ud800"}', 400,
     "surrogate"),
    ("NaN", b'{"Action": "Update", "Entity": "Deals", "Amount": NaN}', 400, "invalid JSON"),
    ("huge number", b'{"Action": "Update", "Entity": "Deals", "Amount": 1e400}', 400,
     "invalid JSON"),
]


@pytest.mark.parametrize("name,raw,status,reason", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_bodies_are_refused_clearly(receiver, name, raw, status, reason):
    response = receiver.post(raw)
    assert response.status_code == status
    assert reason in response.json()["reason"]
    assert receiver.post(GOOD).status_code == 200  # still serving
    receiver.wait_ingested()
    assert query(receiver.data_dir, "SELECT count(*) FROM events")[0][0] == 1
    rejected = wait_for(lambda: query(receiver.data_dir,
                                      "SELECT status, reason, raw_size FROM rejected_deliveries"))
    # the same reason the sender was given, whether the body was refused before it was
    # journaled (too large, or over 64 KiB) or by the sync helper once journaled
    assert rejected[0][0] == status and rejected[0][1] == response.json()["reason"]
    assert rejected[0][2] == len(raw)


def test_key_problems_and_methods(receiver):
    assert receiver.post(GOOD, key=None).status_code == 401
    wrong = receiver.post(GOOD, key="not-the-key-at-all-000000000")
    assert wrong.status_code == 401
    assert wrong.json()["reason"] == receiver.post(GOOD, key=None).json()["reason"]
    get = receiver.session.get(receiver.webhook_url, timeout=5)
    assert get.status_code == 405 and get.json()["status"] == "refused"
    # the key in the query string works, for integrators who put it there
    ok = receiver.session.post(receiver.webhook_url, params={"validation_key": TEST_KEY},
                               json=GOOD, timeout=5)
    assert ok.status_code == 200
    receiver.wait_ingested()
    assert query(receiver.data_dir, "SELECT count(*) FROM events")[0][0] == 1
    failures = wait_for(lambda: query(receiver.data_dir,
                                      "SELECT source, reason FROM auth_failures ORDER BY 2"))
    assert failures == [("127.0.0.1", "missing key"), ("127.0.0.1", "missing key"),
                        ("127.0.0.1", "wrong key")]
    # unauthenticated bodies are never kept
    assert query(receiver.data_dir, "SELECT count(*) FROM rejected_deliveries")[0][0] == 0
    assert TEST_KEY not in receiver.log_text()


def test_body_over_the_limit(tmp_path):
    from conftest import ReceiverProcess

    proc = ReceiverProcess(tmp_path / "data",
                           extra_env={"PLOOMES_MAX_BODY_BYTES": "4096"}).start()
    try:
        big = {**GOOD, "New": {"Id": 5, "Note": "x" * 5000}}
        response = proc.post(big)  # refused on its Content-Length
        assert response.status_code == 413
        assert "4096" in response.json()["reason"]
        assert proc.post(GOOD).status_code == 200

        def post_chunked(body: dict) -> int:
            # No Content-Length: the limit applies to what is read. Sent whole before the
            # answer is read: the receiver answers a refusal without reading the rest and
            # closes the connection, and a client still sending would get a reset instead.
            data = json.dumps(body).encode()
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 1000]), data[i:i + 1000])
                              for i in range(0, len(data), 1000))
            request = (b"POST /ploomes/webhook HTTP/1.1\r\nHost: x\r\n"
                       b"X-Ploomes-Validation-Key: " + proc.key.encode() + b"\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
            with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
                sock.sendall(request)
                answer = b""
                try:
                    while chunk := sock.recv(65536):
                        answer += chunk
                except ConnectionResetError:  # the unread rest of a refused body
                    pass
            return int(answer.split(b" ", 2)[1])  # the status line's code

        assert post_chunked(big) == 413
        assert post_chunked(GOOD) == 200
        proc.wait_ingested()
        assert query(proc.data_dir, "SELECT count(*) FROM events")[0][0] == 2
        rows = wait_for(lambda: query(proc.data_dir,
                                      "SELECT status, raw_size FROM rejected_deliveries"))
        assert [row[0] for row in rows] == [413, 413]
    finally:
        proc.stop()


def test_unusual_texts_are_stored_faithfully(receiver):
    body = {"Action": "Update", "Entity": "Contacts", "ActionUserId": 7,
            "Old": {"Id": 9, "Name": "Conceição\u0000\u0007\t"},
            "New": {"Id": 9, "Name": "João 🚀 Ação \ud83d\ude00 \u2028", "Long": "é" * 100_000}}
    raw = json.dumps(body).encode("ascii")
    response = receiver.post(raw)
    assert response.status_code == 200
    receiver.wait_ingested()
    old, new, payload = query(receiver.data_dir,
                              "SELECT old::VARCHAR, new::VARCHAR, payload::VARCHAR FROM events")[0]
    sent = json.loads(raw)  # the escaped pair \ud83d\ude00 arrives as one emoji
    assert sent["New"]["Name"] == "João 🚀 Ação 😀 \u2028"
    assert json.loads(old) == sent["Old"]
    assert json.loads(new) == sent["New"]
    assert payload.encode("utf-8") == raw  # the body exactly as received


def test_health_and_metrics(receiver):
    text = receiver.session.get(receiver.url + "/metrics", timeout=5).text
    assert 'ploomes_deliveries_total{outcome="accepted"} 0.0' in text  # before the first
    assert receiver.post(GOOD).status_code == 200
    assert receiver.post(GOOD, key=None).status_code == 401
    assert receiver.post(b"[1]").status_code == 400
    assert receiver.session.get(receiver.url + "/ploomes/webhook", timeout=5).status_code == 405
    health = receiver.wait_ingested()
    assert health["status"] == "ok" and health["journal_seq"] >= 1
    assert health["ingest_lag_seconds"] == 0
    text = receiver.session.get(receiver.url + "/metrics", timeout=5).text
    assert 'ploomes_deliveries_total{outcome="accepted"} 1.0' in text
    assert 'ploomes_deliveries_total{outcome="unauthorized"} 1.0' in text
    assert 'ploomes_deliveries_total{outcome="invalid"} 1.0' in text
    assert 'ploomes_deliveries_total{outcome="method_not_allowed"} 1.0' in text
    assert 'ploomes_ack_seconds_bucket{le="+Inf"} 1.0' in text  # accepted answers only
    assert "ploomes_ack_seconds_count 1.0" in text
    buckets = re.findall(r'ploomes_ack_seconds_bucket\{le="([^"]+)"\} (\S+)', text)
    assert len(buckets) == 10 and [float(n) for _, n in buckets] == sorted(
        float(n) for _, n in buckets)  # cumulative
    # journal records made visible: the accepted delivery and the kept refusal (400)
    assert "ploomes_ingest_lag_seconds_count 2.0" in text


def test_first_start_generates_a_key_and_never_logs_it(tmp_path):
    from conftest import ReceiverProcess

    proc = ReceiverProcess(tmp_path / "data", key=None)
    proc.start()
    try:
        key_file = proc.data_dir / "keys" / "validation-keys.txt"
        key = key_file.read_text().strip()
        assert len(key) >= 40
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        assert proc.post(GOOD, key=key).status_code == 200
        assert proc.post(GOOD, key=None).status_code == 401
        log = proc.log_text()
        assert str(key_file) in log and key not in log
    finally:
        proc.stop()
    # a restart keeps the same key and does not announce a new one
    proc2 = ReceiverProcess(tmp_path / "data", key=None).start()
    try:
        assert proc2.post(GOOD, key=key).status_code == 200
        assert "generated" not in proc2.log_text().split("Receiver listening")[-1]
    finally:
        proc2.stop()


def test_second_receiver_on_the_same_data_dir_refuses(receiver):
    from conftest import free_port

    result = subprocess.run(
        [sys.executable, str(ROOT / "receiver.py"), "--port", str(free_port()),
         "--host", "127.0.0.1", "--data-dir", str(receiver.data_dir)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={"PLOOMES_VALIDATION_KEYS": TEST_KEY, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "already running" in result.stderr


def _raw_http(receiver, request: bytes, read_for: float = 5.0) -> bytes:
    """Send raw bytes to the receiver and return what it answers until it closes."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", receiver.port), timeout=read_for) as sock:
        sock.sendall(request)
        answer, deadline = b"", time.monotonic() + read_for
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return answer + b"<closed>"
            answer += chunk
        return answer


def test_a_key_in_a_malformed_request_line_never_reaches_the_log(receiver):
    # werkzeug decodes `validation%5Fkey` to validation_key, so any spelling is a key
    for line in (b"POST /ploomes/webhook?validation_key=SECRETAAA1 BAD/9\r\n\r\n",
                 b"POST /ploomes/webhook?validation%5Fkey=SECRETBBB2 HTTP/1.1 x\r\n\r\n",
                 b"\x16\x03 /?x=1&Validation_Key=SECRETCCC3\r\n\r\n"):
        answer = _raw_http(receiver, line)
        assert answer.startswith(b"HTTP/1.1 400") or answer == b"<closed>", answer
    assert receiver.session.get(receiver.url + "/healthz", timeout=5).status_code == 200
    log = receiver.log_text()
    assert "SECRET" not in log, log


def test_a_body_that_ends_before_its_content_length_gets_a_clear_400(receiver):
    import socket

    head = (b"POST /ploomes/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Ploomes-Validation-Key: " + TEST_KEY.encode() + b"\r\n"
            b"Content-Length: 100\r\n\r\n")
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(head + b'{"Action": "Update"')
        sock.shutdown(socket.SHUT_WR)  # the client stops sending: 81 bytes never come
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"the body ended before its Content-Length" in answer
    assert receiver.post(GOOD).status_code == 200  # still serving
    assert "Traceback" not in receiver.log_text()


def test_a_refused_huge_body_closes_the_connection_instead_of_being_read(receiver):
    # 401 after the headers: the receiver must not keep reading a declared 1 GiB body
    head = (b"POST /ploomes/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Ploomes-Validation-Key: wrong-key-000000000000000000\r\n"
            b"Content-Length: 1073741824\r\n\r\n")
    answer = _raw_http(receiver, head + b"{" + b" " * 100_000)
    assert answer.startswith(b"HTTP/1.1 401") and answer.endswith(b"<closed>"), answer[:200]
    # a small refused body keeps its connection (read and dropped as usual)
    small = json.dumps({"Action": "Update"}).encode()
    answer = _raw_http(receiver, b"POST /ploomes/webhook HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(small) + small, read_for=1.5)
    assert answer.startswith(b"HTTP/1.1 401") and not answer.endswith(b"<closed>")


SWEEP_SCRIPT = r"""
import gevent, receiver

def app(environ, start_response):
    if environ["PATH_INFO"] == "/big":  # more than the socket buffers hold
        start_response("200 OK", [("Content-Length", str(32 << 20))])
        return (b"x" * (1 << 20) for _ in range(32))
    seconds = {"/slow": 1.4, "/stuck": 4}.get(environ["PATH_INFO"], 0)
    gevent.sleep(seconds)
    try:
        environ["wsgi.input"].read()
    except OSError:  # the body ended before its Content-Length
        start_response("400 Bad Request", [("Content-Length", "3")])
        return [b"bad"]
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

receiver.serve(app, "127.0.0.1", 0, on_ready=lambda port: print(port, flush=True),
               guard=receiver.ConnectionGuard(header_timeout=1.0, idle_timeout=1.0))
"""


def test_silent_or_stuck_connections_are_closed_and_busy_ones_kept():
    import socket
    import threading
    import time

    server = subprocess.Popen([sys.executable, "-c", SWEEP_SCRIPT], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(server.stdout.readline())
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

        def until_closed(sock) -> bytes:
            """What the server sends until it closes (15 s at most); b"<open>" if it did not."""
            sock.settimeout(15)
            answer = b""
            try:
                while chunk := sock.recv(1 << 20):
                    answer += chunk
            except TimeoutError:
                return answer + b"<open>"
            except ConnectionResetError:
                pass
            return answer

        def trickle(sock) -> None:  # a body declared as 100 bytes, sent a byte at a time
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                time.sleep(0.1)
                try:
                    sock.sendall(b"x")
                except OSError:
                    return

        socks = {name: socket.create_connection(("127.0.0.1", port)) for name in
                 ("silent", "partial", "kept_alive", "slow", "stuck", "trickle", "busy",
                  "unread")}
        socks["partial"].sendall(b"GET / HTT")
        socks["kept_alive"].sendall(request)
        socks["slow"].sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        socks["stuck"].sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        socks["unread"].sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # never read...
        threading.Thread(target=trickle, args=(socks["trickle"],), daemon=True).start()
        # a connection that keeps asking, for 3 times the idle limit, is never closed
        busy = socks["busy"]
        busy.settimeout(10)
        for _ in range(30):
            busy.sendall(request)
            answer = b""
            while not answer.endswith(b"\r\n\r\nok"):  # headers and body come in 2 writes
                chunk = busy.recv(4096)
                assert chunk, answer  # closed while in use
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            time.sleep(0.1)
        assert until_closed(socks["silent"]) == b""  # no request within the header time
        partial = until_closed(socks["partial"])  # a request line that never completed
        assert partial.startswith(b"HTTP/1.1 408"), partial
        assert until_closed(socks["kept_alive"]).startswith(b"HTTP/1.1 200")  # then idle
        # 1.4 s in one request: no longer read after 1 s, but its answer still goes out
        assert until_closed(socks["slow"]).endswith(b"\r\n\r\nok")
        assert until_closed(socks["stuck"]) == b""  # 4 s in one request: cut after 2 s
        assert until_closed(socks["trickle"]).startswith(b"HTTP/1.1 400")  # body ended early
        # ... until now: the answer stuck in its write was cut after 2 s (read at once,
        # all 32 MiB would have come)
        unread = until_closed(socks["unread"])
        assert unread.startswith(b"HTTP/1.1 200") and len(unread) < 32 << 20, len(unread)
        for sock in socks.values():
            sock.close()
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=30)
    # the cuts are quiet: no traceback from gevent's hub
    assert "Traceback" not in errors and "Error" not in errors, errors

