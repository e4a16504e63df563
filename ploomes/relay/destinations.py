"""Destinations: where the relay forwards deliveries, and the relay's own options.

Kept in `data/relay/destinations.json` (mode 0600: it holds the destinations' secrets),
written atomically under a lock by the command line, the dashboard and the forwarder
(which pauses a destination that keeps failing); the forwarder re-reads it when it
changes, so a destination added while the receiver runs gets deliveries within seconds.
Secrets are only ever shown masked (`masked`).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ploomes.config import Settings, mask_secret
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS, VALIDATION_HEADER
from ploomes.outbox.schedule import SVIX_SCHEDULE, RetrySchedule
from ploomes.relay.urls import UnsafeURL, address_kind, check_url

FILE_NAME = "destinations.json"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every Standard Webhooks secret
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")  # a token (RFC 9110 5.1)
# Headers the relay sets itself: an extra header may not replace them.
RESERVED_HEADERS = frozenset({
    "host", "content-length", "content-type", "transfer-encoding", "connection",
    "webhook-id", "webhook-timestamp", "webhook-signature", VALIDATION_HEADER.lower(),
    "x-ploomes-delivery-id", "x-ploomes-received-at"})
TIMEOUT_MAX = 300.0
DEFAULT_TIMEOUT = 15.0  # Svix: an answer within 15 s counts


class RelayError(Exception):
    """A relay change could not be made; the message says why."""


class InvalidDestination(RelayError, ValueError):
    """A destination's settings are not usable."""


class DestinationNotFound(RelayError, LookupError):
    """No destination has that name."""


class DestinationExists(RelayError):
    """A destination with that name already exists."""


@dataclass(frozen=True)
class RelayOptions:
    """Relay-wide settings, kept in the same file (`set_options`).

    `retry_schedule`: seconds before each attempt (Svix's by default); `pause_after`:
    seconds a destination may fail without a single delivery before the relay pauses it
    (Svix: 5 days); `workers`: attempts in flight at once in all; `concurrency`: in
    flight to one destination; `max_pending`: messages one destination may have queued
    before the forwarder stops reading ahead for it (the rest waits in the journal).
    """

    retry_schedule: tuple[float, ...] = SVIX_SCHEDULE
    pause_after: float = 5 * 86400.0
    workers: int = 32
    concurrency: int = 16
    max_pending: int = 10_000

    def __post_init__(self) -> None:
        RetrySchedule(self.retry_schedule)  # ValueError if unusable
        if not self.pause_after > 0:
            raise ValueError("pause_after must be positive")
        for name in ("workers", "concurrency", "max_pending"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @property
    def schedule(self) -> RetrySchedule:
        """Return the retry schedule."""
        return RetrySchedule(self.retry_schedule)


@dataclass(frozen=True)
class Destination:
    """One integration the relay forwards to."""

    id: str
    name: str
    url: str
    entities: tuple[str, ...] = ()  # empty: every entity
    actions: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()  # changed-field paths; empty: any change
    accounts: tuple[int, ...] = ()  # AccountIds
    headers: tuple[tuple[str, str], ...] = ()  # extra headers (values may be secrets)
    timeout: float = DEFAULT_TIMEOUT
    rate: float | None = None  # deliveries per second at most
    secret: str | None = field(default=None, repr=False)  # Standard Webhooks whsec_ secret
    ploomes_key: str | None = field(default=None, repr=False)  # sent as X-Ploomes-Validation-Key
    retry_statuses: tuple[int, ...] = ()  # 4xx answers retried instead of failing at once
    paused: bool = False
    paused_by: str | None = None  # "relay" when it paused itself, else who paused it
    paused_reason: str | None = None
    paused_at: str | None = None  # ISO time
    created_at: str = ""

    @property
    def paused_by_relay(self) -> bool:
        """Return whether the relay paused it because it kept failing."""
        return self.paused and self.paused_by == "relay"

    @property
    def auth(self) -> str:
        """Return how what is sent is authenticated, in words."""
        ways = [way for way, on in (("Standard Webhooks signature", self.secret),
                                    ("Ploomes validation key", self.ploomes_key)) if on]
        return " + ".join(ways) or "none"

    def describe_filter(self) -> str:
        """Return the filter in words ("every delivery" when it has none)."""
        parts = [f"{label}: {', '.join(map(str, values))}" for label, values in (
            ("entities", self.entities), ("actions", self.actions),
            ("changed fields", self.fields), ("accounts", self.accounts)) if values]
        return "; ".join(parts) or "every delivery"

    def masked(self) -> dict[str, Any]:
        """Return what may be shown of the destination: secrets masked."""
        return {
            "name": self.name, "url": self.url, "address": address_kind(self.url),
            "state": ("paused by the relay" if self.paused_by_relay else
                      "paused" if self.paused else "active"),
            "filter": self.describe_filter(), "auth": self.auth,
            "secret": mask_secret(self.secret) if self.secret else "",
            "ploomes_key": mask_secret(self.ploomes_key) if self.ploomes_key else "",
            "headers": ", ".join(f"{k}: {mask_secret(v)}" for k, v in self.headers),
            "timeout": self.timeout, "rate": self.rate,
            "retry_statuses": ", ".join(map(str, self.retry_statuses)),
            "paused_reason": self.paused_reason or "", "paused_at": self.paused_at or "",
            "id": self.id, "created_at": self.created_at,
        }


def relay_dir(settings: Settings) -> Path:
    """Return the relay's folder in the data dir."""
    return settings.data_dir / "relay"


def destinations_file(settings: Settings) -> Path:
    """Return the file that holds the destinations and options."""
    return relay_dir(settings) / FILE_NAME


def generate_secret() -> str:
    """Return a new Standard Webhooks secret (`whsec_` and 32 random bytes in base64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def check_secret(secret: str) -> str:
    """Return a Standard Webhooks secret, or raise InvalidDestination."""
    text = secret.strip()
    if not text.startswith(SECRET_PREFIX):
        raise InvalidDestination("the secret must start with whsec_ (a Standard Webhooks "
                                 "secret)")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDestination("the secret after whsec_ must be base64") from None
    if not 16 <= len(key) <= 128:
        raise InvalidDestination("the secret must hold 16 to 128 bytes (32 is usual)")
    return text


def _header_value(value: str, what: str) -> str:
    if not value or any(ord(c) < 32 or ord(c) == 127 for c in value) or len(value) > 4000:
        raise InvalidDestination(f"{what} must be non-empty, at most 4000 characters, "
                                 "without line breaks or control characters")
    return value


def _canonical(values: Iterable[str], known: dict[str, int], what: str) -> tuple[str, ...]:
    by_lower = {name.lower(): name for name in known}
    out = []
    for value in values:
        name = by_lower.get(value.strip().lower())
        if name is None:
            raise InvalidDestination(f"unknown {what} {value.strip()!r}: use one of "
                                     f"{', '.join(known)}")
        out.append(name)
    return tuple(dict.fromkeys(out))


def build_destination(settings: Settings, name: str, url: str, *,
                      entities: Iterable[str] = (), actions: Iterable[str] = (),
                      fields: Iterable[str] = (), accounts: Iterable[int] = (),
                      headers: Iterable[tuple[str, str]] = (),
                      timeout: float = DEFAULT_TIMEOUT, rate: float | None = None,
                      secret: str | None = None, ploomes_key: str | None = None,
                      retry_statuses: Iterable[int] = ()) -> Destination:
    """Check a new destination's settings and return it; InvalidDestination if one is
    not usable (the message names it)."""
    name = name.strip()
    if not NAME.fullmatch(name):
        raise InvalidDestination("a name is 1 to 64 letters, digits, '.', '_' or '-', "
                                 "starting with a letter or digit")
    try:
        url = check_url(url, settings)
    except UnsafeURL as exc:
        raise InvalidDestination(str(exc)) from None
    if not 0 < timeout <= TIMEOUT_MAX:
        raise InvalidDestination(f"the timeout must be more than 0 and at most {TIMEOUT_MAX:g} "
                                 "seconds")
    if rate is not None and not 0 < rate <= 10_000:
        raise InvalidDestination("the rate must be more than 0 and at most 10000 per second")
    extra = []
    for header, value in headers:
        header = header.strip()
        if not HEADER_NAME.fullmatch(header):
            raise InvalidDestination(f"{header!r} is not a header name")
        if header.lower() in RESERVED_HEADERS:
            raise InvalidDestination(f"the relay sets {header} itself")
        extra.append((header, _header_value(value.strip(), f"the value of {header}")))
    statuses = tuple(sorted(set(retry_statuses)))
    if any(not 400 <= s <= 499 for s in statuses):
        raise InvalidDestination("only 4xx statuses can be chosen for retrying (5xx, 408 and "
                                 "429 always are)")
    field_paths = tuple(dict.fromkeys(f.strip() for f in fields if f.strip()))
    return Destination(
        id="d" + secrets.token_hex(4), name=name, url=url,
        entities=_canonical(entities, ENTITY_IDS, "entity"),
        actions=_canonical(actions, ACTION_IDS, "action"), fields=field_paths,
        accounts=tuple(dict.fromkeys(int(a) for a in accounts)), headers=tuple(extra),
        timeout=float(timeout), rate=None if rate is None else float(rate),
        secret=check_secret(secret) if secret else None,
        ploomes_key=_header_value(ploomes_key.strip(), "the Ploomes key")
        if ploomes_key else None,
        retry_statuses=statuses,
        # to the microsecond: the forwarder starts it after the last delivery before this
        created_at=datetime.now(UTC).isoformat(timespec="microseconds"))


@dataclass(frozen=True)
class RelayConfig:
    """What the destinations file holds."""

    destinations: tuple[Destination, ...] = ()
    options: RelayOptions = RelayOptions()

    def by_name(self, name: str) -> Destination:
        """Return the destination with that name, or raise DestinationNotFound."""
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise DestinationNotFound(f"no destination is named {name!r} (see `python -m ploomes "
                                  "relay list`)")

    def by_id(self, destination_id: str) -> Destination | None:
        """Return the destination with that id, if any."""
        return next((d for d in self.destinations if d.id == destination_id), None)


def _to_json(config: RelayConfig) -> dict[str, Any]:
    return {"version": 1, "options": asdict(config.options),
            "destinations": [asdict(d) for d in config.destinations]}


def _destination(raw: dict[str, Any]) -> Destination:
    values = dict(raw)
    for name in ("entities", "actions", "fields", "accounts", "retry_statuses"):
        values[name] = tuple(values.get(name) or ())
    values["headers"] = tuple(tuple(pair) for pair in values.get("headers") or ())
    known = Destination.__dataclass_fields__
    return Destination(**{k: v for k, v in values.items() if k in known})


def read_config(settings: Settings) -> RelayConfig:
    """Read the destinations file (none yet: no destination, default options).

    RelayError if the file is there but unreadable.
    """
    path = destinations_file(settings)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        options = raw.get("options") or {}
        if "retry_schedule" in options:
            options["retry_schedule"] = tuple(options["retry_schedule"])
        known = RelayOptions.__dataclass_fields__
        return RelayConfig(tuple(_destination(d) for d in raw.get("destinations") or ()),
                           RelayOptions(**{k: v for k, v in options.items() if k in known}))
    except FileNotFoundError:
        return RelayConfig()
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RelayError(f"cannot read {path}: {exc}") from exc


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    folder = relay_dir(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(settings: Settings, config: RelayConfig) -> None:
    path = destinations_file(settings)
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(_to_json(config), indent=2, ensure_ascii=False).encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def update(settings: Settings, change: Callable[[RelayConfig], RelayConfig]) -> RelayConfig:
    """Read, change and write the file under its lock; return what was written."""
    try:
        with _locked(settings):
            config = change(read_config(settings))
            _write(settings, config)
            return config
    except OSError as exc:
        raise RelayError(f"cannot write {destinations_file(settings)}: {exc}") from exc


def add_destination(settings: Settings, destination: Destination) -> Destination:
    """Store a new destination; DestinationExists if its name is taken."""
    def change(config: RelayConfig) -> RelayConfig:
        if any(d.name == destination.name for d in config.destinations):
            raise DestinationExists(f"a destination named {destination.name!r} already exists")
        return replace(config, destinations=(*config.destinations, destination))
    update(settings, change)
    return destination


def _replace_one(settings: Settings, name: str,
                 edit: Callable[[Destination], Destination | None]) -> Destination:
    found: list[Destination] = []

    def change(config: RelayConfig) -> RelayConfig:
        current = config.by_name(name)
        found.append(current)
        edited = edit(current)
        kept = tuple(d if d.name != name else edited for d in config.destinations)
        return replace(config, destinations=tuple(d for d in kept if d is not None))
    update(settings, change)
    return found[0]


def set_paused(settings: Settings, name: str, paused: bool, by: str | None = None,
               reason: str | None = None) -> Destination:
    """Pause or resume a destination; return it as it was before."""
    def edit(current: Destination) -> Destination:
        if not paused:
            return replace(current, paused=False, paused_by=None, paused_reason=None,
                           paused_at=None)
        return replace(current, paused=True, paused_by=by, paused_reason=reason,
                       paused_at=datetime.now(UTC).isoformat(timespec="seconds"))
    return _replace_one(settings, name, edit)


def remove_destination(settings: Settings, name: str) -> Destination:
    """Remove a destination (what it had queued is dropped); return it."""
    return _replace_one(settings, name, lambda current: None)


def set_options(settings: Settings, **changes: Any) -> RelayOptions:
    """Change relay-wide options (`RelayOptions` fields); return them."""
    if "retry_schedule" in changes:
        changes["retry_schedule"] = tuple(float(s) for s in changes["retry_schedule"])
    try:
        return update(settings, lambda config: replace(
            config, options=replace(config.options, **changes))).options
    except (TypeError, ValueError) as exc:
        raise InvalidDestination(f"unusable relay options: {exc}") from exc
