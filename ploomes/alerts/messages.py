"""The alerts' messages, in Portuguese: the record's name, who, what changed (before →
after, with Ploomes' labels and the names synced from the account), when, and a link to
the event on the dashboard.

Names are read from the store in the same transaction that decides the alert (users and
custom fields of the event's account, else of the unknown account), so a message says
what the dashboard said at that moment.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import quote

import duckdb

from ploomes.alerts.matching import EventFacts, as_text
from ploomes.model.diff import FieldChange
from ploomes.model.names import (
    USER,
    action_label,
    builtin_field_label,
    entity_label,
    fixed_value,
    value_kind,
)
from ploomes.model.vocabulary import OTHER_PREFIX

MAX_CHANGES = 6  # field changes listed in one message; the link shows them all
MAX_VALUE = 120  # characters of one value in a message


class Namer:
    """Users', custom fields' and lookups' names for messages: the three small tables
    read whole, again once they are `REFRESH` seconds old (a sync changes them rarely),
    so a message costs no query."""

    REFRESH = 60.0

    def __init__(self) -> None:
        self._users: dict[tuple[int | None, int], str] = {}
        self._fields: dict[tuple[int | None, str], str] = {}
        self._lookups: dict[tuple[int | None, str, int], str] = {}
        self._read_at: float | None = None

    def refresh(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read the names again if they are older than REFRESH seconds."""
        now = time.monotonic()
        if self._read_at is not None and now - self._read_at < self.REFRESH:
            return
        self._read_at = now
        self._users = {(a, i): n for a, i, n in con.execute(
            "SELECT account_id, id, name FROM users WHERE name IS NOT NULL").fetchall()}
        self._fields = {(a, k): n for a, k, n in con.execute(
            "SELECT account_id, key, name FROM fields WHERE name IS NOT NULL").fetchall()}
        self._lookups = {(a, k, i): n for a, k, i, n in con.execute(
            "SELECT account_id, kind, id, name FROM lookups WHERE name IS NOT NULL"
        ).fetchall()}

    def user(self, account_id: int | None, user_id: int | None) -> str:
        """Return a user's name and id, or 'usuário desconhecido'."""
        if user_id is None:
            return "usuário desconhecido"
        name = self.user_name(account_id, user_id)
        return f"{name} (#{user_id})" if name else f"usuário #{user_id}"

    def user_name(self, account_id: int | None, user_id: int) -> str | None:
        """Return a user's name as synced from the account (else the unknown account's)."""
        return self._users.get((account_id, user_id)) or self._users.get((None, user_id))

    def field(self, account_id: int | None, entity: str, path: str) -> str:
        """Return a field's label as Ploomes shows it (built-in, custom, else its key)."""
        builtin = builtin_field_label(entity, path)
        if builtin is not None:
            return builtin
        if not path.startswith(OTHER_PREFIX):
            return path
        key = path[len(OTHER_PREFIX):]
        return self._fields.get((account_id, key)) or self._fields.get((None, key)) or key

    def value(self, account_id: int | None, entity: str, path: str, value: object
              ) -> str | None:
        """Return the name of an id a built-in field holds (a stage, a user…), or None."""
        kind = value_kind(entity, path)
        if kind is None or isinstance(value, bool) or not isinstance(value, int | float):
            return None
        number = int(value)
        if kind == USER:
            return self.user_name(account_id, number)
        return (self._lookups.get((account_id, kind, number))
                or self._lookups.get((None, kind, number)) or fixed_value(kind, number))


def record_name(facts: EventFacts) -> str:
    """Return the record's name as the delivery carries it, else its entity and id."""
    for record in (facts.new, facts.old):
        if isinstance(record, dict):
            for key in ("Name", "LegalName", "Title", "ContactName"):
                value = record.get(key)
                if isinstance(value, str) and value.strip():
                    return _cut(value.strip())
    return f"{entity_label(facts.entity)} #{facts.record_id}" if facts.record_id else \
        entity_label(facts.entity)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 1] + "…"


def _value(value: object, known: bool) -> str:
    if not known:
        return "(desconhecido)"
    text = as_text(value)
    return "(vazio)" if text in (None, "") else _cut(str(text))


def when(ns: int, tz: object) -> str:
    """Return a receive time as Brazilians write it, in the display time zone."""
    moment = datetime.fromtimestamp(ns / 1e9, UTC).astimezone(tz)  # type: ignore[arg-type]
    return moment.strftime("%d/%m/%Y %H:%M:%S")


def event_link(dashboard_url: str, event_id: int) -> str:
    """Return the dashboard's address of one event."""
    return f"{dashboard_url.rstrip('/')}/events?event={quote(str(event_id))}"


def change_lines(namer: Namer, facts: EventFacts, first: FieldChange | None
                 ) -> list[str]:
    """Return 'label: before → after' lines, the matched change first."""
    changes = [c for c in facts.changes if not c.bookkeeping]
    if first is not None:
        changes = [first] + [c for c in changes if c is not first]
    def shown(value: object, known: bool, path: str) -> str:
        name = namer.value(facts.account_id, facts.entity, path, value) if known else None
        return f"{name} ({_value(value, known)})" if name else _value(value, known)

    lines = [f"  {namer.field(facts.account_id, facts.entity, c.field)}: "
             f"{shown(c.old_value, c.old_known, c.field)} → "
             f"{shown(c.new_value, c.new_known, c.field)}"
             for c in changes[:MAX_CHANGES]]
    if len(changes) > MAX_CHANGES:
        lines.append(f"  … e mais {len(changes) - MAX_CHANGES} campos")
    return lines


def event_message(namer: Namer, rule_name: str, facts: EventFacts,
                  first: FieldChange | None, dashboard_url: str, tz: object,
                  limited: int = 0) -> tuple[str, str]:
    """Return the title and body of a change alert."""
    what = f"{entity_label(facts.entity)} · {action_label(facts.action)}"
    name = record_name(facts)
    title = f"Alerta: {rule_name} — {what} — {name}"
    lines = [f"Regra: {rule_name}",
             f"Registro: {name} ({entity_label(facts.entity)} #{facts.record_id})",
             f"O que: {what}",
             f"Quem: {namer.user(facts.account_id, facts.user_id)}",
             f"Quando: {when(facts.received_ns, tz)}"]
    changed = change_lines(namer, facts, first)
    if changed:
        lines.append("O que mudou:")
        lines.extend(changed)
    if limited:
        lines.append(f"({limited} alertas desta regra não foram enviados antes deste: "
                     "limite por hora)")
    lines.append(f"Ver no painel: {event_link(dashboard_url, facts.event_id)}")
    return _cut(title), "\n".join(lines)


def burst_message(namer: Namer, rule_name: str, events: Sequence[EventFacts], minutes: float,
                  dashboard_url: str, tz: object) -> tuple[str, str]:
    """Return the title and body of a burst alert (one message for the whole burst)."""
    last = events[-1]
    who = namer.user(last.account_id, last.user_id)
    title = f"Alerta: {rule_name} — {len(events)} eventos de {who} em {minutes:g} min"
    lines = [f"Regra: {rule_name}",
             f"Quem: {who}",
             f"Quantos: {len(events)} eventos em até {minutes:g} minutos",
             f"De {when(events[0].received_ns, tz)} a {when(last.received_ns, tz)}",
             "Eventos:"]
    for facts in events[:20]:
        lines.append(f"  {entity_label(facts.entity)} · {action_label(facts.action)} · "
                     f"{record_name(facts)} — {event_link(dashboard_url, facts.event_id)}")
    if len(events) > 20:
        lines.append(f"  … e mais {len(events) - 20}")
    return _cut(title), "\n".join(lines)


def plain_message(rule_name: str, summary: str, details: Sequence[str], dashboard_url: str
                  ) -> tuple[str, str]:
    """Return the title and body of a time-based alert (silence, data quality)."""
    lines = [f"Regra: {rule_name}", summary, *details,
             f"Painel: {dashboard_url.rstrip('/')}/status"]
    return _cut(f"Alerta: {rule_name} — {summary}"), "\n".join(lines)
