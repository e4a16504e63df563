"""`python -m ploomes alerts …`: add, list, mute, unmute, remove and test alert rules.

The command line adds change rules; the dashboard's Alerts page offers every kind.
Addresses are shown masked. Errors are one line on standard error and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ploomes.alerts.backtest import backtest
from ploomes.alerts.rules import (
    RuleError,
    add_rule,
    business_hours,
    find_rule,
    list_rules,
    masked_notify,
    remove_rule,
    set_muted,
)
from ploomes.config import ConfigError, Settings, load_settings
from ploomes.i18n import _, format_number
from ploomes.model.names import action_label, entity_label
from ploomes.store import Store, StoreError

StoreFor = Callable[[Settings], Store]


def describe(kind: str, spec: dict) -> str:
    """Return a rule's conditions in a line of the interface's language (English on the
    command line, Portuguese on the Alerts page by default)."""
    if kind in ("change", "burst"):
        parts = [entity_label(spec.get("entity")) or _("any entity"),
                 ", ".join(action_label(a) for a in spec.get("actions") or ()) or
                 _("any action")]
        if spec.get("field"):
            condition = spec.get("condition")
            text = spec["field"]
            if spec.get("from") is not None or spec.get("to") is not None:
                text += f": {spec.get('from') or '*'} → {spec.get('to') or '*'}"
            elif condition in ("equals", "greater", "contains"):
                text += {"equals": " = ", "greater": " > ", "contains": " " + _("contains") + " "}[
                    condition] + str(spec.get("value"))
            else:
                text = _("{field} changed").format(field=text)
            parts.append(text)
        if spec.get("users"):
            parts.append(_("users {ids}").format(ids=", ".join(map(str, spec["users"]))))
        if spec.get("not_users"):
            parts.append(_("except users {ids}").format(
                ids=", ".join(map(str, spec["not_users"]))))
        if kind == "burst":
            parts.append(_("≥ {count} per user in {minutes} min").format(
                count=spec["count"], minutes=format_number(spec["minutes"])))
        return " · ".join(parts)
    if kind == "silence":
        scope = spec.get("entity") or (
            _("subscription {id}").format(id=spec["webhook_id"])
            if spec.get("webhook_id") is not None else _("everything"))
        return _("silence of {minutes} min in business hours ({scope})").format(
            minutes=format_number(spec["minutes"]), scope=scope)
    if spec["what"] == "relay_paused":
        return _("relay destination paused")
    return _("{what} ≥ {count} in {minutes} min").format(
        what=spec["what"], count=spec["count"], minutes=format_number(spec["minutes"]))


def _run(args: argparse.Namespace, store_for: StoreFor) -> int:
    settings = load_settings(data_dir=args.data_dir)
    store = store_for(settings)
    if args.alerts_command == "add":
        spec = {"entity": args.entity, "actions": args.action, "field": args.field,
                "from": args.from_value, "to": args.to_value, "users": args.user,
                "condition": None if not args.field else (
                    "changed_to" if args.to_value is not None and args.from_value is None
                    else "changed_from" if args.from_value is not None and
                    args.to_value is None else "changed")}
        rule = add_rule(store, args.name, "change", spec, args.notify)
        print(f"alert rule {rule.name!r} added: {describe(rule.kind, rule.spec)} → "
              f"{masked_notify(rule.notify)}")
    elif args.alerts_command == "list":
        rules = list_rules(store)
        if not rules:
            print("no alert rules")
        for rule in rules:
            state = "muted" if rule.muted else "active"
            print(f"{rule.name}\t{rule.kind}\t{state}\t{describe(rule.kind, rule.spec)}\t"
                  f"{masked_notify(rule.notify)}")
    elif args.alerts_command in ("mute", "unmute"):
        rule = set_muted(store, args.name, args.alerts_command == "mute")
        print(f"alert rule {rule.name!r} {'muted' if rule.muted else 'active again'}")
    elif args.alerts_command == "remove":
        rule = remove_rule(store, args.name)
        print(f"alert rule {rule.name!r} removed (the alerts it fired stay listed)")
    else:
        with store.reader() as con:
            rule = find_rule(con, args.name)
            result = backtest(con, rule, args.days, business_hours(settings))
        print(f"{rule.name!r} would have fired {result.fired} times in the last "
              f"{args.days:g} days")
        if result.note:
            print(result.note)
        for row in result.rows[:50]:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def add_alerts_parser(subparsers: argparse._SubParsersAction, store_for: StoreFor) -> None:
    """Add `alerts` and its subcommands to the command line."""
    alerts = subparsers.add_parser("alerts", help="alert rules: add, list, mute, unmute, "
                                   "remove, test", description=__doc__)
    alerts.add_argument("--data-dir", help="data folder (default: PLOOMES_DATA_DIR or data/)")
    sub = alerts.add_subparsers(dest="alerts_command", required=True)
    add = sub.add_parser("add", help="add a change rule")
    add.add_argument("name")
    add.add_argument("--entity", required=True, help="Contacts, Deals, …")
    add.add_argument("--action", required=True, action="append",
                     help="Create, Update, Delete, Win, Lose, … (repeatable)")
    add.add_argument("--field", help="a field key (Amount, StageId, contact_check, …)")
    add.add_argument("--from", dest="from_value", help="the value before")
    add.add_argument("--to", dest="to_value", help="the value after")
    add.add_argument("--user", action="append", type=int, default=[],
                     help="only changes by this user id (repeatable)")
    add.add_argument("--notify", required=True, help="an Apprise URL (mailto://, json://, "
                     "slack://, msteams://, tgram://, …)")
    sub.add_parser("list", help="list the rules")
    for name in ("mute", "unmute", "remove"):
        sub.add_parser(name, help=f"{name} a rule").add_argument("name")
    test = sub.add_parser("test", help="how often a rule would have fired")
    test.add_argument("name")
    test.add_argument("--days", type=float, default=30.0)

    def handler(args: argparse.Namespace) -> int:
        try:
            return _run(args, store_for)
        except (ConfigError, StoreError, RuleError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    alerts.set_defaults(handler=handler)
