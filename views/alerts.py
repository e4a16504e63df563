"""Alertas: every alert sent or pending, the rules, and a form for every kind of rule
with a test against the last 30 days before saving (changes: admins only, audited)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ploomes.actions import alerts as alert_actions
from ploomes.actions.roles import NotAllowed
from ploomes.alerts.backtest import backtest
from ploomes.alerts.commands import describe
from ploomes.alerts.rules import (
    CONDITIONS,
    QUALITY,
    Rule,
    RuleError,
    business_hours,
    check_notify,
    check_spec,
    list_rules,
    masked_notify,
)
from ploomes.config import ConfigError
from ploomes.i18n import N_, _, format_number
from ploomes.model.names import ACTION_LABELS, ENTITY_LABELS
from ploomes.queries.alerts import alert_list
from ploomes.store import StoreError
from views import access
from views.common import clear_query_cache, run_query, settings, store, time_column
from views.text import plain

KINDS = {"change": N_("Change"), "burst": N_("Burst"), "silence": N_("Silence"),
         "quality": N_("Data quality")}
CONDITION_TEXT = {"any": N_("any event"), "changed": N_("changed"),
                  "changed_to": N_("changed to"), "changed_from": N_("changed from"),
                  "equals": N_("equal to"), "greater": N_("greater than"),
                  "contains": N_("contains")}
QUALITY_TEXT = {"gaps": N_("continuity gaps"), "refused": N_("refused deliveries"),
                "relay_paused": N_("relay destination paused")}
STATUS_TEXT = {"delivered": N_("delivered"), "retrying": N_("retrying"), "failed": N_("failed"),
               "pending": N_("pending"), "limited": N_("not sent (hourly limit)")}


def _status(value: str) -> str:
    return _(STATUS_TEXT[value]) if value in STATUS_TEXT else value


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _alerts_table(tz: str, default_channel: str) -> None:
    st.subheader(_("Alerts sent and pending"))
    found = run_query(alert_list, 500)
    if found.empty:
        st.info(_("No alert yet."))
        return
    st.dataframe(pd.DataFrame({
        _("When"): time_column(found["fired_at"], tz),
        _("Rule"): found["rule_name"],
        _("Event"): found["event_id"],
        _("Channel"): found["channel"].fillna(default_channel),
        _("Attempts"): found["attempts"],
        _("Situation"): found["status"].map(_status),
        _("Last error"): found["last_error"],
        _("Message"): found["title"],
    }), hide_index=True, key="alerts_table")


def _rules_table(rules: list[Rule], is_admin: bool) -> None:
    st.subheader(_("Rules"))
    if not rules:
        st.info(_("No rule. Create one below, or with `python -m ploomes alerts add`."))
        return
    st.dataframe(pd.DataFrame({
        _("Name"): [r.name for r in rules],
        _("Type"): [_(KINDS[r.kind]) for r in rules],
        _("Conditions"): [describe(r.kind, r.spec) for r in rules],
        _("Situation"): [_("muted") if r.muted else _("on") for r in rules],
        _("Limit/h"): [r.per_hour for r in rules],
        _("Notify"): [masked_notify(r.notify) for r in rules],
    }), hide_index=True, key="rules_table")
    if not is_admin:
        return
    names = [r.name for r in rules]
    chosen = st.selectbox(_("Rule"), names, key="rule_chosen")
    rule = next(r for r in rules if r.name == chosen)
    cols = st.columns(2)
    if rule.muted:
        if cols[0].button(_("Turn on again"), key="rule_unmute"):
            _do(lambda: alert_actions.set_muted(_actor(), settings(), store(), chosen, False),
                _("Rule {name} on again.").format(name=chosen))
    elif cols[0].button(_("Mute"), key="rule_mute"):
        _do(lambda: alert_actions.set_muted(_actor(), settings(), store(), chosen, True),
            _("Rule {name} muted.").format(name=chosen))
    if cols[1].button(_("Remove"), key="rule_remove"):
        _do(lambda: alert_actions.remove(_actor(), settings(), store(), chosen),
            _("Rule {name} removed.").format(name=chosen))


def _actor():
    return access.current().actor


def _do(action, done: str) -> None:
    try:
        action()
    except (RuleError, NotAllowed, StoreError) as exc:
        st.error(plain(exc))
        return
    clear_query_cache()
    st.session_state["alerts_notice"] = done
    st.rerun()


def _form_spec(kind: str) -> tuple[dict, str]:
    """Return the conditions the form describes, and the rule's name."""
    name = st.text_input(_("Rule name"), key="new_name")
    spec: dict = {}
    if kind in ("change", "burst"):
        entity = st.selectbox(_("Entity"), ["", *ENTITY_LABELS], key="new_entity",
                              format_func=lambda e: ENTITY_LABELS[e][0] if e else _("any"))
        spec["entity"] = entity or None
        spec["actions"] = st.multiselect(_("Actions"), list(ACTION_LABELS), key="new_actions",
                                         format_func=lambda a: ACTION_LABELS[a][0])
        spec["condition"] = st.selectbox(_("Condition"), list(CONDITIONS), key="new_condition",
                                         format_func=lambda c: _(CONDITION_TEXT[c]))
        if spec["condition"] != "any":
            spec["field"] = st.text_input(_("Field (the Ploomes key: Amount, StageId, "
                                            "contact_check…)"), key="new_field")
        if spec["condition"] in ("changed", "changed_from"):
            spec["from"] = st.text_input(_("Value before (empty: any)"), key="new_from")
        if spec["condition"] in ("changed", "changed_to"):
            spec["to"] = st.text_input(_("Value after (empty: any)"), key="new_to")
        if spec["condition"] in ("equals", "greater", "contains"):
            spec["value"] = st.text_input(_("Value"), key="new_value")
        spec["users"] = _ids(st.text_input(_("Only these users (ids, separated by commas)"),
                                           key="new_users"))
        spec["not_users"] = _ids(st.text_input(_("Except these users (ids)"),
                                               key="new_not_users"))
        spec["accounts"] = _ids(st.text_input(_("Only these accounts (ids)"), key="new_accounts"))
        if kind == "burst":
            spec["count"] = st.number_input(_("At least N events"), min_value=2, value=20,
                                            key="new_count")
            spec["minutes"] = st.number_input(_("…by one user in M minutes"), min_value=1.0,
                                              value=10.0, key="new_minutes")
    elif kind == "silence":
        spec["minutes"] = st.number_input(_("No delivery for X minutes (in business "
                                            "hours)"), min_value=1.0, value=60.0,
                                          key="new_minutes")
        spec["entity"] = st.selectbox(
            _("Entity"), ["", *ENTITY_LABELS], key="new_entity",
            format_func=lambda e: ENTITY_LABELS[e][0] if e else _("all")) or None
        webhook = st.text_input(_("Or only one subscription (WebhookId)"), key="new_webhook")
        spec["webhook_id"] = webhook.strip() or None
    else:
        spec["what"] = st.selectbox(_("What to watch"), list(QUALITY), key="new_what",
                                    format_func=lambda q: _(QUALITY_TEXT[q]))
        if spec["what"] != "relay_paused":
            spec["count"] = st.number_input(_("At least"), min_value=1, value=5, key="new_count")
            spec["minutes"] = st.number_input(_("in minutes"), min_value=1.0, value=60.0,
                                              key="new_minutes")
    return spec, name


def _new_rule_form() -> None:
    st.subheader(_("New rule"))
    kind = st.radio(_("Type"), list(KINDS), key="new_kind", format_func=lambda k: _(KINDS[k]),
                    horizontal=True)
    spec, name = _form_spec(kind)
    notify = st.text_input(_("Notify (an Apprise address: mailto://, json://, slack://, "
                             "msteams://, tgram://…; empty: PLOOMES_ALERTS_NOTIFY)"),
                           key="new_notify", type="password")
    per_hour = st.number_input(_("At most N messages an hour"), min_value=1, value=30,
                               key="new_per_hour")
    cols = st.columns(2)
    if cols[0].button(_("Test against the last 30 days"), key="new_test"):
        try:
            rule = Rule(0, name or _("(new)"), kind, check_spec(kind, spec))
            result = run_query(backtest, rule, 30.0, business_hours(settings()))
        except (RuleError, ConfigError) as exc:
            st.error(plain(exc))
        else:
            # "0 vezes": the plural of the page before the catalog, for every count
            st.info(_("Would have fired {count} times in the last 30 days.").format(
                count=format_number(result.fired)))
            if result.note:
                st.caption(plain(result.note))
            if result.rows:
                st.dataframe(pd.DataFrame(result.rows), hide_index=True, key="new_test_rows")
    if cols[1].button(_("Save rule"), key="new_save", type="primary"):
        try:
            check_notify(notify)
        except RuleError as exc:
            st.error(plain(exc))
            return
        _do(lambda: alert_actions.add(_actor(), settings(), store(), name, kind, spec,
                                      notify or None, int(per_hour)),
            _("Rule {name} created.").format(name=name))


def render() -> None:
    """Render the Alerts page."""
    who = access.current()
    cfg = settings()
    st.title(_("Alerts"))
    st.caption(_("Rules are checked once per event as events are processed; silence and "
                 "data quality every few seconds. Messages through Apprise, with retries "
                 "while the channel fails."))
    notice = st.session_state.pop("alerts_notice", None)
    if notice:
        st.success(plain(notice))
    default = cfg.alerts_notify.split("://", 1)[0] if cfg.alerts_notify else _("(none)")
    _alerts_table(cfg.timezone, _("{channel} (default)").format(channel=default))
    try:
        rules = list_rules(store())
    except StoreError as exc:
        st.error(plain(exc))
        return
    _rules_table(rules, who.is_admin)
    if who.is_admin:
        _new_rule_form()
    else:
        st.caption(_("Only admins create or change rules (PLOOMES_DASHBOARD_ADMINS)."))
    st.caption(_("Business hours: days {days} (0 = Monday), {hours}, {zone}. Default "
                 "address: {address}.").format(
        days=plain(cfg.business_days), hours=plain(cfg.business_hours),
        zone=plain(cfg.timezone), address=plain(masked_notify(cfg.alerts_notify))))


render()
