"""What a record is, as a sequence of deliveries says: state folding and its checks.

`record_state` holds the merge of every `Old` and `New` of a record (custom fields
merged by key); a later delivery whose `Old` disagrees with it on a field that is not
bookkeeping reveals a continuity gap (lost deliveries, or an action nobody subscribed to).
"""

from __future__ import annotations

from typing import Any

import orjson

from ploomes.model import diff as diffmod
from ploomes.model.delivery import to_json
from ploomes.model.vocabulary import NAME_KEYS, OTHER_PROPERTIES, TITLE_KEYS

# Never compared for gaps besides bookkeeping fields (those change without deliveries).
GAP_IGNORED = frozenset({"Id"})


def merge_state(state: dict[str, Any] | None, record: dict[str, Any] | None) -> dict[str, Any]:
    """Return `state` updated with the fields of `record` (custom fields merged by key)."""
    out = dict(state or {})
    for key, value in (record or {}).items():
        if key == OTHER_PROPERTIES:
            merged = dict(diffmod.normalize_other_properties(out.get(key)))
            merged.update(diffmod.normalize_other_properties(value))
            out[key] = merged
        else:
            out[key] = value
    return out


def fold(state: dict[str, Any] | None, old: dict[str, Any] | None,
         new: dict[str, Any] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return a record's state after one delivery, and the gap its `Old` reveals.

    `state` is what earlier deliveries made the record (None when unknown or deleted).
    The result is `merge_state(merge_state(state, old), new)`, built in one copy: live
    ingestion and a rebuild fold every delivery through here.
    """
    gap = find_gap(state, old) if state is not None and old else []
    out = dict(state) if state else {}
    for record in (old, new):
        if not record:
            continue
        if OTHER_PROPERTIES in record:
            merged = diffmod.normalize_other_properties(out.get(OTHER_PROPERTIES))
            merged.update(diffmod.normalize_other_properties(record[OTHER_PROPERTIES]))
            out.update(record)
            out[OTHER_PROPERTIES] = merged
        else:
            out.update(record)
    return out, gap


def _as_text(value: object) -> str:
    # what SQL's `->>` gives: a string as it is, anything else as its JSON text
    return value if isinstance(value, str) else to_json(value) or "null"


def record_names(state: dict[str, Any]) -> tuple[str | None, str | None]:
    """Return a record's (title, searchable names: Name, LegalName, Title one per line)."""
    title = next((_as_text(state[k]) for k in TITLE_KEYS if state.get(k) is not None), None)
    names = "\n".join(_as_text(state[k]) for k in NAME_KEYS if state.get(k) is not None)
    return title, names or None


def find_gap(state: dict[str, Any], old: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the fields where a delivery's `Old` disagrees with the known state."""
    shared = [key for key in old if key in state]
    try:  # usually Old is exactly what we know: one C-speed comparison settles it
        if orjson.dumps([state[k] for k in shared]) == orjson.dumps([old[k] for k in shared]):
            return []
    except (TypeError, orjson.JSONEncodeError):
        pass
    found = []
    for change in diffmod.diff_record("Update", state, old):
        if not change.old_known or change.bookkeeping or change.field in GAP_IGNORED:
            continue  # a field our history never saw cannot contradict it
        found.append({"field": change.field, "expected": change.old_value,
                      "found": change.new_value})
    return found
