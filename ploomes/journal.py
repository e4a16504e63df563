"""The durable delivery journal: the source of truth the event store is built from.

A journal is a folder of append-only segment files named after the sequence number of
their first record. Each record is a fixed header followed by its payload:

    magic "PJ" | kind u8 | flags u8 | payload length u32 | crc32 u32 | seq u64 | received_ns i64

The CRC covers kind, flags, seq, received_ns and the payload, so a torn write at the
tail (a crash in the middle of `write`) is detected and cut off when the journal is
opened again. Exactly one process appends at a time (it holds `journal/.writer.lock`);
any process may read.

Durability: `append` returns only once the record is on disk (fdatasync). Concurrent
appenders share one write and one sync (group commit: the appender that finds nobody
writing writes and syncs everything queued, the others wait for it).
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

HEADER = struct.Struct("<2sBBIIQq")
MAGIC = b"PJ"
SEGMENT_SUFFIX = ".seg"
SPARE_NAME = "next-segment.tmp"  # the next segment, zero-filled ahead of time

KIND_DELIVERY = 1  # a delivery: payload is the body as received (the receiver's sync
#                    helper may still refuse it: see ploomes.syncd)
KIND_REJECTED = 2  # an authenticated delivery refused before it was journaled: payload
#                    is JSON (reason, bounded body, source)
KIND_CONTROL = 3  # an operation on stored data (e.g. remove demo data): payload is JSON

FLAG_DEMO = 1  # the record is demo data, not a real delivery

Entry = tuple[bytes, int, int, int | None]  # payload, kind, flags, received_ns (None: now)

# errors a write reports when it could not take the bytes: they are undone (and the
# undoing synced) and the journal goes on (a full disk clears up; the appenders
# concerned get an error). Any other error stops the journal until a restart.
WRITE_REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class JournalError(Exception):
    """The journal cannot be used."""


class JournalBusy(JournalError):
    """Another process is already appending to this journal."""


class JournalWriteError(JournalError):
    """A record could not be made durable; nothing was acknowledged."""


class Record(NamedTuple):
    """One journal record (a NamedTuple: the ingest makes one per record it reads)."""

    seq: int
    kind: int
    flags: int
    received_ns: int
    payload: bytes

    @property
    def is_demo(self) -> bool:
        """Return whether the record is demo data."""
        return bool(self.flags & FLAG_DEMO)


_CRC_HEAD = struct.Struct("<BBQq")  # what the CRC covers besides the payload


def _crc(kind: int, flags: int, seq: int, received_ns: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_CRC_HEAD.pack(kind, flags, seq, received_ns)))


def _header(seq: int, kind: int, flags: int, received_ns: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, kind, flags, len(payload),
                       _crc(kind, flags, seq, received_ns, payload), seq, received_ns)


def encode(record: Record) -> bytes:
    """Return the bytes of a record as stored in a segment."""
    return _header(record.seq, record.kind, record.flags, record.received_ns,
                   record.payload) + record.payload


def _preallocate(path: Path, size: int) -> None:
    """Create a segment filled with zeros and synced.

    Appending to a file changes its size, so each fdatasync must also commit file-system
    metadata; overwriting zeros that are already on disk does not, which makes the sync
    the receiver waits for about twice as fast (measured on ext4). Readers stop at the
    zeros (no record header there).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        zeros = b"\0" * min(size, 1 << 20)
        left = size
        while left > 0:
            left -= os.write(fd, zeros[:left])
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_paths(journal_dir: Path) -> list[Path]:
    """Return the segment files in sequence order."""
    if not journal_dir.is_dir():
        return []
    return sorted(journal_dir.glob("*" + SEGMENT_SUFFIX), key=lambda p: int(p.stem))


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def _read_records(fh, offset: int) -> Iterator[tuple[Record, int]]:
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


def decode_records(data: bytes) -> list[Record] | None:
    """Return the records data holds, or None unless it is exactly whole, intact records."""
    records, end = [], 0
    for record, after in _read_records(io.BytesIO(data), 0):
        records.append(record)
        end = after
    return records if end == len(data) else None


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
    """Reads records in order, remembering where it stopped (used by the ingest worker)."""

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
                # A later segment means this one is complete (rotation syncs it first).
                # Its name is the next record's sequence, which may skip numbers that a
                # failed write never used.
                current = int(self._path.stem)
                later = [p for p in segment_paths(self._dir) if int(p.stem) > current]
                if later:
                    self._path, self._offset = later[0], 0
                else:
                    break
        return out


class Journal:
    """The appending side of a journal; one per data dir at a time.

    Appenders encode their records, take the next sequence numbers and queue them. An
    appender that finds nobody writing becomes the leader: it writes everything queued
    and syncs it (one call that does both, or a write and the sync given to
    `sync_elsewhere`), wakes the appenders it covered and hands the lead
    to the next one still waiting (group commit, as in LevelDB's writer queue). Records
    queued while a sync runs form the next group. Each waiting appender sleeps on a
    lock of its own, so a sync wakes only the appenders it covered.
    """

    checks_deliveries = False  # deliveries are checked before they are appended

    def __init__(self, journal_dir: Path, segment_bytes: int = 16 * 1024 * 1024,
                 on_synced: Callable[[int], None] | None = None):
        self.dir = journal_dir
        self._on_synced = on_synced  # told each new durable position, in increasing order
        self.dir.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._lock_fd = os.open(self.dir / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            raise JournalBusy(f"another process is writing to {self.dir}") from exc
        self._mutex = threading.Lock()
        self._leading = False  # an appender is writing and syncing a group right now
        self._leader_thread: int | None = None  # the OS thread of that appender
        self._dsync = hasattr(os, "RWF_DSYNC")  # write + sync in one call (Linux >= 4.7)
        self._waiters: list[tuple[int, threading.Lock]] = []  # (last seq, held lock)
        self._broken: str | None = None
        self._failed: list[tuple[int, int, str]] = []  # (first, last, why) never written
        self._queue: list[tuple[int, int, bytes]] = []  # (first seq, last seq, bytes)
        self._fd = -1
        self._path = self.dir  # the current segment's file, once open
        self._size = 0
        # What makes written bytes durable when not os.fdatasync here: called with the
        # segment's descriptor and path, and where the bytes just written start and end
        # (see `sync_elsewhere`)
        self._datasync: Callable[[int, Path, int, int], None] | None = None
        self._allocated = 0  # bytes of the current segment that exist on disk
        for leftover in self.dir.glob(SPARE_NAME + ".*"):
            # a crash may have left one half zero-filled (a whole one under SPARE_NAME
            # itself is kept: see _prepare_spare); a journal closed in this process may
            # still be finishing one, and renames it away meanwhile
            leftover.unlink(missing_ok=True)
        self._recover()
        self.synced_seq = self.written_seq
        self._next_seq = self.written_seq + 1

    def _recover(self) -> None:
        segments = segment_paths(self.dir)
        if not segments:
            self.written_seq = 0
            self._open_segment(1)
            return
        last = segments[-1]
        end, last_seq = 0, int(last.stem) - 1
        for record, offset in scan_segment(last):
            end, last_seq = offset, record.seq
        self.written_seq = last_seq
        self._fd = os.open(last, os.O_RDWR)
        self._path = last
        self._size = end
        self._zero_torn_tail(end)
        self._allocated = max(end, os.fstat(self._fd).st_size)

    def _zero_torn_tail(self, end: int) -> None:
        """Overwrite what a crash left after the last whole record with zeros."""
        last_dirty, offset = -1, end
        while True:
            chunk = os.pread(self._fd, 1 << 16, offset)
            if not chunk:
                break
            stripped = chunk.rstrip(b"\0")
            if stripped:
                last_dirty = offset + len(stripped)
            elif offset - end >= 1 << 16:
                break  # a whole clean chunk after the dirty part: the rest is preallocated
            offset += len(chunk)
        if last_dirty > end:
            os.pwrite(self._fd, b"\0" * (last_dirty - end), end)
            os.fsync(self._fd)

    def _open_segment(self, first: int) -> None:
        path = self.dir / _segment_name(first)
        spare = self.dir / SPARE_NAME
        try:
            os.replace(spare, path)  # only ever whole and synced (see _prepare_spare)
        except FileNotFoundError:  # not ready yet: zero-fill this one now
            try:
                _preallocate(path, self._segment_bytes)
            except OSError:  # no room for the zeros: a plain file still takes records
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        self._fd = os.open(path, os.O_RDWR)
        self._path = path
        self._size = 0
        self._allocated = os.fstat(self._fd).st_size
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name must survive a crash too
        finally:
            os.close(dir_fd)
        threading.Thread(target=self._prepare_spare, name="journal-spare", daemon=True).start()

    def _prepare_spare(self) -> None:
        """Zero-fill the next segment ahead of time, so rotating does not stall appends.

        The zeros go to a file of this thread's own, renamed to SPARE_NAME only once
        whole and synced: a file under that name is always complete, so a rotation can
        never adopt one still being written (when two segments filled faster than a
        spare, a second spare thread once zeroed a file already holding records).
        """
        spare = self.dir / SPARE_NAME
        part = self.dir / f"{SPARE_NAME}.{threading.get_ident()}.{time.monotonic_ns()}"
        try:
            _preallocate(part, self._segment_bytes)
            os.replace(part, spare)
        except OSError:
            part.unlink(missing_ok=True)  # rotation preallocates itself (a full disk shows)

    def rotates_for(self, entries: Sequence[Entry]) -> bool:
        """Return whether appending these entries now would start a new segment first."""
        return self._fills(sum(HEADER.size + len(entry[0]) for entry in entries))

    def _fills(self, size: int) -> bool:
        # an empty segment takes any group, even one larger than a segment
        return bool(self._size) and self._size + size > self._segment_bytes

    def sync_elsewhere(self, datasync: Callable[[int, Path, int, int], None] | None
                       ) -> None:
        """Write groups with a plain write and make them durable with datasync.

        For the receiver, whose event loop waits on a helper process's fdatasync
        (`ploomes.green.SyncHelper`) instead of a thread's write-and-sync.
        datasync(fd, path, start, end) must return only once the bytes written so far
        through fd are durable, and raise OSError if they may not be (the journal then
        stops, as after its own failed sync); the group just written is at offsets
        start..end of the segment (start == end: nothing new, as before a rotation).
        None goes back to syncing here.
        """
        with self._mutex:
            self._datasync = datasync

    @property
    def broken(self) -> str | None:
        """Return why the journal stopped accepting records, or None."""
        return self._broken

    def append(self, payload: bytes, kind: int = KIND_DELIVERY, flags: int = 0,
               received_ns: int | None = None, durable: bool = True) -> int:
        """Append one record and return its sequence number once it is on disk."""
        return self.append_entries([(payload, kind, flags, received_ns)], durable)[-1]

    def append_many(self, payloads: list[bytes], kind: int = KIND_DELIVERY, flags: int = 0,
                    received_ns: list[int | None] | None = None, durable: bool = True
                    ) -> list[int]:
        """Append records of one kind (written together); return their sequence numbers."""
        stamps = received_ns or [None] * len(payloads)
        return self.append_entries([(payload, kind, flags, stamp) for payload, stamp
                                    in zip(payloads, stamps, strict=True)], durable)

    def append_entries(self, entries: Sequence[Entry], durable: bool = True) -> list[int]:
        """Append (payload, kind, flags, received_ns or None) records written together.

        Returns their sequence numbers once durable. With durable=False the call returns
        once the records are queued; the next sync (anybody's, or `sync()`) covers them.
        """
        now = time.time_ns()
        with self._mutex:
            if self._broken:
                raise JournalWriteError(self._broken)
            first = self._next_seq
            parts = []  # header, payload, header, payload...: one copy, by the join
            for seq, (payload, kind, flags, stamp) in enumerate(entries, first):
                parts.append(_header(seq, kind, flags, stamp or now, payload))
                parts.append(payload)
            data = b"".join(parts)
            last = first + len(entries) - 1
            self._next_seq = last + 1
            self._queue.append((first, last, data))
            if durable:
                self._make_durable(first, last)
        return list(range(first, last + 1))

    @property
    def unsynced(self) -> bool:
        """Return whether records were queued that no sync has covered yet."""
        return self._next_seq - 1 > self.synced_seq

    def sync(self) -> None:
        """Make every record queued so far durable."""
        with self._mutex:
            last = self._next_seq - 1
            self._make_durable(last, last)

    def _make_durable(self, first: int, last: int) -> None:
        """Return once records first..last are durable; raise if they never will be.

        Called with self._mutex held; releases it while writing or waiting.
        """
        while self.synced_seq < last and not self._broken:
            if not self._leading:
                if not self._queue:  # nobody writes them and nothing is left to write
                    raise JournalWriteError("journal records were lost before their sync")
                self._lead()
                continue
            if self._leader_thread == threading.get_ident():
                # The leader is a greenlet of this very thread, waiting for its sync
                # (`sync_elsewhere`): blocking this thread would stop it for good.
                raise JournalWriteError("the journal is being written by another greenlet "
                                        "of this thread; only one may write at a time")
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append((last, waiter))
            self._mutex.release()
            try:
                waiter.acquire()  # released by a leader: covered, broken, or our turn
            finally:
                self._mutex.acquire()
        for lo, hi, why in self._failed:
            if lo <= last and first <= hi:
                raise JournalWriteError(why)
        if self.synced_seq < last:
            raise JournalWriteError(self._broken or "the journal stopped")

    def _lead(self) -> None:
        """Write and sync everything queued, then wake who it covered and the next leader.

        Called with self._mutex held and nobody leading.
        """
        batch, self._queue = self._queue, []
        self._leading = True
        self._leader_thread = threading.get_ident()
        self._mutex.release()
        try:
            self._write_batch(batch)  # never empty: only called with records queued
        except BaseException as exc:
            # Not an I/O error _write_batch handles (a thread that cannot start during
            # a rotation, memory): nobody may be told these records are durable.
            self._fail_all(f"journal write failed: {exc!r}")
            raise
        finally:
            self._mutex.acquire()
            self._leading = False
            self._leader_thread = None
            keep = []
            for last, waiter in self._waiters:
                if last <= self.synced_seq or self._broken:
                    waiter.release()
                else:
                    keep.append((last, waiter))
            if keep:  # records queued during this sync: the first waiter leads them
                keep.pop(0)[1].release()
            self._waiters = keep

    def _write_batch(self, batch: list[tuple[int, int, bytes]]) -> None:
        first, last = batch[0][0], batch[-1][1]
        data = b"".join(chunk for _, _, chunk in batch)
        synced_by_write = self._dsync and self._datasync is None  # one RWF_DSYNC call
        try:
            if self._fills(len(data)) and not self._rotate(first):
                return  # the journal is broken now
            if synced_by_write:
                written = self._write_dsync(data)
                if written is None:
                    return  # the journal is broken now
            else:
                written = os.pwrite(self._fd, data, self._size)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:
            try:  # nothing may stay half-written, and the undoing must be on disk too
                self._undo_write(len(data))
                os.fdatasync(self._fd)
            except OSError:
                self._fail_all(f"journal write failed and could not be undone: {exc}")
                return
            with self._mutex:
                # These sequence numbers are never used; their appenders get an error.
                self._failed = [*self._failed[-99:], (first, last, f"cannot write the "
                                                                    f"journal: {exc}")]
                self.synced_seq = last
            return
        self._size += len(data)
        try:
            if not synced_by_write:
                self._sync_segment(self._size - len(data))
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the pages: nothing more
            # can be promised from this file.
            self._fail_all(f"cannot sync the journal: {exc}")
            return
        with self._mutex:
            self.written_seq = self.synced_seq = last
            if self._on_synced:
                self._on_synced(last)

    def _write_dsync(self, data: bytes) -> int | None:
        """Write and sync in one system call (RWF_DSYNC); None if the journal broke.

        Errors a write reports before anything is written are raised for the caller to
        undo; any other error may have left the bytes unsynced, so nothing more can be
        promised from this file.
        """
        try:
            return os.pwritev(self._fd, [data], self._size, os.RWF_DSYNC)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.EPERM):
                # an old kernel, or a sandbox refusing the flag: two calls from now on
                self._dsync = False
                return os.pwrite(self._fd, data, self._size)
            if exc.errno in WRITE_REFUSED:
                raise
            self._fail_all(f"cannot write and sync the journal: {exc}")
            return None

    def _undo_write(self, length: int) -> None:
        """Put the bytes a failed write may have left back as they were."""
        if os.fstat(self._fd).st_size > self._allocated:
            os.ftruncate(self._fd, max(self._size, self._allocated))  # it grew the file
        zero_to = min(self._size + length, self._allocated)
        if zero_to > self._size:  # inside the preallocated zeros: zero them again
            os.pwrite(self._fd, b"\0" * (zero_to - self._size), self._size)

    def _fail_all(self, why: str) -> None:
        with self._mutex:
            self._broken = why  # the leader wakes every waiter when it finishes

    def _sync_segment(self, written_from: int) -> None:
        """Make the segment durable; the bytes from written_from on were just written."""
        if self._datasync is not None:
            self._datasync(self._fd, self._path, written_from, self._size)
        else:
            os.fdatasync(self._fd)

    def _rotate(self, first: int) -> bool:
        """Close the full segment and start the next; False if the journal broke."""
        try:
            self._sync_segment(self._size)  # every group was synced already: a last check
        except OSError as exc:
            # as after any failed sync, the pages of records already answered may be gone
            self._fail_all(f"cannot sync the journal: {exc}")
            return False
        os.close(self._fd)
        self._open_segment(first)
        return True

    def close(self) -> None:
        """Write what is queued, sync, and release the journal."""
        try:
            self.sync()
        except JournalWriteError:
            pass  # those appenders were told; nothing more can be written
        with self._mutex:
            self._broken = self._broken or "the journal is closed"
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
