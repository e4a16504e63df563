"""Journal appends for the receiver's gevent server: grouped, synced off the event loop.

The receiver serves requests as greenlets on one OS thread (gevent's WSGI server). A
delivery may be answered only once it is durable, and the sync takes a fraction of a
millisecond to several: done in the request's greenlet it would stop every other
request. `GroupCommit` queues each append and lets one writer greenlet write everything
queued as one journal group; a helper process (`ploomes.syncd`, driven by `SyncHelper`)
runs the group's fdatasync while the writer greenlet waits on a socket, so the loop
serves the other requests meanwhile, and records that arrive during a sync form the
next group.

Compared with a thread per request blocking on the sync (what waitress does), a
delivery costs no OS thread hand-off at all; compared with gevent's thread pool doing
the write-and-sync, a group costs no GIL hand-off either (only a group that starts a new
segment still goes to the pool).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import gevent
from gevent.event import Event

from ploomes import syncd
from ploomes.delivery import InvalidDelivery
from ploomes.journal import Entry, Journal, JournalWriteError, Record

log = logging.getLogger(__name__)


def _outcome(fn: Callable, args: tuple) -> tuple[bool, object]:
    # runs on a pool thread: hand an exception back instead of letting gevent print it
    try:
        return True, fn(*args)
    except BaseException as exc:  # noqa: BLE001 - re-raised in the calling greenlet
        return False, exc


def offload(fn: Callable, *args: object) -> object:
    """Run fn(*args) on gevent's thread pool; the event loop serves others meanwhile.

    For CPU work that could otherwise hold the loop for long (a 1 MiB body of nested
    arrays takes ~1 s to check): the pool thread still needs the GIL, but gives it back
    every switch interval, so other requests keep being answered.
    """
    ok, value = gevent.get_hub().threadpool.apply(_outcome, (fn, args))
    if not ok:
        raise value
    return value


class SyncHelper:
    """fdatasync of journal segments in a helper process, waited for without a thread.

    Create it on the event loop's thread: there a sync waits cooperatively (other
    greenlets run); on any other thread it blocks that thread. Not for concurrent use:
    the journal calls it only from the appender leading a group, one at a time.

    If the helper is gone (killed, or it could not start), the segment is synced here
    with the journal's own descriptor, which reports any write-back error since the
    segment was opened, and a new helper is started at most every RESTART_SECONDS.

    The helper also checks the deliveries of the group it made durable (see
    `ploomes.syncd`); `checked` holds its verdicts on the last sync's records.
    """

    RESTART_SECONDS = 5.0

    def __init__(self) -> None:
        self._loop_thread = threading.get_ident()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._watcher = None  # the loop's read watcher on the socket, made on first use
        self._next_start = 0.0
        # the last sync's records as the helper checked them: (first seq, last seq,
        # {seq: reason} of the refused ones), or None if it did not check them
        self.checked: tuple[int, int, dict[int, str]] | None = None
        self._start()

    @property
    def pid(self) -> int | None:
        """Return the helper's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._sock is not None else None

    def _start(self) -> None:
        self._next_start = time.monotonic() + self.RESTART_SECONDS
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen([sys.executable, "-I", syncd.__file__,
                                           json.dumps(sys.path)],
                                          stdin=theirs, close_fds=True)
        except OSError as exc:
            ours.close()
            log.warning("cannot start the sync helper (%s); syncing in the receiver", exc)
            return
        finally:
            theirs.close()
        self._sock = ours

    def _stop(self) -> None:
        if self._watcher is not None:
            if threading.get_ident() == self._loop_thread:  # its loop's thread only
                self._watcher.close()
            self._watcher = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)  # it ends once it reads the end of the socket
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def _ask(self, path: Path, start: int, end: int
             ) -> tuple[int, tuple[int, int, dict[int, str]] | None] | None:
        """Return the helper's reply (outcome, checked), or None if the helper is gone.

        A reply that cannot be read counts as gone too: the socket may be out of step.
        """
        name = os.fsencode(path)
        try:
            self._sock.sendall(syncd.REQUEST.pack(len(name), start, end) + name)
            if threading.get_ident() == self._loop_thread:
                if self._watcher is None:  # made here: it must belong to this thread's loop
                    self._watcher = gevent.get_hub().loop.io(self._sock.fileno(), 1)
                gevent.get_hub().wait(self._watcher)
            reply = syncd.read_exactly(self._sock, syncd.REPLY.size)
            if reply is None:
                return None
            outcome, checked, first, last, size = syncd.REPLY.unpack(reply)
            refusals = syncd.read_exactly(self._sock, size) if size else b""
            if refusals is None:
                return None
            refused = {int(seq): str(reason) for seq, reason in json.loads(refusals)
                       } if refusals else {}
        except (OSError, ValueError, TypeError):
            return None
        except BaseException:
            self._stop()  # interrupted between question and answer: never read a stale one
            raise
        return outcome, (first, last, refused) if checked else None

    def datasync(self, fd: int, path: Path, start: int = 0, end: int = 0) -> None:
        """Return once the bytes written through fd (the file at path) are durable.

        The helper then checks the records at offsets start..end; `checked` tells.
        """
        self.checked = None
        if self._sock is None and time.monotonic() >= self._next_start:
            self._start()
        reply = None if self._sock is None else self._ask(path, start, end)
        outcome = None if reply is None else reply[0]
        if outcome is None and self._sock is not None:
            log.warning("the sync helper stopped; syncing in the receiver until it restarts")
            self._stop()
        if outcome is not None and outcome > 0:
            raise OSError(outcome, os.strerror(outcome), str(path))
        if outcome != 0:  # no helper, or it could not open the file: the slow way
            os.fdatasync(fd)
        else:
            self.checked = reply[1]

    def close(self) -> None:
        """End the helper process."""
        self._stop()


class _Group:
    """The entries of one journal group and, once written, its outcome."""

    __slots__ = ("done", "entries", "error", "refused", "seqs")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.done = Event()
        self.seqs: list[int] = []
        self.error: Exception | None = None
        self.refused: dict[int, str] | None = None  # seq -> why, for refused deliveries


class GroupCommit:
    """Appends journal entries from greenlets in groups, like `Journal.append_entries`.

    Create it on the event loop's thread; it starts a `SyncHelper` and makes the journal
    sync through it (`close()` stops it).

    It also checks deliveries (`checks_deliveries`): each delivery `syncd.needs_check`
    selects is journaled unchecked, and once its group is durable it is checked by the
    sync helper, or here if the helper did not (it is gone). A refused one stays in the
    journal (the ingest keeps it in `rejected_deliveries` with the same reason) and its
    `append_entries` raises InvalidDelivery.
    """

    checks_deliveries = True

    def __init__(self, journal: Journal):
        self.journal = journal
        self.syncer = SyncHelper()
        journal.sync_elsewhere(self.syncer.datasync)
        self._pending: _Group | None = None  # the group being gathered
        self._wake = Event()
        self._writer: gevent.Greenlet | None = None
        self._busy = False  # the writer is writing a group (maybe waiting for its sync)

    def append_entries(self, entries: Sequence[Entry], durable: bool = True
                       ) -> list[int] | None:
        """Queue entries; when durable, return their sequence numbers once on disk.

        With durable=False return None at once: the next group writes them (durably).
        Raises what the journal raised (JournalWriteError) for the group, or
        InvalidDelivery if a delivery among entries was refused (after it was journaled).
        """
        group = self._pending
        if group is None:
            group = self._pending = _Group()
        start = len(group.entries)
        group.entries.extend(entries)
        self._start_writer()
        if not durable:
            return None
        group.done.wait()
        if group.error is not None:
            # A fresh exception for each request: raising the group's own one in every
            # request would pile all their frames onto its traceback (and keep them).
            raise JournalWriteError(str(group.error) or repr(group.error)) from group.error
        seqs = group.seqs[start:start + len(entries)]
        if group.refused is not None:
            for seq in seqs:
                if seq in group.refused:
                    raise InvalidDelivery(group.refused[seq])
        return seqs

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._run)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self._busy = True
            try:
                self._write_pending()
            finally:
                self._busy = False

    def _write_pending(self) -> None:
        while self._pending is not None:
            group, self._pending = self._pending, None
            entries = group.entries
            try:
                # On the loop: the write goes to the page cache, and the sync waits on the
                # helper cooperatively. Only this greenlet writes through the journal
                # (drain() waits for it), so no other caller on this thread can find the
                # journal's OS locks held by a greenlet that is waiting for its sync.
                # A group that starts a new segment goes to a pool thread: the rotation
                # syncs a directory and may have to zero-fill the segment itself.
                group.seqs = (offload(self.journal.append_entries, entries)
                              if self.journal.rotates_for(entries)
                              else self.journal.append_entries(entries))
                group.refused = self._refused(entries, group.seqs)
            except Exception as exc:  # noqa: BLE001 - each waiting request gets it
                group.error = exc
            except BaseException:  # the writer killed mid-group: nobody may wait forever
                group.error = JournalWriteError("the journal writer stopped during a group")
                raise
            finally:
                group.done.set()  # one wake-up for every request of the group

    def _refused(self, entries: list[Entry], seqs: list[int]) -> dict[int, str] | None:
        """Return seq -> reason for the refused deliveries of a group just made durable."""
        checked = self.syncer.checked
        if checked is not None and checked[0] <= seqs[0] and seqs[-1] <= checked[1]:
            return checked[2] or None
        # the helper did not check them (it is gone, or could not read the group): the
        # same check here, on the loop (only bodies up to syncd.CHECK_HERE_MAX)
        return syncd.refusals(Record(seq, kind, flags, 0, payload) for
                              (payload, kind, flags, _), seq in zip(entries, seqs, strict=True)
                              ) or None

    def drain(self) -> None:
        """Wait until everything queued is written (at shutdown, after the server stopped).

        The writer greenlet writes it: writing from here while the writer waits for a
        sync would block this thread on the journal's lock, and with it the writer.
        """
        while self._pending is not None or self._busy:
            self._start_writer()
            gevent.sleep(0.005)

    def close(self) -> None:
        """Stop the sync helper: the journal syncs by itself again."""
        self.journal.sync_elsewhere(None)
        self.syncer.close()
