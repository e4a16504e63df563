"""Parsing and validation of one Ploomes delivery body.

The receiver answers 200 only for a body `check_delivery` accepts, checked before it is
journaled. The ingest and a rebuild apply the same checks (`parse_delivery`), so an
accepted delivery parses again identically.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import orjson

MAX_DEPTH = 64  # real deliveries nest 3–4 levels; deeper bodies are refused
MAX_NAME = 100
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
# orjson reads an integer beyond 64 bits as a float, which would change its value.
# Such a literal has at least 19 digits in a row: bodies with a run that long (also
# inside a string, e.g. a bank slip's barcode) are decoded again by the standard parser.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x2E for b in range(256))
_LONG_DIGIT_RUN = b"0" * 19
INT_FIELDS = ("AccountId", "ActionUserId", "WebhookId", "WebhookCreatorId", "SecondaryEntityId")


class InvalidDelivery(ValueError):
    """The body is not a Ploomes delivery; the message says why (safe to show)."""


class Delivery(NamedTuple):
    """A validated delivery, with the columns the event store keeps."""

    action: str
    entity: str
    account_id: int | None
    action_user_id: int | None
    webhook_id: int | None
    webhook_creator_id: int | None
    secondary_entity_id: int | None
    record_id: int | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    body: dict[str, Any]


def _depth_ok(value: object) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def _int_or_none(body: dict[str, Any], key: str, where: str = "") -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int in Python but never an id in Ploomes
    if isinstance(value, bool) or not isinstance(value, int):
        kind = type(value).__name__
        raise InvalidDelivery(f"{where}{key} must be an integer or null, got {kind}")
    if not BIGINT_MIN <= value <= BIGINT_MAX:
        raise InvalidDelivery(f"{where}{key} is out of range")
    return value


def _record(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidDelivery(f"{key} must be an object or null, got {type(value).__name__}")
    _int_or_none(value, "Id", where=f"{key}.")
    return value


def _name(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        raise InvalidDelivery(f"missing {key}")
    if not isinstance(value, str) or not value.strip():
        raise InvalidDelivery(f"{key} must be a non-empty string")
    if len(value) > MAX_NAME:
        raise InvalidDelivery(f"{key} is longer than {MAX_NAME} characters")
    return value


def _check_depth(raw: bytes) -> None:
    """Refuse bodies nested deeper than MAX_DEPTH, without risking the C stack.

    A body cannot nest deeper than its number of brackets, so only bodies with more
    brackets than the limit get here. The standard library's parser stops safely at
    Python's recursion limit, which makes it a safe (if slower) first pass.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        # the same reason as below: where the recursion limit is reached depends on the
        # caller's stack (the receiver, the ingest, a thread), and the
        # sender's answer and the rejected_deliveries row must say the same thing
        raise InvalidDelivery(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        return  # not JSON at all: orjson will say why
    if not _depth_ok(value):
        raise InvalidDelivery(f"JSON is nested deeper than {MAX_DEPTH} levels")


def decode_body(raw: bytes) -> dict[str, Any]:
    """Decode raw bytes into a JSON object (integers of any size exact), or raise
    InvalidDelivery."""
    if not raw:
        raise InvalidDelivery("empty body")
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:
        _check_depth(raw)  # ours is 64 levels; orjson (3.13) only refuses beyond 1,024
    try:
        # orjson refuses what JSON does not allow and json.loads would take: NaN,
        # Infinity, numbers out of double range, unpaired surrogate escapes.
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:  # only a refused body pays for a second decode, to name a bad byte
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise InvalidDelivery(f"body is not valid UTF-8 (byte {bad.start})") from None
        raise InvalidDelivery(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                              ) from None
    if not isinstance(body, dict):
        raise InvalidDelivery(f"body must be a JSON object, got {type(body).__name__}")
    if _LONG_DIGIT_RUN in raw.translate(_DIGITS_ONLY):
        # orjson accepted it, so json.loads does too and reads the same values, except
        # that integers of any size stay integers
        exact: dict[str, Any] = json.loads(raw)
        return exact
    return body


def check_fields(body: dict[str, Any]) -> None:
    """Raise InvalidDelivery if a field the store relies on is missing or of a wrong kind.

    The first failure, in this order, is the reason given.
    """
    for key in ("Action", "Entity"):
        _name(body, key)
    for key in INT_FIELDS:
        _int_or_none(body, key)
    for key in ("Old", "New"):
        _record(body, key)


def validate(body: dict[str, Any]) -> Delivery:
    """Check the fields the store relies on and return a Delivery."""
    check_fields(body)
    get = body.get
    old, new = get("Old"), get("New")
    record_id = None if new is None else new.get("Id")
    if record_id is None and old is not None:
        record_id = old.get("Id")
    return Delivery(body["Action"], body["Entity"], get("AccountId"), get("ActionUserId"),
                    get("WebhookId"), get("WebhookCreatorId"), get("SecondaryEntityId"),
                    record_id, old, new, body)


def parse_delivery(raw: bytes) -> Delivery:
    """Decode and validate a delivery body, or raise InvalidDelivery with the reason."""
    return validate(decode_body(raw))


def check_delivery(raw: bytes) -> None:
    """Raise what `parse_delivery` raises for raw, without building a Delivery."""
    check_fields(decode_body(raw))


def to_json(value: object) -> str | None:
    """Serialise a value for a JSON column, keeping accents and every character faithfully."""
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # an integer beyond 64 bits, which orjson cannot write
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
