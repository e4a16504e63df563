"""Real HTTP destinations on loopback for the relay's tests: a threaded http.server that
records every request and answers as a test tells it (fail N times, hang, 429, reset)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESET = "reset"  # an answer that closes the connection with a TCP reset


@dataclass
class Reply:
    """What the sink answers to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok": true}'
    hold: float = 0.0  # seconds to wait before answering (released early by `release`)
    action: str | None = None  # RESET: close with a TCP reset instead of answering


@dataclass(frozen=True)
class Received:
    """One request the sink got."""

    path: str
    headers: dict[str, str]
    body: bytes
    number: int  # 1 for the first request the sink got
    at: float  # time.monotonic() when it arrived

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


class Sink:
    """A destination on 127.0.0.1: `answer(received)` decides each reply (200 by default)."""

    def __init__(self, answer: Callable[[Received], Reply] | None = None):
        self.answer = answer or (lambda received: Reply())
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.released = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the relay uses it

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with sink.arrived:
                    received = Received(self.path, dict(self.headers.items()), body,
                                        len(sink.received) + 1, time.monotonic())
                    sink.received.append(received)
                    sink.arrived.notify_all()
                reply = sink.answer(received)
                if reply.hold:
                    sink.released.wait(reply.hold)
                if reply.action == RESET:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    self.close_connection = True  # the relay gave up waiting: fine

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Sink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def wait(self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0
             ) -> list[Received]:
        """Wait until `predicate(received so far)` holds; return a copy, or fail."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: predicate(self.received), timeout):
                raise AssertionError(f"the sink got {len(self.received)} requests; the "
                                     f"condition was not met within {timeout} s")
            return list(self.received)

    def wait_count(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until at least `count` requests arrived."""
        return self.wait(lambda got: len(got) >= count, timeout)

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)


def fail_first(n: int, status: int = 500) -> Callable[[Received], Reply]:
    """Answer `status` to the first n requests of each webhook-id, then 200."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def answer(received: Received) -> Reply:
        with lock:
            key = received.header("webhook-id") or ""
            seen[key] = seen.get(key, 0) + 1
            return Reply(status) if seen[key] <= n else Reply()
    return answer
