"""Alert rules: their kinds and checks, where they are stored, and the business hours.

A rule is a row of `alert_rules`: a name, a kind and its conditions (`spec`, JSON), an
optional Apprise URL (a secret: shown only through `masked_notify`), muted or not, and
at most `per_hour` messages an hour.

Kinds and their spec keys:
- change: entity, actions, field + condition (changed, changed_to, changed_from, equals,
  greater, contains) with from/to/value, users, not_users, accounts;
- burst: the same filter, plus count (N) and minutes (M): N matching events by one user
  within M minutes, sent as one message;
- silence: minutes, and optionally entity or webhook_id: no delivery for that long
  inside business hours;
- quality: what (gaps | refused | relay_paused), count and minutes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import duckdb
import orjson

from ploomes.config import ConfigError, Settings, mask_secret
from ploomes.i18n import N_, _
from ploomes.model.names import ACTION_LABELS, ENTITY_LABELS
from ploomes.store import Store, StoreError, fetch_one, fetch_row, transaction

KINDS = ("change", "burst", "silence", "quality")
CONDITIONS = ("any", "changed", "changed_to", "changed_from", "equals", "greater",
              "contains")
QUALITY = ("gaps", "refused", "relay_paused")
DEFAULT_PER_HOUR = 30
_NAME = re.compile(r"[\w][\w .:-]{0,79}")
# a built-in key (Amount) or a custom one (contact_check, deal_<GUID> with hyphens)
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")


class RuleError(ValueError):
    """A rule cannot be stored as given; the message says which part and why (in the
    interface's language: the Alerts page shows it)."""


@dataclass(frozen=True)
class Rule:
    """One alert rule as stored."""

    id: int
    name: str
    kind: str
    spec: dict[str, Any]
    notify: str | None = field(default=None, repr=False)
    muted: bool = False
    per_hour: int = DEFAULT_PER_HOUR


def _ids(value: object, what: str) -> list[int]:
    if value in (None, ""):
        return []
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    out = []
    for item in items:
        try:
            out.append(int(str(item).strip()))
        except ValueError:
            raise RuleError(_("{what}: {item} is not a number (an id)").format(
                what=_(what), item=repr(str(item)))) from None
    return out


def _positive(spec: dict[str, Any], key: str, what: str) -> float:
    try:
        value = float(spec.get(key) or 0)
    except (TypeError, ValueError):
        raise RuleError(_("{what} must be a number").format(what=_(what))) from None
    if not value > 0:
        raise RuleError(_("{what} must be above zero").format(what=_(what)))
    return value


def check_spec(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Return a rule's conditions checked and normalised; RuleError says what is wrong."""
    if kind not in KINDS:
        raise RuleError(_("unknown kind {kind}: one of {kinds}").format(
            kind=repr(kind), kinds=", ".join(KINDS)))
    out: dict[str, Any] = {}
    if kind in ("change", "burst"):
        entity = spec.get("entity") or None
        if entity is not None and entity not in ENTITY_LABELS:
            raise RuleError(_("unknown entity {entity}: one of {entities}").format(
                entity=repr(entity), entities=", ".join(ENTITY_LABELS)))
        actions = [a for a in (spec.get("actions") or []) if a]
        for action in actions:
            if action not in ACTION_LABELS:
                raise RuleError(_("unknown action {action}: one of {actions}").format(
                    action=repr(action), actions=", ".join(ACTION_LABELS)))
        condition = spec.get("condition") or ("changed" if spec.get("field") else "any")
        if condition not in CONDITIONS:
            raise RuleError(_("unknown condition {condition}: one of {conditions}").format(
                condition=repr(condition), conditions=", ".join(CONDITIONS)))
        field_name = spec.get("field") or None
        if condition != "any" and not field_name:
            raise RuleError(_("the condition {condition} needs a field").format(
                condition=repr(condition)))
        if field_name is not None and not _FIELD.fullmatch(str(field_name)):
            raise RuleError(_("a field is a Ploomes field key such as Amount or contact_check, "
                              "got {field}").format(field=repr(field_name)))
        out.update(entity=entity, actions=actions, field=field_name, condition=condition)
        for key in ("from", "to", "value"):
            value = spec.get(key)
            out[key] = None if value in (None, "") else str(value)
        if condition == "changed_to" and out["to"] is None:
            raise RuleError(_("'changed to' needs the new value (--to)"))
        if condition == "changed_from" and out["from"] is None:
            raise RuleError(_("'changed from' needs the old value (--from)"))
        if condition in ("equals", "greater", "contains") and out["value"] is None:
            raise RuleError(_("the condition {condition} needs a value").format(
                condition=repr(condition)))
        if condition == "greater":
            try:
                float(str(out["value"]).replace(",", "."))
            except ValueError:
                raise RuleError(_("'greater than' needs a number")) from None
        out["users"] = _ids(spec.get("users"), N_("users"))
        out["not_users"] = _ids(spec.get("not_users"), N_("users left out"))
        out["accounts"] = _ids(spec.get("accounts"), N_("accounts"))
        if kind == "burst":
            out["count"] = int(_positive(spec, "count", N_("a burst's count")))
            out["minutes"] = _positive(spec, "minutes", N_("a burst's minutes"))
    elif kind == "silence":
        out["minutes"] = _positive(spec, "minutes", N_("the silence's minutes"))
        entity = spec.get("entity") or None
        if entity is not None and entity not in ENTITY_LABELS:
            raise RuleError(_("unknown entity {entity}").format(entity=repr(entity)))
        out["entity"] = entity
        webhook = _ids(spec.get("webhook_id"), N_("subscription"))
        out["webhook_id"] = webhook[0] if webhook else None
    else:
        what = spec.get("what")
        if what not in QUALITY:
            raise RuleError(_("data quality watches one of {kinds}").format(
                kinds=", ".join(QUALITY)))
        out["what"] = what
        if what != "relay_paused":
            out["count"] = int(_positive(spec, "count", N_("the count")))
            out["minutes"] = _positive(spec, "minutes", N_("the window's minutes"))
    return out


def check_notify(url: str | None) -> str | None:
    """Return an Apprise URL that Apprise understands (None: the settings' one)."""
    if url is None or not url.strip():
        return None
    import apprise  # imported here: only rule edits and the sender need it

    url = url.strip()
    if apprise.Apprise.instantiate(url) is None:
        raise RuleError(_("Apprise does not understand the address {address} (see "
                          "https://github.com/caronc/apprise/wiki)").format(
            address=masked_notify(url)))
    return url


def masked_notify(url: str | None) -> str:
    """Return an Apprise URL for display: its scheme and a masked rest."""
    if not url:
        return _("(the settings' default)")
    scheme = urlsplit(url).scheme
    return f"{scheme}://{mask_secret(url)}" if scheme else mask_secret(url)


def _rule(row: tuple[Any, ...]) -> Rule:
    rule_id, name, kind, spec, notify, muted, per_hour = row
    return Rule(int(rule_id), name, kind, orjson.loads(spec), notify, bool(muted),
                int(per_hour))


_SELECT = "SELECT id, name, kind, spec, notify, muted, per_hour FROM alert_rules"


def load_rules(con: duckdb.DuckDBPyConnection) -> list[Rule]:
    """Return every rule, in the order they were added."""
    return [_rule(row) for row in con.execute(_SELECT + " ORDER BY id").fetchall()]


def rules_stamp(con: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    """Return what changes whenever a rule is added, changed or removed."""
    return fetch_row(con, "SELECT count(*), max(updated_at), max(id) FROM alert_rules")


def find_rule(con: duckdb.DuckDBPyConnection, name: str) -> Rule:
    """Return the rule of that name; RuleError if there is none."""
    row = fetch_one(con, _SELECT + " WHERE name = ?", [name])
    if row is None:
        raise RuleError(_("no alert rule named {name} (see `alerts list`)").format(
            name=repr(name)))
    return _rule(row)


def add_rule(store: Store, name: str, kind: str, spec: dict[str, Any],
             notify: str | None = None, per_hour: int = DEFAULT_PER_HOUR) -> Rule:
    """Check and store a new rule; RuleError if it is wrong or the name is taken."""
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise RuleError(_("a rule's name has 1 to 80 letters, digits, spaces, '.', ':' or "
                           "'-'"))
    checked = check_spec(kind, spec)
    notify = check_notify(notify)
    if per_hour < 1:
        raise RuleError(_("the rate limit is at least one message an hour"))
    now = datetime.now(UTC)
    with store.writer() as con, transaction(con):
        if fetch_one(con, "SELECT 1 FROM alert_rules WHERE name = ?", [name]):
            raise RuleError(_("an alert rule named {name} exists already").format(
                name=repr(name)))
        # past the ids of removed rules too: an alert's id names its rule
        rule_id = int(fetch_row(con, "SELECT greatest((SELECT coalesce(max(id), 0) FROM "
                                "alert_rules), (SELECT coalesce(max(rule_id), 0) FROM "
                                "alerts)) + 1")[0])
        con.execute("INSERT INTO alert_rules VALUES (?, ?, ?, ?, ?, false, ?, ?, ?)",
                    [rule_id, name, kind, orjson.dumps(checked).decode(), notify, per_hour,
                     now, now])
    return Rule(rule_id, name, kind, checked, notify, False, per_hour)


def set_muted(store: Store, name: str, muted: bool) -> Rule:
    """Mute or unmute a rule (a muted rule fires nothing); RuleError if there is none."""
    with store.writer() as con, transaction(con):
        rule = find_rule(con, name)
        con.execute("UPDATE alert_rules SET muted = ?, updated_at = ? WHERE id = ?",
                    [muted, datetime.now(UTC), rule.id])
    return Rule(rule.id, rule.name, rule.kind, rule.spec, rule.notify, muted, rule.per_hour)


def remove_rule(store: Store, name: str) -> Rule:
    """Remove a rule (the alerts it fired stay listed); RuleError if there is none."""
    with store.writer() as con, transaction(con):
        rule = find_rule(con, name)
        con.execute("DELETE FROM alert_rules WHERE id = ?", [rule.id])
    return rule


def list_rules(store: Store) -> list[Rule]:
    """Return every rule (a store without the table yet has none)."""
    try:
        with store.reader() as con:
            return load_rules(con)
    except StoreError:
        raise
    except duckdb.CatalogException:
        return []


# -- business hours ------------------------------------------------------------------


@dataclass(frozen=True)
class BusinessHours:
    """The days and hours silence counts in, in a time zone (America/Sao_Paulo)."""

    days: frozenset[int]  # 0 = Monday … 6 = Sunday
    start: int  # minutes after midnight
    end: int  # minutes after midnight; 1440 = the whole day
    tz: ZoneInfo

    def open_at(self, moment: datetime) -> bool:
        """Return whether a moment falls inside business hours."""
        local = moment.astimezone(self.tz)
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.days and self.start <= minute < self.end

    def next_open(self, moment: datetime, limit_days: int = 8) -> datetime | None:
        """Return the first moment at or after `moment` inside business hours."""
        local = moment.astimezone(self.tz)
        if self.open_at(local):
            return local
        for offset in range(limit_days):
            day = (local + timedelta(days=offset)).date()
            if day.weekday() not in self.days:
                continue
            opens = datetime(day.year, day.month, day.day, tzinfo=self.tz) + timedelta(
                minutes=self.start)
            if opens >= local:
                return opens
        return None


def _minutes(text: str) -> int:
    hours, _colon, minutes = text.strip().partition(":")
    value = int(hours) * 60 + int(minutes or 0)
    if not 0 <= value <= 1440:
        raise ValueError(text)
    return value


def business_hours(settings: Settings) -> BusinessHours:
    """Return the business hours of the settings; ConfigError if they cannot be read."""
    try:
        days: set[int] = set()
        for part in settings.business_days.split(","):
            first, _dash, last = part.strip().partition("-")
            days.update(range(int(first), int(last or first) + 1))
        start_text, _dash, end_text = settings.business_hours.partition("-")
        start, end = _minutes(start_text), _minutes(end_text)
    except ValueError:
        raise ConfigError("PLOOMES_BUSINESS_DAYS is days 0 (Monday) to 6, such as 0-4, and "
                          "PLOOMES_BUSINESS_HOURS is HH:MM-HH:MM, such as 08:00-18:00") from None
    if not days <= set(range(7)) or start >= end:
        raise ConfigError("business hours: days 0-6 and a start before the end")
    return BusinessHours(frozenset(days), start, end, settings.tz)
