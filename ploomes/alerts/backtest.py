"""Testing a rule against past events: how often it would have fired, and on which.

SQL narrows the events (time, entity, action, users, accounts, the field's change), the
same Python as live ingestion decides values and bursts. Repeats, demo events and test
deliveries are left out, as live. Rate limits are not applied: the count is how often
the rule matched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from ploomes.alerts.decide import RuleState, burst_fired, silence_conditions
from ploomes.alerts.matching import EventFacts, field_paths, value_matches
from ploomes.alerts.rules import BusinessHours, Rule
from ploomes.model.diff import FieldChange

SHOWN = 200  # firings listed (all are counted)


@dataclass
class Backtest:
    """What a rule would have done over a past period."""

    fired: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)  # the first SHOWN firings
    note: str | None = None


def _event_rows(con: duckdb.DuckDBPyConnection, spec: dict[str, Any], since: datetime
                ) -> list[tuple[Any, ...]]:
    where = ["e.received_at >= ?", "NOT e.is_demo", "NOT coalesce(e.is_test, false)",
             "e.duplicate_of IS NULL"]
    params: list[Any] = [since]
    if spec.get("entity"):
        where.append("e.entity = ?")
        params.append(spec["entity"])
    if spec.get("actions"):
        where.append("e.action IN (SELECT unnest(?))")
        params.append(list(spec["actions"]))
    if spec.get("users"):
        where.append("e.action_user_id IN (SELECT unnest(?))")
        params.append(list(spec["users"]))
    if spec.get("not_users"):
        where.append("(e.action_user_id IS NULL OR e.action_user_id NOT IN "
                     "(SELECT unnest(?)))")
        params.append(list(spec["not_users"]))
    if spec.get("accounts"):
        where.append("e.account_id IN (SELECT unnest(?))")
        params.append(list(spec["accounts"]))
    condition = spec.get("condition") or "any"
    value = "NULL"
    if condition in ("changed", "changed_to", "changed_from"):
        change = ["fc.event_id = e.id", "fc.received_at >= ?", "fc.field IN (?, ?)",
                  "NOT fc.bookkeeping"]
        params += [since, *field_paths(spec["field"])]
        for key, column in (("from", "old"), ("to", "new")):
            if spec.get(key) is not None:
                change.append(f"fc.{column}_known AND (fc.{column}_value->>'$') = ?")
                params.append(spec[key])
        where.append("EXISTS (SELECT 1 FROM field_changes fc WHERE " + " AND ".join(change)
                     + ")")
    elif condition in ("equals", "greater", "contains"):
        # a field key is checked against [A-Za-z0-9_-] when the rule is stored
        name = spec["field"]
        value = f"""coalesce(e.new->>'$."{name}"', e.new->>'$.OtherProperties."{name}"')"""
    return con.execute(
        f"SELECT e.id, epoch_ns(e.received_at), e.entity, e.action, e.action_user_id, "
        f"e.record_id, e.account_id, {value} FROM events e WHERE " + " AND ".join(where)
        + " ORDER BY e.id", params).fetchall()


def _row(event_id: int, ns: int, entity: str, action: str, user: int | None,
         record_id: int | None, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "received_at": datetime.fromtimestamp(ns / 1e9, UTC),
            "entity": entity, "action": action, "action_user_id": user,
            "record_id": record_id, **extra}


def backtest(con: duckdb.DuckDBPyConnection, rule: Rule, days: float = 30.0,
             hours: BusinessHours | None = None, now: datetime | None = None) -> Backtest:
    """Return how often a rule would have fired in the last `days` days, and where."""
    now = now or datetime.now(UTC)
    since = now - timedelta(days=days)
    out = Backtest()
    spec = rule.spec
    if rule.kind == "change":
        value_condition = spec.get("condition") in ("equals", "greater", "contains")
        for event_id, ns, entity, action, user, record_id, _, text in _event_rows(
                con, spec, since):
            if value_condition and not value_matches(spec, text):
                continue
            out.fired += 1
            if len(out.rows) < SHOWN:
                out.rows.append(_row(event_id, ns, entity, action, user, record_id))
    elif rule.kind == "burst":
        state = RuleState()
        value_condition = spec.get("condition") in ("equals", "greater", "contains")
        for event_id, ns, entity, action, user, record_id, account, text in _event_rows(
                con, spec, since):
            if value_condition and not value_matches(spec, text):
                continue
            facts = EventFacts(event_id, ns, action, entity, account, user, None, record_id,
                               None, None, list[FieldChange]())
            fired = burst_fired(rule, state, facts)
            if fired:
                out.fired += 1
                if len(out.rows) < SHOWN:
                    out.rows.append(_row(event_id, ns, entity, action, user, record_id,
                                         events=len(fired)))
    elif rule.kind == "silence":
        _silences(con, rule, since, hours, out)
    elif spec["what"] == "relay_paused":
        out.note = "o relay não guarda o histórico de pausas: nada a testar"
    else:
        minutes = float(spec["minutes"])
        table, column = (("continuity_gaps", "event_id") if spec["what"] == "gaps"
                         else ("rejected_deliveries", "id"))
        for bucket, count, last in con.execute(
                f"SELECT time_bucket(to_microseconds(?::BIGINT), received_at) AS b, "
                f"count(*), max({column}) FROM {table} WHERE received_at >= ? GROUP BY b "
                f"HAVING count(*) >= ? ORDER BY b", [int(minutes * 60e6), since,
                                                     spec["count"]]).fetchall():
            out.fired += 1
            if len(out.rows) < SHOWN:
                out.rows.append({"window": bucket, "count": count, "event_id": last})
    return out


def _silences(con: duckdb.DuckDBPyConnection, rule: Rule, since: datetime,
              hours: BusinessHours | None, out: Backtest) -> None:
    where, params = silence_conditions(rule)
    where, params = ["received_at >= ?", *where], [since, *params]
    span = int(rule.spec["minutes"] * 60e6)
    rows = con.execute(
        "SELECT id, prev_at, received_at FROM (SELECT id, received_at, lag(received_at) "
        "OVER (ORDER BY received_at) AS prev_at FROM events WHERE " + " AND ".join(where)
        + ") WHERE received_at - prev_at >= to_microseconds(?::BIGINT) ORDER BY id",
        [*params, span]).fetchall()
    for event_id, prev_at, received_at in rows:
        # it would have fired if the quiet span reached its length inside business hours
        due = prev_at + timedelta(microseconds=span)
        moment = hours.next_open(due) if hours is not None else due
        if moment is None or moment >= received_at:
            continue
        out.fired += 1
        if len(out.rows) < SHOWN:
            out.rows.append({"event_id": event_id, "quiet_from": prev_at,
                             "quiet_until": received_at})
