"""One attempt over HTTP: the request a destination gets, on a kept-alive connection.

Every request carries the delivery's body byte for byte, `webhook-id` (stable per
delivery and destination: the receiving side drops repeats by it), `webhook-timestamp`,
`X-Ploomes-Delivery-Id` (the journal sequence, the Events page's event id) and
`X-Ploomes-Received-At` (when the receiver accepted it: Ploomes sends no time). Then,
per destination: `webhook-signature` (Standard Webhooks, with its `whsec_` secret, by
the `standardwebhooks` library) and/or `X-Ploomes-Validation-Key` (Ploomes passthrough:
an integration written for Ploomes works unchanged), and its extra headers.

Each worker thread keeps one connection per destination (http.client: the leanest
well-kept client; the relay's CPU is taken from the receiver on a small machine).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

from ploomes.model.vocabulary import VALIDATION_HEADER
from ploomes.outbox.engine import Answer, Message, Target
from ploomes.outbox.records import BODY_LIMIT, body_text, bounded_headers, cut_error
from ploomes.outbox.schedule import retry_after
from ploomes.relay.destinations import Destination
from ploomes.relay.urls import is_receiver

USER_AGENT = "ploomes-webhook-monitor-relay/1"
DRAIN_LIMIT = 64 * 1024  # bytes of a longer answer read to keep the connection; beyond, closed
# Failures of a kept-alive connection the destination closed meanwhile: the request never
# reached it, so it is sent once more on a new connection within the same attempt.
STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
         ConnectionAbortedError)


class _Refused(Exception):
    """The attempt must not be made (e.g. the URL leads to this receiver)."""


def received_at(received_ns: int) -> str:
    """Return a journal stamp as an ISO time in UTC with microseconds."""
    moment = datetime.fromtimestamp(received_ns / 1e9, UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class HttpTransport:
    """Sends one message to one destination per call; safe to call from many threads."""

    def __init__(self, receiver_port: Callable[[], int] = lambda: 0,
                 clock: Callable[[], float] = time.time):
        self.receiver_port = receiver_port
        self.clock = clock
        self._local = threading.local()
        self._signers: dict[str, Webhook] = {}

    def headers(self, message: Message, destination: Destination, now: float
                ) -> dict[str, str]:
        """Return the headers of one attempt."""
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "User-Agent": USER_AGENT,
                   "webhook-id": message.msg_id, "webhook-timestamp": str(int(now)),
                   "X-Ploomes-Delivery-Id": str(message.seq),
                   "X-Ploomes-Received-At": received_at(int(message.born * 1e9))}
        if destination.secret:
            signer = self._signers.get(destination.secret)
            if signer is None:
                signer = self._signers[destination.secret] = Webhook(destination.secret)
            headers["webhook-signature"] = signer.sign(
                message.msg_id, datetime.fromtimestamp(int(now), UTC),
                message.body.decode("utf-8"))
        if destination.ploomes_key:
            headers[VALIDATION_HEADER] = destination.ploomes_key
        headers.update(destination.headers)
        return headers

    def _connections(self) -> dict[tuple, http.client.HTTPConnection]:
        found: dict[tuple, http.client.HTTPConnection] | None = getattr(
            self._local, "connections", None)
        if found is None:
            found = self._local.connections = {}
        return found

    def _connect(self, destination: Destination) -> http.client.HTTPConnection:
        parts = urlsplit(destination.url)
        host = parts.hostname or ""
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                host, parts.port, timeout=destination.timeout,
                context=ssl.create_default_context())
        else:
            connection = http.client.HTTPConnection(host, parts.port,
                                                    timeout=destination.timeout)
        connection.connect()
        sock = connection.sock
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if is_receiver(sock.getpeername(), sock.getsockname(), self.receiver_port()):
                connection.close()
                raise _Refused("the URL leads to this receiver itself: nothing is sent there")
        return connection

    def __call__(self, message: Message, target: Target) -> Answer:
        """Make one attempt; the answer (or why there was none) comes back as an Answer."""
        destination: Destination = target.details
        now = self.clock()
        started = time.perf_counter()
        parts = urlsplit(destination.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = self.headers(message, destination, now)
        key = (destination.id, destination.url, destination.timeout)
        connections = self._connections()
        for fresh in (False, True):
            connection = None if fresh else connections.pop(key, None)
            reused = connection is not None
            try:
                if connection is None:
                    connection = self._connect(destination)
                connection.request("POST", path, body=message.body, headers=headers)
                response = connection.getresponse()
                data = response.read(BODY_LIMIT)
                keep = self._drain(response)
            except _Refused as exc:
                return Answer(error=str(exc), latency=time.perf_counter() - started,
                              final=True)
            except STALE as exc:
                if connection is not None:
                    connection.close()
                if reused:
                    continue  # the kept connection was closed by the other side: once more
                return Answer(error=cut_error(_describe(exc)),
                              latency=time.perf_counter() - started)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if connection is not None:
                    connection.close()
                return Answer(error=cut_error(_describe(exc, destination.timeout)),
                              latency=time.perf_counter() - started)
            latency = time.perf_counter() - started
            if keep and not response.will_close:
                connections[key] = connection
            else:
                connection.close()
            status = response.status
            wait = (retry_after(response.getheader("Retry-After"), self.clock())
                    if status in (429, 503) else None)
            return Answer(status=status, headers=bounded_headers(response.getheaders()),
                          body=body_text(data), latency=latency, retry_after=wait)
        raise AssertionError("unreachable")  # the second pass always returns

    @staticmethod
    def _drain(response: http.client.HTTPResponse) -> bool:
        """Read what is left of an answer so the connection can be kept; False if too much."""
        left = DRAIN_LIMIT
        while left > 0:
            chunk = response.read(min(left, 16384))
            if not chunk:
                return True
            left -= len(chunk)
        return response.isclosed()

    def close(self) -> None:
        """Close this thread's connections."""
        for connection in self._connections().values():
            connection.close()
        self._connections().clear()


def _describe(exc: BaseException, timeout: float | None = None) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s" if timeout else "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the destination"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the destination closed the connection without answering"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve: {exc}"
    return f"{type(exc).__name__}: {exc}"
