"""Which deliveries a destination takes, and which ones must keep their order.

A delivery is read once (`DeliveryFacts`), then matched against every destination's
filter. Its order key is its CRM record (entity and record id): a record's later change
never overtakes an earlier one, while different records go in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ploomes.intake.journal import KIND_DELIVERY, Record
from ploomes.model.delivery import InvalidDelivery, parse_delivery
from ploomes.model.diff import diff_record
from ploomes.relay.destinations import Destination


@dataclass
class DeliveryFacts:
    """What the filters and the order key need of one delivery."""

    seq: int
    received_ns: int
    entity: str
    action: str
    account_id: int | None
    record_id: int | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    body: bytes
    _changed: frozenset[str] | None = field(default=None, repr=False)

    @property
    def order_key(self) -> str:
        """Return the key that orders this delivery with others ("" for none)."""
        return f"{self.entity}:{self.record_id}" if self.record_id is not None else ""

    def changed_fields(self) -> frozenset[str]:
        """Return the paths of the fields this delivery changed (the Events page's rules)."""
        if self._changed is None:
            try:
                rows = diff_record(self.action, self.old, self.new)
                self._changed = frozenset(row.field for row in rows)
            except (ValueError, TypeError, KeyError, RecursionError):
                self._changed = frozenset()  # a body the diff cannot read changed nothing known
        return self._changed


def forwardable(record: Record) -> bool:
    """Return whether a journal record is a delivery to forward: accepted from Ploomes,
    not demo data and not a test delivery of the Webhooks page."""
    return record.kind == KIND_DELIVERY and not record.is_demo and not record.is_test


def facts(record: Record) -> DeliveryFacts | None:
    """Read a journal record; None if it is no delivery to forward."""
    if not forwardable(record):
        return None
    try:
        delivery = parse_delivery(record.payload)
    except InvalidDelivery:
        return None  # accepted under older rules and refused now: the ingest keeps it aside
    return DeliveryFacts(record.seq, record.received_ns, delivery.entity, delivery.action,
                         delivery.account_id, delivery.record_id, delivery.old, delivery.new,
                         record.payload)


def matches(destination: Destination, delivery: DeliveryFacts) -> bool:
    """Return whether a destination's filter takes the delivery (an empty part: any)."""
    if destination.entities and delivery.entity.lower() not in {
            e.lower() for e in destination.entities}:
        return False
    if destination.actions and delivery.action.lower() not in {
            a.lower() for a in destination.actions}:
        return False
    if destination.accounts and delivery.account_id not in destination.accounts:
        return False
    return not destination.fields or bool(
        delivery.changed_fields().intersection(destination.fields))


def message_id(seq: int, destination_id: str) -> str:
    """Return the stable id of one delivery sent to one destination (`webhook-id`)."""
    return f"msg_{seq}_{destination_id}"
