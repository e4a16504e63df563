"""GroupCommit: journal appends from many greenlets, grouped, synced by a helper process."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gevent
import pytest
from conftest import ROOT, process_running, refusal, run_script

from ploomes import green, syncd
from ploomes.delivery import InvalidDelivery, check_delivery
from ploomes.green import GroupCommit, SyncHelper
from ploomes.journal import (
    FLAG_DEMO,
    KIND_DELIVERY,
    KIND_REJECTED,
    Journal,
    JournalWriteError,
    Record,
    encode,
    iter_records,
)
from ploomes.service import DeliveryService

DEAL = b'{"Action": "Create", "Entity": "Deals", '  # how each valid delivery below starts


def _counting_groups(journal: Journal) -> list[int]:
    """Record the size of every group the journal is asked to append."""
    groups: list[int] = []
    real = journal.append_entries

    def counting(entries, durable=True):
        groups.append(len(entries))
        return real(entries, durable)

    journal.append_entries = counting
    return groups


def test_many_greenlets_get_dense_durable_sequence_numbers_in_few_groups(tmp_path):
    journal = Journal(tmp_path / "j")
    groups = _counting_groups(journal)
    commit = GroupCommit(journal)
    got: dict[int, int] = {}

    def request(n: int) -> None:
        [seq] = commit.append_entries([(DEAL + b'"n": %d}' % n, KIND_DELIVERY, 0, None)])
        assert journal.synced_seq >= seq  # answered only once on disk
        got[n] = seq

    gevent.joinall([gevent.spawn(request, n) for n in range(300)], raise_error=True)
    assert sorted(got.values()) == list(range(1, 301))
    assert sum(groups) == 300 and len(groups) < 300  # grouped, not one sync each
    journal.close()
    assert sorted(r.payload for r in iter_records(tmp_path / "j")) == sorted(
        f'{{"Action": "Create", "Entity": "Deals", "n": {n}}}'.encode() for n in range(300))


def test_a_refusal_does_not_wait_and_rides_with_the_next_group(tmp_path):
    journal = Journal(tmp_path / "j")
    groups = _counting_groups(journal)
    commit = GroupCommit(journal)
    assert commit.append_entries([(b'{"refused": 1}', KIND_REJECTED, 0, None)],
                                 durable=False) is None
    assert groups == [] and journal.synced_seq == 0  # returned before any write
    [seq] = commit.append_entries([(DEAL + b'"n": 1}', KIND_DELIVERY, 0, None)])
    assert seq == 2
    assert groups == [2]  # written and synced together, in one group
    journal.close()
    assert [(r.seq, r.kind) for r in iter_records(tmp_path / "j")] == [
        (1, KIND_REJECTED), (2, KIND_DELIVERY)]


def test_a_broken_journal_fails_every_waiting_request_and_the_next_ones(tmp_path):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    journal._fail_all("cannot sync the journal: [Errno 5] Input/output error")
    outcomes, errors = [], []

    def request(n: int) -> None:
        try:
            commit.append_entries([(DEAL + b'"n": %d}' % n, KIND_DELIVERY, 0, None)])
            outcomes.append("stored")
        except JournalWriteError as exc:
            outcomes.append(str(exc))
            errors.append(exc)

    gevent.joinall([gevent.spawn(request, n) for n in range(5)])
    assert outcomes == ["cannot sync the journal: [Errno 5] Input/output error"] * 5
    # one exception per request, each with its own short traceback (one shared exception
    # raised in every request piled up all their frames)
    assert len({id(exc) for exc in errors}) == 5
    assert all(len(traceback.extract_tb(exc.__traceback__)) < 5 for exc in errors)
    with pytest.raises(JournalWriteError):
        commit.append_entries([(DEAL + b'"n": 9}', KIND_DELIVERY, 0, None)])
    journal.close()


def test_groups_are_synced_by_the_helper_process_and_it_ends_with_the_commit(tmp_path):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    pid = commit.syncer.pid
    assert pid is not None and process_running(pid)
    asked = []
    real = commit.syncer._ask

    def counting(path, start, end):
        reply = real(path, start, end)
        asked.append((path, reply))
        return reply

    commit.syncer._ask = counting
    gevent.joinall([gevent.spawn(commit.append_entries, [(DEAL + b'"n": %d}' % n, KIND_DELIVERY,
                                                          0, None)]) for n in range(50)],
                   raise_error=True)
    assert journal.synced_seq == 50
    # every group's sync went to the helper, which checked the group's deliveries too
    assert asked and {path for path, _ in asked} == {journal._path}
    assert all(outcome == 0 and checked is not None for _, (outcome, checked) in asked)
    commit.close()
    assert not process_running(pid) and commit.syncer.pid is None
    journal.close()
    assert len(list(iter_records(tmp_path / "j"))) == 50


# deliveries of one group: valid ones and refused ones, with the reason check_delivery gives
MIXED = [DEAL + b'"n": 1}', b'{"Entity": "Deals"}', DEAL + b'"n": 3}', b'[1, 2]',
         b'{"Action": "Win", "Entity": "Deals", "ActionUserId": "abc"}', DEAL + b'"n": 6}']


def _reason(body: bytes) -> str | None:
    return refusal(check_delivery, body)


def _checks_on_the_loop(monkeypatch, allowed: bool = True) -> list[bytes]:
    """Record (or, not allowed, fail on) each body this process checks for GroupCommit.

    The helper runs in its own process: only the receiver's own fallback lands here.
    """
    checked = []

    def check(raw: bytes) -> None:
        if not allowed:
            raise AssertionError("checked on the event loop while the helper runs")
        checked.append(raw)
        check_delivery(raw)

    monkeypatch.setattr(syncd, "check_delivery", check)
    return checked


def _post_group(commit: GroupCommit) -> list:
    """Append MIXED from one greenlet each (one group); return each one's seq or refusal."""
    def request(body: bytes) -> object:
        try:
            return commit.append_entries([(body, KIND_DELIVERY, 0, None)])[0]
        except InvalidDelivery as exc:
            return f"refused: {exc}"

    greenlets = [gevent.spawn(request, body) for body in MIXED]
    gevent.joinall(greenlets, raise_error=True)
    return [g.value for g in greenlets]


@contextmanager
def _mixed_group(tmp_path: Path, posts: int = 1, **journal_options
                 ) -> Iterator[tuple[Journal, GroupCommit]]:
    """A journal and its GroupCommit for MIXED; afterwards the journal must hold MIXED
    `posts` times, refused deliveries too (the ingest keeps those in
    rejected_deliveries, with the same reason)."""
    journal = Journal(tmp_path / "j", **journal_options)
    commit = GroupCommit(journal)
    try:
        yield journal, commit
    finally:
        commit.close()
        journal.close()
    assert [r.payload for r in iter_records(tmp_path / "j")] == MIXED * posts


def _expected_outcomes() -> list:
    return [f"refused: {_reason(body)}" if _reason(body) else seq
            for seq, body in enumerate(MIXED, 1)]


def test_the_helper_checks_each_group_and_refused_deliveries_stay_journaled(tmp_path,
                                                                            monkeypatch):
    with _mixed_group(tmp_path) as (journal, commit):
        _checks_on_the_loop(monkeypatch, allowed=False)
        groups = _counting_groups(journal)
        assert _post_group(commit) == _expected_outcomes()
        assert groups == [len(MIXED)]  # one group, checked by the helper
    assert [o for o in _expected_outcomes() if isinstance(o, str)] == [
        "refused: missing Action", "refused: body must be a JSON object, got list",
        "refused: ActionUserId must be an integer or null, got str"]


def test_without_the_helper_the_group_is_checked_on_the_loop(tmp_path, monkeypatch):
    with _mixed_group(tmp_path) as (_, commit):
        os.kill(commit.syncer.pid, signal.SIGKILL)
        checked_here = _checks_on_the_loop(monkeypatch)
        assert _post_group(commit) == _expected_outcomes()
        assert checked_here == MIXED and commit.syncer.pid is None


def test_verdicts_on_other_records_are_not_taken_for_the_group(tmp_path, monkeypatch):
    with _mixed_group(tmp_path) as (journal, commit):
        real = commit.syncer.datasync

        def elsewhere(fd, path, start, end):  # as if the last verdicts were on other records
            real(fd, path, start, end)
            commit.syncer.checked = (1000, 2000, {})

        journal.sync_elsewhere(elsewhere)
        checked_here = _checks_on_the_loop(monkeypatch)
        assert _post_group(commit) == _expected_outcomes()
        assert checked_here == MIXED  # checked on the loop instead


def test_groups_that_start_a_segment_are_checked_by_the_helper_too(tmp_path, monkeypatch):
    # segments of 64 bytes: every group starts a new one
    with _mixed_group(tmp_path, posts=3, segment_bytes=64) as (journal, commit):
        _checks_on_the_loop(monkeypatch, allowed=False)
        for _ in range(3):
            first = journal.synced_seq + 1
            assert _post_group(commit) == [o if isinstance(o, str) else o + first - 1
                                           for o in _expected_outcomes()]
    assert len(list((tmp_path / "j").glob("*.seg"))) == 3


FAKE_HELPER = r"""
import os, socket, sys
sys.path.insert(0, sys.argv[2])
from ploomes import syncd
sock = socket.socket(fileno=0)
while True:
    head = syncd.read_exactly(sock, syncd.REQUEST.size)
    if not head:
        break
    size, start, end = syncd.REQUEST.unpack(head)
    fd = os.open(syncd.read_exactly(sock, size), os.O_RDONLY)
    os.fdatasync(fd)
    os.close(fd)
    sock.sendall(syncd.REPLY.pack(0, 1, 1, 10**6, 9) + b"not JSON!")
"""


def test_a_malformed_reply_from_the_helper_falls_back_to_the_loop(tmp_path, monkeypatch):
    fake = tmp_path / "fake_syncd.py"
    fake.write_text(FAKE_HELPER.replace("sys.argv[2]", repr(str(ROOT))))
    monkeypatch.setattr(syncd, "__file__", str(fake))
    with _mixed_group(tmp_path) as (_, commit):
        assert commit.syncer.pid is not None
        # the group is durable and checked on the loop: no 503 for deliveries already kept
        assert _post_group(commit) == _expected_outcomes()
        assert commit.syncer.pid is None  # the helper is out of step: stopped, restarted later


def test_with_the_plain_journal_a_body_is_checked_before_it_is_journaled(settings):
    # outside the gevent receiver (no GroupCommit) a refused body is journaled as a
    # refusal, with its source address, and never as a delivery
    service = DeliveryService(settings, start_worker=False)
    try:
        assert service.accept(b"[1]", "192.0.2.7", time.perf_counter()) == (
            400, {"status": "refused", "reason": "body must be a JSON object, got list"})
        assert service.accept(DEAL + b'"n": 1}', "192.0.2.7", time.perf_counter()).status \
            == 200
    finally:
        service.close()
    refused, accepted = iter_records(settings.journal_dir)
    assert refused.kind == KIND_REJECTED and accepted.kind == KIND_DELIVERY
    assert json.loads(refused.payload)["source"] == "192.0.2.7"


def test_the_helper_checks_only_deliveries_nobody_checked():
    records = [(1, b"not json", KIND_DELIVERY, 0), (2, b"not json", KIND_DELIVERY, FLAG_DEMO),
               (3, b"not json", KIND_REJECTED, 0),
               (4, b"[" * (syncd.CHECK_HERE_MAX + 1), KIND_DELIVERY, 0)]
    data = b"".join(encode(Record(seq, kind, flags, 0, payload))
                    for seq, payload, kind, flags in records)
    # demo deliveries were checked when the dashboard sent them, refusals are not
    # deliveries, and a body over CHECK_HERE_MAX was checked by the receiver before
    assert syncd.check_range(data) == (1, 4, [(1, _reason(b"not json"))])
    assert syncd.check_range(data[:-1]) is None  # a torn record: the receiver checks
    assert syncd.check_range(data[1:]) is None
    assert syncd.check_range(b"") is None


def test_a_killed_helper_costs_no_delivery_and_is_started_again(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    first = commit.syncer.pid
    os.kill(first, signal.SIGKILL)
    synced_here = []
    real = os.fdatasync

    def fdatasync(fd):
        synced_here.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    seqs = []
    gevent.joinall([gevent.spawn(lambda n=n: seqs.append(commit.append_entries(
        [(DEAL + b'"n": %d}' % n, KIND_DELIVERY, 0, None)])[0])) for n in range(20)],
        raise_error=True)
    assert sorted(seqs) == list(range(1, 21)) and journal.synced_seq == 20
    assert journal._fd in synced_here  # synced with the journal's own descriptor meanwhile
    assert commit.syncer.pid is None
    commit.syncer._next_start = 0  # the restart delay has passed
    synced_here.clear()
    commit.append_entries([(DEAL + b'"n": 21}', KIND_DELIVERY, 0, None)])
    assert commit.syncer.pid not in (None, first) and synced_here == []
    commit.close()
    journal.close()
    assert len(list(iter_records(tmp_path / "j"))) == 21


def test_a_failed_sync_in_the_helper_stops_the_journal(tmp_path):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    [seq] = commit.append_entries([(DEAL + b'"n": 1}', KIND_DELIVERY, 0, None)])
    # fdatasync of /dev/null fails (EINVAL) like a failing disk would: the helper's
    # errno must reach the journal, not be mistaken for success
    journal._path = Path(os.devnull)
    with pytest.raises(JournalWriteError, match="cannot sync the journal"):
        commit.append_entries([(DEAL + b'"n": 2}', KIND_DELIVERY, 0, None)])
    assert journal.synced_seq == seq and journal.broken
    commit.close()
    journal.close()


def test_a_file_the_helper_cannot_open_is_synced_in_the_receiver(tmp_path, monkeypatch):
    syncer = SyncHelper()
    path = tmp_path / "segment"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"kept")
    synced_here = []
    monkeypatch.setattr(os, "fdatasync", synced_here.append)
    syncer.datasync(fd, tmp_path / "renamed-away")  # ENOENT in the helper
    assert synced_here == [fd]
    syncer.datasync(fd, path)  # the helper opens and syncs this one
    assert synced_here == [fd] and syncer.pid is not None
    syncer.close()
    os.close(fd)


SLOW_SYNC_PREAMBLE = r"""
import os, sys, gevent
from pathlib import Path
from ploomes.green import GroupCommit
from ploomes.journal import KIND_DELIVERY, KIND_REJECTED, Journal, JournalWriteError, iter_records

journal = Journal(Path(sys.argv[1]) / "j")
commit = GroupCommit(journal)
syncing = []
DEAL = b'{"Action": "Create", "Entity": "Deals", '

def slow_sync(fd, path, start, end):  # a slow disk: the writer greenlet leads while it waits
    syncing.append(path)
    gevent.sleep(0.2)
    os.fdatasync(fd)

journal.sync_elsewhere(slow_sync)
"""


def test_shutdown_waits_for_the_group_being_synced_instead_of_deadlocking(tmp_path):
    out = run_script(SLOW_SYNC_PREAMBLE + r"""
commit.append_entries([(b'{"refused": 1}', KIND_REJECTED, 0, None)], durable=False)
gevent.sleep(0)  # the writer takes the refusal and waits for its slow sync
assert syncing, "the writer should be syncing by now"
commit.drain()  # what receiver.main does after the server stopped ...
assert journal.synced_seq == 1, "drain must wait for the group being synced"
journal.close()  # ... then service.close(): both used to block the loop for good
commit.close()
print(len(list(iter_records(Path(sys.argv[1]) / "j"))))
""", str(tmp_path), timeout=30)
    assert out.strip() == "1"


def test_requests_of_a_group_whose_writer_is_killed_get_an_error_not_a_hang(tmp_path):
    out = run_script(SLOW_SYNC_PREAMBLE + r"""
def request(n):
    try:
        return commit.append_entries([(DEAL + b'"n": %d}' % n, KIND_DELIVERY, 0, None)])
    except JournalWriteError as exc:
        return "refused: %s" % exc

requests = [gevent.spawn(request, n) for n in range(3)]
gevent.sleep(0.05)  # the writer leads their group, waiting for its slow sync
assert syncing, "the writer should be syncing by now"
commit._writer.kill()
gevent.joinall(requests, timeout=5)
print([r.value if r.ready() else "still waiting" for r in requests])
""", str(tmp_path), timeout=30)
    assert out.strip() == str(["refused: the journal writer stopped during a group"] * 3)


def test_a_second_writer_on_the_loop_gets_an_error_instead_of_a_deadlock(tmp_path):
    out = run_script(SLOW_SYNC_PREAMBLE + r"""
writer = gevent.spawn(commit.append_entries, [(DEAL + b'"n": 1}', KIND_DELIVERY, 0, None)])
gevent.sleep(0.05)  # the writer greenlet leads, waiting for its sync
try:
    journal.append_entries([(DEAL + b'"n": 2}', KIND_DELIVERY, 0, None)])
    print("appended")
except JournalWriteError as exc:
    print("refused:", exc)
print(writer.get())
""", str(tmp_path), timeout=30)
    assert out.splitlines()[0].startswith("refused: the journal is being written by another")
    assert out.splitlines()[1] == "[1]"


def test_an_interrupted_sync_never_leaves_its_answer_for_the_next_one(tmp_path, monkeypatch):
    syncer = SyncHelper()
    path = tmp_path / "segment"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"kept")
    # the helper will answer EINVAL for /dev/null; interrupt the wait before it does
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.000001):
        syncer.datasync(fd, Path(os.devnull))
    # a reply read now would be that EINVAL; this sync of a real file must succeed
    syncer.datasync(fd, path)
    syncer.close()
    os.close(fd)


def test_a_group_that_starts_a_new_segment_is_written_on_a_pool_thread(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j", segment_bytes=4096)
    commit = GroupCommit(journal)
    offloaded = []
    real = green.offload

    def counting(fn, *args):
        offloaded.append(threading.get_ident())
        return real(fn, *args)

    monkeypatch.setattr(green, "offload", counting)
    for n in range(30):  # ~330 bytes each: a new segment every dozen records
        commit.append_entries([(DEAL + b'"n": %d, "pad": "%s"}' % (n, b"x" * 300), KIND_DELIVERY,
                                0, None)])
    assert 2 <= len(offloaded) <= 3  # the rotations only
    commit.close()
    journal.close()
    assert [r.seq for r in iter_records(tmp_path / "j")] == list(range(1, 31))
