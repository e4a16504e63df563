"""Names for what the store holds as ids, from one account's directory.

`Names` is one account's view of the directory tables (`users`, `fields`, `lookups`:
the API's names, kept per AccountId) plus Ploomes' own names for built-in fields and
fixed values (`ploomes.model.names`). A name comes from the account's own rows first,
then from rows of the "unknown account" (account_id NULL: kept from before names had an
account); another account's rows never name it. Record ids (`ContactId`, `DealId`) are
named by the titles `record_state` holds.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

import duckdb

from ploomes.model import names as ploomes_names
from ploomes.model.vocabulary import OTHER_PREFIX

ALL_ACCOUNTS = "all"  # no account filter (one account seen, tests, benchmarks)
# What a query is scoped to: one AccountId, None (deliveries without one), or all.
AccountScope = int | str | None


def account_clause(account: AccountScope, column: str = "account_id") -> tuple[str, list]:
    """Return (" AND <condition>", params) narrowing `column` to an account scope."""
    if account == ALL_ACCOUNTS:
        return "", []
    if account is None:
        return f" AND {column} IS NULL", []
    return f" AND {column} = ?", [int(account)]


@dataclass
class Names:
    """One account's names for users, custom fields, lookups and records."""

    account_id: int | None
    users: dict[int, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # custom field key → name
    lookups: dict[str, dict[int, str]] = field(default_factory=dict)  # kind → id → name
    records: dict[tuple[str, int], str] = field(default_factory=dict)  # (entity, id) → title
    lang: str = ploomes_names.LANGUAGE

    def user(self, user_id: object) -> str | None:
        """Return a user's name, or None."""
        number = _int(user_id)
        return None if number is None else self.users.get(number)

    def user_label(self, user_id: object) -> str:
        """Return a user's name, else the id as text ('' without an id)."""
        number = _int(user_id)
        if number is None:
            return ""
        return self.users.get(number) or str(number)

    def field(self, entity: str | None, path: str) -> str:
        """Return a field's name as Ploomes shows it: built-in, custom, else its path."""
        builtin = ploomes_names.builtin_field_label(entity, path, self.lang)
        if builtin is not None:
            return builtin
        if path.startswith(OTHER_PREFIX):
            return self.fields.get(path[len(OTHER_PREFIX):]) or path
        return path

    def value(self, entity: str | None, path: str, value: object) -> str | None:
        """Return the name of an id a built-in field holds (a stage, a user…), or None."""
        kind = ploomes_names.value_kind(entity, path)
        number = _int(value)
        if kind is None or number is None:
            return None
        return self.named(kind, number)

    def named(self, kind: str, number: int) -> str | None:
        """Return the name of id `number` of a kind (lookup, user or record), or None."""
        if kind == ploomes_names.USER:
            return self.users.get(number)
        if kind.startswith(ploomes_names.RECORD_PREFIX):
            return self.records.get((kind[len(ploomes_names.RECORD_PREFIX):], number))
        found = self.lookups.get(kind, {}).get(number)
        return found or ploomes_names.fixed_value(kind, number, self.lang)

    def tag(self, tag_id: object) -> str | None:
        """Return a tag's name, or None."""
        number = _int(tag_id)
        return None if number is None else self.lookups.get(ploomes_names.TAG, {}).get(number)


def _int(value: object) -> int | None:
    """An id as int: Python and NumPy integers, whole floats, digit strings; else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and value.isascii():
        return int(value)
    return None


def _preferred(rows: Iterable[tuple]) -> dict:
    """{key: name} from (key, name, is_own) rows: the account's own name wins."""
    out: dict = {}
    own: set = set()
    for key, name, is_own in rows:
        if name is None:
            continue
        if is_own or key not in own:
            out[key] = name
        if is_own:
            own.add(key)
    return out


def load_names(con: duckdb.DuckDBPyConnection, account_id: int | None) -> Names:
    """Return one account's names (its own rows, then the unknown account's)."""
    scope = "(account_id IS NULL OR account_id = ?)" if account_id is not None \
        else "account_id IS NULL"
    params = [int(account_id)] if account_id is not None else []
    own = "account_id IS NOT NULL" if account_id is not None else "false"
    # names from this module, values bound
    users = con.execute(f"SELECT id, name, {own} FROM users WHERE {scope}", params).fetchall()
    fields = con.execute(f"SELECT key, name, {own} FROM fields WHERE {scope}",
                         params).fetchall()
    lookups: dict[str, dict[int, str]] = {}
    for kind, number, name, is_own in con.execute(
            f"SELECT kind, id, name, {own} FROM lookups WHERE {scope}", params).fetchall():
        if name is None:
            continue
        mine = lookups.setdefault(kind, {})
        if is_own or number not in mine:
            mine[number] = name
    return Names(account_id, _preferred(users), _preferred(fields), lookups)


def add_record_titles(con: duckdb.DuckDBPyConnection, names: Names,
                      refs: Iterable[tuple[str, int]]) -> None:
    """Name the records `refs` ((entity, id)) by the titles `record_state` holds."""
    wanted = sorted({(entity, int(number)) for entity, number in refs} - set(names.records))
    if not wanted:
        return
    rows = con.execute(
        "SELECT s.entity, s.record_id, s.title FROM record_state s "
        "JOIN (SELECT unnest(?::VARCHAR[]) AS entity, unnest(?::BIGINT[]) AS record_id) w "
        "ON s.entity = w.entity AND s.record_id = w.record_id WHERE s.title IS NOT NULL",
        [[w[0] for w in wanted], [w[1] for w in wanted]]).fetchall()
    names.records.update({(entity, number): title for entity, number, title in rows})


def record_refs(entity: str | None, path: str, values: Iterable[object]
                ) -> list[tuple[str, int]]:
    """Return the (entity, id) records that a built-in field's values point at."""
    kind = ploomes_names.value_kind(entity, path)
    if kind is None or not kind.startswith(ploomes_names.RECORD_PREFIX):
        return []
    target = kind[len(ploomes_names.RECORD_PREFIX):]
    return [(target, number) for v in values if (number := _int(v)) is not None]


class NamesCache:
    """Names per account, loaded once for the rows of one query."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self._loaded: dict[int | None, Names] = {}

    def __call__(self, account_id: object) -> Names:
        """Return the names of an account (an AccountId, or None)."""
        key = _int(account_id)
        if key not in self._loaded:
            self._loaded[key] = load_names(self.con, key)
        return self._loaded[key]


def json_or_none(text: str | None) -> object:
    """Decode a stored JSON value (None stays None)."""
    return None if text is None else json.loads(text)
