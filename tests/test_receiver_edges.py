"""The receiver's edges facing a network (issue 17): slow clients, request framing, bad
bytes, keys in logs, what /healthz tells whom, a full disk, a store that does not open,
big integers and file modes. Each test runs the real receiver on a loopback port."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import threading
import time

import requests
from conftest import TEST_KEY, ReceiverProcess, query, wait_for

from ploomes.config import Settings
from ploomes.store import Store

GOOD = {"Action": "Update", "Entity": "Contacts", "ActionUserId": 1, "New": {"Id": 5}}
HEADERS = {"X-Ploomes-Validation-Key": TEST_KEY, "Content-Type": "application/json"}


def raw_http(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes and return everything answered until the server closes (with
    b"<open>" after it if the server kept the connection open for `timeout` seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            answer += b"<open>"
        return answer


def post_line(port: int, request_line: bytes, headers: bytes = b"", body: bytes = b"{}"
              ) -> bytes:
    """POST `body` with a given request line (and extra header lines); return the answer."""
    return raw_http(port, request_line + b"\r\nHost: x\r\nConnection: close\r\n" + headers
                    + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def read_answer(sock: socket.socket) -> bytes:
    """Read one whole answer (headers, then Content-Length bytes) from a kept connection."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, answer  # closed before its answer
        answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, answer
        body += chunk
    return head + b"\r\n\r\n" + body


class Tricklers:
    """Connections that send a request line, then one header byte now and then, forever.

    A thread keeps them trickling and notes each one the server answers or closes.
    `sources` are local addresses the connections come from (127.0.0.x all reach the
    loopback receiver).
    """

    def __init__(self, port: int, count: int, sources: list[str]):
        self.socks: list[socket.socket] = []
        for n in range(count):
            sock = socket.socket()
            sock.bind((sources[n % len(sources)], 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"POST /ploomes/webhook HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sock.setblocking(False)
            self.socks.append(sock)
        self.closed: set[int] = set()  # indexes of the connections the server ended
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        by_fd = {sock.fileno(): n for n, sock in enumerate(self.socks)}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while not self._stop.wait(0.25):
            for fd, _ in poller.poll(0):  # an answer (408) or the end of the stream
                poller.unregister(fd)
                with self._lock:
                    self.closed.add(by_fd[fd])
            for n, sock in enumerate(self.socks):
                if n not in self.closed:
                    try:
                        sock.send(b"a")
                    except OSError:
                        with self._lock:
                            self.closed.add(n)

    def open_count(self) -> int:
        with self._lock:
            return len(self.socks) - len(self.closed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


def normal_client_answers(receiver: ReceiverProcess, rounds: int = 10) -> list[int]:
    """POST GOOD `rounds` times on new connections and on one kept alive; the statuses."""
    statuses = []
    with requests.Session() as kept:
        for _ in range(rounds):
            # generous timeouts: the point is that answers come, not how fast
            statuses.append(requests.post(receiver.webhook_url, json=GOOD, headers=HEADERS,
                                          timeout=15).status_code)
            statuses.append(kept.post(receiver.webhook_url, json=GOOD, headers=HEADERS,
                                      timeout=15).status_code)
            statuses.append(requests.get(receiver.url + "/healthz", timeout=15).status_code)
    return statuses


# --- 5: slow clients ----------------------------------------------------------------


def test_1000_trickling_connections_from_one_address_do_not_starve_a_normal_client(tmp_path):
    # A header time far beyond the test: only the per-client cap can close them
    proc = ReceiverProcess(tmp_path / "data", extra_env={
        "PLOOMES_HEADER_TIMEOUT_SECONDS": "600"}).start()
    tricklers = Tricklers(proc.port, 1000, ["127.0.0.1"])
    try:
        assert normal_client_answers(proc) == [200] * 30
        # at most 32 slow connections per client are kept (each newcomer from the same
        # address, the normal client's too, closes the oldest); the others were closed
        wait_for(lambda: 0 < tricklers.open_count() <= 32, timeout=30)
        assert normal_client_answers(proc, rounds=2) == [200] * 6
    finally:
        tricklers.close()
        proc.stop()
    log = proc.log_text()
    assert "sent their request too slowly" in log and "Traceback" not in log


def test_1000_trickling_connections_from_many_addresses_do_not_starve_a_normal_client(
        tmp_path):
    # 25 connections from each of 40 addresses: each within the per-client cap, together
    # as many as the receiver's connection limit. With a header time beyond the test,
    # only closing the slowest one when a newcomer needs the room lets it in.
    proc = ReceiverProcess(tmp_path / "data", extra_env={
        "PLOOMES_HEADER_TIMEOUT_SECONDS": "600"}).start()
    tricklers = Tricklers(proc.port, 1000, [f"127.0.0.{n}" for n in range(2, 42)])
    try:
        assert normal_client_answers(proc) == [200] * 30
        assert tricklers.open_count() > 900  # room was made one connection at a time
    finally:
        tricklers.close()
        proc.stop()
    assert "Traceback" not in proc.log_text()


def test_trickling_connections_are_cut_at_the_header_timeout_and_idle_ones_kept(tmp_path):
    proc = ReceiverProcess(tmp_path / "data", extra_env={
        "PLOOMES_HEADER_TIMEOUT_SECONDS": "2"}).start()
    tricklers = Tricklers(proc.port, 100, [f"127.0.0.{n}" for n in range(2, 6)])
    try:
        wait_for(lambda: tricklers.open_count() == 0, timeout=60)  # while still trickling
        assert normal_client_answers(proc, rounds=2) == [200] * 6
        # a kept-alive connection waiting between requests is not held to the header time
        with socket.create_connection(("127.0.0.1", proc.port), timeout=15) as sock:
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            sock.sendall(request)
            assert read_answer(sock).startswith(b"HTTP/1.1 200")
            time.sleep(3)  # longer than the header time, well within the idle time
            sock.sendall(request)
            assert read_answer(sock).startswith(b"HTTP/1.1 200")
    finally:
        tricklers.close()
        proc.stop()
    log = proc.log_text()
    assert "connections that sent their request too slowly" in log
    assert "Traceback" not in log


# --- 6: /healthz says when deliveries cannot be stored ------------------------------


def test_healthz_answers_503_while_the_disk_refuses_journal_writes(tmp_path):
    """Files may not grow past a limit (RLIMIT_FSIZE): the journal runs out of room.

    Each big delivery takes exactly 32 KiB of journal (a 28-byte header and its body),
    and the limit leaves 600 bytes after 96 of them: the 97th does not fit, a small one
    still does.
    """
    big_body = json.dumps({**GOOD, "New": {"Id": 5, "Note": ""}}).encode()
    big_body = big_body.replace(b'"Note": ""', b'"Note": "' + b"x" * (32768 - 28 - len(big_body))
                                + b'"')
    assert len(big_body) + 28 == 32768
    proc = ReceiverProcess(tmp_path / "data", max_file_bytes=96 * 32768 + 600, extra_env={
        "PLOOMES_JOURNAL_SEGMENT_BYTES": str(64 << 20)}).start()
    try:
        for _ in range(96):
            assert proc.post(big_body).status_code == 200
        assert proc.session.get(proc.url + "/healthz", timeout=5).status_code == 200
        assert proc.post(big_body).status_code == 503
        health = proc.session.get(proc.url + "/healthz", timeout=5)
        assert health.status_code == 503
        assert health.json()["status"] == "failing"
        assert health.json()["journal_error"]  # what the disk said, for this machine
        metrics = proc.session.get(proc.url + "/metrics", timeout=5).text
        assert "ploomes_journal_ok 0.0" in metrics
        assert proc.post(GOOD).status_code == 200  # room for a small one: stored again
        health = proc.session.get(proc.url + "/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["journal_error"] is None
    finally:
        proc.stop()


# --- 7: bad bytes in the request line -----------------------------------------------


def test_bad_bytes_anywhere_in_the_request_line_get_a_400_and_one_log_line(receiver):
    lines = [b"POST /ploomes/webhook?a=\xff HTTP/1.1",  # was a 503 and a traceback
             b"POST /ploomes/webhook?validation_key=\xc3\xa9 HTTP/1.1",
             b"POST /ploomes/we\xffbhook HTTP/1.1",
             b"POST /ploomes/webhook HTTP/1.\xff",
             b"PO\x00ST /ploomes/webhook HTTP/1.1",
             b"POST /ploomes/webhook?a=\x7f HTTP/1.1",
             b"POST /ploomes/webhook?a=\tb HTTP/1.1",
             b"\x16\x03\x01\x02\x00 / HTTP/1.1"]
    before = receiver.log_text().count("\n")
    rounds = 10
    for _ in range(rounds):
        for line in lines:
            answer = post_line(receiver.port, line)
            assert answer.startswith(b"HTTP/1.1 400"), (line, answer)
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["reason"] == (
                "malformed request line")
    assert receiver.post(GOOD).status_code == 200  # still serving
    log = receiver.log_text()
    new_lines = log.splitlines()[before:]
    refused = [line for line in new_lines if "refused a request from 127.0.0.1" in line]
    assert len(refused) == rounds * len(lines), new_lines[:20]
    assert len(new_lines) == len(refused)  # one line each, nothing else
    assert "Traceback" not in log and "ERROR" not in log
    assert "byte 0xff at 24" in refused[0]  # where the bad byte was, not what followed


# --- 8: the key never reaches the log -----------------------------------------------


def test_the_key_is_redacted_wherever_it_appears_in_a_request_line_or_its_headers(receiver):
    key = TEST_KEY.encode()
    lines = [b"POST /ploomes/webhook?a=b validation_key=" + key + b" HTTP/1.1",
             b"POST /ploomes/webhook?a=\"b validation_key=" + key + b"\" HTTP/1.1",
             b"POST /ploomes/webhook?a='b' validation_key='" + key + b"' HTTP/1.1",
             b"POST \"/ploomes/webhook validation_key=" + key + b"\" HTTP/1.1",
             b"POST /ploomes/webhook validation_key=" + key + b" HTTP/1.1",
             b"POST /ploomes/webhook?validation%5Fkey=" + key + b" x HTTP/1.1",
             b"POST /" + key + b" HTTP/1.1 extra",
             b"POST " + key + b" HTTP/1.1"]
    answers = [post_line(receiver.port, line) for line in lines]
    # a malformed request whose headers hold the key (and the key again in the query)
    bad_headers = (b"X-Ploomes-Validation-Key: " + key + b"\r\nContent-Length: 3\r\n")
    answers.append(post_line(receiver.port, b"POST /ploomes/webhook?validation_key=" + key
                             + b" HTTP/1.1", bad_headers))
    answers.append(raw_http(receiver.port, b"POST /ploomes/webhook HTTP/1.1\r\nHost: x\r\n"
                            b"X-Ploomes-Validation-Key: " + key + b"\r\nnot a header " + key
                            + b"\r\n\r\n"))
    log = receiver.log_text()
    assert TEST_KEY not in log
    assert TEST_KEY[:12] not in log  # not even a part of it
    assert all(answer.startswith(b"HTTP/1.1 400") for answer in answers), answers
    assert log.count("refused a request") == len(answers)


# --- 9: /healthz details for this machine only --------------------------------------


def broken_store(data_dir) -> None:
    """Make a DuckDB file in data_dir whose header is zeroed: it no longer opens."""
    settings = Settings(data_dir=data_dir)
    Store(settings).ensure_ready()
    with open(settings.db_path, "r+b") as fh:
        fh.write(b"\0" * 4096)


def test_healthz_shows_paths_and_error_texts_only_to_local_clients(receiver):
    # the DuckDB file replaced by one that does not open, while the receiver runs
    garbage = receiver.data_dir / "garbage"
    garbage.write_bytes(b"\0" * 8192)
    os.replace(garbage, receiver.data_dir / "ploomes.duckdb")
    assert receiver.post(GOOD).status_code == 200
    local = wait_for(lambda: "not a valid DuckDB" in ((h := receiver.health())["ingest_error"]
                                                       or "") and h)
    assert str(receiver.data_dir) in local["ingest_error"]  # DuckDB's text names the file
    # through a reverse proxy every client arrives from 127.0.0.1, with the header: the
    # status and generic reasons only (the old answer carried the path and DuckDB's text)
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        answer = receiver.session.get(receiver.url + "/healthz", timeout=5,
                                      headers={header: "203.0.113.9"})
        assert answer.status_code == 200
        assert str(receiver.data_dir) not in answer.text and "DuckDB" not in answer.text
        body = answer.json()
        assert set(body) == {"status", "reasons"} and body["status"] == "degraded"
        assert body["reasons"]
    # broken while running: the way out is logged too, once
    wait_for(lambda: "python -m ploomes rebuild" in receiver.log_text())
    assert receiver.log_text().count("python -m ploomes rebuild") == 1


# --- 10: ambiguous framing ----------------------------------------------------------


def test_conflicting_framing_headers_get_a_400(receiver):
    key = b"X-Ploomes-Validation-Key: " + TEST_KEY.encode() + b"\r\n"
    body = json.dumps(GOOD).encode()
    head = b"POST /ploomes/webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + key
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    cases = {
        "two different Content-Length": (b"Content-Length: %d\r\nContent-Length: 5\r\n"
                                         % len(body), body),
        "Content-Length then chunked": (b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n"
                                        % len(body), body),
        "chunked then Content-Length": (b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n"
                                        % len(chunked), chunked),
        "an unknown coding": (b"Transfer-Encoding: gzip, chunked\r\n", chunked),
        "two codings": (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                        chunked),
        "a signed length": (b"Content-Length: +%d\r\n" % len(body), body),
        "a space before the colon": (b"Content-Length : %d\r\n" % len(body), body),
    }
    for name, (framing, payload) in cases.items():
        answer = raw_http(receiver.port, head + framing + b"\r\n" + payload)
        assert answer.startswith(b"HTTP/1.1 400"), (name, answer)
    # the same length twice is one length: accepted, as are the plain forms
    for framing, payload in ((b"Content-Length: %d\r\nContent-Length: %d\r\n"
                              % (len(body), len(body)), body),
                             (b"Content-Length: %d\r\n" % len(body), body),
                             (b"Transfer-Encoding: chunked\r\n", chunked)):
        answer = raw_http(receiver.port, head + framing + b"\r\n" + payload)
        assert answer.startswith(b"HTTP/1.1 200"), (framing, answer)
    receiver.wait_ingested()
    assert query(receiver.data_dir, "SELECT count(*) FROM events")[0][0] == 3


# --- 11: integers of any size -------------------------------------------------------


def test_integers_beyond_64_bits_stay_exact_wherever_they_are_stored(receiver):
    huge, negative, u64 = 2**70, -(2**65) - 7, 2**64 - 1
    raw = (b'{"Action": "Update", "Entity": "Deals", "ActionUserId": 3, "AccountId": 1, '
           b'"Old": {"Id": 9, "Amount": 1, "Code": %d}, '
           b'"New": {"Id": 9, "Amount": %d, "Code": %d, "Parts": [%d, 1.5]}}'
           % (u64, huge, negative, huge))
    assert receiver.post(raw).status_code == 200
    receiver.wait_ingested()
    old, new, payload = query(receiver.data_dir,
                              "SELECT old::VARCHAR, new::VARCHAR, payload::VARCHAR FROM events")[0]
    assert json.loads(old) == {"Id": 9, "Amount": 1, "Code": u64}
    assert json.loads(new) == {"Id": 9, "Amount": huge, "Code": negative, "Parts": [huge, 1.5]}
    assert payload.encode() == raw
    changes = dict(query(receiver.data_dir,
                         "SELECT field, new_value::VARCHAR FROM field_changes"))
    assert json.loads(changes["Amount"]) == huge and json.loads(changes["Code"]) == negative
    state = query(receiver.data_dir, "SELECT state::VARCHAR FROM record_state")[0][0]
    assert json.loads(state)["Amount"] == huge
    # ids kept in BIGINT columns: refused, with the reason that applies
    for field in ("AccountId", "ActionUserId", "WebhookId"):
        for value in (2**64, -(2**63) - 1, huge):
            answer = receiver.post(b'{"Action": "Update", "Entity": "Deals", "%s": %d}'
                                   % (field.encode(), value))
            assert answer.status_code == 400
            assert answer.json()["reason"] == f"{field} is out of range"
    answer = receiver.post(b'{"Action": "Update", "Entity": "Deals", "New": {"Id": %d}}' % huge)
    assert answer.json()["reason"] == "New.Id is out of range"


# --- 12: the data dir is its owner's only -------------------------------------------


def modes(data_dir) -> dict[str, str]:
    """Every entry under data_dir (itself included) and its permission bits."""
    found = {".": oct(stat.S_IMODE(os.stat(data_dir).st_mode))}
    for folder, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, data_dir)] = oct(stat.S_IMODE(os.stat(path).st_mode))
    return found


def test_the_data_dir_is_0700_and_every_file_the_receiver_creates_0600(tmp_path):
    old_umask = os.umask(0o022)  # what most machines have: files 0644, folders 0755
    try:
        proc = ReceiverProcess(tmp_path / "fresh" / "data", key=None).start()
    finally:
        os.umask(old_umask)
    try:
        assert proc.post(GOOD, key=(proc.data_dir / "keys" / "validation-keys.txt")
                         .read_text().strip()).status_code == 200
        proc.wait_ingested()
        found = modes(proc.data_dir)
    finally:
        proc.stop()
    assert {"journal", "keys", "keys/validation-keys.txt", "ploomes.duckdb"} <= set(found)
    for name, mode in found.items():
        wanted = "0o700" if (proc.data_dir / name).is_dir() else "0o600"
        assert mode == wanted, (name, mode, found)


def test_a_data_dir_open_to_others_is_made_private_at_start(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    proc = ReceiverProcess(data_dir).start()
    try:
        assert oct(stat.S_IMODE(os.stat(data_dir).st_mode)) == "0o700"
        assert "now its owner's only" in proc.log_text()
    finally:
        proc.stop()


# --- 4: a DuckDB file that does not open --------------------------------------------


def test_a_store_that_does_not_open_does_not_stop_the_receiver_and_says_how_to_mend_it(
        tmp_path):
    data_dir = tmp_path / "data"
    broken_store(data_dir)
    proc = ReceiverProcess(data_dir).start(status="degraded")
    try:
        accepted = [proc.post({**GOOD, "New": {"Id": n}}) for n in range(5)]
        assert [r.status_code for r in accepted] == [200] * 5  # journaled all the same
        health = proc.health()
        assert health["store"] == "damaged" and health["backlog"] == 5
        assert proc.session.get(proc.url + "/healthz", timeout=5).status_code == 200
        metrics = proc.session.get(proc.url + "/metrics", timeout=5).text
        assert "ploomes_store_ok 0.0" in metrics and "ploomes_journal_ok 1.0" in metrics
        # the ingest retries with backoff; the way out is logged once, not per retry
        wait_for(lambda: "ploomes_ingest_errors 3.0" in proc.session.get(
            proc.url + "/metrics", timeout=5).text, timeout=30)
        log = proc.log_text()
        assert log.count("python -m ploomes rebuild") == 1, log
        assert log.count("ingest paused") == 1, log
        # the broken file set aside (what rebuild does): the journal fills a new one
        (data_dir / "ploomes.duckdb").rename(data_dir / "ploomes.duckdb.broken")
        health = wait_for(lambda: (h := proc.health())["status"] == "ok" and h, timeout=30)
        assert health["store"] == "ok"
        proc.wait_ingested()
        ids = sorted(row[0] for row in query(data_dir, "SELECT id FROM events"))
        assert ids == sorted(r.json()["delivery_id"] for r in accepted)
        assert "ploomes_store_ok 1.0" in proc.session.get(proc.url + "/metrics", timeout=5).text
        assert "opens again" in proc.log_text()
    finally:
        proc.stop()
