"""The journal on its own: recovery from torn writes, segments, readers, group commit."""

from __future__ import annotations

import os
import threading

import pytest

from ploomes.intake.journal import (
    HEADER,
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
    assert journal.written_seq == 2
    assert segment.read_bytes()[end:].strip(b"\0") == b""  # the torn bytes are gone
    assert journal.append(b"3") == 3  # shorter than the garbage it overwrites
    journal.close()
    assert [r.payload for r in iter_records(tmp_path / "j")] == [b"one", b"two", b"3"]


def test_segments_are_preallocated_and_readers_stop_at_the_zeros(tmp_path):
    journal = Journal(tmp_path / "j", segment_bytes=256 * 1024)
    journal.append(b"x" * 100)
    segment = segment_paths(tmp_path / "j")[-1]
    assert segment.stat().st_size == 256 * 1024
    assert [r.payload for r in iter_records(tmp_path / "j")] == [b"x" * 100]
    journal.close()


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
    assert reopened.written_seq == 200
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


def test_rotations_faster_than_the_spare_never_zero_acknowledged_records(tmp_path, monkeypatch):
    """Segments that fill faster than the next one is zero-filled in the background: a
    rotation must never adopt a spare file some thread is still writing zeros into."""
    import os
    import time

    from ploomes.intake import journal as journal_module

    real = journal_module._preallocate
    spares = []

    def slow_spares(path, size):
        if not path.name.startswith(journal_module.SPARE_NAME):
            return real(path, size)
        spares.append(path)
        if len(spares) == 1:  # the first spare is done, but says so late
            real(path, size)
            time.sleep(0.6)
        elif len(spares) == 2:  # the second writes its zeros slowly
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for offset in range(0, size, 1024):
                    time.sleep(1.0 if offset == 0 else 0.05)
                    os.pwrite(fd, bytes(1024), offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            real(path, size)

    monkeypatch.setattr(journal_module, "_preallocate", slow_spares)
    journal = Journal(tmp_path / "j", segment_bytes=4096)  # 4 records per segment
    payload = b'{"x": "' + b"a" * 900 + b'"}'
    acknowledged = [journal.append(payload) for _ in range(5)]  # rotates before spare 1 says
    time.sleep(0.7)  # spare 1 has said it is ready; spare 2 is still zero-filling
    acknowledged += [journal.append(payload) for _ in range(5)]  # the next rotation
    time.sleep(1.5)  # every spare thread has finished
    journal.close()
    assert [r.seq for r in iter_records(tmp_path / "j")] == acknowledged


def test_an_unexpected_error_while_writing_fails_the_appenders_never_acknowledges(tmp_path):
    journal = Journal(tmp_path / "j")
    journal.append(b'{"n": 1}')
    real = journal._write_batch

    def explode(batch):
        raise RuntimeError("can't start new thread")

    journal._write_batch = explode
    with pytest.raises(RuntimeError):
        journal.append(b'{"n": 2}')
    journal._write_batch = real
    with pytest.raises(JournalWriteError, match="can't start new thread"):
        journal.append(b'{"n": 3}')  # broken: nothing more is promised until a restart
    journal.close()
    assert [r.seq for r in iter_records(tmp_path / "j")] == [1]


def test_a_failed_sync_when_a_segment_fills_stops_the_journal(tmp_path):
    """Records of the full segment were answered already: a failed last sync of it may
    mean their pages are gone, so nothing more is accepted (not one refusal, then on)."""
    journal = Journal(tmp_path / "j", segment_bytes=200)
    calls = []

    def datasync(fd, path, start, end):
        calls.append((path.name, start, end))
        if len(calls) == 2:  # the full segment's sync before the rotation
            raise OSError(5, "Input/output error")
        os.fdatasync(fd)

    journal.sync_elsewhere(datasync)
    assert journal.append(b"x" * 80) == 1
    with pytest.raises(JournalWriteError, match="cannot sync the journal"):
        journal.append(b"y" * 80)
    assert journal.broken
    # each sync is told where the bytes it covers were written: the first record, then
    # nothing new (the full segment's last check)
    size, name = HEADER.size + 80, segment_paths(tmp_path / "j")[0].name
    assert calls == [(name, 0, size), (name, size, size)]
    with pytest.raises(JournalWriteError):
        journal.append(b"z")
    journal.close()
    assert [r.payload for r in iter_records(tmp_path / "j")] == [b"x" * 80]
