"""Alert rules without a receiver: their checks, matching one event, business hours in
America/Sao_Paulo, and addresses never shown whole."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from conftest import make_settings

from ploomes import i18n
from ploomes.alerts.matching import EventFacts, matching_change
from ploomes.alerts.rules import (
    RuleError,
    business_hours,
    check_spec,
    masked_notify,
)
from ploomes.alerts.sender import scrub, with_alert_id
from ploomes.config import ConfigError
from ploomes.model.diff import diff_record

SP = ZoneInfo("America/Sao_Paulo")


def facts(action: str, entity: str, old: dict | None, new: dict | None, user: int = 5
          ) -> EventFacts:
    return EventFacts(1, 0, action, entity, 57, user, None, 10, old, new,
                      diff_record(action, old, new))


@pytest.mark.parametrize(("kind", "spec", "message"), [
    ("change", {"entity": "Clientes"}, "entidade desconhecida"),
    ("change", {"actions": ["Won"]}, "ação desconhecida"),
    ("change", {"field": "contact_check", "condition": "changed_to"}, "precisa do valor novo"),
    ("change", {"field": "Amount", "condition": "greater", "value": "muito"}, "um número"),
    ("change", {"condition": "equals", "value": "1"}, "precisa de um campo"),
    ("change", {"field": "x'); DROP TABLE events; --"}, "chave de campo do Ploomes"),
    ("burst", {"actions": ["Delete"], "count": 0, "minutes": 5}, "maior que zero"),
    ("silence", {"minutes": -1}, "maior que zero"),
    ("quality", {"what": "everything"}, "a qualidade dos dados observa"),
    ("other", {}, "tipo desconhecido"),
])
def test_a_wrong_rule_says_what_is_wrong(kind, spec, message):
    with pytest.raises(RuleError, match=message):
        check_spec(kind, spec)


def test_a_wrong_rule_is_explained_in_english_on_request():
    # the command line speaks English (and so does the page with PLOOMES_LANGUAGE=en)
    i18n.activate("en")
    try:
        with pytest.raises(RuleError, match="a burst's count must be above zero"):
            check_spec("burst", {"count": 0, "minutes": 5})
    finally:
        i18n.activate("pt_BR")


def test_a_custom_field_changed_from_false_to_true():
    spec = check_spec("change", {"entity": "Contacts", "actions": ["Update"],
                                 "field": "contact_check", "from": "false", "to": "true"})
    turned = facts("Update", "Contacts", {"OtherProperties": {"contact_check": False}},
                   {"OtherProperties": {"contact_check": True}})
    back = facts("Update", "Contacts", {"OtherProperties": {"contact_check": True}},
                 {"OtherProperties": {"contact_check": False}})
    assert matching_change(spec, turned).field == "OtherProperties.contact_check"
    assert matching_change(spec, back) is False


def test_a_value_above_a_number_and_users_left_out():
    spec = check_spec("change", {"entity": "Deals", "actions": ["Win"], "field": "Amount",
                                 "condition": "greater", "value": "50000",
                                 "not_users": "999"})
    won = {"Id": 1, "Amount": 60000.0}
    assert matching_change(spec, facts("Win", "Deals", won, won)) is True
    assert matching_change(spec, facts("Win", "Deals", won, {**won, "Amount": 50000})) is False
    assert matching_change(spec, facts("Win", "Deals", won, won, user=999)) is False
    assert matching_change(spec, facts("Lose", "Deals", won, won)) is False


def test_business_hours_in_sao_paulo(tmp_path):
    hours = business_hours(make_settings(tmp_path))  # Monday to Friday, 08:00-18:00
    friday = datetime(2026, 12, 4, 17, 59, tzinfo=SP)
    assert hours.open_at(friday)
    assert not hours.open_at(friday.replace(hour=18, minute=0))
    assert not hours.open_at(datetime(2026, 12, 5, 10, 0, tzinfo=SP))  # Saturday
    # 20:59 UTC is 17:59 in São Paulo (UTC-3): the zone, not the machine's, decides
    assert hours.open_at(datetime(2026, 12, 4, 20, 59, tzinfo=UTC))
    assert hours.next_open(friday.replace(hour=18, minute=30)) == datetime(
        2026, 12, 7, 8, 0, tzinfo=SP)
    with pytest.raises(ConfigError):
        business_hours(make_settings(tmp_path, business_hours="18:00-08:00"))


def test_addresses_are_never_shown_whole():
    url = "mailto://alertas:senha-muito-secreta@smtp.empresa.com.br?to=a@empresa.com.br"
    assert "senha" not in masked_notify(url) and masked_notify(url).startswith("mailto://")
    error = f"Connection error while submitting email to smtp.empresa.com.br ({url})"
    assert "senha-muito-secreta" not in scrub(error, url)
    assert "smtp.empresa.com.br" not in scrub(error, url)
    assert with_alert_id("json://h:1/x", "alert_1_2") == "json://h:1/x?+X-Ploomes-Alert-Id=alert_1_2"
    assert with_alert_id("mailto://h", "alert_1_2") == "mailto://h"
