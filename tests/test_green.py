"""GroupCommit: journal appends from many greenlets, grouped and synced off the loop."""

from __future__ import annotations

import gevent
import pytest

from ploomes.green import GroupCommit
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
