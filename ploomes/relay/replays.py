"""Replay requests: small files in `data/relay/replays/` that the forwarder takes.

The command line and the dashboard write one file per request (atomically, 0600); the
forwarder takes them in order, records each in the outbox log, then deletes the file.
Requested while the receiver is down, a replay waits there for its next start.

A request names a destination and either deliveries (event ids) or a time: "everything
the destination missed since then" is every delivery accepted since that time that its
filter takes and that it has not confirmed (2xx).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ploomes.config import Settings
from ploomes.relay.destinations import RelayError, relay_dir

MAX_EVENTS = 100_000  # event ids in one request


@dataclass(frozen=True)
class ReplayRequest:
    """One replay asked for."""

    id: str
    destination_id: str
    destination: str  # its name when asked
    events: tuple[int, ...] = ()
    since: datetime | None = None
    requested_by: str = "cli"
    requested_at: str = ""


def spool_dir(settings: Settings) -> Path:
    """Return the folder of replay requests waiting for the forwarder."""
    return relay_dir(settings) / "replays"


def request_replay(settings: Settings, destination_id: str, destination: str, *,
                   events: tuple[int, ...] = (), since: datetime | None = None,
                   requested_by: str = "cli") -> ReplayRequest:
    """Write a replay request for the forwarder; return it.

    ValueError unless it names events or a time (with a time zone), RelayError if it
    cannot be written.
    """
    if not events and since is None:
        raise ValueError("a replay needs event ids or a time to replay from")
    if since is not None and since.tzinfo is None:
        raise ValueError("the replay's time needs a time zone")
    if len(events) > MAX_EVENTS:
        raise ValueError(f"at most {MAX_EVENTS:,} events can be replayed at once")
    request = ReplayRequest(
        id=f"{time.time_ns():020d}-{secrets.token_hex(3)}", destination_id=destination_id,
        destination=destination, events=tuple(int(e) for e in events), since=since,
        requested_by=requested_by, requested_at=datetime.now(UTC).isoformat())
    folder = spool_dir(settings)
    data = json.dumps({
        "id": request.id, "destination_id": destination_id, "destination": destination,
        "events": list(request.events),
        "since": since.isoformat() if since is not None else None,
        "requested_by": requested_by, "requested_at": request.requested_at}).encode("utf-8")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{request.id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, folder / f"{request.id}.json")
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise RelayError(f"cannot write the replay request in {folder}: {exc}") from exc
    return request


def waiting(settings: Settings) -> list[Path]:
    """Return the request files not taken yet, oldest first."""
    folder = spool_dir(settings)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.json"))


def read_request(path: Path) -> ReplayRequest:
    """Read one request file; ValueError (or OSError) if it is not one."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    since = raw.get("since")
    return ReplayRequest(
        id=str(raw["id"]), destination_id=str(raw["destination_id"]),
        destination=str(raw.get("destination") or ""),
        events=tuple(int(e) for e in raw.get("events") or ()),
        since=datetime.fromisoformat(since) if since else None,
        requested_by=str(raw.get("requested_by") or ""),
        requested_at=str(raw.get("requested_at") or ""))
