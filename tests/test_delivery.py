"""The receiver's short check (`check_delivery`) decides exactly like `parse_delivery`."""

from __future__ import annotations

import json

import pytest
from conftest import example_payloads, real_deliveries
from hypothesis import HealthCheck, given, settings
from test_receiver_fuzz import raw_bodies

from ploomes.delivery import InvalidDelivery, check_delivery, parse_delivery


def _verdict(check, raw: bytes) -> str | None:
    try:
        check(raw)
    except InvalidDelivery as exc:
        return str(exc)
    return None


def _same(raw: bytes) -> str | None:
    verdict = _verdict(parse_delivery, raw)
    assert _verdict(check_delivery, raw) == verdict, raw
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
    ({"New": {"Id": -(2**63) - 1}}, "New.Id must be an integer or null, got float"),
    ({"Old": None, "New": {"Id": None}}, None),
    ({"ActionUserId": "x", "Old": [1]}, "ActionUserId must be an integer or null, got str"),
])
def test_each_rule_gives_the_same_verdict_and_reason(change, reason):
    assert _same(json.dumps({**GOOD, **change}).encode()) == reason


def test_bodies_that_are_not_objects():
    assert _same(b"") == "empty body"
    assert _same(b"[1]") == "body must be a JSON object, got list"
    assert _same(b"{") is not None
    assert _same(b"[" * 100_000 + b"]" * 100_000) == "JSON is nested too deeply"
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
