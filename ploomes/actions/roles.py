"""Who may use the dashboard, and who may change things: roles from the allow-lists."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ploomes.config import Settings

LOCAL = "local"  # the audit trail's name for the machine's own user (no sign-in)
_SOURCE_LIMIT = 200  # characters kept of a forwarding header: it is client-controlled


class Role(StrEnum):
    """What a user may do: viewers read everything, admins also change things."""

    VIEWER = "viewer"
    ADMIN = "admin"


class NotAllowed(PermissionError):
    """The acting user may not do this: only admins may change things."""


@dataclass(frozen=True)
class Actor:
    """Who asks for an action, and from where.

    `email` is the signed-in address; None is the machine's own user, which the dashboard
    lets in without sign-in only when it listens on 127.0.0.1 and no sign-in is set up.
    `client_ip` is the connection's address (None: this machine) and `forwarded_for` what
    a reverse proxy said about the client (unverified).
    """

    email: str | None
    client_ip: str | None = None
    forwarded_for: str | None = None

    def __post_init__(self) -> None:
        if self.email is not None:
            object.__setattr__(self, "email", self.email.strip().lower())
        if self.forwarded_for is not None:
            object.__setattr__(self, "forwarded_for", self.forwarded_for[:_SOURCE_LIMIT])

    @property
    def name(self) -> str:
        """Return the e-mail address, or `local` for the machine's own user."""
        return self.email or LOCAL


def matches(email: str, entries: tuple[str, ...]) -> bool:
    """Return whether an address is on an allow-list of addresses and `@domain`s.

    A domain covers exactly that domain, not its subdomains.
    """
    email = email.strip().lower()
    _, at, domain = email.rpartition("@")
    if not at or not domain:
        return False
    return any(entry == email or entry == "@" + domain for entry in
               (e.strip().lower() for e in entries))


def role_of(actor: Actor, settings: Settings) -> Role | None:
    """Return the actor's role under the current settings; None: not allowed in at all."""
    if actor.email is None:
        return Role.ADMIN
    if matches(actor.email, settings.dashboard_admins):
        return Role.ADMIN
    if matches(actor.email, settings.dashboard_viewers):
        return Role.VIEWER
    return None
