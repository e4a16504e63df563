"""Which URLs may be destinations: http and https only, never this receiver itself.

Destinations on private or loopback addresses are allowed (a local ERP is a real target)
but said so wherever the destination is shown (`address_kind`).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from ploomes.config import Settings

URL_LIMIT = 2000


class UnsafeURL(ValueError):
    """The URL cannot be a destination; the message says why."""


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else (443 if scheme == "https" else 80)


def _addresses(host: str) -> set[str]:
    """Return the addresses a host name resolves to (none if it does not resolve)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None,
                                                              type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return set()


def _own(url: str | None) -> tuple[set[str], int] | None:
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = _port(parts.scheme, parts.port)
    except ValueError:
        return None
    return (_addresses(parts.hostname) if parts.hostname else set()), port


def _local(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def check_url(url: str, settings: Settings) -> str:
    """Return a destination URL as given, or raise UnsafeURL saying what is wrong.

    Refused: a scheme other than http/https, no host, credentials in the URL (they would
    be shown wherever the URL is), and the receiver itself (`PLOOMES_RECEIVER_URL` or
    `PLOOMES_CALLBACK_URL`, same address and port): forwarding to itself would loop.
    """
    text = (url or "").strip()
    if not text:
        raise UnsafeURL("the URL is empty")
    if len(text) > URL_LIMIT:
        raise UnsafeURL(f"the URL is longer than {URL_LIMIT} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise UnsafeURL("the URL contains spaces or control characters")
    try:
        parts = urlsplit(text)
        port = _port(parts.scheme, parts.port)
    except ValueError as exc:
        raise UnsafeURL(f"the URL cannot be read: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("only http:// and https:// URLs can be destinations")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("the URL carries credentials (user:password@), which would be shown "
                        "wherever it is; give them as an extra header instead")
    mine = _addresses(parts.hostname)
    for own_url in (settings.receiver_url, settings.callback_url):
        own = _own(own_url)
        if own is None or own[1] != port:
            continue
        own_hosts = {urlsplit(own_url or "").hostname or ""}
        if (parts.hostname.lower() in {h.lower() for h in own_hosts} or mine & own[0]
                or (any(map(_local, mine)) and any(map(_local, own[0])))):
            raise UnsafeURL("that is this receiver's own address: deliveries would be sent "
                            "back to it in a loop")
    return text


def address_kind(url: str) -> str:
    """Return what the URL's host is: loopback, private, link-local, public, or unresolved
    (what the dashboard and `relay list` show beside it)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return "unresolved"
    if not host:
        return "unresolved"
    found = _addresses(host)
    if not found:
        return "unresolved"
    kinds = set()
    for address in found:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            kinds.add("loopback")
        elif ip.is_link_local:
            kinds.add("link-local")
        elif ip.is_private:
            kinds.add("private")
        else:
            kinds.add("public")
    for kind in ("loopback", "link-local", "private"):
        if kind in kinds:
            return kind
    return "public"


def is_receiver(peer: tuple, local: tuple, receiver_port: int) -> bool:
    """Return whether a connected socket reached this receiver: a local address (loopback,
    or the socket's own) on the receiver's port."""
    if not receiver_port or int(peer[1]) != receiver_port:
        return False
    return _local(str(peer[0])) or str(peer[0]) == str(local[0])
