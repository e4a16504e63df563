"""Field-level diffs of one Ploomes delivery: which fields an action changed, Old → New.

Rules (the same ones the views explain to users):

* Update, Win, Lose, Reopen and any other action with both sides: a field is a change
  when it is present in ``New`` and its value differs from ``Old``'s. A field missing
  from ``Old`` is "previous value unknown" (``old_known=False``), never "was null". A
  field in ``Old`` but absent from ``New`` is not a change: Ploomes often sends a full
  ``Old`` beside a short ``New``.
* Create (``Old`` null or empty): one ``set`` row per field of ``New``; fields whose
  value is null, ``[]`` or ``{}`` are skipped because nothing was set.
* Delete (``New`` null, or empty on a Delete): one ``cleared`` row per field of ``Old``,
  skipping the same empty values. ``New`` null on any other action is treated the same
  way, since no record exists after it.
* ``New`` present but ``Old`` null on a non-Create action: every field of ``New`` is a
  change with an unknown previous value.
* ``Id`` (top level) is never a change row.
* ``OtherProperties`` (object form or the API's list form) gives one row per custom
  field, ``OtherProperties.<key>``; a custom field's value is compared whole.
* Other nested objects are flattened to ``A.B`` paths when both sides are objects (or
  ``Old`` lacks the field); an object replacing a scalar or null is one row at ``A``.
* ``Tags`` (a list of ``{"TagId": …}``) compares as a set of TagIds; other lists compare
  as whole values, order included.
* Values compare with JSON type awareness: ``1 == 1.0`` but ``True != 1``; strings are
  compared exactly (no accent or Unicode normalization).

A key containing ``.`` or ``\\`` is escaped with a backslash inside a path so that
``apply_changes`` can always split a path back into keys; real Ploomes keys never need it.
Row values reference the input objects: treat them as read-only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import orjson

from ploomes.model.vocabulary import OTHER_PROPERTIES, TAGS

# Fields that Ploomes rewrites on almost every delivery (or that only say who/what last
# touched the record); views hide them by default. Matched on a path's last key.
BOOKKEEPING_FIELDS: frozenset[str] = frozenset(
    {
        "LastUpdateDate",
        "UpdaterId",
        "DaysInStage",
        "HoursInStage",
        "Length",
        "Read",
        "UpdateImportId",
        "ImportationIdUpdate",
        "PublicFormIdUpdate",
        # set once by Ploomes when a record is created: who/when, not what
        "CreateDate",
        "CreatorId",
        "CreateImportId",
        "ImportationIdCreate",
        "PublicFormIdCreate",
    }
)


# Value columns of the API's list form of OtherProperties, in the order a value is taken
# from. Ids come before names because the delivery object form carries the option id.
_VALUE_KEYS = (
    "StringValue",
    "BigStringValue",
    "IntegerValue",
    "DecimalValue",
    "BoolValue",
    "DateTimeValue",
    "ObjectValueId",
    "UserValueId",
    "ContactValueId",
    "ObjectValueName",
    "UserValueName",
    "ContactValueName",
)
_VALUE_SUFFIXES = ("Value", "ValueId", "ValueName")

# Labels tried in order when a list item (a dict) is summarised.
_ITEM_LABELS = (
    "PhoneNumber",
    "Email",
    "Name",
    "ProductName",
    "Title",
    "UserId",
    "ProductId",
    "ContactId",
    "TagId",
    "Id",
)

_SUMMARY_WIDTH = 60
_MISSING = object()
_TAG_KEYS = (TAGS,)


class FieldChange(NamedTuple):
    """One field changed by one delivery.

    A NamedTuple rather than a frozen dataclass: a rebuild makes millions of them, and a
    frozen dataclass pays a `object.__setattr__` per field to build one.
    """

    field: str
    old_value: object
    new_value: object
    old_known: bool
    new_known: bool
    kind: str
    summary: str
    bookkeeping: bool
    added: tuple[Any, ...] = ()
    removed: tuple[Any, ...] = ()


# --- paths -------------------------------------------------------------------------


def _escape(key: str) -> str:
    if "\\" in key or "." in key:
        return key.replace("\\", "\\\\").replace(".", "\\.")
    return key


def join_path(keys: tuple[str, ...] | list[str]) -> str:
    """Join record keys into a field path such as ``OtherProperties.contact_check``."""
    text = ".".join(map(str, keys))
    if "\\" not in text and text.count(".") == len(keys) - 1:
        return text  # no key needs escaping: the common case, without a call per key
    return ".".join(_escape(str(k)) for k in keys)


def split_path(field: str) -> tuple[str, ...]:
    """Split a field path back into the record keys it names."""
    if "\\" not in field:
        return tuple(field.split("."))
    keys: list[str] = []
    current: list[str] = []
    chars = iter(field)
    for char in chars:
        if char == "\\":
            current.append(next(chars, "\\"))
        elif char == ".":
            keys.append("".join(current))
            current = []
        else:
            current.append(char)
    keys.append("".join(current))
    return tuple(keys)


# --- values --------------------------------------------------------------------------


def _json_equal(a: object, b: object) -> bool:
    """Compare two JSON values: 1 == 1.0, True != 1, NaN == NaN, lists in order."""
    if a is b:
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if a == b:
            return True
        return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return False
        for key, value in a.items():
            other = b.get(key, _MISSING)
            if other is _MISSING or not _json_equal(value, other):
                return False
        return True
    if isinstance(a, list | tuple):
        if not isinstance(b, list | tuple) or len(a) != len(b):
            return False
        return all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(b, dict | list | tuple) or isinstance(a, int | float) != isinstance(
        b, int | float
    ):
        return False
    try:
        return bool(a == b)
    except Exception:  # a non-JSON object with a hostile __eq__ is simply "different"
        return False


_SCALARS = (str, int, bool, type(None))


def _identical(a: object, b: object) -> bool:
    """Return True only when a and b are certainly the same JSON value (fast, C speed)."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind in _SCALARS:
        return a == b
    if kind is list or kind is dict:
        try:  # same text means same value; different text falls back to the full compare
            text = orjson.dumps(a)
            # orjson writes NaN and ±Infinity as null: text with a null proves nothing
            return text == orjson.dumps(b) and b"null" not in text
        except (TypeError, orjson.JSONEncodeError):
            return False
    return False


def _is_empty(value: object) -> bool:
    return value is None or (isinstance(value, list | dict) and not value)


def _option_value(item: dict[str, Any]) -> object:
    for key in _VALUE_KEYS:
        value = item.get(key)
        if value is not None:
            return value
    for key, value in item.items():
        if value is not None and isinstance(key, str) and key.endswith(_VALUE_SUFFIXES):
            return value
    return None


def normalize_other_properties(value: object) -> dict[str, Any]:
    """Return custom fields as ``{FieldKey: value}`` from the object or the API list form."""
    if isinstance(value, dict):
        return dict(value)
    result: dict[str, Any] = {}
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("FieldKey"), str):
                result[item["FieldKey"]] = _option_value(item)
    return result


def _tag_ids(value: object) -> list[int | str] | None:
    """Return the TagIds of a Tags list, or None when the value is not a list of tags."""
    if not isinstance(value, list):
        return None
    ids: list[int | str] = []
    for item in value:
        if not isinstance(item, dict):
            return None
        tag_id = item.get("TagId")
        # bools would collide with 1/0 in a set; floats are not real TagIds
        if isinstance(tag_id, bool) or not isinstance(tag_id, int | str):
            return None
        ids.append(tag_id)
    return ids


def _sort_key(value: object) -> tuple[bool, Any]:
    return (isinstance(value, str), value)


def _sorted_ids(ids: Iterable[int | str]) -> list[int | str]:
    return sorted(set(ids), key=_sort_key)


# --- summaries -----------------------------------------------------------------------


def _clip(text: str) -> str:
    return text if len(text) <= _SUMMARY_WIDTH else text[: _SUMMARY_WIDTH - 1] + "…"


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= _SUMMARY_WIDTH else value[: _SUMMARY_WIDTH - 1] + "…")
    if isinstance(value, bool | int | float):
        return repr(value)
    return _clip(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def _item_label(item: object) -> str:
    if isinstance(item, dict):
        for key in _ITEM_LABELS:
            value = item.get(key)
            if value is not None and not isinstance(value, dict | list):
                return _clip(str(value))
    if isinstance(item, str):
        return _clip(item)
    return _show(item)


def _item_key(item: object) -> str:
    return json.dumps(item, sort_keys=True, ensure_ascii=False, default=str)


def _labels(items: list[Any]) -> list[str]:
    return [_item_label(item) for item in items]


def _list_summary(field: str, old: object, new: object, old_known: bool) -> str:
    """Say which items a list lost and gained, e.g. ``Phones: (11) 3842-6673 → (11) 4380-7749``."""
    if not old_known or not isinstance(old, list) or not isinstance(new, list):
        before = _show(old) if not isinstance(old, list) else ", ".join(_labels(old)) or "[]"
        before = before if old_known else "?"
        after = _show(new) if not isinstance(new, list) else ", ".join(_labels(new)) or "[]"
        return f"{field}: {before} → {after}"
    old_count = Counter(_item_key(item) for item in old)
    new_count = Counter(_item_key(item) for item in new)
    removed_keys = old_count - new_count
    added_keys = new_count - old_count
    removed = [item for item in old if removed_keys.get(_item_key(item), 0) > 0]
    added = [item for item in new if added_keys.get(_item_key(item), 0) > 0]
    if not removed and not added:
        return f"{field}: reordered"
    removed_labels, added_labels = _labels(removed), _labels(added)
    if sorted(removed_labels) == sorted(added_labels):
        # an item changed in a part its label does not show: show the items whole
        removed_labels = [_show(item) for item in removed]
        added_labels = [_show(item) for item in added]
    if removed and added:
        return f"{field}: {', '.join(removed_labels)} → {', '.join(added_labels)}"
    if added:
        return f"{field}: " + ", ".join("+" + label for label in added_labels)
    return f"{field}: " + ", ".join("−" + label for label in removed_labels)


def _tags_summary(added: Iterable[object], removed: Iterable[object], old_known: bool) -> str:
    parts = [f"+{tag_id}" for tag_id in added] + [f"−{tag_id}" for tag_id in removed]
    text = " ".join(parts) if parts else "none"
    return text if old_known else f"{text} (previous unknown)"


# --- rows ----------------------------------------------------------------------------


def _is_bookkeeping(keys: tuple[str, ...]) -> bool:
    # custom field keys are user data, never bookkeeping, whatever they are called
    return keys[0] != OTHER_PROPERTIES and keys[-1] in BOOKKEEPING_FIELDS


def _leaves(record: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], object]]:
    """Yield (keys, value) for every field of a record, custom fields and nesting flattened."""
    for key, value in record.items():
        if key == "Id":
            continue
        if key == OTHER_PROPERTIES:
            for field_key, field_value in normalize_other_properties(value).items():
                yield (key, field_key), field_value
        elif isinstance(value, dict) and value:
            yield from _nested_leaves((key,), value)
        else:
            yield (key,), value


def _nested_leaves(keys: tuple[str, ...], value: dict[str, Any]
                   ) -> Iterator[tuple[tuple[str, ...], object]]:
    for key, child in value.items():
        child_keys = (*keys, key)
        if isinstance(child, dict) and child:
            yield from _nested_leaves(child_keys, child)
        else:
            yield child_keys, child


def _field(keys: tuple[str, ...]) -> str:
    """`join_path`, with a shortcut for the usual top-level key that needs no escape."""
    if len(keys) == 1:
        key = keys[0]
        if type(key) is str and "." not in key and "\\" not in key:
            return key
    return join_path(keys)


def _one_sided_rows(record: dict[str, Any], kind: str) -> list[FieldChange]:
    """Build the ``set`` rows of a Create or the ``cleared`` rows of a Delete."""
    rows = []
    is_set = kind == "set"
    for keys, value in _leaves(record):
        if value is None or (isinstance(value, list | dict) and not value):
            continue  # _is_empty, inline: this loop runs for every field of a record
        field = _field(keys)
        tag_ids = _tag_ids(value) if keys == _TAG_KEYS else None
        added: tuple[Any, ...] = ()
        removed: tuple[Any, ...] = ()
        shown = value
        if tag_ids is not None:
            shown = _sorted_ids(tag_ids)
            if is_set:
                added = tuple(shown)
                summary = _tags_summary(added, (), True)
            else:
                removed = tuple(shown)
                summary = _tags_summary((), removed, True)
        elif isinstance(value, list):
            labels = ", ".join(_labels(value))
            summary = f"{field}: {labels}" if is_set else f"{field}: {labels} cleared"
        else:
            summary = f"set {_show(value)}" if is_set else f"cleared (was {_show(value)})"
        rows.append(FieldChange(field, None if is_set else shown, shown if is_set else None,
                                not is_set, is_set, kind, summary, _is_bookkeeping(keys),
                                added, removed))
    return rows


def _compare_leaf(rows: list[FieldChange], keys: tuple[str, ...], old: object, new: object) -> None:
    old_known = old is not _MISSING
    if keys == _TAG_KEYS:
        new_ids = _tag_ids(new)
        old_ids = _tag_ids(old) if old_known else None
        if new_ids is not None and (not old_known or old_ids is not None):
            new_set = set(new_ids)
            old_set = set(old_ids) if old_ids is not None else set()
            if old_known and new_set == old_set:
                return
            added = tuple(_sorted_ids(new_set - old_set))
            removed = tuple(_sorted_ids(old_set - new_set)) if old_known else ()
            rows.append(
                FieldChange(
                    field=TAGS,
                    old_value=_sorted_ids(old_set) if old_known else None,
                    new_value=_sorted_ids(new_set),
                    old_known=old_known,
                    new_known=True,
                    kind="tags",
                    summary=_tags_summary(added, removed, old_known),
                    bookkeeping=False,
                    added=added,
                    removed=removed,
                )
            )
            return
    if old_known and _json_equal(old, new):
        return
    field = _field(keys)
    old_value = old if old_known else None
    if isinstance(new, list) or isinstance(old_value, list):
        kind = "list"
        summary = _list_summary(field, old_value, new, old_known)
    else:
        kind = "changed"
        summary = f"{_show(old_value) if old_known else '?'} → {_show(new)}"
    rows.append(FieldChange(field, old_value, new, old_known, True, kind, summary,
                            _is_bookkeeping(keys)))


def _compare(rows: list[FieldChange], keys: tuple[str, ...], old: object,
             new: dict[str, Any]) -> None:
    """Append a row for every field present in ``new`` that differs from ``old``."""
    top = not keys
    old_get = old.get if isinstance(old, dict) else None
    for key, new_value in new.items():
        if top and key == "Id":
            continue
        old_value = _MISSING if old_get is None else old_get(key, _MISSING)
        if old_value is not _MISSING and _identical(old_value, new_value):
            continue  # most fields of a full snapshot did not change: skip them cheaply
        child_keys = (*keys, key)
        if top and key == OTHER_PROPERTIES:
            new_props = normalize_other_properties(new_value)
            old_props = normalize_other_properties(old_value) if old_value is not _MISSING else {}
            for field_key, field_value in new_props.items():
                old_prop = old_props.get(field_key, _MISSING)
                if old_prop is not _MISSING and _identical(old_prop, field_value):
                    continue  # identical values are equal: no row
                _compare_leaf(rows, (*child_keys, field_key), old_prop, field_value)
        elif (
            isinstance(new_value, dict)
            and new_value
            and (old_value is _MISSING or isinstance(old_value, dict))
        ):
            _compare(rows, child_keys, old_value, new_value)
        else:
            _compare_leaf(rows, child_keys, old_value, new_value)


def diff_record(action: str, old: dict[str, Any] | None, new: dict[str, Any] | None
                ) -> list[FieldChange]:
    """List the field changes one delivery made, following the module's rules."""
    old_record = old if isinstance(old, dict) else None
    new_record = new if isinstance(new, dict) else None
    if new_record is None or (action == "Delete" and not new_record):
        return _one_sided_rows(old_record, "cleared") if old_record else []
    if action == "Create" and not old_record:
        return _one_sided_rows(new_record, "set")
    rows: list[FieldChange] = []
    _compare(rows, (), old_record if old_record is not None else _MISSING, new_record)
    return rows


# --- applying ------------------------------------------------------------------------


def _is_tag_row(change: FieldChange) -> bool:
    # generic (non-tag) rows never carry added ids, so a "set" row with them is a tag row
    return change.kind == "tags" or (change.kind == "set" and bool(change.added))


def _apply_tags(current: object, change: FieldChange) -> list[dict[str, Any]]:
    if change.kind == "set" or not change.old_known:
        new_ids = change.new_value if isinstance(change.new_value, list | tuple) else ()
        return [{"TagId": tag_id} for tag_id in new_ids]
    items = current if isinstance(current, list) and _tag_ids(current) is not None else []
    removed = set(change.removed)
    kept = [dict(item) for item in items if item["TagId"] not in removed]
    present = {item["TagId"] for item in kept}
    kept.extend({"TagId": tag_id} for tag_id in change.added if tag_id not in present)
    return kept


def _set_path(record: dict[str, Any], keys: tuple[str, ...], value: object) -> None:
    container = record
    for key in keys[:-1]:
        child = container.get(key)
        if not isinstance(child, dict):
            child = {}
            container[key] = child
        container = child
    container[keys[-1]] = value


def _delete_path(record: dict[str, Any], keys: tuple[str, ...]) -> None:
    container: object = record
    for key in keys[:-1]:
        container = container.get(key) if isinstance(container, dict) else None
    if isinstance(container, dict):
        container.pop(keys[-1], None)


def apply_changes(old: dict[str, Any] | None, changes: list[FieldChange]) -> dict[str, Any]:
    """Return a copy of ``old`` with the changes applied (cleared fields are removed)."""
    record = copy.deepcopy(old) if isinstance(old, dict) else {}
    if OTHER_PROPERTIES in record and not isinstance(record[OTHER_PROPERTIES], dict):
        record[OTHER_PROPERTIES] = normalize_other_properties(record[OTHER_PROPERTIES])
    for change in changes:
        keys = split_path(change.field)
        if not change.new_known:
            _delete_path(record, keys)
        elif keys == (TAGS,) and _is_tag_row(change):
            record[TAGS] = _apply_tags(record.get(TAGS), change)
        else:
            _set_path(record, keys, copy.deepcopy(change.new_value))
    return record


# --- fingerprints --------------------------------------------------------------------


def _with_custom_fields_normalized(record: object) -> object:
    if isinstance(record, dict) and OTHER_PROPERTIES in record:
        record = dict(record)
        record[OTHER_PROPERTIES] = normalize_other_properties(record[OTHER_PROPERTIES])
    return record


def change_fingerprint(
    entity: object,
    record_id: object,
    action: object,
    action_user_id: object,
    old: object,
    new: object,
) -> str:
    """Return a sha256 hex of the change for duplicate detection (WebhookId left out)."""
    # WebhookId is left out on purpose: one change delivered to two subscriptions is the
    # same change, and callers that want them apart can add the id themselves.
    # Resends of one change are byte-identical JSON, so the values are hashed as they
    # are (sorted keys; only the two OtherProperties forms are unified): no per-value
    # walk, which keeps this cheap in the ingest path. 1 and 1.0 hash apart.
    payload = [entity, record_id, action, action_user_id,
               _with_custom_fields_normalized(old), _with_custom_fields_normalized(new)]
    try:
        text = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                            default=repr)
    except TypeError:  # an integer beyond 64 bits, which orjson cannot write
        text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                          default=repr).encode("utf-8", "surrogatepass")
    return hashlib.sha256(text).hexdigest()
