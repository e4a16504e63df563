"""PloomesClient against a real sandbox on a loopback port (and a tiny loopback API where
the sandbox cannot play a part)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest

from ploomes.crm.api import (
    KNOWN_ACTIONS,
    PloomesAuthError,
    PloomesClient,
    PloomesError,
    PloomesNotFound,
    PloomesRateLimited,
    PloomesUnavailable,
    error_message_from_body,
    fetch_directory,
    mask_secret,
    validate_callback_url,
)
from ploomes.demo.sandbox import Sandbox

KEY = "test-user-key-5ecr3t-9f8e7d6c"
HOOK = "http://127.0.0.1:9/hook"  # never called: these tests make no activity


@pytest.fixture
def sandbox():
    with Sandbox(user_key=KEY) as sb:
        yield sb


@pytest.fixture
def client(sandbox):
    with PloomesClient(sandbox.url, KEY, timeout=5, backoff_factor=0.01) as c:
        yield c


def calls(sandbox, method, path):
    return [c for c in sandbox.request_log if c[0] == method and c[1] == path]


def test_webhook_crud(client, sandbox):
    created = client.create_webhook(2, 4, HOOK, "vk-1")
    assert created["Id"] and created["EntityId"] == 2 and created["ActionId"] == 4
    assert created["CallbackUrl"] == HOOK and created["ValidationKey"] == "vk-1"
    assert created["Active"] is True and created["CreatorId"] == sandbox.creator_id
    other = client.create_webhook(1, 1, HOOK, "vk-2")

    assert [w["Id"] for w in client.list_webhooks()] == [created["Id"], other["Id"]]
    assert [w["Id"] for w in client.list_webhooks("EntityId eq 2 and ActionId eq 4")] == [
        created["Id"]]

    updated = client.update_webhook(created["Id"], callback_url=HOOK + "2", Active=False)
    assert updated["CallbackUrl"] == HOOK + "2" and updated["Active"] is False
    assert sandbox.webhooks()[0]["CallbackUrl"] == HOOK + "2"

    client.delete_webhook(created["Id"])
    assert [w["Id"] for w in client.list_webhooks()] == [other["Id"]]
    with pytest.raises(PloomesNotFound) as info:
        client.delete_webhook(created["Id"])
    assert info.value.status == 404 and "was not found" in info.value.message


def test_duplicate_subscription_surfaces_ploomes_message(client):
    client.create_webhook(2, 4, HOOK, "vk")
    with pytest.raises(PloomesError) as info:
        client.create_webhook(2, 4, HOOK, "vk")
    assert info.value.status == 409
    assert "already exists" in info.value.message
    assert "already exists" in str(info.value) and "409" in str(info.value)


def test_bad_filter_is_a_400_with_the_message(client):
    with pytest.raises(PloomesError) as info:
        client.list_webhooks("Bogus eq 1")
    assert info.value.status == 400
    assert "Could not find a property named 'Bogus'" in info.value.message


def test_create_refuses_plain_http_callback_before_calling(client, sandbox):
    with pytest.raises(ValueError, match="https"):
        client.create_webhook(2, 4, "http://example.com/hook", "vk")
    assert len(sandbox.request_log) == 0


def test_wrong_key_is_an_auth_error(sandbox):
    with PloomesClient(sandbox.url, "not-the-key-000000") as wrong:
        with pytest.raises(PloomesAuthError) as info:
            wrong.list_users()
    assert info.value.status == 401 and "User-Key" in info.value.message


def test_missing_key_is_refused():
    with pytest.raises(PloomesAuthError):
        PloomesClient("http://127.0.0.1:9", "  ")


@pytest.mark.parametrize("next_links", [True, False])
def test_paging_returns_every_record(next_links):
    with Sandbox(user_key=KEY, next_links=next_links) as sandbox:
        seeded = len(sandbox.sim.records("Contacts"))
        sandbox.run_activity(700 - seeded, entity="Contacts", action="Create")
        with PloomesClient(sandbox.url, KEY, page_size=1000) as client:
            assert client.page_size == 300  # clamped to the cap
            records = client.list_records("Contacts")
        assert len(records) == 700
        assert len({r["Id"] for r in records}) == 700
        assert {r["Id"] for r in records} == {r["Id"] for r in sandbox.sim.records("Contacts")}
        gets = calls(sandbox, "GET", "/Contacts")
        assert len(gets) == 3
        if not next_links:
            assert [q["$skip"] for _, _, q in gets] == ["0", "300", "600"]


def test_paging_with_a_small_page_size_and_a_filter():
    with Sandbox(user_key=KEY) as sandbox:
        sandbox.run_activity(250 - len(sandbox.sim.records("Contacts")), "Contacts", "Create")
        ids = sorted(r["Id"] for r in sandbox.sim.records("Contacts"))
        with PloomesClient(sandbox.url, KEY, page_size=100) as client:
            assert [r["Id"] for r in client.list_records("Contacts")] == ids
            only = client.list_records("Contacts", filter=f"Id eq {ids[7]}")
        assert [r["Id"] for r in only] == [ids[7]]
        assert len(calls(sandbox, "GET", "/Contacts")) == 4


def test_a_full_last_page_is_followed_by_one_more_request():
    with Sandbox(user_key=KEY, next_links=False) as sandbox:
        sandbox.run_activity(300 - len(sandbox.sim.records("Contacts")), "Contacts", "Create")
        with PloomesClient(sandbox.url, KEY) as client:
            assert len(client.list_records("Contacts")) == 300
        assert len(calls(sandbox, "GET", "/Contacts")) == 2


def test_429_is_retried_after_retry_after():
    with Sandbox(user_key=KEY, rate_limit=2, rate_window=1.0) as sandbox:
        with PloomesClient(sandbox.url, KEY, backoff_factor=0.01) as client:
            client.list_users()
            client.list_users()
            # The third call is refused (Retry-After: 1), waited out, then succeeds;
            # a POST is resent too, since a 429 means nothing was done.
            created = client.create_webhook(2, 4, HOOK, "vk")
        assert sandbox.rate_limited >= 1
        assert [w["Id"] for w in sandbox.webhooks()] == [created["Id"]]


def test_429_after_retries_is_rate_limited():
    with Sandbox(user_key=KEY, rate_limit=1, rate_window=60.0) as sandbox:
        with PloomesClient(sandbox.url, KEY, retry_total=0) as client:
            client.list_users()
            with pytest.raises(PloomesRateLimited) as info:
                client.list_users()
    assert info.value.status == 429 and "Rate limit" in info.value.message


def test_503_on_get_is_retried(sandbox, client):
    sandbox.inject_fault(503, count=2, method="GET")
    assert len(client.list_users()) == len(sandbox.sim.users)
    assert len(calls(sandbox, "GET", "/Users")) == 3


def test_5xx_after_retries_is_unavailable(sandbox):
    sandbox.inject_fault(504, count=10, method="GET")
    with PloomesClient(sandbox.url, KEY, retry_total=2, backoff_factor=0.01) as client:
        with pytest.raises(PloomesUnavailable) as info:
            client.list_users()
    assert info.value.status == 504 and "Injected fault" in info.value.message
    assert len(calls(sandbox, "GET", "/Users")) == 3


def test_503_on_post_is_not_retried(sandbox, client):
    sandbox.inject_fault(503, count=1, method="POST")
    with pytest.raises(PloomesUnavailable) as info:
        client.create_webhook(2, 4, HOOK, "vk")
    assert info.value.status == 503
    assert len(calls(sandbox, "POST", "/Webhooks")) == 1
    assert sandbox.webhooks() == []


def test_post_that_worked_behind_a_502_returns_the_subscription(sandbox, client):
    sandbox.inject_fault(502, count=1, method="POST", after=True)
    created = client.create_webhook(2, 4, HOOK, "vk")
    assert [w["Id"] for w in sandbox.webhooks()] == [created["Id"]]
    assert len(calls(sandbox, "POST", "/Webhooks")) == 1


def test_actions_entities_fields_users(client, sandbox):
    actions = client.list_actions()
    assert {a["Name"]: a["Id"] for a in actions} == {
        "Create": 1, "Update": 2, "Delete": 3, "Win": 4, "Lose": 5, "Reopen": 6}
    entities = {e["Id"]: e["Name"] for e in client.list_entities()}
    assert entities[1] == "Contacts" and entities[2] == "Deals"
    fields = client.list_fields()
    assert fields and all(f["Dynamic"] is True for f in fields)
    assert {f["Key"] for f in fields} == {f["Key"] for f in sandbox.sim.fields}
    assert all(f["EntityId"] == 1 for f in client.list_fields(1))
    assert [u["Id"] for u in client.list_users()] == sorted(u["Id"] for u in sandbox.sim.users)


def test_actions_fall_back_when_the_endpoint_404s():
    with Sandbox(user_key=KEY, actions_endpoint=False) as sandbox:
        with PloomesClient(sandbox.url, KEY) as client:
            assert client.list_actions() == [dict(a) for a in KNOWN_ACTIONS]


def test_fetch_directory(client, sandbox):
    users, fields = fetch_directory(client)
    assert len(users) == len(sandbox.sim.users)
    assert set(users[0]) == {"Id", "Name", "Email", "Suspended", "AvatarUrl", "AccountId"}
    assert fields and all(set(f) == {"Key", "Name", "EntityId", "TypeId"} for f in fields)


def test_unreachable_and_silent_servers_are_unavailable():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with PloomesClient(f"http://127.0.0.1:{port}", KEY, retry_total=1,
                       backoff_factor=0.01) as client:
        with pytest.raises(PloomesUnavailable, match="cannot reach"):
            client.list_users()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with PloomesClient(url, KEY, timeout=0.2, retry_total=1, backoff_factor=0.01) as client:
            with pytest.raises(PloomesUnavailable, match="did not answer") as info:
                client.list_users()
    assert info.value.status is None


def test_user_key_never_leaks(caplog):
    caplog.set_level(logging.DEBUG)  # root, so urllib3 and the sandbox log too
    texts = []
    with Sandbox(user_key=KEY, rate_limit=3, rate_window=60.0) as sandbox:
        client = PloomesClient(sandbox.url, KEY, retry_total=0)
        texts.append(repr(client))
        client.create_webhook(2, 4, HOOK, "vk")
        for call in (lambda: client.create_webhook(2, 4, HOOK, "vk"),
                     lambda: client.delete_webhook(1),
                     client.list_users, client.list_users):
            with pytest.raises(PloomesError) as info:
                call()
            texts += [str(info.value), repr(info.value), info.value.message]
        client.close()
        with PloomesClient(sandbox.url, KEY + "x") as wrong:
            with pytest.raises(PloomesAuthError) as info:
                wrong.list_users()
            texts += [str(info.value), repr(info.value), repr(wrong)]
    with PloomesClient("http://127.0.0.1:9", KEY, retry_total=0) as gone:
        with pytest.raises(PloomesUnavailable) as info:
            gone.list_users()
        texts += [str(info.value), repr(info.value), str(info.value.__cause__)]
    assert any("urllib3" in r.name for r in caplog.records)  # the check saw real logging
    for text in [*texts, caplog.text]:
        assert KEY not in text
        assert KEY[:12] not in text
    assert mask_secret(KEY) in texts[0]


NEXT_ELSEWHERE = "https://public-api2.ploomes.com/Users?$top=2&$skip=2"


class PagedUsers:
    """A loopback API whose first page of /Users links the next one on another host (as
    Ploomes does, naming api2 or public-api2); it keeps each request's path and Host."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = unquote(self.path)
                api.requests.append((path, self.headers["Host"]))
                if path == "/Users?$top=2&$skip=2":
                    body = {"value": [{"Id": 3}]}
                else:
                    body = {"value": [{"Id": 1}, {"Id": 2}], "@odata.nextLink": NEXT_ELSEWHERE}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> PagedUsers:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_next_links_to_another_host_are_followed_on_ours():
    with PagedUsers() as api, PloomesClient(api.url, KEY, retry_total=0) as client:
        users = client.list_users()
    assert [u["Id"] for u in users] == [1, 2, 3]
    # the link's path and query, asked of the configured host: the key went nowhere else
    host = api.url.removeprefix("http://")
    assert [seen for _, seen in api.requests] == [host, host]
    assert api.requests[0][0].startswith("/Users?")
    assert api.requests[1][0] == "/Users?$top=2&$skip=2"


def test_error_message_from_body_shapes():
    assert error_message_from_body('{"error": {"code": "X", "message": "odata"}}') == "odata"
    assert error_message_from_body('{"Message": "aspnet"}') == "aspnet"
    assert error_message_from_body('{"error": "plain"}') == "plain"
    assert error_message_from_body('{"odata.error": {"message": {"value": "v3"}}}') == "v3"
    assert error_message_from_body("<html><h1>502 Bad Gateway</h1></html>") == "502 Bad Gateway"
    long = error_message_from_body("x" * 5000)
    assert len(long) <= 300 and long.endswith("…")
    assert error_message_from_body("") == ""


def test_validate_callback_url():
    assert validate_callback_url(" https://hooks.example.com/p?k=1 ") == (
        "https://hooks.example.com/p?k=1")
    for ok in ("http://localhost:8000/h", "http://127.0.0.1/h", "http://[::1]:8000/h"):
        assert validate_callback_url(ok) == ok
    for bad in ("http://example.com/h", "http://localhost.evil.com/h", "ftp://x/h", "",
                "https://", "https://user:pw@example.com/h", "example.com/h"):
        with pytest.raises(ValueError):
            validate_callback_url(bad)


def test_mask_secret_shows_at_most_four_characters():
    assert mask_secret("abcdefghijklmnop") == "••••mnop"
    assert "abc" not in mask_secret("abc")
