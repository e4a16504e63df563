"""The receiver's sync helper: a small process that runs fdatasync when asked.

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

Protocol on file descriptor 0, a socket: a request is a u32 length and a file path;
the reply an i32: 0 once the file is durable, errno if fdatasync failed (the journal
stops), or -errno if the file could not be opened (the receiver syncs it itself).
Stdlib only, started with `python -I -S`: it starts in tens of milliseconds.
The process ends when the receiver closes its end of the socket.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct

REQUEST = struct.Struct("<I")
REPLY = struct.Struct("<i")


def read_exactly(sock: socket.socket, size: int) -> bytes | None:
    """Return size bytes, or None if the other end closed the socket first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve(sock: socket.socket) -> None:
    path, fd = b"", -1  # the segment being appended to, kept open between requests
    while True:
        head = read_exactly(sock, REQUEST.size)
        wanted = head and read_exactly(sock, REQUEST.unpack(head)[0])
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
                sock.sendall(REPLY.pack(-(exc.errno or errno.EIO)))
                continue
        try:
            os.fdatasync(fd)
            outcome = 0
        except OSError as exc:
            outcome = exc.errno or errno.EIO
        sock.sendall(REPLY.pack(outcome))


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
