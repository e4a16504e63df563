"""The durable delivery journal: the source of truth the event store is built from.

A journal is a folder of append-only segment files named after the sequence number of
their first record. Each record is a fixed header followed by its payload:

    magic "PJ" | kind u8 | flags u8 | payload length u32 | crc32 u32 | seq u64 | received_ns i64

The CRC covers kind, flags, seq, received_ns and the payload, so a torn write at the
tail (a crash in the middle of a write) is recognised and cut off when the journal is
opened again. Exactly one process appends at a time (it holds `journal/.writer.lock`);
any process may read, up to the position the appender says is durable.

Durability: `append_entries` returns only once its records are on disk (write, then
fdatasync). It is thread-safe; callers that want one sync for many records (the
receiver's group commit) pass them in one call.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

HEADER = struct.Struct("<2sBBIIQq")
MAGIC = b"PJ"
SEGMENT_SUFFIX = ".seg"

KIND_DELIVERY = 1  # a delivery: payload is the body as received
KIND_REJECTED = 2  # an authenticated delivery that was refused: payload is JSON
#                    (status, reason, bounded body, source; see rejected_payload)
KIND_CONTROL = 3  # an operation on stored data (e.g. remove demo data): payload is JSON

FLAG_DEMO = 1  # the record is demo data, not a real delivery
FLAG_TEST = 2  # a test delivery sent from this project's Webhooks page, not a real change

REJECTED_RAW_LIMIT = 64 * 1024  # bytes of a refused body that are kept

Entry = tuple[bytes, int, int, int | None]  # payload, kind, flags, received_ns (None: now)

class JournalError(Exception):
    """The journal cannot be used."""


class JournalBusy(JournalError):
    """Another process is already appending to this journal."""


class JournalWriteError(JournalError):
    """A record could not be made durable; nothing was acknowledged."""


class Record(NamedTuple):
    """One journal record."""

    seq: int
    kind: int
    flags: int
    received_ns: int
    payload: bytes

    @property
    def is_demo(self) -> bool:
        """Return whether the record is demo data."""
        return bool(self.flags & FLAG_DEMO)

    @property
    def is_test(self) -> bool:
        """Return whether the record is a test delivery (the Webhooks page sent it)."""
        return bool(self.flags & FLAG_TEST)


def rejected_payload(status: int, reason: str, raw: bytes, source: str | None) -> bytes:
    """Encode a refused authenticated delivery as a KIND_REJECTED payload."""
    return json.dumps({
        "status": status, "reason": reason, "raw_size": len(raw), "source": source,
        "raw": base64.b64encode(raw[:REJECTED_RAW_LIMIT]).decode("ascii"),
    }).encode("utf-8")


def decode_rejected(payload: bytes) -> tuple[int, str, bytes, int, str | None]:
    """Return (status, reason, bounded body, body size, source) of a KIND_REJECTED payload."""
    info = json.loads(payload)
    return (int(info["status"]), str(info["reason"]), base64.b64decode(info["raw"]),
            int(info["raw_size"]), info.get("source"))


_CRC_HEAD = struct.Struct("<BBQq")  # what the CRC covers besides the payload


def _crc(kind: int, flags: int, seq: int, received_ns: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_CRC_HEAD.pack(kind, flags, seq, received_ns)))


def encode(record: Record) -> bytes:
    """Return the bytes of a record as stored in a segment."""
    seq, kind, flags, ns, payload = record
    return HEADER.pack(MAGIC, kind, flags, len(payload), _crc(kind, flags, seq, ns, payload),
                       seq, ns) + payload


def segment_paths(journal_dir: Path) -> list[Path]:
    """Return the segment files in sequence order."""
    if not journal_dir.is_dir():
        return []
    return sorted(journal_dir.glob("*" + SEGMENT_SUFFIX), key=lambda p: int(p.stem))


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def _read_records(fh: BinaryIO, offset: int) -> Iterator[tuple[Record, int]]:
    """Yield (record, offset after it) from fh at offset; stop at the first bad one."""
    while True:
        head = fh.read(HEADER.size)
        if len(head) < HEADER.size:
            return
        magic, kind, flags, length, crc, seq, received_ns = HEADER.unpack(head)
        if magic != MAGIC:
            return
        payload = fh.read(length)
        if len(payload) < length or _crc(kind, flags, seq, received_ns, payload) != crc:
            return
        offset += HEADER.size + length
        yield Record(seq, kind, flags, received_ns, payload), offset


def scan_segment(path: Path, start_offset: int = 0) -> Iterator[tuple[Record, int]]:
    """Yield (record, offset after it) for each intact record; stop at the first bad one."""
    with path.open("rb") as fh:
        fh.seek(start_offset)
        yield from _read_records(fh, start_offset)


def iter_records(journal_dir: Path, after_seq: int = 0) -> Iterator[Record]:
    """Yield every intact record with a sequence number above `after_seq`, in order."""
    segments = segment_paths(journal_dir)
    firsts = [int(p.stem) for p in segments]
    for i, path in enumerate(segments):
        if i + 1 < len(segments) and firsts[i + 1] <= after_seq + 1:
            continue  # every record of this segment is at or below after_seq
        for record, _ in scan_segment(path):
            if record.seq > after_seq:
                yield record


def first_seq(journal_dir: Path) -> int | None:
    """Return the first sequence number still in the journal, or None if it is empty."""
    for path in segment_paths(journal_dir):
        for record, _ in scan_segment(path):
            return record.seq
    return None


def prune_segments(journal_dir: Path, ingested_seq: int, retention_seconds: float
                   ) -> list[Path]:
    """Delete whole segments that are ingested and older than the retention period."""
    if retention_seconds <= 0:
        return []
    removed = []
    segments = segment_paths(journal_dir)
    cutoff = time.time() - retention_seconds
    # never the last segment (the one being written); a segment's last record is just
    # below the next segment's first one
    for path, nxt in zip(segments, segments[1:], strict=False):
        if int(nxt.stem) - 1 <= ingested_seq and path.stat().st_mtime < cutoff:
            path.unlink()
            removed.append(path)
    return removed


class JournalReader:
    """Reads records in order, remembering where it stopped (used by the ingest)."""

    def __init__(self, journal_dir: Path, after_seq: int = 0):
        self._dir = journal_dir
        self._path: Path | None = None
        self._offset = 0
        self.last_seq = after_seq
        self._position(after_seq)

    def _position(self, after_seq: int) -> None:
        segments = segment_paths(self._dir)
        chosen = None
        for path in segments:
            if int(path.stem) <= after_seq + 1:
                chosen = path
        if chosen is None:
            chosen = segments[0] if segments else None
        self._path, self._offset = chosen, 0
        if chosen is None:
            return
        for record, end in scan_segment(chosen):
            if record.seq > after_seq:
                break
            self._offset = end

    def read(self, max_records: int, upto_seq: int) -> list[Record]:
        """Return up to `max_records` records after the last one read, none above upto_seq."""
        out: list[Record] = []
        while len(out) < max_records and self.last_seq < upto_seq:
            if self._path is None:
                self._position(self.last_seq)
                if self._path is None:
                    break
            got_any = False
            for record, end in scan_segment(self._path, self._offset):
                if record.seq > upto_seq or len(out) >= max_records:
                    break
                out.append(record)
                self._offset, self.last_seq, got_any = end, record.seq, True
            if not got_any:
                # A later segment means this one is complete (it was synced before the
                # next one was started). Its name is the next record's sequence, which
                # may skip numbers that a failed write never used.
                current = int(self._path.stem)
                later = [p for p in segment_paths(self._dir) if int(p.stem) > current]
                if not later:
                    break
                self._path, self._offset = later[0], 0
        return out


class Journal:
    """The appending side of a journal; one per data dir at a time. Thread-safe."""

    def __init__(self, journal_dir: Path, segment_bytes: int = 16 * 1024 * 1024,
                 on_synced: Callable[[int], None] | None = None):
        self.dir = journal_dir
        self._on_synced = on_synced  # told each new durable position, in increasing order
        self._segment_bytes = segment_bytes
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.dir / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            raise JournalBusy(f"another process is writing to {self.dir}") from exc
        self._mutex = threading.Lock()
        self._broken: str | None = None
        self._write_error: str | None = None  # the last append failed, none succeeded since
        self._fd = -1
        self._size = 0  # bytes of whole records in the current segment
        self.synced_seq = self._recover()

    def _recover(self) -> int:
        """Open the last segment, cut a torn tail off it; return the last record's seq."""
        segments = segment_paths(self.dir)
        if not segments:
            self._open_segment(1)
            return 0
        last = segments[-1]
        end, last_seq = 0, int(last.stem) - 1
        for record, offset in scan_segment(last):
            end, last_seq = offset, record.seq
        self._fd = os.open(last, os.O_RDWR)
        if os.fstat(self._fd).st_size > end:  # what a crash left after the last record
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        self._size = end
        return last_seq

    def _open_segment(self, first: int) -> None:
        fd = os.open(self.dir / _segment_name(first), os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                     0o600)
        try:
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the new file's name must survive a crash too
            finally:
                os.close(dir_fd)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size = fd, 0

    @property
    def broken(self) -> str | None:
        """Return why the journal stopped accepting records, or None."""
        return self._broken

    @property
    def failing(self) -> str | None:
        """Return why records cannot be stored now (stopped, or the last append failed
        and none has succeeded since, e.g. a full disk), or None."""
        return self._broken or self._write_error

    def append(self, payload: bytes, kind: int = KIND_DELIVERY, flags: int = 0,
               received_ns: int | None = None) -> int:
        """Append one record and return its sequence number once it is on disk."""
        return self.append_entries([(payload, kind, flags, received_ns)])[-1]

    def append_many(self, payloads: Sequence[bytes], kind: int = KIND_DELIVERY,
                    flags: int = 0, received_ns: Sequence[int | None] | None = None
                    ) -> list[int]:
        """Append records of one kind (one write, one sync); return their sequence numbers."""
        stamps = received_ns or [None] * len(payloads)
        return self.append_entries([(payload, kind, flags, stamp) for payload, stamp
                                    in zip(payloads, stamps, strict=True)])

    def append_entries(self, entries: Sequence[Entry]) -> list[int]:
        """Append (payload, kind, flags, received_ns or None) records with one write and
        one sync; return their sequence numbers once they are durable."""
        now = time.time_ns()
        with self._mutex:
            if self._broken:
                raise JournalWriteError(self._broken)
            first = self.synced_seq + 1
            data = b"".join(encode(Record(seq, kind, flags, stamp or now, payload))
                            for seq, (payload, kind, flags, stamp) in enumerate(entries, first))
            try:
                if self._size and self._size + len(data) > self._segment_bytes:
                    self._rotate(first)
                self._write(data)
            except JournalWriteError as exc:
                self._write_error = str(exc)
                raise
            self._write_error = None
            self.synced_seq = first + len(entries) - 1
            if self._on_synced is not None:
                self._on_synced(self.synced_seq)
            return list(range(first, self.synced_seq + 1))

    def _write(self, data: bytes) -> None:
        """Write and sync data at the end of the segment (called with the mutex held)."""
        try:
            written = os.pwrite(self._fd, data, self._size)
            if written != len(data):
                raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:
            try:  # nothing may stay half-written, and the undoing must be on disk too
                os.ftruncate(self._fd, self._size)
                os.fdatasync(self._fd)
            except OSError as undo:
                self._broken = f"journal write failed and could not be undone: {undo}"
                raise JournalWriteError(self._broken) from exc
            raise JournalWriteError(f"cannot write the journal: {exc}") from exc
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            # After a failed sync the kernel may have dropped the pages: nothing more
            # can be promised from this file.
            self._broken = f"cannot sync the journal: {exc}"
            raise JournalWriteError(self._broken) from exc
        self._size += len(data)

    def _rotate(self, first: int) -> None:
        """Start the next segment; the full one is closed (every record in it is synced)."""
        full = self._fd
        try:
            self._open_segment(first)
        except OSError as exc:
            self._fd = full  # still the current segment: the next append tries again ...
            reason = f"cannot start a new journal segment: {exc}"
            if (self.dir / _segment_name(first)).exists():
                # ... unless the new file is there: readers, and the next start, take it
                # for the current segment, so no record may go to the full one any more
                self._broken = reason
            raise JournalWriteError(reason) from exc
        os.close(full)

    def close(self) -> None:
        """Release the journal; later appends fail."""
        with self._mutex:
            self._broken = self._broken or "the journal is closed"
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

