"""Whether one event matches a change or burst rule: the same code live and in a test
against past events.

Values are compared as text: a string as it is, true/false for booleans, numbers as JSON
writes them. "changed…" conditions look at the event's field changes (a custom field
`contact_check` is the change of `OtherProperties.contact_check`); "equals", "greater"
and "contains" look at the field's value after the event (`New`), so "Ganho with Valor
above 50000" matches a win whatever changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from ploomes.model.diff import FieldChange


class EventFacts(NamedTuple):
    """What a rule looks at in one event."""

    event_id: int
    received_ns: int
    action: str
    entity: str
    account_id: int | None
    user_id: int | None
    webhook_id: int | None
    record_id: int | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    changes: Sequence[FieldChange]


def as_text(value: object) -> str | None:
    """Return a field's value as the text rules compare (None: no value)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def field_paths(name: str) -> tuple[str, str]:
    """Return the change-model paths a rule's field names (built-in, or custom)."""
    return name, f"OtherProperties.{name}"


def value_in(record: dict[str, Any] | None, name: str) -> object:
    """Return a field's value in a record (a built-in key, or a custom field)."""
    if not isinstance(record, dict):
        return None
    if name in record:
        return record[name]
    others = record.get("OtherProperties")
    if isinstance(others, dict):
        return others.get(name)
    return None


def as_number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.replace(",", ".")) if "," in text and "." not in text else float(text)
    except ValueError:
        return None


def value_matches(spec: dict[str, Any], text: str | None) -> bool:
    """Return whether a field's value (as text) meets an equals/greater/contains rule."""
    if text is None:
        return False
    wanted = spec["value"]
    if spec["condition"] == "equals":
        return bool(text == wanted)
    if spec["condition"] == "contains":
        return bool(wanted.casefold() in text.casefold())
    number, limit = as_number(text), as_number(wanted)
    return number is not None and limit is not None and number > limit


def filter_matches(spec: dict[str, Any], facts: EventFacts) -> bool:
    """Return whether an event passes a rule's entity, action, user and account filter."""
    if spec.get("entity") and facts.entity != spec["entity"]:
        return False
    if spec.get("actions") and facts.action not in spec["actions"]:
        return False
    if spec.get("users") and facts.user_id not in spec["users"]:
        return False
    if spec.get("not_users") and facts.user_id in spec["not_users"]:
        return False
    return not (spec.get("accounts") and facts.account_id not in spec["accounts"])


def changes_by_path(facts: EventFacts) -> dict[str, FieldChange]:
    """Return an event's field changes by path, bookkeeping left out (the first of a
    path wins, as `matching_change` reads them in order)."""
    out: dict[str, FieldChange] = {}
    for change in facts.changes:
        if not change.bookkeeping:
            out.setdefault(change.field, change)
    return out


def matching_change(spec: dict[str, Any], facts: EventFacts,
                    by_path: dict[str, FieldChange] | None = None
                    ) -> FieldChange | None | bool:
    """Return whether an event matches a change rule: the field change that matched, True
    when no change is involved (no field, or a condition on the value), False if not.
    `by_path` is `changes_by_path(facts)`, when the caller has it."""
    if not filter_matches(spec, facts):
        return False
    condition = spec.get("condition") or "any"
    if condition == "any":
        return True
    name = spec["field"]
    if condition in ("equals", "greater", "contains"):
        return value_matches(spec, as_text(value_in(facts.new, name)))
    paths = field_paths(name)
    if by_path is None:
        by_path = changes_by_path(facts)
    for path in paths:
        change = by_path.get(path)
        if change is None:
            continue
        old, new = as_text(change.old_value), as_text(change.new_value)
        if spec.get("from") is not None and (not change.old_known or old != spec["from"]):
            continue
        if spec.get("to") is not None and (not change.new_known or new != spec["to"]):
            continue
        return change
    return False
