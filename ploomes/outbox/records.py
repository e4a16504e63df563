"""What the outbox log holds: one record per attempt, the requests taken, and snapshots.

Payloads are JSON (orjson). An attempt keeps the answer as the destination gave it
(status, headers, the first BODY_LIMIT bytes of its body as text): untrusted text that
views show as text only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ploomes.outbox.schedule import Verdict

KIND_ATTEMPT = 1  # one attempt and its outcome (`Attempt`)
KIND_CONTROL = 2  # a change taken by the sender: a replay, a target started or removed
KIND_CHECKPOINT = 3  # the sender's whole pending state, so a start reads little of the log

BODY_LIMIT = 4096  # bytes of an answer's body that are kept, as text
HEADERS_LIMIT = 8192  # characters of an answer's headers that are kept (names and values)
ERROR_LIMIT = 500


@dataclass(frozen=True)
class Attempt:
    """One attempt to send one message to one target, and what came of it."""

    msg_id: str  # stable per message and target: the receiving side drops repeats by it
    channel: str  # who sends: "relay" (the alerts, later, another)
    target: str  # the target's id
    target_name: str
    seq: int  # the journal sequence number (delivery id) the message carries
    number: int  # 1 for the first attempt of this message (a replay starts again at 1)
    at: float  # when it was sent (seconds since the epoch)
    verdict: Verdict
    status: int | None = None  # HTTP status; None: no answer
    latency: float | None = None  # seconds from sending to the answer (or the error)
    error: str | None = None  # why there was no usable answer, or why it failed for good
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""  # the first BODY_LIMIT bytes of the answer, as text
    next_at: float | None = None  # when the next attempt is due (RETRY only)
    replay: bool = False  # sent because someone asked for a replay

    def to_payload(self) -> bytes:
        """Encode the attempt as a log payload."""
        return orjson.dumps({
            "m": self.msg_id, "c": self.channel, "t": self.target, "tn": self.target_name,
            "s": self.seq, "n": self.number, "at": self.at, "v": self.verdict.value,
            "st": self.status, "l": self.latency, "e": self.error, "h": self.headers,
            "b": self.body, "next": self.next_at, "r": self.replay})

    @classmethod
    def from_payload(cls, payload: bytes) -> Attempt:
        """Decode an attempt from its log payload."""
        raw = orjson.loads(payload)
        return cls(msg_id=raw["m"], channel=raw["c"], target=raw["t"], target_name=raw["tn"],
                   seq=int(raw["s"]), number=int(raw["n"]), at=float(raw["at"]),
                   verdict=Verdict(raw["v"]), status=raw.get("st"), latency=raw.get("l"),
                   error=raw.get("e"), headers=dict(raw.get("h") or {}),
                   body=raw.get("b") or "", next_at=raw.get("next"),
                   replay=bool(raw.get("r")))


def body_text(data: bytes) -> str:
    """Return the first BODY_LIMIT bytes of an answer's body as text (bad bytes replaced)."""
    return data[:BODY_LIMIT].decode("utf-8", "replace")


def bounded_headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Return an answer's headers as a dict (repeated names joined with ", "), cut to
    HEADERS_LIMIT characters in all."""
    out: dict[str, str] = {}
    used = 0
    for name, value in pairs:
        used += len(name) + len(value)
        if used > HEADERS_LIMIT:
            break
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def cut_error(text: str) -> str:
    """Return an error text of at most ERROR_LIMIT characters."""
    return text if len(text) <= ERROR_LIMIT else text[:ERROR_LIMIT - 1] + "…"


def encode(value: dict[str, Any]) -> bytes:
    """Encode a control or checkpoint payload."""
    return orjson.dumps(value)


def decode(payload: bytes) -> dict[str, Any]:
    """Decode a control or checkpoint payload."""
    value = orjson.loads(payload)
    if not isinstance(value, dict):
        raise ValueError("an outbox control record is a JSON object")
    return value
