"""The receiver's GroupCommit: journal appends from many greenlets, one sync per group.

Each test runs the real journal on gevent's loop in this process. A slow or failing disk
is staged by replacing `os.fdatasync` (or `os.pwrite`) for the test: a gate blocks the
sync on the pool thread until the test opens it, so what is queued meanwhile is known.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
import traceback

import gevent
import pytest
from conftest import refusal

from ploomes.intake.journal import (
    KIND_DELIVERY,
    KIND_REJECTED,
    REJECTED_RAW_LIMIT,
    Journal,
    JournalReader,
    JournalWriteError,
    decode_rejected,
    iter_records,
    segment_paths,
)
from ploomes.intake.service import CHECK_HERE_MAX, DeliveryService
from ploomes.model.delivery import check_delivery
from receiver import GroupCommit, offload

DEAL = b'{"Action": "Create", "Entity": "Deals", '  # how each valid delivery below starts


def entry(n: int, pad: int = 0) -> tuple[bytes, int, int, None]:
    """A journal entry for delivery n (padded with `pad` bytes)."""
    return (DEAL + b'"n": %d, "pad": "%s"}' % (n, b"x" * pad), KIND_DELIVERY, 0, None)


def numbers(journal_dir) -> list[int]:
    """The `n` of every delivery in the journal, in journal order."""
    return [json.loads(r.payload)["n"] for r in iter_records(journal_dir)]


class SyncGate:
    """Replaces os.fdatasync: each sync waits (on its pool thread) until the gate opens."""

    def __init__(self, monkeypatch):
        self.real = os.fdatasync
        self.syncing = threading.Event()  # a sync is waiting at the gate
        self.opened = threading.Event()
        self.threads: list[int] = []
        monkeypatch.setattr(os, "fdatasync", self._fdatasync)

    def _fdatasync(self, fd: int) -> None:
        self.threads.append(threading.get_ident())
        self.syncing.set()
        if not self.opened.wait(30):  # a test that never opens it fails, it does not hang
            raise OSError(errno.ETIMEDOUT, "the test never opened the sync gate")
        self.real(fd)

    def wait_syncing(self) -> None:
        """Let the loop run until a group waits at the gate."""
        deadline = time.monotonic() + 30
        while not self.syncing.is_set():
            assert time.monotonic() < deadline, "no group reached its sync"
            gevent.sleep(0.001)

    def open(self) -> None:
        self.opened.set()


def counting_syncs(monkeypatch) -> list[int]:
    """Count the journal's fdatasync calls: one per group."""
    calls: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return calls


def test_many_greenlets_get_dense_durable_sequence_numbers_in_few_groups(tmp_path,
                                                                        monkeypatch):
    journal = Journal(tmp_path / "j")
    syncs = counting_syncs(monkeypatch)
    commit = GroupCommit(journal)
    got: dict[int, int] = {}

    def request(n: int) -> None:
        [seq] = commit.append_entries([entry(n)])
        assert journal.synced_seq >= seq  # answered only once on disk
        got[n] = seq

    gevent.joinall([gevent.spawn(request, n) for n in range(300)], raise_error=True)
    assert sorted(got.values()) == list(range(1, 301))
    assert 0 < len(syncs) < 300  # grouped, not one sync each
    commit.close()
    journal.close()
    stored = {json.loads(r.payload)["n"]: r.seq for r in iter_records(tmp_path / "j")}
    assert stored == got  # each answer names its own record


def test_a_request_of_several_records_gets_all_their_numbers_in_order(tmp_path):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    one = gevent.spawn(commit.append_entries, [entry(0)])
    many = gevent.spawn(commit.append_entries, [entry(n) for n in range(1, 6)])
    gevent.joinall([one, many], raise_error=True)
    assert one.value == [1] and many.value == [2, 3, 4, 5, 6]
    commit.close()
    journal.close()
    assert numbers(tmp_path / "j") == [0, 1, 2, 3, 4, 5]


def test_the_loop_serves_others_while_a_group_is_synced_on_a_pool_thread(tmp_path,
                                                                         monkeypatch):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    gate = SyncGate(monkeypatch)
    waiting = gevent.spawn(commit.append_entries, [entry(1)])
    gate.wait_syncing()
    other = gevent.spawn(lambda: "served")
    assert other.get(timeout=10) == "served"  # while the sync is held at the gate
    assert not waiting.ready()  # not answered before it is on disk
    gate.open()
    assert waiting.get(timeout=10) == [1]
    assert gate.threads and threading.get_ident() not in gate.threads
    commit.close()
    journal.close()


def test_a_broken_journal_fails_every_waiting_request_and_the_next_ones(tmp_path,
                                                                        monkeypatch):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    assert commit.append_entries([entry(0)]) == [1]

    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    errors: dict[int, JournalWriteError] = {}

    def request(n: int) -> str:
        try:
            commit.append_entries([entry(n)])
        except JournalWriteError as exc:
            errors[n] = exc
            return str(exc)
        return "stored"

    requests = [gevent.spawn(request, n) for n in range(1, 6)]
    gevent.joinall(requests, timeout=30)
    assert all(r.ready() for r in requests), "a request was left waiting"
    assert [r.value for r in requests] == [
        "cannot sync the journal: [Errno 5] Input/output error"] * 5
    # one exception per request, whose traceback goes through that request (one shared
    # exception ends up with the frames of whichever request raised it last)
    assert len({id(exc) for exc in errors.values()}) == 5
    for n, exc in errors.items():
        [frame] = [f for f, _ in traceback.walk_tb(exc.__traceback__)
                   if f.f_code.co_name == "request"]
        assert frame.f_locals["n"] == n
    assert journal.broken
    monkeypatch.undo()  # the disk answers again: the journal still refuses
    with pytest.raises(JournalWriteError, match="cannot sync the journal"):
        commit.append_entries([entry(9)])
    commit.close()
    journal.close()
    assert numbers(tmp_path / "j")[0] == 0


def test_a_group_refused_for_lack_of_room_fails_its_requests_and_the_next_go_on(
        tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    real = os.pwrite

    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", pwrite)
    refused = [gevent.spawn(commit.append_entries, [entry(n)]) for n in range(3)]
    gevent.joinall(refused, timeout=30)
    assert all(isinstance(g.exception, JournalWriteError) for g in refused)
    assert not journal.broken  # the failed write was cut back
    monkeypatch.setattr(os, "pwrite", real)
    stored = [gevent.spawn(commit.append_entries, [entry(n)]) for n in range(3, 6)]
    gevent.joinall(stored, raise_error=True)
    assert sorted(g.value[0] for g in stored) == [1, 2, 3]  # no number was used up
    commit.close()
    journal.close()
    assert numbers(tmp_path / "j") == [3, 4, 5]


def test_close_writes_what_is_queued_then_stops(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    gate = SyncGate(monkeypatch)
    first = [gevent.spawn(commit.append_entries, [entry(n)]) for n in range(3)]
    gate.wait_syncing()  # the first group is being synced ...
    second = [gevent.spawn(commit.append_entries, [entry(n)]) for n in range(3, 6)]
    gevent.sleep(0)  # ... and these queue behind it
    closing = gevent.spawn(commit.close)
    gevent.sleep(0)
    with pytest.raises(JournalWriteError, match="stopping"):
        commit.append_entries([entry(9)])  # too late: refused at once, never queued
    assert not closing.ready()  # close waits for the group being synced ...
    gate.open()
    closing.get(timeout=30)
    # ... and for the queued one, then stops
    assert [g.get(timeout=0) for g in first + second] == [[1], [2], [3], [4], [5], [6]]
    assert journal.synced_seq == 6
    with pytest.raises(JournalWriteError, match="stopping"):
        commit.append_entries([entry(10)])
    assert commit.failing == "the receiver is stopping"  # /healthz answers 503
    commit.close()  # a second close is harmless
    journal.close()
    assert numbers(tmp_path / "j") == [0, 1, 2, 3, 4, 5]


def test_a_request_that_stops_waiting_leaves_the_others_answers_alone(tmp_path,
                                                                      monkeypatch):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    gate = SyncGate(monkeypatch)
    gone = gevent.spawn(commit.append_entries, [entry(1)])
    gate.wait_syncing()
    after = gevent.spawn(commit.append_entries, [entry(2)])
    gevent.sleep(0)
    gone.kill()  # its client went away while its record was being synced
    gate.open()
    assert after.get(timeout=30) == [2]
    commit.close()
    journal.close()
    assert numbers(tmp_path / "j") == [1, 2]  # its record was written all the same


def test_a_writer_ended_during_a_group_fails_its_requests_instead_of_a_hang(tmp_path,
                                                                           monkeypatch):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        raise gevent.GreenletExit  # what killing the writer raises where it waits

    monkeypatch.setattr(os, "pwrite", pwrite)

    def request(n: int) -> object:
        try:
            return commit.append_entries([entry(n)])
        except JournalWriteError as exc:
            return f"refused: {exc}"

    requests = [gevent.spawn(request, n) for n in range(3)]
    gevent.joinall(requests, timeout=30)
    assert [r.value if r.ready() else "still waiting" for r in requests] == [
        "refused: the journal writer stopped during a group"] * 3
    with pytest.raises(JournalWriteError, match="the journal writer stopped"):
        commit.append_entries([entry(3)])  # nobody would write it: refused at once
    monkeypatch.undo()
    commit.close()
    assert not journal.broken and journal.append(entry(4)[0]) == 1  # nothing acknowledged
    journal.close()
    assert numbers(tmp_path / "j") == [4]


def test_groups_that_cross_segment_boundaries(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j", segment_bytes=4096)
    commit = GroupCommit(journal)
    gate = SyncGate(monkeypatch)
    first = gevent.spawn(commit.append_entries, [entry(0, pad=300)])
    gate.wait_syncing()
    # ~330 bytes each: this group of 30 is larger than a whole segment
    big = [gevent.spawn(commit.append_entries, [entry(n, pad=300)]) for n in range(1, 31)]
    gevent.sleep(0)
    gate.open()
    gevent.joinall([first, *big], raise_error=True)
    for n in range(31, 41):  # then groups of one, a new segment every dozen records
        assert commit.append_entries([entry(n, pad=300)]) == [n + 1]
    assert sorted([first.value[0]] + [g.value[0] for g in big]) == list(range(1, 32))
    segments = segment_paths(tmp_path / "j")
    assert [int(p.stem) for p in segments[:2]] == [1, 2]  # the big group: a segment alone
    assert segments[1].stat().st_size > 4096 and len(segments) >= 3
    reader = JournalReader(tmp_path / "j")
    got = []
    while batch := reader.read(7, journal.synced_seq):
        got += [r.seq for r in batch]
    assert got == list(range(1, 42))
    commit.close()
    journal.close()
    assert numbers(tmp_path / "j") == list(range(41))
    reopened = Journal(tmp_path / "j", segment_bytes=4096)
    assert reopened.synced_seq == 41 and reopened.append(b"{}") == 42
    reopened.close()


# one request per body: valid deliveries and refused ones, with the reason check_delivery
# gives; two are larger than CHECK_HERE_MAX (checked on a pool thread)
MIXED = [DEAL + b'"n": 1}', b'{"Entity": "Deals"}', DEAL + b'"n": 3}', b'[1, 2]',
         b'{"Action": "Win", "Entity": "Deals", "ActionUserId": "abc"}',
         DEAL + b'"n": 6, "pad": "' + b"x" * CHECK_HERE_MAX + b'"}',
         b"[" + b"1, " * CHECK_HERE_MAX + b"1]"]


@pytest.mark.parametrize("grouped", [True, False], ids=["group commit", "plain journal"])
def test_a_refused_body_is_journaled_as_a_refusal_never_as_a_delivery(settings, grouped):
    service = DeliveryService(settings)
    commit = None
    if grouped:  # as receiver.main sets it up
        commit = GroupCommit(service.journal)
        service.appender, service.run_cpu = commit, offload
    try:
        greenlets = [gevent.spawn(service.accept, body, "192.0.2.7", time.perf_counter())
                     for body in MIXED]
        gevent.joinall(greenlets, raise_error=True)
    finally:
        if commit is not None:
            commit.close()
        service.close()
    outcomes = [g.value for g in greenlets]
    records = list(iter_records(settings.journal_dir))
    assert len(records) == len(MIXED)
    kept = {}
    for record in records:
        if record.kind == KIND_DELIVERY:
            kept[record.payload] = ("accepted", record.seq)
        else:
            assert record.kind == KIND_REJECTED
            status, reason, raw, size, source = decode_rejected(record.payload)
            kept[raw] = ("refused", status, reason, size, source)
    for body, (status, answer) in zip(MIXED, outcomes, strict=True):
        reason = refusal(check_delivery, body)
        if reason is None:
            assert (status, answer["status"]) == (200, "accepted")
            assert kept[body] == ("accepted", answer["delivery_id"])
        else:
            assert (status, answer) == (400, {"status": "refused", "reason": reason})
            # a refusal keeps its reason, where it came from and a bounded part of it
            assert kept[body[:REJECTED_RAW_LIMIT]] == (
                "refused", 400, reason, len(body), "192.0.2.7")
    assert sorted(o.status for o in outcomes) == [200, 200, 200, 400, 400, 400, 400]


def test_demo_data_the_journal_cannot_stamp_is_refused_alone(settings):
    """A received_at outside what a journal stamp holds is a bad request of its own: it
    must not reach the group, where the failed encoding would refuse every request."""
    service = DeliveryService(settings)
    commit = GroupCommit(service.journal)
    service.appender, service.run_cpu = commit, offload
    body = json.loads(DEAL + b'"n": 2}')
    try:
        delivery = gevent.spawn(service.accept, DEAL + b'"n": 1}', None, time.perf_counter())
        demo = [gevent.spawn(service.accept_demo, {"deliveries": [
            {"received_at": at, "body": body}]}) for at in (
            "9999-01-01T00:00:00+00:00", "1900-01-01T00:00:00+00:00",
            "2026-11-02T12:00:00+00:00")]
        gevent.joinall([delivery, *demo], raise_error=True)
    finally:
        commit.close()
        service.close()
    assert delivery.value.status == 200
    assert [g.value.status for g in demo] == [400, 400, 200]
    assert "out of range" in demo[0].value.body["reason"]
    records = list(iter_records(settings.journal_dir))
    assert [(r.is_demo, json.loads(r.payload)["n"]) for r in records] == [(False, 1), (True, 2)]
