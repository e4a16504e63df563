"""Journal appends for the receiver's gevent server: grouped, off the event loop.

The receiver serves requests as greenlets on one OS thread (gevent's WSGI server). A
delivery may be answered only once it is durable, and the sync takes a fraction of a
millisecond to several: done in the request's greenlet it would stop every other
request. `GroupCommit` queues each append and lets one writer greenlet hand everything
queued to a thread of gevent's pool as one journal group (one write that is also the
sync); the requests of that group wait on their own result, the loop serves the others
meanwhile, and records that arrive during a sync form the next group.

Compared with a thread per request blocking on the sync (what waitress does), a
delivery costs no OS thread hand-off at all: only the group does, twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import gevent
from gevent.event import AsyncResult, Event

from ploomes.journal import Entry, Journal


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


class GroupCommit:
    """Appends journal entries from greenlets in groups, like `Journal.append_entries`."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self._pending: list[tuple[Sequence[Entry], AsyncResult | None]] = []
        self._wake = Event()
        self._writer: gevent.Greenlet | None = None

    def append_entries(self, entries: Sequence[Entry], durable: bool = True
                       ) -> list[int] | None:
        """Queue entries; when durable, return their sequence numbers once on disk.

        With durable=False return None at once: the next group writes them (durably).
        Raises what the journal raised (JournalWriteError) for the group.
        """
        result = AsyncResult() if durable else None
        self._pending.append((entries, result))
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._run)
        self._wake.set()
        return result.get() if result is not None else None

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self._write_pending()

    def _write_pending(self, inline: bool = False) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            entries = [entry for entries, _ in group for entry in entries]
            try:
                seqs = (self.journal.append_entries(entries) if inline
                        else offload(self.journal.append_entries, entries))
            except Exception as exc:  # noqa: BLE001 - each waiting request gets it
                for _, result in group:
                    if result is not None:
                        result.set_exception(exc)
                continue
            start = 0
            for entries_of_one, result in group:
                end = start + len(entries_of_one)
                if result is not None:
                    result.set(seqs[start:end])
                start = end

    def drain(self) -> None:
        """Write what is still queued (at shutdown, after the server stopped)."""
        self._write_pending(inline=True)
