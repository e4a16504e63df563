"""The receiver's sync helper: a small process that makes journal groups durable and checks them.

The receiver's event loop writes each group of journal records itself (a write to the
page cache: microseconds) and asks this process to make the segment durable, waiting on
a socket meanwhile. No thread of the receiver then has to take the GIL back after a
sync: with gevent's thread pool doing the write-and-sync, every group cost a hand-off
to a thread and GIL waits on both sides. Under load the receiver used 756–785 µs of CPU
per delivery that way and 692–732 µs with this helper (see ARCHITECTURE.md, "Why a
journal in front of DuckDB").

fdatasync works on the file, not on one descriptor, so syncing the segment opened here
covers the bytes the receiver wrote through its own descriptor. A write-back error is
reported to every descriptor opened before it (and to a new one if nobody saw it yet).

Once the group is durable, this process also reads it back (from the page cache) and
checks the deliveries in it that the receiver has not checked (`needs_check`) with
`ploomes.delivery.check_delivery`, the receiver's own check: the receiver's event loop,
which every request shares, then spends no time decoding bodies. A refused delivery
stays in the journal (the ingest keeps it in `rejected_deliveries`, with the same
reason) and its request gets a 400.

Protocol on file descriptor 0, a socket. A request is `REQUEST` (path length, start and
end offset of the bytes just written) and the file path. The reply is `REPLY`:
  - outcome: 0 once the file is durable, errno if fdatasync failed (the journal stops),
    or -errno if the file could not be opened (the receiver syncs it itself);
  - checked: 1 if every record between the offsets was read and checked, with the
    sequence numbers of the first and last; 0 if not (the receiver checks them);
  - the size of what follows: the refusals as JSON, `[[seq, reason], ...]` (none: 0).
The process ends when the receiver closes its end of the socket.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Iterable

if not __package__:
    # Run as a script by the receiver, with `python -I` (no PYTHON* variables, no user
    # site-packages) and the receiver's sys.path as argument: the same ploomes and the
    # same orjson as the receiver and the ingest, wherever they were installed.
    sys.path[:0] = (json.loads(sys.argv[1]) if len(sys.argv) > 1
                    else [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))])
from ploomes.delivery import InvalidDelivery, check_delivery  # noqa: E402
from ploomes.journal import FLAG_DEMO, KIND_DELIVERY, Record, decode_records  # noqa: E402

REQUEST = struct.Struct("<IQQ")  # path length, start offset, end offset
REPLY = struct.Struct("<iBQQI")  # outcome, checked, first seq, last seq, refusals size
CHECK_HERE_MAX = 64 * 1024  # bigger bodies are checked by the receiver (on its pool)


def needs_check(kind: int, flags: int, size: int) -> bool:
    """Return whether a journaled record is a delivery nobody has checked yet.

    Demo deliveries are checked when the dashboard sends them, and bodies over
    CHECK_HERE_MAX by the receiver before it journals them: checking such a body here
    would hold every group behind it (1 MiB of nested arrays takes ~1 s).
    """
    return kind == KIND_DELIVERY and not flags & FLAG_DEMO and size <= CHECK_HERE_MAX


def read_exactly(sock: socket.socket, size: int) -> bytes | None:
    """Return size bytes, or None if the other end closed the socket first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def refusals(records: Iterable[Record]) -> dict[int, str]:
    """Return {seq: reason} for the records `needs_check` selects that check_delivery refuses.

    The one check of journaled deliveries: here, or in the receiver when this process
    did not check a group (`ploomes.green.GroupCommit`).
    """
    refused = {}
    for record in records:
        if needs_check(record.kind, record.flags, len(record.payload)):
            try:
                check_delivery(record.payload)
            except InvalidDelivery as exc:
                refused[record.seq] = str(exc)
    return refused


def check_range(data: bytes) -> tuple[int, int, list[tuple[int, str]]] | None:
    """Check the deliveries among the records in data.

    Returns (first seq, last seq, [(seq, reason) of each refused one]), or None when
    data is not exactly whole, intact records (the receiver then checks them itself).
    """
    records = decode_records(data)
    if not records:
        return None
    return records[0].seq, records[-1].seq, list(refusals(records).items())


def serve(sock: socket.socket) -> None:
    path, fd = b"", -1  # the segment being appended to, kept open between requests
    while True:
        head = read_exactly(sock, REQUEST.size)
        size, start, end = REQUEST.unpack(head) if head else (0, 0, 0)
        wanted = head and read_exactly(sock, size)
        if not wanted:
            return
        if wanted != path:
            if fd >= 0:
                os.close(fd)
            path, fd = b"", -1
            try:
                fd = os.open(wanted, os.O_RDONLY | os.O_CLOEXEC)
                path = wanted
            except OSError as exc:
                sock.sendall(REPLY.pack(-(exc.errno or errno.EIO), 0, 0, 0, 0))
                continue
        try:
            os.fdatasync(fd)
            outcome = 0
        except OSError as exc:
            outcome = exc.errno or errno.EIO
        checked = None
        if outcome == 0 and end > start:
            try:
                checked = check_range(os.pread(fd, end - start, start))
            except Exception:  # noqa: BLE001 - the receiver runs the same check and sees it
                checked = None
        if checked is None:
            sock.sendall(REPLY.pack(outcome, 0, 0, 0, 0))
        else:
            first, last, refused = checked
            extra = json.dumps(refused).encode("utf-8") if refused else b""
            sock.sendall(REPLY.pack(outcome, 1, first, last, len(extra)) + extra)


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group; the receiver still has
    # groups to sync while it shuts down, and ends this process by closing the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with socket.socket(fileno=0) as sock:
        try:
            serve(sock)
        except (ConnectionError, BrokenPipeError):
            pass  # the receiver is gone


if __name__ == "__main__":
    main()
