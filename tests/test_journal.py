"""The journal on its own: recovery from torn writes, segments, readers, failures."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from ploomes.intake.journal import (
    KIND_DELIVERY,
    Journal,
    JournalBusy,
    JournalReader,
    JournalWriteError,
    first_seq,
    iter_records,
    prune_segments,
    segment_paths,
)


def test_append_and_read_back(tmp_path):
    journal = Journal(tmp_path / "j")
    seqs = [journal.append(f"body {i} ação".encode()) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert journal.synced_seq == 5
    journal.close()
    records = list(iter_records(tmp_path / "j"))
    assert [r.payload.decode() for r in records] == [f"body {i} ação" for i in range(5)]
    assert all(r.kind == KIND_DELIVERY for r in records)
    assert [r.seq for r in iter_records(tmp_path / "j", after_seq=3)] == [4, 5]


def test_torn_tail_is_cleared_on_reopen(tmp_path):
    from ploomes.intake.journal import scan_segment

    journal = Journal(tmp_path / "j", segment_bytes=64 * 1024)
    journal.append(b"one")
    journal.append(b"two")
    journal.close()
    segment = segment_paths(tmp_path / "j")[-1]
    end = [offset for _, offset in scan_segment(segment)][-1]
    with segment.open("r+b") as fh:  # a crash in the middle of writing a third record
        fh.seek(end)
        fh.write(b"PJ\x01\x00\x40\x00\x00\x00garbage, then the crash")
    journal = Journal(tmp_path / "j", segment_bytes=64 * 1024)
    assert journal.synced_seq == 2
    assert segment.stat().st_size == end  # the torn bytes are cut off
    assert journal.append(b"3") == 3  # shorter than the garbage it replaces
    journal.close()
    assert [r.payload for r in iter_records(tmp_path / "j")] == [b"one", b"two", b"3"]


def test_corrupt_record_stops_reading(tmp_path):
    journal = Journal(tmp_path / "j")
    for i in range(3):
        journal.append(b"x" * 10 + bytes([i]))
    journal.close()
    from ploomes.intake.journal import scan_segment

    segment = segment_paths(tmp_path / "j")[-1]
    end = [offset for _, offset in scan_segment(segment)][-1]
    data = bytearray(segment.read_bytes())
    data[end - 1] ^= 0xFF  # flip a bit of the last payload: its CRC no longer matches
    segment.write_bytes(bytes(data))
    assert [r.seq for r in iter_records(tmp_path / "j")] == [1, 2]


def test_segments_rotate_and_readers_cross_them(tmp_path):
    journal = Journal(tmp_path / "j", segment_bytes=4096)
    for i in range(200):
        journal.append(b"y" * 100 + str(i).encode())
    assert len(segment_paths(tmp_path / "j")) > 3
    reader = JournalReader(tmp_path / "j", after_seq=0)
    got = []
    while batch := reader.read(17, journal.synced_seq):
        got += [r.seq for r in batch]
    assert got == list(range(1, 201))
    middle = JournalReader(tmp_path / "j", after_seq=123)
    assert [r.seq for r in middle.read(3, 200)] == [124, 125, 126]
    assert first_seq(tmp_path / "j") == 1
    journal.close()
    reopened = Journal(tmp_path / "j", segment_bytes=4096)
    assert reopened.synced_seq == 200
    reopened.close()


def test_prune_keeps_what_is_not_ingested(tmp_path):
    journal = Journal(tmp_path / "j", segment_bytes=4096)
    for _ in range(200):
        journal.append(b"z" * 100)
    segments = segment_paths(tmp_path / "j")
    # a retention of 0 keeps the journal forever
    assert prune_segments(tmp_path / "j", ingested_seq=200, retention_seconds=0) == []
    import os
    for path in segments:
        os.utime(path, (1, 1))  # make every segment old
    removed = prune_segments(tmp_path / "j", ingested_seq=100, retention_seconds=3600)
    remaining = segment_paths(tmp_path / "j")
    assert removed and remaining[-1] == segments[-1]
    assert first_seq(tmp_path / "j") <= 101  # nothing above the ingested position is gone
    journal.close()


def test_one_writer_per_journal(tmp_path):
    journal = Journal(tmp_path / "j")
    with pytest.raises(JournalBusy):
        Journal(tmp_path / "j")
    journal.close()
    Journal(tmp_path / "j").close()


def test_concurrent_appends_are_dense_and_durable(tmp_path):
    journal = Journal(tmp_path / "j")
    results: list[int] = []
    lock = threading.Lock()

    def work(n):
        for i in range(100):
            seq = journal.append(f"{n}-{i}".encode())
            assert journal.synced_seq >= seq  # answered only once synced
            with lock:
                results.append(seq)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 801))
    journal.close()
    assert len(list(iter_records(tmp_path / "j"))) == 800



# Faults come from the OS calls the journal makes: os.pwrite, os.fdatasync, os.fsync,
# os.open and os.ftruncate are replaced for one test, the way a full or failing disk
# would answer them.


def _fail_after_half(real_pwrite, error: int | None):
    """A pwrite that writes the first half of its data, then fails or stops short."""

    def pwrite(fd, data, offset):
        written = real_pwrite(fd, data[:len(data) // 2], offset)
        if error is not None:
            raise OSError(error, os.strerror(error))
        return written

    return pwrite


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EFBIG, None],
                         ids=["no space", "file too large", "short write"])
def test_a_failed_write_is_cut_back_and_the_journal_goes_on(tmp_path, monkeypatch, error):
    journal = Journal(tmp_path / "j")
    assert journal.append(b"one") == 1
    segment = segment_paths(tmp_path / "j")[-1]
    size = segment.stat().st_size
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", _fail_after_half(real, error))
    with pytest.raises(JournalWriteError, match="cannot write the journal"):
        journal.append_many([b"two" * 100, b"three" * 100])
    assert segment.stat().st_size == size  # no half record stays behind
    assert journal.synced_seq == 1 and not journal.broken
    # not broken, but failing until an append succeeds again (/healthz answers 503)
    assert "cannot write the journal" in journal.failing
    monkeypatch.setattr(os, "pwrite", real)
    assert journal.append(b"four") == 2  # nothing was acknowledged: no number is lost
    assert journal.failing is None
    journal.close()
    assert [(r.seq, r.payload) for r in iter_records(tmp_path / "j")] == [
        (1, b"one"), (2, b"four")]


def test_a_failed_write_that_cannot_be_cut_back_stops_the_journal(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j")
    journal.append(b"one")
    monkeypatch.setattr(os, "pwrite", _fail_after_half(os.pwrite, errno.EIO))

    def ftruncate(fd, length):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    with pytest.raises(JournalWriteError, match="could not be undone"):
        journal.append(b"two" * 100)
    monkeypatch.undo()
    assert journal.broken
    with pytest.raises(JournalWriteError, match="could not be undone"):
        journal.append(b"three")  # the file may hold half a record: nothing more goes in
    journal.close()
    reopened = Journal(tmp_path / "j")  # a restart cuts the half record off
    assert reopened.synced_seq == 1 and reopened.append(b"four") == 2
    reopened.close()
    assert [r.payload for r in iter_records(tmp_path / "j")] == [b"one", b"four"]


def test_a_failed_sync_stops_the_journal(tmp_path, monkeypatch):
    """After a failed fdatasync the kernel may have dropped the file's dirty pages: no
    later sync can vouch for them, so nothing more is accepted until a restart."""
    journal = Journal(tmp_path / "j", segment_bytes=4096)
    assert journal.append(b"x" * 80) == 1

    def fdatasync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with pytest.raises(JournalWriteError, match="cannot sync the journal"):
        journal.append(b"y" * 80)
    monkeypatch.undo()
    assert journal.broken and journal.synced_seq == 1
    with pytest.raises(JournalWriteError, match="cannot sync the journal"):
        journal.append(b"z")
    with pytest.raises(JournalWriteError):
        journal.append(b"w" * 5000)  # not in a new segment either
    journal.close()
    assert len(segment_paths(tmp_path / "j")) == 1
    # the acknowledged record is kept; the unacknowledged one may or may not be
    reopened = Journal(tmp_path / "j", segment_bytes=4096)
    payloads = [r.payload for r in iter_records(tmp_path / "j")]
    assert payloads[0] == b"x" * 80 and reopened.synced_seq == len(payloads)
    assert reopened.append(b"v") == len(payloads) + 1
    reopened.close()


def _fail_segment_creation(monkeypatch, journal_dir):
    """Make os.open fail (too many open files) for a new segment of journal_dir."""
    real = os.open

    def open_(path, flags, *args, **kwargs):
        if (str(path).startswith(str(journal_dir)) and str(path).endswith(".seg")
                and flags & os.O_CREAT):
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


def test_a_segment_that_cannot_be_started_is_tried_again(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j", segment_bytes=4096)
    assert journal.append(b"a" * 3000) == 1
    _fail_segment_creation(monkeypatch, tmp_path / "j")
    with pytest.raises(JournalWriteError, match="cannot start a new journal segment"):
        journal.append(b"b" * 3000)  # does not fit: needs a new segment
    assert not journal.broken
    assert journal.append(b"c" * 100) == 2  # fits in the current one
    monkeypatch.undo()
    assert journal.append(b"d" * 3000) == 3  # the new segment now
    assert len(segment_paths(tmp_path / "j")) == 2
    reader = JournalReader(tmp_path / "j", after_seq=0)
    assert [r.seq for r in reader.read(10, journal.synced_seq)] == [1, 2, 3]
    assert [r.seq for r in JournalReader(tmp_path / "j", after_seq=1).read(10, 3)] == [2, 3]
    journal.close()
    reopened = Journal(tmp_path / "j", segment_bytes=4096)
    assert reopened.synced_seq == 3
    reopened.close()


def test_a_new_segment_that_may_not_survive_a_crash_stops_the_journal(tmp_path, monkeypatch):
    """The new file exists, but syncing its folder failed: readers already take it for
    the current segment, so records may no longer go to the full one (a reader would
    skip them, and a restart would number the next ones again)."""
    journal = Journal(tmp_path / "j", segment_bytes=4096)
    assert journal.append(b"a" * 3000) == 1

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(JournalWriteError, match="cannot start a new journal segment"):
        journal.append(b"b" * 3000)
    monkeypatch.undo()
    assert journal.broken
    with pytest.raises(JournalWriteError):
        journal.append(b"c" * 100)  # would fit in the full segment: still refused
    journal.close()
    reopened = Journal(tmp_path / "j", segment_bytes=4096)
    assert reopened.synced_seq == 1
    assert reopened.append(b"d" * 100) == 2
    reopened.close()
    assert [r.seq for r in JournalReader(tmp_path / "j", after_seq=1).read(10, 2)] == [2]
    assert [r.seq for r in iter_records(tmp_path / "j")] == [1, 2]
