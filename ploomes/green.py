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

from collections.abc import Sequence

import gevent
from gevent.event import AsyncResult, Event

from ploomes.journal import Journal

Entry = tuple[bytes, int, int, int | None]  # payload, kind, flags, received_ns


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
        pool = gevent.get_hub().threadpool
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._pending:
                group, self._pending = self._pending, []
                entries = [entry for entries, _ in group for entry in entries]
                try:
                    seqs = pool.apply(self.journal.append_entries, (entries,))
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
