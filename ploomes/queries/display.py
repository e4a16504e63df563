"""Field changes shown to people: stored JSON values as text, ids named by the account's
directory ("Proposta enviada (88102)"), list items added and removed."""

from __future__ import annotations

import json

import duckdb
import pandas as pd

from ploomes.i18n import format_money
from ploomes.model.vocabulary import TAGS as TAG_FIELD
from ploomes.queries.base import json_text, list_delta, show_value
from ploomes.queries.names import Names, add_record_titles, record_refs

# Amounts shown as money: Brazilian accounts keep them in reais (CurrencyId 1, BRL)
MONEY_FIELDS = frozenset({"Amount", "StartAmount"})


def named_value(names: Names, entity: str | None, path: str, text: str | None,
                known: bool = True) -> str:
    """Show a stored JSON value for people, an id a lookup names as 'Name (id)'."""
    shown = show_value(text, known)
    if not known or text is None:
        return shown
    value = json.loads(text)
    if path in MONEY_FIELDS and isinstance(value, int | float) and not isinstance(value, bool):
        return format_money(value)
    if _is_tags(path) and isinstance(value, list) and value:
        return ", ".join(_item(names, path, item) for item in value)
    name = names.value(entity, path, value)
    return f"{name} ({shown})" if name is not None else shown


def _is_tags(path: str) -> bool:
    return path == TAG_FIELD or path.endswith("." + TAG_FIELD)


def _item(names: Names, path: str, item: object) -> str:
    if _is_tags(path):
        tag_id = item.get("TagId") if isinstance(item, dict) else item
        name = names.tag(tag_id)
        if name is not None:
            return f"{name} ({tag_id})"
        return str(tag_id)
    return show_value(json_text(item))


def add_display_columns(con: duckdb.DuckDBPyConnection, df: pd.DataFrame, names: Names,
                        entity: str | None) -> None:
    """Add `before` / `after` text (ids named) and `added_items` / `removed_items` (lists
    of text) to a frame of one entity's field changes."""
    refs = [ref for r in df.itertuples(index=False) if r.field is not None
            for ref in record_refs(entity, r.field, [
                json.loads(v) for v in (r.old_value, r.new_value) if v is not None])]
    add_record_titles(con, names, refs)
    before: list[str | None] = []
    after: list[str | None] = []
    added: list[list[str]] = []
    removed: list[list[str]] = []
    for r in df.itertuples(index=False):
        if r.field is None:  # an event that changed nothing shown
            before.append(None)
            after.append(None)
            added.append([])
            removed.append([])
            continue
        # a creation had nothing before, a deletion leaves nothing after
        before.append(None if r.kind == "set" else
                      named_value(names, entity, r.field, r.old_value, bool(r.old_known)))
        after.append(None if r.kind == "cleared" else
                     named_value(names, entity, r.field, r.new_value) if r.new_known
                     else "(removed)")
        if r.added is not None or r.removed is not None:
            plus = json.loads(r.added) if r.added else []
            minus = json.loads(r.removed) if r.removed else []
        elif r.kind == "list" and r.old_known:
            plus, minus = list_delta(json.loads(r.old_value) if r.old_value else None,
                                     json.loads(r.new_value) if r.new_value else None)
        else:
            plus, minus = [], []
        added.append([_item(names, r.field, i) for i in plus])
        removed.append([_item(names, r.field, i) for i in minus])
    df["before"] = pd.Series(before, index=df.index, dtype=object)
    df["after"] = pd.Series(after, index=df.index, dtype=object)
    df["added_items"] = pd.Series(added, index=df.index, dtype=object)
    df["removed_items"] = pd.Series(removed, index=df.index, dtype=object)
