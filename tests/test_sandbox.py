"""The Ploomes sandbox: its API answers, and deliveries to a real loopback receiver."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import wait_for

from ploomes.demo.sandbox import Sandbox, add_sandbox_parser, parse_filter
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS

KEY = "sandbox-test-key-0123456789"
BODY_KEYS = {"Action", "Entity", "SecondaryEntityId", "AccountId", "ActionUserId",
             "WebhookId", "WebhookCreatorId", "Old", "New"}
ROOT = Path(__file__).resolve().parent.parent


class Collector:
    """A tiny webhook receiver on loopback that keeps every POST it gets."""

    def __init__(self, status: int = 200):
        self.status = status
        self.posts: list[dict] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                collector.posts.append({"path": self.path, "headers": dict(self.headers),
                                        "body": json.loads(body)})
                self.send_response(collector.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ploomes/webhook"
        self.thread = threading.Thread(
            target=lambda: self.server.serve_forever(poll_interval=0.05), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


@pytest.fixture
def sandbox():
    with Sandbox(user_key=KEY, seed=3) as sb:
        yield sb


def api(sandbox, method, path, key=KEY, **kwargs):
    headers = {"User-Key": key} if key else {}
    return requests.request(method, sandbox.url + path, headers=headers, timeout=5, **kwargs)


def subscribe(sandbox, entity, action, url, key):
    response = api(sandbox, "POST", "/Webhooks", json={
        "EntityId": ENTITY_IDS[entity], "ActionId": ACTION_IDS[action],
        "CallbackUrl": url, "ValidationKey": key})
    assert response.status_code == 200, response.text
    return response.json()["value"][0]


def activity(sandbox, **spec):
    response = requests.post(sandbox.url + "/_sandbox/activity", json=spec, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


# -- API ------------------------------------------------------------------------------

def test_wrong_or_missing_key_is_401_with_a_ploomes_error_body(sandbox):
    for key in (None, "wrong-key"):
        response = api(sandbox, "GET", "/Users", key=key)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] and "User-Key" in error["message"]
        assert "wrong-key" not in response.text


def test_collections_answer_in_odata_envelopes(sandbox):
    users = api(sandbox, "GET", "/Users").json()
    assert users["@odata.context"].endswith("#Users")
    assert {u["Id"] for u in users["value"]} == {u["Id"] for u in sandbox.sim.users}
    assert "Suspended" in users["value"][0] and "Active" not in users["value"][0]
    entities = {e["Name"]: e["Id"] for e in api(sandbox, "GET", "/Fields@Entities").json()["value"]}
    assert {k: entities[k] for k in ENTITY_IDS} == ENTITY_IDS
    actions = api(sandbox, "GET", "/Webhooks@Actions").json()["value"]
    assert {a["Name"]: a["Id"] for a in actions} == ACTION_IDS
    deals = api(sandbox, "GET", "/Deals").json()["value"]
    assert deals and all(isinstance(d["OtherProperties"], list) for d in deals)
    assert all("FieldKey" in p for d in deals for p in d["OtherProperties"])


def test_select_of_a_missing_property_is_a_400(sandbox):
    response = api(sandbox, "GET", "/Users", params={"$select": "Id,Name,Active"})
    assert response.status_code == 400
    assert "Could not find a property named 'Active'" in response.json()["error"]["message"]
    ok = api(sandbox, "GET", "/Users", params={"$select": "Id,Name"}).json()["value"]
    assert set(ok[0]) == {"Id", "Name"}


def test_fields_filter_on_dynamic_and_entity(sandbox):
    everything = api(sandbox, "GET", "/Fields").json()["value"]
    assert any(not f["Dynamic"] for f in everything)
    dynamic = api(sandbox, "GET", "/Fields", params={
        "$filter": "EntityId eq 1 and Dynamic eq true"}).json()["value"]
    expected = {f["Key"] for f in sandbox.sim.fields if f["EntityId"] == 1}
    assert {f["Key"] for f in dynamic} == expected


def test_top_is_capped_and_full_pages_carry_a_next_link(sandbox):
    sandbox.run_activity(400 - len(sandbox.sim.records("Contacts")), "Contacts", "Create")
    first = api(sandbox, "GET", "/Contacts", params={"$top": 1000}).json()
    assert len(first["value"]) == 300
    link = first["@odata.nextLink"]
    assert link.startswith(sandbox.url + "/Contacts?")
    second = requests.get(link, headers={"User-Key": KEY}, timeout=5).json()
    assert len(second["value"]) == 100 and "@odata.nextLink" not in second
    ids = [r["Id"] for r in first["value"] + second["value"]]
    assert len(set(ids)) == 400
    skipped = api(sandbox, "GET", "/Contacts", params={"$top": 10, "$skip": 395}).json()
    assert len(skipped["value"]) == 5 and "@odata.nextLink" not in skipped


def test_parse_filter():
    assert parse_filter("EntityId eq 2 and ActionId eq 4") == [
        ("EntityId", "eq", 2), ("ActionId", "eq", 4)]
    assert parse_filter("Name eq 'O''Brien and co' and Dynamic ne false") == [
        ("Name", "eq", "O'Brien and co"), ("Dynamic", "ne", False)]


@pytest.mark.parametrize("bad", ["EntityId gt 2", "EntityId eq 2 or ActionId eq 1", "eq 2"])
def test_unsupported_filters_are_400(sandbox, bad):
    response = api(sandbox, "GET", "/Webhooks", params={"$filter": bad})
    assert response.status_code == 400
    assert "not valid" in response.json()["error"]["message"]


def test_webhook_errors_have_messages(sandbox):
    missing = api(sandbox, "POST", "/Webhooks", json={"EntityId": 2, "ActionId": 4})
    assert missing.status_code == 400
    assert "CallbackUrl" in missing.json()["error"]["message"]
    bad_entity = api(sandbox, "POST", "/Webhooks", json={
        "EntityId": 999, "ActionId": 4, "CallbackUrl": "https://x.example/h"})
    assert bad_entity.status_code == 400 and "EntityId" in bad_entity.json()["error"]["message"]
    subscribe(sandbox, "Deals", "Win", "https://x.example/h", "k")
    again = api(sandbox, "POST", "/Webhooks", json={
        "EntityId": 2, "ActionId": 4, "CallbackUrl": "https://x.example/h"})
    assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]
    gone = api(sandbox, "PATCH", "/Webhooks(1)", json={"Active": False})
    assert gone.status_code == 404 and "not found" in gone.json()["error"]["message"]
    unknown = api(sandbox, "GET", "/Nothing")
    assert unknown.status_code == 404 and unknown.json()["error"]["message"]


def test_rate_limit_answers_429_with_retry_after():
    with Sandbox(user_key=KEY, rate_limit=2, rate_window=30.0) as sandbox:
        assert api(sandbox, "GET", "/Users").status_code == 200
        assert api(sandbox, "GET", "/Users").status_code == 200
        limited = api(sandbox, "GET", "/Users")
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 30
        assert "Rate limit" in limited.json()["error"]["message"]
        # control endpoints are not rate limited
        assert requests.get(sandbox.url + "/_sandbox/deliveries", timeout=5).ok


# -- deliveries -----------------------------------------------------------------------

def test_deliveries_reach_only_subscribed_pairs(sandbox, collector):
    win = subscribe(sandbox, "Deals", "Win", collector.url, "vk-win")
    create = subscribe(sandbox, "Contacts", "Create", collector.url + "?validation_key=q",
                       "vk-create")
    subscribe(sandbox, "Tasks", "Delete", collector.url, "vk-unused")

    made = [activity(sandbox, count=3, entity="Contacts", action="Create"),
            activity(sandbox, count=2, entity="Deals", action="Update"),
            activity(sandbox, count=1, entity="Deals", action="Win"),
            activity(sandbox, count=2, entity="Contacts", action="Update")]
    changes = [c for m in made for c in m["changes"]]
    expected = [(c["entity"], c["action"], c["record_id"]) for c in changes
                if (c["entity"], c["action"]) in {("Contacts", "Create"), ("Deals", "Win")}]
    assert len(expected) == 4
    outcomes = [d for m in made for d in m["deliveries"]]
    assert [(d["state"], d["status"]) for d in outcomes] == [("sent", 200)] * 4

    got = [(p["body"]["Entity"], p["body"]["Action"], (p["body"]["New"] or p["body"]["Old"])["Id"])
           for p in collector.posts]
    assert got == expected
    hooks = {win["Id"]: (win, "/ploomes/webhook"),
             create["Id"]: (create, "/ploomes/webhook?validation_key=q")}
    for post in collector.posts:
        body = post["body"]
        hook, path = hooks[body["WebhookId"]]
        assert set(body) == BODY_KEYS
        assert post["path"] == path
        assert post["headers"]["X-Ploomes-Validation-Key"] == hook["ValidationKey"]
        assert post["headers"]["Content-Type"].startswith("application/json")
        assert body["WebhookCreatorId"] == hook["CreatorId"]
        assert body["AccountId"] == sandbox.sim.account_id
        assert isinstance(body["ActionUserId"], int)
        if body["Action"] == "Create":
            assert body["Old"] is None and body["New"]["Id"]
        else:
            assert body["Old"]["StatusId"] == 1 and body["New"]["StatusId"] == 2
    listed = requests.get(sandbox.url + "/_sandbox/deliveries", timeout=5).json()["value"]
    assert [d["seq"] for d in listed] == [1, 2, 3, 4]
    assert [d["body"] for d in listed] == [p["body"] for p in collector.posts]
    later = requests.get(sandbox.url + "/_sandbox/deliveries?since=3", timeout=5).json()
    assert [d["seq"] for d in later["value"]] == [4]


def test_inactive_subscriptions_get_nothing_and_two_subscriptions_get_one_each(
        sandbox, collector):
    first = subscribe(sandbox, "Contacts", "Create", collector.url, "a")
    second = subscribe(sandbox, "Contacts", "Create", collector.url + "/2", "b")
    made = activity(sandbox, count=2, entity="Contacts", action="Create")
    assert [p["body"]["WebhookId"] for p in collector.posts] == [
        first["Id"], second["Id"], first["Id"], second["Id"]]
    assert len(made["deliveries"]) == 4
    assert api(sandbox, "PATCH", f"/Webhooks({first['Id']})",
               json={"Active": False}).status_code == 200
    activity(sandbox, count=1, entity="Contacts", action="Create")
    assert [p["body"]["WebhookId"] for p in collector.posts[4:]] == [second["Id"]]


def test_duplicate_rate_sends_identical_bodies_twice(collector):
    with Sandbox(user_key=KEY, duplicate_rate=1.0) as sandbox:
        subscribe(sandbox, "Deals", "Create", collector.url, "vk")
        made = activity(sandbox, count=3, entity="Deals", action="Create")
    assert [d["duplicate"] for d in made["deliveries"]] == [False, True] * 3
    bodies = [p["body"] for p in collector.posts]
    assert len(bodies) == 6
    assert bodies[0::2] == bodies[1::2]
    assert len({json.dumps(b, sort_keys=True) for b in bodies}) == 3


def test_drop_rate_sends_nothing_but_records_the_drop(collector):
    with Sandbox(user_key=KEY, drop_rate=1.0) as sandbox:
        subscribe(sandbox, "Deals", "Create", collector.url, "vk")
        made = activity(sandbox, count=3, entity="Deals", action="Create")
        listed = sandbox.deliveries()
    assert collector.posts == []
    assert [d["state"] for d in made["deliveries"]] == ["dropped"] * 3
    assert [d["state"] for d in listed] == ["dropped"] * 3


def test_partial_rates_mix_sent_and_dropped(collector):
    with Sandbox(user_key=KEY, seed=5, drop_rate=0.3, duplicate_rate=0.3) as sandbox:
        subscribe(sandbox, "Contacts", "Create", collector.url, "vk")
        made = sandbox.run_activity(40, "Contacts", "Create")
    states = [d["state"] for d in made["deliveries"]]
    assert "dropped" in states and "sent" in states
    assert any(d["duplicate"] for d in made["deliveries"])
    assert len(collector.posts) == states.count("sent")


def test_receiver_errors_and_unreachable_callbacks_are_recorded(sandbox, collector):
    collector.status = 503
    subscribe(sandbox, "Contacts", "Create", collector.url, "vk")
    subscribe(sandbox, "Contacts", "Create", "http://127.0.0.1:9/nowhere", "vk")
    made = activity(sandbox, count=1, entity="Contacts", action="Create")
    first, second = made["deliveries"]
    assert (first["state"], first["status"]) == ("sent", 503)
    assert second["state"] == "failed" and second["status"] is None
    assert "ConnectionError" in second["error"]


def test_activity_endpoint_refuses_bad_requests(sandbox):
    for spec in ({"count": "many"}, {"count": 1, "entity": "Planets"},
                 {"count": 1, "entity": "Contacts", "action": "Win"}):
        response = requests.post(sandbox.url + "/_sandbox/activity", json=spec, timeout=5)
        assert response.status_code == 400
        assert response.json()["error"]["message"]


def test_faults_endpoint_injects_failures(sandbox):
    response = requests.post(sandbox.url + "/_sandbox/faults",
                             json={"status": 503, "count": 1, "path": "/Users"}, timeout=5)
    assert response.status_code == 204
    assert api(sandbox, "GET", "/Users").status_code == 503
    assert api(sandbox, "GET", "/Users").status_code == 200


def test_background_activity_delivers_without_being_asked(collector):
    sandbox = Sandbox(user_key=KEY, seed=1)
    sandbox.subscribe_all(collector.url, "vk")
    sandbox.start(activity_rate=50)
    try:
        wait_for(lambda: len(collector.posts) >= 5, timeout=10)
    finally:
        sandbox.stop()
    assert len(collector.posts) >= 5
    assert all(p["headers"]["X-Ploomes-Validation-Key"] == "vk" for p in collector.posts)


# -- command line -----------------------------------------------------------------------

def test_sandbox_parser_defaults():
    parser = argparse.ArgumentParser()
    add_sandbox_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sandbox", "--port", "0", "--activity-rate", "2",
                              "--duplicate-rate", "0.1", "--drop-rate", "0.05"])
    assert args.handler and args.port == 0 and args.activity_rate == 2.0
    assert args.host == "127.0.0.1" and args.user_key == "sandbox-key"


def test_cli_serves_and_delivers(collector):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLOOMES_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ploomes", "sandbox", "--port", "0", "--user-key", KEY,
         "--activity-rate", "20", "--subscribe", collector.url, "--validation-key", "vk"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
        assert "Ploomes sandbox on http://127.0.0.1:" in banner, banner + proc.stdout.read()
        assert KEY not in banner
        url = banner.split(" on ", 1)[1].split()[0]
        users = requests.get(url + "/Users", headers={"User-Key": KEY}, timeout=5)
        assert users.status_code == 200 and users.json()["value"]
        wait_for(lambda: collector.posts, timeout=15)
        assert set(collector.posts[0]["body"]) == BODY_KEYS
    finally:
        proc.terminate()
        proc.wait(10)
