"""GroupCommit: journal appends from many greenlets, grouped, synced by a helper process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import gevent
import pytest

from ploomes.green import GroupCommit, SyncHelper
from ploomes.journal import (
    KIND_DELIVERY,
    KIND_REJECTED,
    Journal,
    JournalWriteError,
    iter_records,
)


def test_many_greenlets_get_dense_durable_sequence_numbers_in_few_groups(tmp_path):
    journal = Journal(tmp_path / "j")
    groups: list[int] = []
    real = journal.append_entries

    def counting(entries, durable=True):
        groups.append(len(entries))
        return real(entries, durable)

    journal.append_entries = counting
    commit = GroupCommit(journal)
    got: dict[int, int] = {}

    def request(n: int) -> None:
        [seq] = commit.append_entries([(f'{{"n": {n}}}'.encode(), KIND_DELIVERY, 0, None)])
        assert journal.synced_seq >= seq  # answered only once on disk
        got[n] = seq

    gevent.joinall([gevent.spawn(request, n) for n in range(300)], raise_error=True)
    assert sorted(got.values()) == list(range(1, 301))
    assert sum(groups) == 300 and len(groups) < 300  # grouped, not one sync each
    journal.close()
    assert sorted(r.payload for r in iter_records(tmp_path / "j")) == sorted(
        f'{{"n": {n}}}'.encode() for n in range(300))


def test_a_refusal_does_not_wait_and_rides_with_the_next_group(tmp_path):
    journal = Journal(tmp_path / "j")
    groups: list[int] = []
    real = journal.append_entries

    def counting(entries, durable=True):
        groups.append(len(entries))
        return real(entries, durable)

    journal.append_entries = counting
    commit = GroupCommit(journal)
    assert commit.append_entries([(b'{"refused": 1}', KIND_REJECTED, 0, None)],
                                 durable=False) is None
    assert groups == [] and journal.synced_seq == 0  # returned before any write
    [seq] = commit.append_entries([(b'{"n": 1}', KIND_DELIVERY, 0, None)])
    assert seq == 2
    assert groups == [2]  # written and synced together, in one group
    journal.close()
    assert [(r.seq, r.kind) for r in iter_records(tmp_path / "j")] == [
        (1, KIND_REJECTED), (2, KIND_DELIVERY)]


def test_a_broken_journal_fails_every_waiting_request_and_the_next_ones(tmp_path):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    journal._fail_all("cannot sync the journal: [Errno 5] Input/output error")
    outcomes = []

    def request(n: int) -> None:
        try:
            commit.append_entries([(b'{"n": %d}' % n, KIND_DELIVERY, 0, None)])
            outcomes.append("stored")
        except JournalWriteError as exc:
            outcomes.append(str(exc))

    gevent.joinall([gevent.spawn(request, n) for n in range(5)])
    assert outcomes == ["cannot sync the journal: [Errno 5] Input/output error"] * 5
    with pytest.raises(JournalWriteError):
        commit.append_entries([(b'{"n": 9}', KIND_DELIVERY, 0, None)])
    journal.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_groups_are_synced_by_the_helper_process_and_it_ends_with_the_commit(tmp_path):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    pid = commit.syncer.pid
    assert pid is not None and _alive(pid)
    asked = []
    real = commit.syncer._ask

    def counting(path):
        asked.append(path)
        return real(path)

    commit.syncer._ask = counting
    gevent.joinall([gevent.spawn(commit.append_entries, [(b'{"n": %d}' % n, KIND_DELIVERY,
                                                          0, None)]) for n in range(50)],
                   raise_error=True)
    assert journal.synced_seq == 50
    assert asked and set(asked) == {journal._path}  # every group's sync went to the helper
    commit.close()
    assert not _alive(pid) and commit.syncer.pid is None
    journal.close()
    assert len(list(iter_records(tmp_path / "j"))) == 50


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
        [(b'{"n": %d}' % n, KIND_DELIVERY, 0, None)])[0])) for n in range(20)],
        raise_error=True)
    assert sorted(seqs) == list(range(1, 21)) and journal.synced_seq == 20
    assert journal._fd in synced_here  # synced with the journal's own descriptor meanwhile
    assert commit.syncer.pid is None
    commit.syncer._next_start = 0  # the restart delay has passed
    synced_here.clear()
    commit.append_entries([(b'{"n": 21}', KIND_DELIVERY, 0, None)])
    assert commit.syncer.pid not in (None, first) and synced_here == []
    commit.close()
    journal.close()
    assert len(list(iter_records(tmp_path / "j"))) == 21


def test_a_failed_sync_in_the_helper_stops_the_journal(tmp_path):
    journal = Journal(tmp_path / "j")
    commit = GroupCommit(journal)
    [seq] = commit.append_entries([(b'{"n": 1}', KIND_DELIVERY, 0, None)])
    # fdatasync of /dev/null fails (EINVAL) like a failing disk would: the helper's
    # errno must reach the journal, not be mistaken for success
    journal._path = Path(os.devnull)
    with pytest.raises(JournalWriteError, match="cannot sync the journal"):
        commit.append_entries([(b'{"n": 2}', KIND_DELIVERY, 0, None)])
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
