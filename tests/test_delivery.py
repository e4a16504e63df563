"""Delivery checks: the short path decides exactly like the rules applied one by one."""

from __future__ import annotations

import json

import pytest
from conftest import example_payloads, real_deliveries, refusal
from hypothesis import HealthCheck, given, settings
from test_receiver_fuzz import raw_bodies

from ploomes.model.delivery import (
    INT_FIELDS,
    _int_or_none,
    _name,
    _record,
    check_delivery,
    decode_body,
    parse_delivery,
)


def _rules_one_by_one(raw: bytes) -> None:
    """The rules `check_fields` applies, without its short path (the reference)."""
    body = decode_body(raw)
    _name(body, "Action")
    _name(body, "Entity")
    for key in INT_FIELDS:
        _int_or_none(body, key)
    _record(body, "Old")
    _record(body, "New")


def _same(raw: bytes) -> str | None:
    verdict = refusal(_rules_one_by_one, raw)
    assert refusal(parse_delivery, raw) == verdict, raw
    assert refusal(check_delivery, raw) == verdict, raw
    return verdict


GOOD = {"Action": "Update", "Entity": "Contacts", "ActionUserId": 7, "AccountId": 1,
        "WebhookId": 2, "Old": {"Id": 5, "Name": "Ana"}, "New": {"Id": 5, "Name": "Ação"}}


@pytest.mark.parametrize("change, reason", [
    ({}, None),
    ({"Action": None}, "missing Action"),
    ({"Entity": "   "}, "Entity must be a non-empty string"),
    ({"Action": "x" * 101}, "Action is longer than 100 characters"),
    ({"Action": 3}, "Action must be a non-empty string"),
    ({"Action": "", "Entity": 1}, "Action must be a non-empty string"),  # the first one found
    ({"ActionUserId": "abc"}, "ActionUserId must be an integer or null, got str"),
    ({"AccountId": True}, "AccountId must be an integer or null, got bool"),
    ({"WebhookId": 1.0}, "WebhookId must be an integer or null, got float"),
    ({"SecondaryEntityId": 2**63}, "SecondaryEntityId is out of range"),
    ({"WebhookCreatorId": -(2**63)}, None),
    ({"Old": [1]}, "Old must be an object or null, got list"),
    ({"New": "x"}, "New must be an object or null, got str"),
    ({"Old": {"Id": "5"}}, "Old.Id must be an integer or null, got str"),
    ({"New": {"Id": False}}, "New.Id must be an integer or null, got bool"),
    ({"New": {"Id": 2**63}}, "New.Id is out of range"),
    ({"New": {"Id": -(2**63) - 1}}, "New.Id is out of range"),  # beyond 64 bits: exact
    ({"AccountId": 2**64}, "AccountId is out of range"),
    ({"Old": None, "New": {"Id": None}}, None),
    ({"ActionUserId": "x", "Old": [1]}, "ActionUserId must be an integer or null, got str"),
])
def test_each_rule_gives_the_same_verdict_and_reason(change, reason):
    assert _same(json.dumps({**GOOD, **change}).encode()) == reason


def test_bodies_that_are_not_objects():
    assert _same(b"") == "empty body"
    assert _same(b"[1]") == "body must be a JSON object, got list"
    assert _same(b"{") is not None
    # the same reason at any depth and any stack depth (here ~985 levels reached the
    # recursion limit in some callers only, and gave another reason there)
    assert _same(b"[" * 100_000 + b"]" * 100_000) == "JSON is nested deeper than 64 levels"
    assert _same(b"[" * 985 + b"]" * 985) == "JSON is nested deeper than 64 levels"
    assert _same(b'{"Action": "a", "Entity": "b", "x": ' + b"[" * 70 + b"]" * 70 + b"}") \
        == "JSON is nested deeper than 64 levels"


def test_shared_examples_and_real_deliveries_pass_both():
    bodies = list(example_payloads().values())
    bodies += [json.dumps(body, ensure_ascii=False).encode() for body in real_deliveries()]
    assert all(_same(raw) is None for raw in bodies)


@settings(max_examples=1500, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(raw_bodies)
def test_generated_bodies_get_the_same_verdict(raw):
    _same(raw)


def test_a_delivery_carries_its_columns():
    d = parse_delivery(json.dumps({**GOOD, "WebhookCreatorId": None}).encode())
    assert (d.action, d.entity, d.account_id, d.action_user_id, d.webhook_id,
            d.webhook_creator_id, d.secondary_entity_id, d.record_id) == (
        "Update", "Contacts", 1, 7, 2, None, None, 5)
    assert d.new["Name"] == "Ação" and d.old == {"Id": 5, "Name": "Ana"}
    assert d.body["New"] is d.new
    # the record id is New.Id, else Old.Id (a delete has no New)
    assert parse_delivery(json.dumps({**GOOD, "New": None}).encode()).record_id == 5
    assert parse_delivery(json.dumps({**GOOD, "New": {}, "Old": {"Id": 9}}).encode()
                          ).record_id == 9
    assert parse_delivery(json.dumps({**GOOD, "New": None, "Old": None}).encode()
                          ).record_id is None


def test_integers_of_any_size_are_decoded_exactly_and_the_rest_as_orjson_reads_it():
    import orjson

    huge = 2**64 + 1
    raw = json.dumps({**GOOD, "New": {"Id": 5, "A": huge, "B": -huge, "C": [huge, 0.1],
                                      "D": 2**64 - 1, "E": 1e300, "F": "1234567890123456789"}}
                     ).encode()
    new = decode_body(raw)["New"]
    assert new["A"] == huge and new["B"] == -huge and new["C"] == [huge, 0.1]
    assert new["D"] == 2**64 - 1 and new["E"] == 1e300 and new["F"] == "1234567890123456789"
    assert all(type(value) is type(orjson.loads(raw)["New"][key]) for key, value in new.items()
               if key not in {"A", "B", "C"})
    # a run of 19 digits only inside a string changes nothing
    raw = json.dumps({**GOOD, "New": {"Id": 5, "Boleto": "2" * 44, "X": 1.0}}).encode()
    assert decode_body(raw) == orjson.loads(raw)
    assert parse_delivery(raw).new["X"] == 1.0
