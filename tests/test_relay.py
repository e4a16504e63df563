"""The relay end to end: the real receiver and its forwarder, real HTTP destinations on
loopback (tests/destinations.py), destinations and replays from the real command line.

One receiver serves most tests of this module; each test gets its own destination whose
filter takes one AccountId, and posts deliveries of that account only.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from conftest import ROOT, TEST_KEY, ReceiverProcess, make_settings, query, wait_for
from destinations import RESET, Received, Reply, Sink, fail_first
from standardwebhooks.webhooks import Webhook

from ploomes.relay.destinations import (
    add_destination,
    build_destination,
    generate_secret,
    read_config,
    set_options,
)

ACCOUNTS = itertools.count(100)
FAST = [0, 0.05, 0.05, 0.05, 0.05, 0.05]  # the schedule's shape, in fractions of a second


def body(account: int, record: int, title: str, action: str = "Update") -> dict:
    return {"Action": action, "Entity": "Deals", "AccountId": account, "ActionUserId": 7,
            "WebhookId": 55, "Old": {"Id": record, "Title": "antes"},
            "New": {"Id": record, "Title": title}}


def cli(data_dir, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLOOMES_")}
    return subprocess.run([sys.executable, "-m", "ploomes", "relay", *args, "--data-dir",
                           str(data_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def attempts(data_dir, destination: str) -> list[tuple]:
    return query(data_dir, "SELECT event_id, attempt, outcome, status, error, replay "
                           "FROM outbox_attempts WHERE target_name = ? ORDER BY log_seq",
                 [destination])


def message_state(data_dir, destination: str) -> dict[int, str]:
    return dict(query(data_dir, "SELECT event_id, state FROM outbox_messages "
                                "WHERE target_name = ?", [destination]))


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    data = tmp_path_factory.mktemp("relay") / "data"
    settings = make_settings(data)
    set_options(settings, retry_schedule=FAST, pause_after=3600)
    receiver = ReceiverProcess(data).start()
    yield receiver
    receiver.stop()


def destination(receiver: ReceiverProcess, name: str, url: str, **options) -> int:
    """Add a destination that takes one account's deliveries; return the account."""
    account = next(ACCOUNTS)
    settings = make_settings(receiver.data_dir)
    add_destination(settings, build_destination(settings, name, url, accounts=(account,),
                                                **options))
    return account


def paused_metric(receiver: ReceiverProcess, name: str) -> bool:
    text = requests.get(receiver.url + "/metrics", timeout=5).text
    return f'ploomes_relay_paused{{destination="{name}"}} 1.0' in text


def test_fails_then_succeeds_with_a_stable_id_and_a_verifiable_signature(relay):
    secret = generate_secret()
    with Sink(fail_first(2)) as sink:
        account = destination(relay, "erp-flaky", sink.url, secret=secret)
        posted = [relay.post(body(account, 1, f"v{n}")).json()["delivery_id"] for n in (1, 2)]
        got = sink.wait_count(6)
    ids = [r.header("webhook-id") for r in got]
    assert len(set(ids)) == 2 and ids[:3] == [ids[0]] * 3  # three tries of the first
    for received in got:
        payload = Webhook(secret).verify(received.body, received.headers)
        assert payload["New"]["Id"] == 1
        assert int(received.header("X-Ploomes-Delivery-Id")) in posted
    wait_for(lambda: len(attempts(relay.data_dir, "erp-flaky")) == 6)
    rows = attempts(relay.data_dir, "erp-flaky")
    assert [(r[1], r[2], r[3]) for r in rows if r[0] == posted[0]] == [
        (1, "retry", 500), (2, "retry", 500), (3, "delivered", 200)]
    assert message_state(relay.data_dir, "erp-flaky") == {posted[0]: "delivered",
                                                          posted[1]: "delivered"}

    def metrics() -> str | None:
        text = requests.get(relay.url + "/metrics", timeout=5).text
        done = 'ploomes_relay_attempts_total{destination="erp-flaky",outcome="delivered"} 2.0'
        return text if done in text else None
    text = wait_for(metrics)
    assert 'ploomes_relay_attempts_total{destination="erp-flaky",outcome="retry"} 4.0' in text
    assert 'ploomes_relay_backlog{destination="erp-flaky"} 0.0' in text
    assert 'ploomes_relay_latency_seconds_count{destination="erp-flaky"} 6.0' in text
    assert secret not in relay.log_text()


def test_a_slow_destination_times_out_and_is_tried_again(relay):
    with Sink(lambda r: Reply(hold=5) if r.number == 1 else Reply()) as sink:
        account = destination(relay, "erp-slow", sink.url, timeout=1.0)
        event = relay.post(body(account, 2, "x")).json()["delivery_id"]
        sink.wait_count(2)
        wait_for(lambda: len(attempts(relay.data_dir, "erp-slow")) == 2)
    first, second = attempts(relay.data_dir, "erp-slow")
    assert first[:4] == (event, 1, "retry", None) and "no answer within 1 s" in first[4]
    assert second[:4] == (event, 2, "delivered", 200)


def test_429_retry_after_is_honoured(relay):
    def answer(received: Received) -> Reply:
        return Reply(429, {"Retry-After": "1"}) if received.number == 1 else Reply()
    with Sink(answer) as sink:
        account = destination(relay, "erp-limited", sink.url)
        relay.post(body(account, 3, "x"))
        first, second = sink.wait_count(2)
    # the schedule alone would have come back after 0.05 s
    assert second.at - first.at >= 0.95
    assert first.header("webhook-id") == second.header("webhook-id")


def test_connection_resets_are_retried(relay):
    with Sink(lambda r: Reply(action=RESET) if r.number <= 2 else Reply()) as sink:
        account = destination(relay, "erp-resets", sink.url)
        event = relay.post(body(account, 4, "x")).json()["delivery_id"]
        sink.wait_count(3)
        wait_for(lambda: len(attempts(relay.data_dir, "erp-resets")) >= 3)
    rows = attempts(relay.data_dir, "erp-resets")
    assert [(r[0], r[2]) for r in rows] == [(event, "retry"), (event, "retry"),
                                            (event, "delivered")]
    assert rows[0][3] is None and rows[0][4]


def test_per_record_order_holds_under_retries_while_records_flow_in_parallel(relay):
    other_arrived = threading.Event()
    held_in_time: list[bool] = []

    def answer(received: Received) -> Reply:
        record, title = received.json["New"]["Id"], received.json["New"]["Title"]
        if record == 20:
            other_arrived.set()
        if (record, title) == (10, "c1"):
            attempt = sum(1 for r in sink.snapshot()
                          if r.header("webhook-id") == received.header("webhook-id"))
            if attempt == 1:  # record 20 must get through while record 10 waits here
                held_in_time.append(other_arrived.wait(10))
            if attempt <= 2:
                return Reply(503)
        return Reply()

    with Sink(answer) as sink:
        account = destination(relay, "erp-order", sink.url)
        for record, title in [(10, "c1"), (20, "c1"), (10, "c2"), (20, "c2"), (10, "c3")]:
            relay.post(body(account, record, title))
        got = sink.wait(lambda got: sum(1 for r in got if r.json["New"]["Id"] == 10) >= 5
                        and sum(1 for r in got if r.json["New"]["Id"] == 20) >= 2)
    assert held_in_time == [True]
    ten = [r.json["New"]["Title"] for r in got if r.json["New"]["Id"] == 10]
    assert ten == ["c1", "c1", "c1", "c2", "c3"]  # c2 waited for c1's third try
    assert [r.json["New"]["Title"] for r in got if r.json["New"]["Id"] == 20] == ["c1", "c2"]


def test_ploomes_passthrough_is_byte_for_byte_with_the_destinations_key(relay):
    with Sink() as sink:
        account = destination(relay, "erp-passthrough", sink.url,
                              ploomes_key="chave-do-erp-0123456789")
        raw = (b'{ "Action":"Update", "Entity":"Deals", "AccountId": %d, "ActionUserId": 7,'
               b'\n "Old": {"Id": 5, "Title": "Jo\\u00e3o"}, "New": {"Id": 5, '
               b'"Title": "Jo\xc3\xa3o S\xc3\xa1", "Amount": 1.50} }' % account)
        event = relay.post(raw).json()["delivery_id"]
        (received,) = sink.wait_count(1)
    assert received.body == raw
    assert received.header("X-Ploomes-Validation-Key") == "chave-do-erp-0123456789"
    assert received.header("X-Ploomes-Validation-Key") != TEST_KEY
    assert received.header("X-Ploomes-Delivery-Id") == str(event)
    assert received.header("webhook-signature") is None  # no secret: not signed


def test_a_4xx_fails_at_once_and_is_replayed_from_the_cli_with_the_same_id(relay):
    with Sink(fail_first(1, status=400)) as sink:
        account = destination(relay, "erp-refuses", sink.url)
        event = relay.post(body(account, 6, "x")).json()["delivery_id"]
        wait_for(lambda: message_state(relay.data_dir, "erp-refuses").get(event) == "failed")
        assert len(sink.snapshot()) == 1  # not retried
        done = cli(relay.data_dir, "replay", "erp-refuses", "--event", str(event))
        assert done.returncode == 0, done.stderr
        first, again = sink.wait_count(2)
    assert first.header("webhook-id") == again.header("webhook-id")
    wait_for(lambda: message_state(relay.data_dir, "erp-refuses").get(event) == "delivered")
    assert [r[1:3] + (r[5],) for r in attempts(relay.data_dir, "erp-refuses")] == [
        (1, "failed", False), (1, "delivered", True)]


def test_replay_since_sends_again_only_what_was_not_confirmed(relay):
    since = time.time() - 1
    with Sink(lambda r: Reply(422) if r.json["New"]["Title"] == "ruim" else Reply()) as sink:
        account = destination(relay, "erp-since", sink.url)
        good = relay.post(body(account, 7, "bom")).json()["delivery_id"]
        bad = relay.post(body(account, 8, "ruim")).json()["delivery_id"]
        wait_for(lambda: message_state(relay.data_dir, "erp-since") == {
            good: "delivered", bad: "failed"})
        iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(since))
        done = cli(relay.data_dir, "replay", "erp-since", "--since", iso)
        assert done.returncode == 0, done.stderr
        got = sink.wait_count(3)
        wait_for(lambda: sum(r[5] for r in attempts(relay.data_dir, "erp-since")) == 1)
    sent = [int(r.header("X-Ploomes-Delivery-Id")) for r in got]
    assert sorted(sent[:2]) == sorted([good, bad]) and sent[2:] == [bad]  # good: not again


def test_cli_adds_pauses_and_resumes_while_the_receiver_runs(relay):
    secret = generate_secret()
    account = next(ACCOUNTS)
    with Sink() as sink, Sink() as witness:
        done = cli(relay.data_dir, "add", "erp-cli", sink.url, "--entity", "deals",
                   "--action", "update", "--secret", secret, "--ploomes-key",
                   "chave-secreta-do-erp-42")
        assert done.returncode == 0, done.stderr
        assert "loopback" in done.stdout
        # the filter: entity and action; the account only keeps other tests' deliveries out
        settings = make_settings(relay.data_dir)
        assert read_config(settings).by_name("erp-cli").entities == ("Deals",)
        witness_account = destination(relay, "erp-witness", witness.url)
        relay.post(body(account, 9, "first"))
        (received,) = sink.wait_count(1)  # within the wait: a few seconds at most
        Webhook(secret).verify(received.body, received.headers)

        assert cli(relay.data_dir, "pause", "erp-cli").returncode == 0
        wait_for(lambda: paused_metric(relay, "erp-cli"))  # the forwarder took it
        relay.post(body(account, 9, "while paused"))
        relay.post(body(witness_account, 9, "after"))
        witness.wait_count(1)  # the forwarder went past it; the paused one got nothing
        assert len(sink.snapshot()) == 1
        assert cli(relay.data_dir, "resume", "erp-cli").returncode == 0
        got = sink.wait_count(2)
    assert got[1].json["New"]["Title"] == "while paused"
    listed = cli(relay.data_dir, "list").stdout
    assert "erp-cli" in listed and "[active]" in listed
    assert secret not in listed and "chave-secreta-do-erp-42" not in listed
    assert secret[-4:] in listed  # masked: its last characters only
    assert secret not in relay.log_text() and "chave-secreta-do-erp-42" not in relay.log_text()
    assert oct((relay.data_dir / "relay" / "destinations.json").stat().st_mode & 0o777) == \
        "0o600"


def test_forwarding_to_the_receiver_itself_is_refused(relay):
    # the configured receiver URL is another port: the transport still knows its own
    account = destination(relay, "loop", relay.webhook_url)
    before = relay.health()["journal_seq"]
    event = relay.post(body(account, 11, "x")).json()["delivery_id"]
    wait_for(lambda: message_state(relay.data_dir, "loop").get(event) == "failed")
    (row,) = attempts(relay.data_dir, "loop")
    assert "this receiver itself" in row[4]
    assert relay.health()["journal_seq"] == before + 1  # nothing came back to it


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://127.0.0.1/x", "only http:// and https://"),
    ("file:///etc/passwd", "only http:// and https://"),
    ("http://user:senha@127.0.0.1:9/x", "credentials"),
    ("http://127.0.0.1:8000/ploomes/webhook", "this receiver's own address"),
    ("http://localhost:8000/", "this receiver's own address"),
    ("http:///x", "no host")])
def test_unsafe_urls_are_refused_by_the_cli(tmp_path, url, why):
    done = cli(tmp_path / "data", "add", "x", url)
    assert done.returncode == 1 and why in done.stderr and "Traceback" not in done.stderr


def test_private_and_loopback_destinations_are_allowed_and_flagged(tmp_path):
    data = tmp_path / "data"
    for name, url in (("lan", "http://10.1.2.3:8080/erp"), ("local", "http://127.0.0.1:9/x")):
        assert cli(data, "add", name, url).returncode == 0
    listed = cli(data, "list").stdout
    assert "http://10.1.2.3:8080/erp  (private)" in listed
    assert "http://127.0.0.1:9/x  (loopback)" in listed


@pytest.fixture(scope="module")
def with_x(tmp_path_factory):
    """A data dir with one destination, `x` (the cases below must not add it)."""
    data = tmp_path_factory.mktemp("relay-cli") / "data"
    assert cli(data, "add", "x", "http://127.0.0.1:9/").returncode == 0
    return data


@pytest.mark.parametrize(("args", "why"), [
    (("add", "x", "http://127.0.0.1:9/"), "already exists"),
    (("add", "sem nome", "http://127.0.0.1:9/"), "a name is"),
    (("add", "y", "http://127.0.0.1:9/", "--secret", "abc"), "whsec_"),
    (("add", "y", "http://127.0.0.1:9/", "--secret", "whsec_???"), "base64"),
    (("add", "y", "http://127.0.0.1:9/", "--entity", "Planets"), "unknown entity"),
    (("add", "y", "http://127.0.0.1:9/", "--timeout", "0"), "timeout"),
    (("pause", "nobody"), "no destination is named"),
    (("replay", "nobody", "--event", "1"), "no destination is named"),
    (("replay", "x"), "say what to replay")])
def test_cli_errors_are_one_clear_line(with_x, args, why):
    done = cli(with_x, *args)
    assert done.returncode == 1 and why in done.stderr and "Traceback" not in done.stderr


def test_a_destination_failing_too_long_pauses_itself(tmp_path):
    data = tmp_path / "data"
    settings = make_settings(data)
    set_options(settings, retry_schedule=[0] + [0.1] * 50, pause_after=1.0)
    with Sink(lambda r: Reply(503, body=b"em manuten\xc3\xa7\xc3\xa3o")) as sink:
        add_destination(settings, build_destination(settings, "erp-down", sink.url))
        receiver = ReceiverProcess(data).start()
        try:
            receiver.post(body(1, 1, "x"))
            found = wait_for(lambda: (d := read_config(settings).by_name("erp-down")).paused
                             and d, timeout=20)
            wait_for(lambda: paused_metric(receiver, "erp-down"))
            count = len(sink.snapshot())
            receiver.post(body(1, 2, "y"))
            time.sleep(1)  # ten retry intervals: a destination not paused gets ~10 more
        finally:
            receiver.stop()
    assert found.paused_by_relay and "HTTP 503" in (found.paused_reason or "")
    assert len(sink.snapshot()) == count  # nothing more once paused


def test_kill_9_of_the_forwarder_and_the_receiver_loses_nothing(tmp_path):
    data = tmp_path / "data"
    settings = make_settings(data)
    set_options(settings, retry_schedule=[0] + [0.1] * 200, pause_after=3600)
    up = threading.Event()
    with Sink(lambda r: Reply() if up.is_set() else Reply(503)) as sink:
        add_destination(settings, build_destination(settings, "erp", sink.url))
        receiver = ReceiverProcess(data).start()
        try:
            up.set()
            confirmed = [receiver.post(body(1, n, "a")).json()["delivery_id"]
                         for n in range(10)]
            wait_for(lambda: set(message_state(data, "erp")) >= set(confirmed))
            up.clear()
            waiting = [receiver.post(body(1, n, "b")).json()["delivery_id"]
                       for n in range(10)]
            sink.wait(lambda got: {int(r.header("X-Ploomes-Delivery-Id")) for r in got}
                      >= set(waiting))
            forwarder = receiver.health()["relay_pid"]
            os.kill(forwarder, signal.SIGKILL)
            wait_for(lambda: receiver.health().get("relay_pid") not in (None, forwarder),
                     timeout=30)
            up.set()
            wait_for(lambda: all(message_state(data, "erp").get(e) == "delivered"
                                 for e in waiting), timeout=30)
            up.clear()
            third = [receiver.post(body(1, n, "c")).json()["delivery_id"] for n in range(10)]
            sink.wait(lambda got: {int(r.header("X-Ploomes-Delivery-Id")) for r in got}
                      >= set(third))
            receiver.kill()
            receiver = ReceiverProcess(data).start()
            up.set()
            wait_for(lambda: all(message_state(data, "erp").get(e) == "delivered"
                                 for e in third), timeout=30)
        finally:
            receiver.stop()
    delivered = [int(r.header("X-Ploomes-Delivery-Id")) for r in sink.snapshot()]
    for event in confirmed:
        assert delivered.count(event) == 1  # confirmed before the kills: never sent again
    assert set(delivered) == set(confirmed) | set(waiting) | set(third)
