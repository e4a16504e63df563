"""The Ploomes webhook receiver: `python receiver.py [--host H] [--port P] [--data-dir D]`.

A thin Flask shell over `ploomes.intake.service.DeliveryService`, served by gevent's
WSGI server (`serve`): requests are greenlets on one thread. Journal appends go through
`GroupCommit`: one writer greenlet writes everything queued as one group and syncs it
on a pool thread while the loop serves the other requests. The ingest process
(`ploomes.ingest.worker.IngestProcess`) is started beside it.

The server faces the internet: `Handler` refuses malformed or ambiguous requests before
the app sees them, and `ConnectionGuard` keeps slow clients from holding connections.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from http.client import HTTPException, HTTPMessage
from typing import Any, TypeVar

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException as WerkzeugHTTPException
from werkzeug.wsgi import get_content_length

from ploomes.config import ConfigError, Settings, load_settings, mask_secret
from ploomes.ingest.worker import IngestProcess
from ploomes.intake.datadir import make_private
from ploomes.intake.journal import FLAG_TEST, Entry, Journal, JournalBusy, JournalWriteError
from ploomes.intake.keys import ensure_key, key_file
from ploomes.intake.service import DeliveryService
from ploomes.model.vocabulary import (
    DEMO_PATH,
    TEST_HEADER,
    VALIDATION_HEADER,
    VALIDATION_QUERY,
    WEBHOOK_PATH,
)
from ploomes.relay.forwarder import ForwarderProcess
from ploomes.relay.metrics import RelayCollector

KEY_ENVIRON = "HTTP_" + VALIDATION_HEADER.upper().replace("-", "_")  # as WSGI names it
TEST_ENVIRON = "HTTP_" + TEST_HEADER.upper().replace("-", "_")
_DEFAULTS = Settings()
HEADER_TIMEOUT = _DEFAULTS.header_timeout_seconds
MAX_CONNECTIONS = _DEFAULTS.max_connections
MAX_PENDING_PER_CLIENT = _DEFAULTS.max_pending_per_client
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request, or a
#                      request may go on, before it is no longer read; at twice this long
#                      it is cut (see ConnectionGuard.sweep)
EVICT_GRACE = 0.5  # a connection younger than this is never closed to make room for
#                    others: its request may still be on its way
REPORT_EVERY = 60.0  # connections closed for slowness are summed up in the log this often
DRAIN_MAX = 64 * 1024  # unread body bytes read and dropped to keep a connection; beyond
#                        that (a refused huge body) the connection is closed instead
DEMO_MAX_BYTES = 16 * 1024 * 1024  # one chunk of demo deliveries from the dashboard
STOP_SECONDS = 10.0  # on SIGTERM, how long requests waiting for the disk may finish
# Headers a reverse proxy adds: a request that carries one came from elsewhere, whatever
# address it arrived from
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")
# A request line: method, a target of visible ASCII only (a path, `*` or an absolute
# URL), HTTP/1.x (RFC 9112 section 3)
_REQUEST_LINE = re.compile(
    r"[A-Z]{1,16} (?:/[\x21-\x7e]*|\*|https?://[\x21-\x7e]+) HTTP/1\.[01]\r?\n")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a token (RFC 9110 5.1)
# What of a refused request line may be logged: the method and the path up to the first
# character that could start a query, a parameter or a quoted string (and a key in it)
_LOGGABLE_START = re.compile(r"[A-Za-z]{0,16}(?: [A-Za-z0-9/._~%-]{0,100})?")
_QUERY_IN_TEXT = re.compile(r"\?.*|(?i:validation.?key).*|(?i:validation%5fkey).*")
T = TypeVar("T")
http_log = logging.getLogger("ploomes.receiver.http")


def _no_secrets(text: str) -> str:
    return text


class _RedactingLog:
    """The server's error log: a logger that never writes a key given in a request.

    Everything after a `?` or a mention of the validation key, to the end of its line,
    is hidden, and the accepted keys themselves wherever they appear (`redact`).
    """

    def __init__(self, logger: logging.Logger, redact: Callable[[str], str] = _no_secrets):
        self._logger = logger
        self._redact = redact

    def write(self, text: str) -> None:
        lines = [_QUERY_IN_TEXT.sub("[hidden]", line) for line in str(text).splitlines()]
        text = self._redact("\n".join(lines)).rstrip()
        if text:
            self._logger.warning("%s", text)

    def flush(self) -> None:
        pass


class _Refused(ValueError):
    """A request refused before the app sees it; `reason` (a fixed text) is answered."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _TooSlow(ValueError):
    """The guard closed the connection before its request's headers arrived."""


def _answer(status: str, reason: str) -> bytes:
    """A whole HTTP answer refusing a request, closing its connection."""
    body = json.dumps({"status": "refused", "reason": reason}).encode("ascii")
    return (f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("ascii") + body


_TOO_SLOW_ANSWER = _answer("408 Request Timeout", "the request's headers came too slowly")


def _request_line_for_log(line: str | None) -> str:
    """Describe a refused request line without its query or anything after it."""
    line = (line or "").rstrip("\r\n")
    match = _LOGGABLE_START.match(line)
    shown = match.group() if match else ""
    text = f"request line {shown!r}"
    if len(line) > len(shown):
        text += f" and {len(line) - len(shown)} more characters, not shown"
    bad = next((i for i, char in enumerate(line) if not " " <= char <= "~"), None)
    if bad is not None:  # the line was read as latin-1: one character per byte
        text += f" (byte 0x{ord(line[bad]):02x} at {bad})"
    return text


def _check_headers(headers: HTTPMessage) -> None:
    """Refuse headers that proxies and this server could read differently (smuggling)."""
    if getattr(headers, "status", ""):  # gevent's mark of a header line over its limit
        raise _Refused("a header line is too long")
    if headers.defects:
        raise _Refused("malformed header lines")
    for name in headers.keys():
        if not _HEADER_NAME.fullmatch(name):
            raise _Refused("malformed header name")
    lengths = headers.get_all("Content-Length")
    codings = headers.get_all("Transfer-Encoding")
    if codings:
        if lengths:
            raise _Refused("Transfer-Encoding and Content-Length together")
        if len(codings) > 1 or codings[0].strip().lower() != "chunked":
            raise _Refused("unsupported Transfer-Encoding (only chunked is accepted)")
    elif lengths:
        values = {value.strip() for value in lengths}
        if len(values) > 1:
            raise _Refused("conflicting Content-Length headers")
        value = values.pop()
        if not (value.isascii() and value.isdigit()):
            raise _Refused("invalid Content-Length")


def _client_key(address: Any) -> str:
    """The client a connection counts for: its IPv4 address, or its IPv6 /64 (one
    machine may hold a whole /64)."""
    host = str(address[0]) if isinstance(address, tuple) else str(address)
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    if ":" in host:
        try:
            return str(ipaddress.IPv6Network(f"{host}/64", strict=False))
        except ValueError:
            return host
    return host


def _shutdown(handler: Any, how: int) -> None:
    """Shut the OS socket of a connection: a read in progress sees the end of the stream,
    as if the client had closed it, and the handler finishes on its own greenlet."""
    os_socket = getattr(getattr(handler, "socket", None), "_sock", None)
    if os_socket is not None:
        try:
            os_socket.shutdown(how)
        except OSError:
            pass


class ConnectionGuard:
    """Keeps slow or greedy clients from holding the server's connections.

    Each connection is pending (its request line and headers are on their way: they are
    due `header_timeout` seconds after the connection starts, or after the first byte of
    a later request on it), busy (in the app) or idle (kept alive between requests, for
    `idle_timeout` seconds). `sweep` closes connections past their time. A client may
    have `max_pending_per_client` pending connections and the server `max_connections`
    in all: beyond either, the connection that has waited longest for its headers is
    closed (from the client with the most of them), so a newcomer is served and the
    slowest go. Counting only pending connections keeps the cap fair behind a reverse
    proxy, where every client has the proxy's address: its requests arrive whole.

    One greenlet runs the sweep, instead of a timeout on each socket read: gevent arms
    a pure-Python timer for every read that has to wait, which under load is most
    requests (a kept-alive connection waiting for its next one).
    """

    def __init__(self, header_timeout: float = HEADER_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 max_pending_per_client: int = MAX_PENDING_PER_CLIENT):
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_pending_per_client = max_pending_per_client
        # every dict below is in the order its connections entered it: oldest first
        self.open: set[Any] = set()
        self.pending: dict[Any, float] = {}  # handler: since when its headers are due
        self.by_client: dict[str, dict[Any, float]] = {}  # the pending ones, per client
        self.busy: dict[Any, float] = {}  # handler: since when it is in the app
        self.idle: dict[Any, float] = {}  # handler: since when it waits for a request
        self.cut = 0  # connections closed for slowness, since the last report

    @property
    def tick(self) -> float:
        """How often `sweep` should run."""
        return max(0.05, min(0.5, self.header_timeout / 4, self.idle_timeout / 4))

    def connected(self, handler: Any) -> None:
        """A new connection: its first request's headers are due from now."""
        now = time.monotonic()
        handler.client_key = _client_key(handler.client_address)
        self.open.add(handler)
        self._pend(handler, now)
        mine = self.by_client[handler.client_key]
        if len(mine) > self.max_pending_per_client:
            self._cut_oldest(mine, now)
        if len(self.open) >= self.max_connections:
            self._make_room(now)

    def waiting(self, handler: Any) -> bool:
        """Return whether a kept-alive connection waits for its next request."""
        return handler in self.idle

    def request_started(self, handler: Any) -> None:
        """The first byte of a kept-alive connection's next request came."""
        if self.idle.pop(handler, None) is not None:
            self._pend(handler, time.monotonic())

    def headers_read(self, handler: Any) -> None:
        """A request's line and headers are in: it goes to the app."""
        self._unpend(handler)
        self.busy[handler] = time.monotonic()

    def request_done(self, handler: Any) -> None:
        """The app answered; the connection waits for its next request."""
        self.busy.pop(handler, None)
        if handler in self.open:
            self.idle[handler] = time.monotonic()

    def closed(self, handler: Any) -> None:
        """The connection ended."""
        self._unpend(handler)
        self.busy.pop(handler, None)
        self.idle.pop(handler, None)
        self.open.discard(handler)

    def sweep(self) -> None:
        """Close what is past its time; bring clients back under their cap."""
        now = time.monotonic()
        for handler, since in list(self.pending.items()):
            if now - since <= self.header_timeout:
                break
            self._cut(handler)
        for mine in list(self.by_client.values()):
            while len(mine) > self.max_pending_per_client and self._cut_oldest(mine, now):
                pass
        if len(self.open) >= self.max_connections:  # full: nobody new can come in
            self._make_room(now)
        for handler, since in list(self.idle.items()):
            if now - since <= self.idle_timeout:
                break
            del self.idle[handler]  # no longer read: the handler ends quietly
            _shutdown(handler, socket.SHUT_RD)
        for handler, since in list(self.busy.items()):
            waited = now - since
            if waited <= self.idle_timeout:
                break
            # No longer read: a body trickling in gets its refusal, and a request waiting
            # for its journal sync still gets its answer. Cut both ways at twice the
            # time: a client that does not read its answer cannot keep the connection.
            _shutdown(handler, socket.SHUT_RDWR if waited > 2 * self.idle_timeout
                      else socket.SHUT_RD)

    def _pend(self, handler: Any, now: float) -> None:
        self.pending[handler] = now
        self.by_client.setdefault(handler.client_key, {})[handler] = now

    def _unpend(self, handler: Any) -> None:
        if self.pending.pop(handler, None) is not None:
            mine = self.by_client[handler.client_key]
            del mine[handler]
            if not mine:
                del self.by_client[handler.client_key]

    def _cut(self, handler: Any) -> None:
        handler.too_slow = True
        self._unpend(handler)
        self.open.discard(handler)  # on its way out: it no longer takes room
        self.cut += 1
        _shutdown(handler, socket.SHUT_RD)

    def _cut_oldest(self, pending: dict[Any, float], now: float) -> bool:
        """Close the oldest of these pending connections unless it is too young."""
        handler, since = next(iter(pending.items()))
        if now - since < EVICT_GRACE:
            return False
        self._cut(handler)
        return True

    def _make_room(self, now: float) -> None:
        """At the limit: close a slow pending connection, else the longest idle one."""
        if self.by_client:
            greediest = max(self.by_client.values(), key=len)
            if self._cut_oldest(greediest, now) or self._cut_oldest(self.pending, now):
                return
        if self.idle:
            handler, since = next(iter(self.idle.items()))
            if now - since >= EVICT_GRACE:
                del self.idle[handler]
                self.open.discard(handler)
                _shutdown(handler, socket.SHUT_RD)


def serve(app: Any, host: str, port: int, on_ready: Callable[[int], object] | None = None, *,
          guard: ConnectionGuard | None = None,
          redact: Callable[[str], str] = _no_secrets) -> None:
    """Serve a WSGI app with gevent until SIGTERM or SIGINT (Ctrl-C), stopping gracefully.

    `on_ready(port)` is called once listening; `guard` holds the connection limits and
    `redact(text)` hides secrets in a line before it is logged.
    """
    import gevent
    from gevent import signal_handler
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIHandler, WSGIServer

    guard = guard or ConnectionGuard()
    stopping = False  # set on SIGTERM / Ctrl-C: new requests are refused, not started

    class Handler(WSGIHandler):
        too_slow = False  # set by the guard when it closes the connection
        client_key = ""

        def handle(self) -> None:
            guard.connected(self)
            try:
                super().handle()
            finally:
                guard.closed(self)

        def read_requestline(self) -> str:
            if guard.waiting(self):
                self.rfile.peek(1)  # the next request's first byte: its headers are due
                guard.request_started(self)
            return super().read_requestline()

        def read_request(self, raw_requestline: str) -> bool:
            if self.too_slow:
                raise _TooSlow()
            if not _REQUEST_LINE.fullmatch(raw_requestline):
                raise _Refused("malformed request line")
            ok = super().read_request(raw_requestline)
            guard.headers_read(self)
            return ok

        def MessageClass(self, *args: Any) -> HTTPMessage:  # noqa: N802 - gevent's name
            headers = super().MessageClass(*args)
            if self.too_slow:  # the end of the headers was the guard closing the socket
                raise _TooSlow()
            _check_headers(headers)
            return headers

        def _handle_client_error(self, ex: Exception) -> tuple[str, bytes]:
            # One line per refused request, never a traceback, never the query
            if isinstance(ex, _TooSlow):
                return "408", _TOO_SLOW_ANSWER  # counted by the guard, reported by the sweep
            if isinstance(ex, _Refused):
                reason = ex.reason
            elif isinstance(ex, HTTPException):
                reason = "malformed headers"
            else:
                reason = "malformed request"
            http_log.warning("refused a request from %s (%s): %s", self.client_key, reason,
                             redact(_request_line_for_log(self.requestline)))
            return "400", _answer("400 Bad Request", reason)

        def handle_one_request(self) -> Any:
            result = super().handle_one_request()
            if isinstance(result, tuple):  # a refusal (400, 408, 414): sent here, where a
                self.close_connection = True  # client gone meanwhile is no error
                try:
                    self.socket.sendall(result[1])
                except OSError:
                    pass
                return None
            return result

        def run_application(self) -> None:
            if stopping:
                # A request on a kept-alive connection after the stop began: the stop
                # ends by killing whatever still runs, and a request killed inside the
                # app got gevent's bare 500. Refuse it whole instead (Ploomes retries).
                self.close_connection = True
                self.start_response("503 Service Unavailable", [
                    ("Content-Type", "application/json"), ("Connection", "close")])
                self.write(b'{"status": "unavailable", "reason": "the receiver is '
                           b'stopping; retry later"}')
                return
            try:
                super().run_application()
            finally:
                guard.request_done(self)
            # After an answer that did not read the whole body (401, 413), gevent reads
            # the rest to keep the connection: an unauthenticated client could push
            # gigabytes through it. Past DRAIN_MAX, stop reading and close instead. A
            # chunked body does not say what is left, so it always closes the connection
            # (even one read to its end).
            body = self.wsgi_input
            if body is not None and (body.chunked_input or
                                     (body.content_length or 0) - body.position > DRAIN_MAX):
                self.close_connection = True
                try:
                    self.socket.shutdown(socket.SHUT_RD)  # the drain then ends at once
                except OSError:
                    pass

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # answers are small and sent in two writes (headers, body): without NODELAY the
    # second waits for the client's delayed ACK
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((host, port))
    listener.listen(1024)
    listener.setblocking(False)
    server = WSGIServer(listener, app, spawn=Pool(guard.max_connections),
                        handler_class=Handler, log=None,
                        error_log=_RedactingLog(http_log, redact))

    def sweep() -> None:
        reported = -REPORT_EVERY
        while True:
            gevent.sleep(guard.tick)
            guard.sweep()
            now = time.monotonic()
            if guard.cut and now - reported >= REPORT_EVERY:
                http_log.warning(
                    "closed %d connections that sent their request too slowly (headers due "
                    "within %g s, at most %d such connections per client)", guard.cut,
                    guard.header_timeout, guard.max_pending_per_client)
                guard.cut, reported = 0, now

    sweeper = None

    def stop() -> None:
        """Stop accepting, let requests in progress finish, then close every connection."""
        nonlocal stopping
        stopping = True
        if sweeper is not None:
            sweeper.kill(block=False)
        server.stop_accepting()  # close() would make serve_forever kill everyone in 1 s
        deadline = time.monotonic() + STOP_SECONDS
        while guard.busy and time.monotonic() < deadline:
            gevent.sleep(0.05)
        server.stop(timeout=0)  # what is left: idle keep-alive connections

    signal_handler(signal.SIGTERM, stop)
    # Ctrl-C too: a KeyboardInterrupt raised in whichever greenlet runs could land in
    # the journal's writer in the middle of a group (its requests would get 503). A
    # plain Python handler is enough to start the same stop.
    signal.signal(signal.SIGINT, lambda signum, frame: gevent.spawn(stop))
    server.start()
    sweeper = gevent.spawn(sweep)
    if on_ready is not None:
        on_ready(server.server_port)
    server.serve_forever()


def local_client(environ: dict) -> bool:
    """Return whether a request comes from this machine: a loopback address, not
    forwarded by a reverse proxy (which would make every client look local)."""
    if any(environ.get(name) for name in FORWARDING_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(environ.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _raise_file_limit(connections: int) -> None:
    """Let the process open a descriptor per connection, plus its own files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            logging.getLogger("ploomes.receiver").warning(
                "The system allows %d open files: fewer than PLOOMES_MAX_CONNECTIONS "
                "(%d) needs", new, connections)


def _outcome(fn: Callable[..., T], args: tuple) -> tuple[bool, T | BaseException]:
    # runs on a pool thread: hand an exception back instead of letting gevent print it
    try:
        return True, fn(*args)
    except BaseException as exc:  # noqa: BLE001 - re-raised in the calling greenlet
        return False, exc


def offload(fn: Callable[..., T], *args: object) -> T:
    """Run fn(*args) on gevent's thread pool; the event loop serves others meanwhile."""
    import gevent

    ok, value = gevent.get_hub().threadpool.apply(_outcome, (fn, args))
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


class GroupCommit:
    """Journal appends from request greenlets, written and synced as one group at a time.

    Each request queues its records and waits; one writer greenlet takes everything
    queued and appends it with one journal call (one write, one fdatasync) on gevent's
    thread pool, so the loop serves the other requests while the disk works, and records
    queued during a sync form the next group. Once the writer ends (closed, or ended by
    an exception) waiting and later requests get JournalWriteError, never a hang. Create
    it on the event loop's thread.
    """

    def __init__(self, journal: Journal):
        import gevent
        from gevent.event import Event

        self.journal = journal
        self._queue: list[tuple[Sequence[Entry], object]] = []
        self._wake = Event()
        self._refusal: str | None = None  # set once no more records are taken
        self._writer = gevent.spawn(self._run)

    def append_entries(self, entries: Sequence[Entry]) -> list[int]:
        """Queue records for the next group; return their sequence numbers once durable."""
        from gevent.event import AsyncResult

        if self._refusal:
            raise JournalWriteError(self._refusal)
        result: AsyncResult = AsyncResult()
        self._queue.append((entries, result))
        self._wake.set()
        return result.get()

    def _run(self) -> None:
        try:
            while not (self._refusal and not self._queue):
                self._wake.wait()
                self._wake.clear()
                group, self._queue = self._queue, []
                if group:
                    self._write(group)
        finally:
            # closed, or ended by an exception: no request may wait for it any more
            self._refusal = self._refusal or "the journal writer stopped"
            group, self._queue = self._queue, []
            self._fail(group, self._refusal)

    @staticmethod
    def _fail(group: list, reason: str, cause: BaseException | None = None) -> None:
        # one exception per request: a shared one would carry the traceback of
        # whichever request raised it last
        for _, result in group:
            error = JournalWriteError(reason)
            error.__cause__ = cause
            result.set_exception(error)

    def _write(self, group: list) -> None:
        entries = [entry for batch, _ in group for entry in batch]
        try:
            seqs = offload(self.journal.append_entries, entries)
        except BaseException as exc:  # every request of the group is told
            if not isinstance(exc, Exception):  # the writer itself is ending (killed)
                self._fail(group, "the journal writer stopped during a group", exc)
                raise
            self._fail(group, str(exc) if isinstance(exc, JournalWriteError)
                       else f"journal write failed: {exc!r}", exc)
            return
        start = 0
        for batch, result in group:
            result.set(seqs[start:start + len(batch)])
            start += len(batch)

    @property
    def failing(self) -> str | None:
        """Return why records cannot be appended now (the writer stopped, or the journal
        is failing), or None."""
        return self._refusal or self.journal.failing

    def close(self) -> None:
        """Write what is queued, then stop the writer greenlet."""
        self._refusal = self._refusal or "the receiver is stopping"
        self._wake.set()
        self._writer.join()


def create_app(settings: Settings | None = None, start_ingest: bool = True) -> Flask:
    """Create the receiver app for one data dir (and start its ingest process and the
    relay's forwarder)."""
    settings = settings or load_settings()
    service = DeliveryService(settings)
    ingest = IngestProcess(settings, service.shared)
    relay = ForwarderProcess(settings, service.shared)
    if start_ingest:
        ingest.start()
        relay.start()
    service.registry.register(RelayCollector(relay.relay, relay.alive))
    app = Flask(__name__)
    app.extensions["ploomes"] = service
    app.extensions["ploomes.ingest"] = ingest
    app.extensions["ploomes.relay"] = relay
    # Flask must not buffer more than the limit; the handler reads at most limit + 1.
    app.config["MAX_CONTENT_LENGTH"] = None

    def answer(outcome) -> Response:
        response = jsonify(outcome.body)
        if outcome.status != 200:  # a Response starts as 200; setting it re-parses it
            response.status_code = outcome.status
        return response

    @app.post(WEBHOOK_PATH)
    def webhook() -> Response:
        started = time.perf_counter()
        environ = request.environ  # what request.headers and .remote_addr read, directly
        source = environ.get("REMOTE_ADDR")
        key = environ.get(KEY_ENVIRON) or request.args.get(VALIDATION_QUERY)
        if not key:
            return answer(service.unauthorized(source, "missing key"))
        if not service.authenticated(key):
            return answer(service.unauthorized(source, "wrong key"))
        limit = settings.max_body_bytes
        try:
            # werkzeug's own parser, on the environ (without building request.headers)
            declared = get_content_length(environ)
            if declared is not None and declared > limit:
                return answer(service.reject_authenticated(
                    "too_large", 413, f"body is larger than {limit} bytes",
                    request.stream.read(min(limit, 64 * 1024)), source))
            raw = request.stream.read(limit + 1)
        except OSError:  # the client stopped sending (or the guard stopped reading it)
            return answer(service.refuse("incomplete", 400,
                                         "the body ended before its Content-Length"))
        if len(raw) > limit:
            return answer(service.reject_authenticated(
                "too_large", 413, f"body is larger than {limit} bytes", raw, source))
        # the Webhooks page's test deliveries say so: journaled as tests, not changes
        flags = FLAG_TEST if environ.get(TEST_ENVIRON) else 0
        return answer(service.accept(raw, source, started, flags))

    @app.post(DEMO_PATH)
    def demo() -> Response:
        # Only the project's own dashboard uses this; it holds the same keys.
        key = request.headers.get(VALIDATION_HEADER)
        if not service.authenticated(key):
            return answer(service.unauthorized(request.remote_addr, "wrong key (demo)"))
        raw = request.stream.read(DEMO_MAX_BYTES + 1)
        if len(raw) > DEMO_MAX_BYTES:
            return answer(service.refuse("too_large", 413,
                                         f"demo data is larger than {DEMO_MAX_BYTES} bytes"))
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None  # accept_demo explains what it expected
        return answer(service.accept_demo(body))

    @app.get("/healthz")
    def healthz() -> Response:
        # paths and error texts only for this machine's own clients
        detailed = local_client(request.environ)
        status, body = service.health(ingest.alive(), detailed=detailed)
        if start_ingest and not relay.alive():
            body["reasons"] = [*body["reasons"], "the relay's forwarder is not running"]
        if detailed:
            body["relay_pid"] = relay.pid
            body["outbox_seq"] = service.shared.outbox_synced_seq.value
            body["outbox_ingested_seq"] = service.shared.outbox_ingested_seq.value
        response = jsonify(body)
        response.status_code = status
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.registry),
                        mimetype=CONTENT_TYPE_LATEST)

    @app.errorhandler(WerkzeugHTTPException)
    def http_error(exc: WerkzeugHTTPException) -> Response:
        if exc.code == 405:
            service.count("method_not_allowed")
        response = jsonify({"status": "refused", "reason": exc.description or exc.name})
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        app.logger.exception("unexpected error on %r", request.path)  # path only: no query
        response = jsonify({"status": "error", "reason": "internal error; retry later"})
        response.status_code = 503
        return response

    return app


def main(argv: list[str] | None = None) -> int:
    """Start the receiver with gevent's WSGI server until interrupted."""
    parser = argparse.ArgumentParser(description="Receive Ploomes webhook deliveries.")
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - Ploomes must reach it
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", help="data folder (default: PLOOMES_DATA_DIR or data/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("ploomes.receiver")
    try:
        settings = load_settings(data_dir=args.data_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.umask(0o077)  # what the receiver and its ingest process create is the owner's only
    try:
        if make_private(settings.data_dir):
            log.warning("The data dir %s was open to other users: it is now its owner's only "
                        "(mode 0700)", settings.data_dir)
    except OSError as exc:
        print(f"error: cannot prepare the data dir {settings.data_dir}: {exc}", file=sys.stderr)
        return 2
    _raise_file_limit(settings.max_connections)
    key, created = ensure_key(settings)
    if created:
        log.warning("No validation key was configured: generated one (%s) and stored it in %s "
                    "(readable by you only). Give its content to Ploomes as the ValidationKey.",
                    mask_secret(key), key_file(settings))
    try:
        app = create_app(settings)
    except JournalBusy:
        print(f"error: another receiver is already running on {settings.data_dir}",
              file=sys.stderr)
        return 1
    service = app.extensions["ploomes"]
    relay = app.extensions["ploomes.relay"]
    commit = GroupCommit(service.journal)
    service.appender, service.run_cpu = commit, offload
    guard = ConnectionGuard(settings.header_timeout_seconds, IDLE_TIMEOUT,
                            settings.max_connections, settings.max_pending_per_client)
    try:
        serve(app, args.host, args.port, guard=guard, redact=service.keys.redact,
              on_ready=lambda port: _ready(port, relay, log, args.host, settings))
    except KeyboardInterrupt:
        pass
    finally:
        try:
            commit.close()  # what requests queued before the server stopped
        finally:
            try:
                relay.stop()  # it writes where it stands; the rest goes at the next start
                app.extensions["ploomes.ingest"].stop()  # it drains what is durable
            finally:
                service.close()
    return 0


def _ready(port: int, relay: ForwarderProcess, log: logging.Logger, host: str,
           settings: Settings) -> None:
    relay.relay.receiver_port.value = port  # the forwarder never sends to it
    log.info("Receiver listening on http://%s:%s%s (data dir %s)", host, port, WEBHOOK_PATH,
             settings.data_dir)


if __name__ == "__main__":
    sys.exit(main())
