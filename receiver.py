"""The Ploomes webhook receiver: `python receiver.py [--host H] [--port P] [--data-dir D]`.

A thin Flask shell over `ploomes.intake.service.DeliveryService`, served by gevent's
WSGI server (`serve`): requests are greenlets on one thread. Journal appends go through
`GroupCommit`: one writer greenlet writes everything queued as one group and syncs it
on a pool thread while the loop serves the other requests. The ingest process
(`ploomes.ingest.worker.IngestProcess`) is started beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_content_length

from ploomes.config import ConfigError, Settings, load_settings, mask_secret
from ploomes.ingest.worker import IngestProcess
from ploomes.intake.journal import Entry, Journal, JournalBusy, JournalWriteError
from ploomes.intake.keys import ensure_key, key_file
from ploomes.intake.service import DeliveryService
from ploomes.model.vocabulary import DEMO_PATH, VALIDATION_HEADER, VALIDATION_QUERY, WEBHOOK_PATH

KEY_ENVIRON = "HTTP_" + VALIDATION_HEADER.upper().replace("-", "_")  # as WSGI names it
MAX_CONNECTIONS = 1000  # open connections (keep-alive ones count); more wait to connect
IDLE_TIMEOUT = 60.0  # seconds a connection may wait for (the rest of) its next request,
#                      or spend in one, before it is no longer read; at twice this long
#                      it is cut (checked every quarter of it; see serve's sweep)
DRAIN_MAX = 64 * 1024  # unread body bytes read and dropped to keep a connection; beyond
#                        that (a refused huge body) the connection is closed instead
DEMO_MAX_BYTES = 16 * 1024 * 1024  # one chunk of demo deliveries from the dashboard
STOP_SECONDS = 10.0  # on SIGTERM, how long requests waiting for the disk may finish
_QUERY_IN_TEXT = re.compile(r"\?[^\s\"']*")
T = TypeVar("T")


class _RedactingLog:
    """The server's error log: a logger that never writes a key given in a URL.

    gevent's server reports malformed requests with their request line, which may hold
    `?validation_key=` (in any spelling werkzeug decodes, `validation%5Fkey` too): the
    whole query string is hidden before the line reaches the log.
    """

    def __init__(self, logger: logging.Logger):
        self._logger = logger

    def write(self, text: str) -> None:
        text = _QUERY_IN_TEXT.sub("?[query hidden]", str(text)).rstrip()
        if text:
            self._logger.warning("%s", text)

    def flush(self) -> None:
        pass


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

    def close(self) -> None:
        """Write what is queued, then stop the writer greenlet."""
        self._refusal = self._refusal or "the receiver is stopping"
        self._wake.set()
        self._writer.join()


def serve(app, host: str, port: int, on_ready=None) -> None:
    """Serve a WSGI app with gevent until SIGTERM or SIGINT (Ctrl-C), stopping gracefully.

    Also used by bench/baseline_server.py, so the benchmark's baseline runs on the same
    server with the same settings. `on_ready(port)` is called once listening.
    """
    import gevent
    from gevent import signal_handler
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIHandler, WSGIServer

    connections: dict = {}  # every open connection's handler: waiting since (monotonic)
    busy: dict = {}  # handlers running the app (not idle keep-alive connections): since
    stopping = False  # set on SIGTERM / Ctrl-C: new requests are refused, not started

    class Handler(WSGIHandler):
        def handle(self) -> None:
            connections[self] = time.monotonic()
            try:
                super().handle()
            finally:
                connections.pop(self, None)

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
            busy[self] = time.monotonic()
            try:
                super().run_application()
            finally:
                busy.pop(self, None)
                connections[self] = time.monotonic()  # waiting for its next request
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
    # second waits for the client's delayed ACK (~40 ms)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((host, port))
    listener.listen(1024)
    listener.setblocking(False)
    server = WSGIServer(listener, app, spawn=Pool(MAX_CONNECTIONS), handler_class=Handler,
                        log=None,
                        error_log=_RedactingLog(logging.getLogger("ploomes.receiver.http")))

    def sweep() -> None:
        """Stop reading connections that waited IDLE_TIMEOUT seconds; cut them at twice that.

        One greenlet checks every connection now and then, instead of a timeout on each
        socket read: gevent arms a pure-Python timer for every read that has to wait,
        which under load was most requests (a kept-alive connection waiting for its next
        one). A connection waits from its start or the end of its last request, or from
        the start of the request it is in. Past IDLE_TIMEOUT its socket is shut down for
        reading (the OS socket's, so that the read in progress sees the end of the
        stream, as if the client had closed it): an idle connection then ends quietly, a
        half-sent request or a body trickling in gets its refusal, and a request waiting
        for its journal sync still gets its answer. Past twice IDLE_TIMEOUT it is shut
        down both ways: a client that does not read its answers cannot hold a
        connection slot forever.
        """
        while True:
            gevent.sleep(max(0.05, IDLE_TIMEOUT / 4))
            now = time.monotonic()
            for handler, waiting_since in list(connections.items()):
                waited = now - busy.get(handler, waiting_since)
                os_socket = getattr(getattr(handler, "socket", None), "_sock", None)
                if waited > IDLE_TIMEOUT and os_socket is not None:
                    try:
                        os_socket.shutdown(socket.SHUT_RDWR if waited > 2 * IDLE_TIMEOUT
                                           else socket.SHUT_RD)
                    except OSError:
                        pass

    sweeper = None

    def stop() -> None:
        """Stop accepting, let requests in progress finish, then close every connection."""
        nonlocal stopping
        stopping = True
        if sweeper is not None:
            sweeper.kill(block=False)
        server.stop_accepting()  # close() would make serve_forever kill everyone in 1 s
        deadline = time.monotonic() + STOP_SECONDS
        while busy and time.monotonic() < deadline:
            gevent.sleep(0.05)
        server.stop(timeout=0)  # what is left: idle keep-alive connections

    signal_handler(signal.SIGTERM, stop)
    # Ctrl-C too: a KeyboardInterrupt raised in whichever greenlet runs could land in
    # the journal's writer in the middle of a group (its requests would get 503). A
    # plain Python handler that starts the same stop: a second libev signal watcher
    # looked slower under load (not settled: within this machine's noise).
    signal.signal(signal.SIGINT, lambda signum, frame: gevent.spawn(stop))
    server.start()
    sweeper = gevent.spawn(sweep)
    if on_ready is not None:
        on_ready(server.server_port)
    server.serve_forever()


def create_app(settings: Settings | None = None, start_ingest: bool = True) -> Flask:
    """Create the receiver app for one data dir (and start its ingest process)."""
    settings = settings or load_settings()
    service = DeliveryService(settings)
    ingest = IngestProcess(settings, service.shared)
    if start_ingest:
        ingest.start()
    app = Flask(__name__)
    app.extensions["ploomes"] = service
    app.extensions["ploomes.ingest"] = ingest
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
        except OSError:  # the client stopped sending (or the idle sweeper stopped reading)
            return answer(service.refuse("incomplete", 400,
                                         "the body ended before its Content-Length"))
        if len(raw) > limit:
            return answer(service.reject_authenticated(
                "too_large", 413, f"body is larger than {limit} bytes", raw, source))
        return answer(service.accept(raw, source, started))

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
        status, body = service.health(ingest.alive())
        response = jsonify(body)
        response.status_code = status
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.registry),
                        mimetype=CONTENT_TYPE_LATEST)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if exc.code == 405:
            service.count("method_not_allowed")
        response = jsonify({"status": "refused", "reason": exc.description or exc.name})
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        app.logger.exception("unexpected error on %s", request.path)  # path only: no query
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
    settings.data_dir.mkdir(parents=True, exist_ok=True)
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
    commit = GroupCommit(service.journal)
    service.appender, service.run_cpu = commit, offload
    try:
        serve(app, args.host, args.port, on_ready=lambda port: log.info(
            "Receiver listening on http://%s:%s%s (data dir %s)", args.host, port,
            WEBHOOK_PATH, settings.data_dir))
    except KeyboardInterrupt:
        pass
    finally:
        try:
            commit.close()  # what requests queued before the server stopped
        finally:
            try:
                app.extensions["ploomes.ingest"].stop()  # it drains what is durable
            finally:
                service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
