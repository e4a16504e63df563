"""Deciding alerts: once per event inside the stage-2 transaction, and on a clock for
the time-based rules.

An alert is a row of `alerts` whose `msg_id` names the rule and what fired it. Event
rules are decided in the transaction that moves the stage-2 position: a crash before
its commit decides the same events again, the same way (decisions depend on event times,
never on the clock), and a committed one is never decided again. A rebuild derives
without this hook: no old alert is sent again.

Bursts and the rate per rule need the last hour of decisions: at start they are rebuilt
by running the same code over the events of that hour without writing anything.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from ploomes.alerts.matching import EventFacts, changes_by_path, field_paths, matching_change
from ploomes.alerts.messages import Namer, burst_message, event_message, plain_message
from ploomes.alerts.rules import BusinessHours, Rule, load_rules, rules_stamp
from ploomes.config import Settings
from ploomes.model.delivery import Delivery, parse_delivery
from ploomes.model.diff import FieldChange, diff_record
from ploomes.store import fetch_one, transaction

log = logging.getLogger("ploomes.alerts")

HOUR_NS = 3600 * 10**9


def silence_conditions(rule: Rule) -> tuple[list[str], list[object]]:
    """The events a silence rule watches: SQL conditions on `events` and their values
    (no demo, no test delivery; its entity and subscription if it names them)."""
    where: list[str] = ["NOT is_demo", "NOT coalesce(is_test, false)"]
    params: list[object] = []
    if rule.spec.get("entity"):
        where.append("entity = ?")
        params.append(rule.spec["entity"])
    if rule.spec.get("webhook_id") is not None:
        where.append("webhook_id = ?")
        params.append(rule.spec["webhook_id"])
    return where, params


@dataclass
class Decision:
    """One alert decided: what the sender needs and what `alerts` stores."""

    msg_id: str
    rule_id: int
    rule_name: str
    kind: str
    event_id: int | None
    event_ids: list[int] | None
    fired_ns: int
    title: str
    body: str
    state: str = "queued"  # queued | limited


@dataclass
class RuleState:
    sent: deque[int] = field(default_factory=deque)  # fire times (ns) within the hour
    limited: int = 0  # limited since the last one queued
    windows: dict[int | None, deque[EventFacts]] = field(default_factory=dict)
    cooldown: dict[int | None, int] = field(default_factory=dict)  # user: last burst ns


def burst_fired(rule: Rule, state: RuleState, facts: EventFacts) -> list[EventFacts] | None:
    """Add a matching event to its user's window; return the burst's events when it
    reaches the rule's count (then the user's later events within the span are part of
    that burst: grouped into its message, not told again)."""
    span = int(rule.spec["minutes"] * 60e9)
    window = state.windows.setdefault(facts.user_id, deque())
    window.append(facts)
    while window and window[0].received_ns < facts.received_ns - span:
        window.popleft()
    last = state.cooldown.get(facts.user_id)
    if last is not None and facts.received_ns - last < span:
        window.clear()
        return None
    if len(window) < rule.spec["count"]:
        return None
    state.cooldown[facts.user_id] = facts.received_ns
    fired = list(window)
    window.clear()
    return fired


def alert_id(rule_id: int, key: object) -> str:
    """Return the outbox message id of an alert: stable per rule and what fired it."""
    return f"alert_{rule_id}_{key}"


def facts_of(event_id: int, ns: int, d: Delivery, changes: Sequence[FieldChange]
             ) -> EventFacts:
    """Return what rules look at in one derived event."""
    return EventFacts(event_id, ns, d.action, d.entity, d.account_id, d.action_user_id,
                      d.webhook_id, d.record_id, d.old, d.new, changes)


class AlertDecider:
    """The ingest's alert hook: rules, their in-memory windows, and decisions pending in
    the current transaction."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.tz = settings.tz
        self.rules: list[Rule] = []
        self._event_rules: list[Rule] = []
        self._by_kind: dict[tuple[str | None, str | None], list[Rule]] = {}
        self._paths: dict[int, tuple[str, str]] = {}
        self._stamp: tuple[Any, ...] | None = None
        self._state: dict[int, RuleState] = {}
        self._saved: dict[int, RuleState] | None = None
        self._pending: list[tuple[Rule, EventFacts, Any]] = []
        self.decided: list[Decision] = []  # written in the current transaction
        self.ready: list[Decision] = []  # committed, for the sender to take
        self.namer = Namer()
        self._candidates: dict[tuple[str, str], list[Rule]] = {}
        self._replaying = False

    # -- rules -----------------------------------------------------------------------

    def reload(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Read the rules again if they changed; say whether they did."""
        stamp = rules_stamp(con)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self.rules = load_rules(con)
        self._event_rules = [r for r in self.rules if r.kind in ("change", "burst")
                             and not r.muted]
        # rules by the (entity, action) they admit: an event is checked against its
        # few candidates, not against every rule
        self._by_kind = {}
        self._candidates = {}
        self._paths = {r.id: field_paths(r.spec["field"]) for r in self._event_rules
                       if r.spec.get("condition") in ("changed", "changed_to", "changed_from")}
        for rule in self._event_rules:
            for action in rule.spec.get("actions") or [None]:
                self._by_kind.setdefault((rule.spec.get("entity"), action), []).append(rule)
        ids = {r.id for r in self.rules}
        self._state = {k: v for k, v in self._state.items() if k in ids}
        return True

    def warm_up(self, con: duckdb.DuckDBPyConnection, derived_seq: int) -> None:
        """Rebuild bursts and rates from the last hour of derived events (nothing is
        written: the same decisions are made again and dropped)."""
        self.reload(con)
        self._state.clear()
        if not self._event_rules:
            return
        window = max([HOUR_NS] + [int(r.spec["minutes"] * 60e9) for r in self._event_rules
                                  if r.kind == "burst"])
        rows = con.execute(
            "SELECT id, epoch_ns(received_at), payload FROM events WHERE id <= ? AND "
            "NOT is_demo AND NOT coalesce(is_test, false) AND duplicate_of IS NULL AND "
            "received_at >= (SELECT max(received_at) FROM events WHERE id <= ?) "
            "- to_microseconds(? // 1000) ORDER BY id", [derived_seq, derived_seq, window]
        ).fetchall()
        self._replaying = True
        try:
            for event_id, ns, payload in rows:
                d = parse_delivery(payload.encode("utf-8"))
                self.event(event_id, ns, d, False, None, diff_record(d.action, d.old, d.new))
            self.decide(con)
        finally:
            self._replaying = False
            self._pending.clear()
            self.decided = []

    # -- per event (stage 2) -----------------------------------------------------------

    def begin(self) -> None:
        """Start a stage-2 transaction: what it decides can still be rolled back."""
        self._pending.clear()
        self.decided = []
        self._saved = {k: _copy(v) for k, v in self._state.items()}

    def event(self, seq: int, ns: int, d: Delivery, demo: bool, dup_of: int | None,
              changes: Sequence[FieldChange]) -> None:
        """Look at one derived event (repeats, demo events and tests fire nothing)."""
        if demo or dup_of is not None or not self._event_rules:
            return
        candidates = self._candidates.get((d.entity, d.action))
        if candidates is None:
            by_kind = self._by_kind
            candidates = self._candidates[(d.entity, d.action)] = [
                *by_kind.get((d.entity, d.action), ()), *by_kind.get((d.entity, None), ()),
                *by_kind.get((None, d.action), ()), *by_kind.get((None, None), ())]
        if not candidates:
            return
        facts = facts_of(seq, ns, d, changes)
        by_path: dict[str, FieldChange] | None = None
        paths_of = self._paths
        for rule in candidates:
            paths = paths_of.get(rule.id)
            if paths is not None:  # a "changed…" rule: its field must be among the changes
                if by_path is None:
                    by_path = changes_by_path(facts)
                if paths[0] not in by_path and paths[1] not in by_path:
                    continue
            found = matching_change(rule.spec, facts, by_path)
            if found is not False:
                self._pending.append((rule, facts, found))

    def decide(self, con: duckdb.DuckDBPyConnection) -> list[Decision]:
        """Turn the matches of this transaction into decisions and write them."""
        if not self._pending:
            return []
        namer = self.namer
        namer.refresh(con)
        url, tz = self.settings.dashboard_url, self.tz
        for rule, facts, found in self._pending:
            state = self._state.setdefault(rule.id, RuleState())
            if rule.kind == "burst":
                fired = burst_fired(rule, state, facts)
                if fired is None:
                    continue
                if self._replaying:
                    self._count(rule, state, facts.received_ns)
                    continue
                title, body = burst_message(namer, rule.name, fired, rule.spec["minutes"],
                                            url, tz)
                self._add(rule, state, facts, [f.event_id for f in fired], title, body)
                continue
            limited = state.limited
            if not self._count(rule, state, facts.received_ns):
                if not self._replaying:
                    self._limited(rule, facts)
                continue
            if self._replaying:
                continue
            first = found if isinstance(found, FieldChange) else None
            title, body = event_message(namer, rule.name, facts, first, url, tz, limited)
            self.decided.append(Decision(
                alert_id(rule.id, facts.event_id), rule.id, rule.name, rule.kind,
                facts.event_id, None, facts.received_ns, title, body))
        self._pending.clear()
        if self.decided and not self._replaying:
            write_decisions(con, self.decided)
        return self.decided

    def _count(self, rule: Rule, state: RuleState, ns: int) -> bool:
        """Count a firing against the rule's rate; return False when it is over it."""
        while state.sent and state.sent[0] <= ns - HOUR_NS:
            state.sent.popleft()
        if len(state.sent) >= rule.per_hour:
            state.limited += 1
            return False
        state.sent.append(ns)
        state.limited = 0
        return True

    def _add(self, rule: Rule, state: RuleState, facts: EventFacts, group: list[int] | None,
             title: str, body: str) -> None:
        if not self._count(rule, state, facts.received_ns):
            self._limited(rule, facts, group)
            return
        self.decided.append(Decision(
            alert_id(rule.id, facts.event_id), rule.id, rule.name, rule.kind,
            facts.event_id, group, facts.received_ns, title, body))

    def _limited(self, rule: Rule, facts: EventFacts, group: list[int] | None = None) -> None:
        """Record a firing over the rule's rate: listed on the page, not sent (no message
        is built for it; the next one sent says how many were held back)."""
        self.decided.append(Decision(
            alert_id(rule.id, facts.event_id), rule.id, rule.name, rule.kind,
            facts.event_id, group, facts.received_ns,
            f"{rule.name}: evento {facts.event_id} (acima do limite por hora)", "",
            "limited"))

    def rolled_back(self) -> None:
        """Forget what the failed transaction decided and the windows it moved."""
        if self._saved is not None:
            self._state = self._saved
        self._saved = None
        self._pending.clear()
        self.decided = []

    def committed(self) -> None:
        """Keep the decisions of the committed transaction that are to be sent."""
        self.ready.extend(d for d in self.decided if d.state == "queued")
        self._saved = None
        self.decided = []

    def take_ready(self) -> list[Decision]:
        """Return (and forget) the committed decisions not yet handed to the sender."""
        out, self.ready = self.ready, []
        return out

    # -- on the clock ---------------------------------------------------------------------

    def tick(self, con: duckdb.DuckDBPyConnection, now: datetime, hours: BusinessHours
             ) -> list[Decision]:
        """Decide the time-based rules (silence, data quality) now, in one transaction;
        return the new decisions to send (one already decided is not decided again)."""
        self.reload(con)
        found: list[Decision] = []
        for rule in self.rules:
            if rule.muted or rule.kind not in ("silence", "quality"):
                continue
            decision = (self._silence(con, rule, now, hours) if rule.kind == "silence"
                        else self._quality(con, rule, now))
            if decision is not None:
                found.append(decision)
        if not found:
            return []
        with transaction(con):
            return write_decisions(con, found)

    def _silence(self, con: duckdb.DuckDBPyConnection, rule: Rule, now: datetime,
                 hours: BusinessHours) -> Decision | None:
        if not hours.open_at(now):
            return None
        where, params = silence_conditions(rule)
        row = fetch_one(con, "SELECT max(id), max(epoch_ns(received_at)) FROM events WHERE "
                        + " AND ".join(where), params)
        if not row or row[0] is None:
            return None
        last_id, last_ns = row
        quiet = (now.timestamp() * 1e9 - last_ns) / 60e9
        if quiet < rule.spec["minutes"]:
            return None
        scope = ("todas as entregas" if not rule.spec.get("entity")
                 and rule.spec.get("webhook_id") is None else
                 f"entidade {rule.spec['entity']}" if rule.spec.get("entity")
                 else f"inscrição {rule.spec['webhook_id']}")
        from ploomes.alerts.messages import when

        title, body = plain_message(
            rule.name, f"nenhuma entrega há {quiet:.0f} min ({scope})",
            [f"Última entrega: {when(int(last_ns), self.tz)} (evento {last_id})",
             f"Limite: {rule.spec['minutes']:g} minutos em horário comercial"],
            self.settings.dashboard_url)
        return Decision(alert_id(rule.id, f"silence_{last_id}"), rule.id, rule.name,
                        rule.kind, None, None, int(now.timestamp() * 1e9), title, body)

    def _quality(self, con: duckdb.DuckDBPyConnection, rule: Rule, now: datetime
                 ) -> Decision | None:
        what = rule.spec["what"]
        if what == "relay_paused":
            return self._relay_paused(rule, now)
        minutes = float(rule.spec["minutes"])
        since = datetime.fromtimestamp(now.timestamp() - minutes * 60, UTC)
        table, label = (("continuity_gaps", "lacunas de continuidade") if what == "gaps"
                        else ("rejected_deliveries", "entregas recusadas"))
        demo = " AND NOT is_demo" if what == "gaps" else ""
        row = fetch_one(con, f"SELECT count(*), max(event_id) FROM {table} "
                        f"WHERE received_at >= ?{demo}" if what == "gaps" else
                        f"SELECT count(*), max(id) FROM {table} WHERE received_at >= ?",
                        [since])
        count = int(row[0]) if row else 0
        if count < rule.spec["count"]:
            return None
        bucket = int(now.timestamp() // (minutes * 60))
        title, body = plain_message(
            rule.name, f"{count} {label} nos últimos {minutes:g} min",
            [f"Limite: {rule.spec['count']} em {minutes:g} minutos",
             f"Último: evento {row[1] if row else '?'}"], self.settings.dashboard_url)
        return Decision(alert_id(rule.id, f"{what}_{bucket}"), rule.id, rule.name, rule.kind,
                        None, None, int(now.timestamp() * 1e9), title, body)

    def _relay_paused(self, rule: Rule, now: datetime) -> Decision | None:
        # the relay's destinations file is read as data: the relay sits beside the
        # ingest, which must not import it
        path = self.settings.data_dir / "relay" / "destinations.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            destinations = [d for d in raw.get("destinations") or () if isinstance(d, dict)]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("alerts cannot read the relay's destinations: %s", exc)
            return None
        for dest in destinations:
            if dest.get("paused") and dest.get("paused_by") == "relay":
                name = str(dest.get("name") or dest.get("id"))
                title, body = plain_message(
                    rule.name, f"o relay pausou o destino {name}",
                    [f"Motivo: {dest.get('paused_reason') or '(não informado)'}",
                     f"Desde: {dest.get('paused_at') or '?'}"], self.settings.dashboard_url)
                key = f"relay_{dest.get('id')}_{dest.get('paused_at')}"
                return Decision(alert_id(rule.id, key), rule.id, rule.name, rule.kind,
                                None, None, int(now.timestamp() * 1e9), title, body)
        return None


def _copy(state: RuleState) -> RuleState:
    return RuleState(deque(state.sent), state.limited,
                      {k: deque(v) for k, v in state.windows.items()}, dict(state.cooldown))


_ALERT_SCHEMA = pa.schema([
    ("msg_id", pa.string()), ("rule_id", pa.int64()), ("rule_name", pa.string()),
    ("kind", pa.string()), ("event_id", pa.int64()), ("event_ids", pa.string()),
    ("fired_at", pa.timestamp("us", tz="UTC")), ("title", pa.string()), ("body", pa.string()),
    ("state", pa.string())])


def write_decisions(con: duckdb.DuckDBPyConnection, decisions: list[Decision]
                    ) -> list[Decision]:
    """Store decisions (inside the caller's transaction); return those that are new and
    to be sent. One decided before (same msg_id) is left as it is."""
    ids = [d.msg_id for d in decisions]
    known = {row[0] for row in con.execute(
        "SELECT msg_id FROM alerts WHERE msg_id IN (SELECT unnest(?))", [ids]).fetchall()}
    new = [d for d in decisions if d.msg_id not in known]
    if not new:
        return []
    rows = pa.table({
        "msg_id": [d.msg_id for d in new], "rule_id": [d.rule_id for d in new],
        "rule_name": [d.rule_name for d in new], "kind": [d.kind for d in new],
        "event_id": [d.event_id for d in new],
        "event_ids": [None if d.event_ids is None else orjson.dumps(d.event_ids).decode()
                      for d in new],
        "fired_at": [d.fired_ns // 1000 for d in new], "title": [d.title for d in new],
        "body": [d.body for d in new], "state": [d.state for d in new]}, schema=_ALERT_SCHEMA)
    con.register("_alerts", rows)
    try:
        con.execute("INSERT INTO alerts SELECT msg_id, rule_id, rule_name, kind, event_id, "
                    "event_ids::JSON, fired_at, title, body, state FROM _alerts")
    finally:
        con.unregister("_alerts")
    return [d for d in new if d.state == "queued"]


def stored_alerts(con: duckdb.DuckDBPyConnection) -> list[Decision]:
    """Return the stored alerts to send whose delivery the store does not show as done
    (the sender also checks its own log, which may be ahead of the store)."""
    rows = con.execute(
        "SELECT a.msg_id, a.rule_id, a.rule_name, a.kind, a.event_id, "
        "epoch_ns(a.fired_at), a.title, a.body FROM alerts a WHERE a.state = 'queued' "
        "AND NOT EXISTS (SELECT 1 FROM outbox_messages m WHERE m.msg_id = a.msg_id "
        "AND m.state IN ('delivered', 'failed')) ORDER BY a.fired_at, a.msg_id").fetchall()
    return [Decision(msg_id, int(rule_id), name, kind, event_id, None, int(ns), title, body)
            for msg_id, rule_id, name, kind, event_id, ns, title, body in rows]
