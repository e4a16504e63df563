"""Concurrency and crash safety with real processes: readers, kill -9, a foreign lock."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import ROOT, TEST_KEY, ReceiverProcess, process_running, query, wait_for


def delivery(n: int) -> dict:
    return {"Action": "Update", "Entity": "Deals", "AccountId": 1, "ActionUserId": 10 + n % 3,
            "WebhookId": 77, "Old": {"Id": 1000 + n, "Title": f"Negócio {n}"},
            "New": {"Id": 1000 + n, "Title": f"Negócio {n} (revisão)", "Seq": n}}


class Load:
    """Sends deliveries from several threads and remembers which got a 2xx."""

    def __init__(self, url: str, threads: int = 4):
        self.url = url
        self.threads = threads
        self.accepted: dict[int, int] = {}  # n -> delivery_id
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._counter = 0

    def _next(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            n = self._next()
            try:
                r = session.post(self.url, data=json.dumps(delivery(n)), timeout=10,
                                 headers={"X-Ploomes-Validation-Key": TEST_KEY})
            except requests.RequestException:
                continue  # the server may be gone (kill -9): not acknowledged
            if r.status_code == 200:
                with self._lock:
                    self.accepted[n] = r.json()["delivery_id"]
            else:
                self.errors.append(f"{r.status_code} {r.text}")

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run) for _ in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for w in self._workers:
            w.join()


READER_SCRIPT = r"""
import sys, threading
from ploomes.config import load_settings
from ploomes.store import Store, fetch_one
store = Store(load_settings(env={}, data_dir=sys.argv[1]))
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
last = 0
while not done.is_set():  # until the test closes our stdin
    with store.reader() as con:
        n = fetch_one(con, "SELECT count(*) FROM events")[0]
    assert n >= last, (n, last)  # never goes backwards
    last = n
    print(n, flush=True)
"""


def test_reader_process_during_steady_load(receiver):
    reader = subprocess.Popen([sys.executable, "-c", READER_SCRIPT, str(receiver.data_dir)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    counts: list[int] = []
    with Load(receiver.webhook_url) as load:
        # one line per read: read while deliveries keep coming, until reads see them grow
        # (a few thousand reads at most: a stalled ingest fails the test, not hangs it)
        for line in reader.stdout:
            counts.append(int(line))
            if (len(counts) >= 5 and counts[-1] > counts[0]) or len(counts) > 5000:
                break
    _, err = reader.communicate(input="", timeout=60)  # closing stdin stops it
    assert len(counts) >= 5 and counts[-1] > counts[0], counts[-5:]
    assert reader.returncode == 0, err
    assert not load.errors
    receiver.wait_ingested()
    ids = [r[0] for r in query(receiver.data_dir, "SELECT id FROM events ORDER BY id")]
    assert sorted(load.accepted.values()) == ids  # nothing missing, nothing extra
    assert "Traceback" not in receiver.log_text()


def children(parent: int) -> list[int]:
    """Return the running processes whose parent is `parent` (the receiver's: its ingest
    process and multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and process_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_kill_9_during_load_loses_no_acknowledged_delivery(tmp_path):
    # 16 KiB segments: the kill may land in a new segment's first group, or between
    # starting a segment and writing to it
    proc = ReceiverProcess(tmp_path / "data", extra_env={
        "PLOOMES_JOURNAL_SEGMENT_BYTES": str(16 * 1024)}).start()
    try:
        with Load(proc.webhook_url, threads=6) as load:
            wait_for(lambda: len(load.accepted) > 300, timeout=30)
            helpers = children(proc.proc.pid)
            proc.kill()  # SIGKILL: no chance to flush or close anything
        assert helpers  # the ingest process at least
        # the receiver's children end with it, not orphaned (the ingest holds no lock
        # a restarted receiver would wait for)
        wait_for(lambda: not any(map(process_running, helpers)), timeout=10)
        acknowledged = dict(load.accepted)
        assert acknowledged
        _restart_and_check_stored(proc, acknowledged)
    finally:
        proc.stop()


def _restart_and_check_stored(proc: ReceiverProcess, acknowledged: dict[int, int]) -> None:
    """Start the receiver again: every acknowledged delivery is in `events`, once."""
    proc.start()
    proc.wait_ingested(timeout=30)
    rows = query(proc.data_dir, "SELECT id, payload::VARCHAR FROM events")
    stored = {}
    for event_id, payload in rows:
        stored.setdefault(json.loads(payload)["New"]["Seq"], []).append(event_id)
    for n, delivery_id in acknowledged.items():
        assert stored.get(n) == [delivery_id], n  # present, exactly once
    assert len(rows) == len({r[0] for r in rows})


def test_ctrl_c_during_load_stops_gracefully_and_keeps_every_answered_delivery(tmp_path):
    proc = ReceiverProcess(tmp_path / "data").start()
    try:
        with Load(proc.webhook_url, threads=6) as load:
            wait_for(lambda: len(load.accepted) > 300, timeout=30)
            helpers = children(proc.proc.pid)
            proc.proc.send_signal(signal.SIGINT)  # Ctrl-C: stop like SIGTERM does
            assert proc.proc.wait(timeout=20) == 0
        # requests in progress were answered; one arriving on a kept-alive connection
        # after the stop began is refused whole (503), never killed inside the app
        # (gevent's bare 500: ~1 run in 3 before, on SIGTERM as well)
        assert not [e for e in load.errors if not e.startswith("503")], load.errors[:3]
        assert "Traceback" not in proc.log_text()
        assert helpers  # the ingest process (joined) and the resource tracker end too
        wait_for(lambda: not any(map(process_running, helpers)), timeout=10)
        _restart_and_check_stored(proc, dict(load.accepted))
    finally:
        proc.stop()


HOLDER_SCRIPT = r"""
import sys, time, duckdb
deadline = time.monotonic() + 20
while True:  # the ingest may still hold the file for its last step: retry, as a user would
    try:
        con = duckdb.connect(sys.argv[1])  # read-write, outside the project's lock
        break
    except duckdb.IOException:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.02)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def test_foreign_program_holding_the_file(receiver):
    assert receiver.post(delivery(0)).status_code == 200
    receiver.wait_ingested()
    db = receiver.data_dir / "ploomes.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(db), "10"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    started = time.monotonic()
    answered = []
    n = 1
    while time.monotonic() - started < 9:
        r = receiver.post(delivery(n))
        answered.append(r.status_code)
        n += 1
        time.sleep(0.05)
    assert set(answered) == {200}
    assert receiver.health()["backlog"] > 0  # waiting for the file, still answering
    holder.wait(timeout=30)
    receiver.wait_ingested(timeout=30)
    assert query(receiver.data_dir, "SELECT count(*) FROM events")[0][0] == n
    assert receiver.health()["status"] == "ok"


def test_parallel_deliveries_share_journal_syncs(tmp_path):
    """Many concurrent posts: every answer is durable and ids are unique and dense, also
    across the many segment boundaries of a journal with the smallest segments."""
    from ploomes.intake.journal import iter_records, segment_paths

    receiver = ReceiverProcess(tmp_path / "data", extra_env={
        "PLOOMES_JOURNAL_SEGMENT_BYTES": "4096"}).start()
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: receiver.post(delivery(i)), range(400)))
        assert {r.status_code for r in results} == {200}
        ids = sorted(r.json()["delivery_id"] for r in results)
        assert ids == list(range(ids[0], ids[0] + 400))
        receiver.wait_ingested()
        assert query(receiver.data_dir, "SELECT count(*) FROM events")[0][0] == 400
    finally:
        receiver.stop()
    journal = receiver.data_dir / "journal"
    assert len(segment_paths(journal)) > 10
    stored = {json.loads(r.payload)["New"]["Seq"]: r.seq for r in iter_records(journal)}
    assert stored == {i: r.json()["delivery_id"] for i, r in enumerate(results)}


@pytest.mark.parametrize("keep_reader", [0.0, 60.0])
def test_a_reader_lets_a_writer_in_and_then_sees_its_rows(settings, keep_reader):
    from ploomes.store import Store, fetch_one

    # a kept reader (the dashboard's) holds the file until a writer waits
    dashboard = Store(settings, keep_reader=keep_reader)
    with dashboard.reader() as con:
        assert fetch_one(con, "SELECT count(*) FROM users")[0] == 0
    other = Store(settings)  # another program's writer (the receiver's worker)
    with other.writer() as con:
        con.execute("INSERT INTO users (id, name, email, suspended, synced_at) "
                    "VALUES (1, 'Conceição', NULL, false, now())")
    with dashboard.reader() as con:
        assert fetch_one(con, "SELECT name FROM users") == ("Conceição",)


@pytest.mark.parametrize("keep_reader", [0.0, 0.5])
def test_readers_never_see_lock_errors_while_a_writer_works(settings, keep_reader):
    from ploomes.store import Store, fetch_one

    store = Store(settings, keep_reader=keep_reader)
    writes = 40
    errors: list[Exception] = []
    reads = [0, 0, 0]
    written = threading.Event()

    def write():
        try:
            for i in range(writes):
                with store.writer() as con:
                    con.execute("INSERT INTO users (id, name, email, suspended, "
                                "synced_at) VALUES (?, 'Usuário', NULL, false, now())", [i])
        finally:
            written.set()

    def read(n: int):
        try:
            # read at least once after the writes, however the threads were scheduled
            while True:
                done = written.is_set()
                with store.reader() as con:
                    fetch_one(con, "SELECT count(*) FROM users")
                reads[n] += 1
                if done:
                    return
        except Exception as exc:  # noqa: BLE001 - any error fails the test
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(n,))
                                                  for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert all(reads)
    with store.reader() as con:
        assert fetch_one(con, "SELECT count(*) FROM users")[0] == writes


def test_full_disk_answers_503_and_keeps_everything_acknowledged(tmp_path):
    """Files may not grow past a limit (RLIMIT_FSIZE): the journal runs out of room."""
    from ploomes.intake.journal import iter_records

    limit = 3 * 1024 * 1024
    # segments larger than the limit: the journal's writes run out of room inside a
    # segment (each failed write is cut back), not when starting a new one
    proc = ReceiverProcess(tmp_path / "data", max_file_bytes=limit, extra_env={
        "PLOOMES_JOURNAL_SEGMENT_BYTES": str(8 * limit)}).start()
    padding = "á" * 20_000
    answers: dict[int, int] = {}
    try:
        for n in range(400):  # ~40 KB each: well past the limit
            body = dict(delivery(n), New={"Id": 1000 + n, "Seq": n, "Note": padding})
            r = proc.post(body)
            assert r.status_code in (200, 503), r.text
            answers[n] = r.status_code
            if r.status_code == 503:
                assert r.json()["status"] == "refused"
        assert 503 in answers.values() and 200 in answers.values()
        assert proc.session.get(proc.url + "/healthz", timeout=5).status_code in (200, 503)
    finally:
        proc.stop()
    accepted = {n for n, status in answers.items() if status == 200}
    # every record in the journal is whole, and every acknowledged one is there
    seen = [json.loads(r.payload)["New"]["Seq"] for r in iter_records(proc.data_dir / "journal")]
    assert accepted <= set(seen)
    restarted = ReceiverProcess(tmp_path / "data").start()  # room again
    try:
        assert restarted.post(delivery(10_000)).status_code == 200
        restarted.wait_ingested(timeout=60)
        stored = {json.loads(p)["New"]["Seq"] for (p,) in query(
            restarted.data_dir, "SELECT payload::VARCHAR FROM events")}
        assert accepted | {10_000} <= stored
        # a full disk is the machine's problem, not the records': none was set aside
        assert query(restarted.data_dir,
                     "SELECT count(*) FROM rejected_deliveries WHERE status = 200")[0][0] == 0
    finally:
        restarted.stop()
