"""The outbox's pure parts (schedule, classification, Retry-After) and its engine: per-key
order under retries, keys in parallel, every attempt in a real log on disk."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from ploomes.intake.journal import iter_records
from ploomes.outbox.engine import Answer, Message, Outbox, Target
from ploomes.outbox.log import OutboxLog, recover
from ploomes.outbox.records import KIND_ATTEMPT, KIND_CHECKPOINT, Attempt, encode
from ploomes.outbox.schedule import (
    SVIX_SCHEDULE,
    RetrySchedule,
    Verdict,
    classify,
    parse_schedule,
    retry_after,
)


def test_default_schedule_is_svix():
    assert SVIX_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    schedule = RetrySchedule()
    assert schedule.attempts == 8
    assert schedule.base_delay(0) == 0 and schedule.base_delay(2) == 300
    assert schedule.base_delay(8) is None and schedule.next_delay(8) is None


def test_jitter_stays_within_its_bounds_and_spreads_retries():
    schedule = RetrySchedule()
    rng = random.Random(7)
    waits = [schedule.next_delay(3, rng) for _ in range(200)]
    low, high = schedule.bounds(3)
    assert all(low <= w <= high for w in waits)
    assert len({round(w) for w in waits}) > 50  # not all back in the same second
    assert schedule.next_delay(0, rng) == 0  # the first attempt is at once


@pytest.mark.parametrize("text", ["", "a, b", "-1", "0, nan"])
def test_unusable_schedules_are_refused(text):
    with pytest.raises(ValueError):
        parse_schedule(text)


def test_schedule_from_text():
    assert parse_schedule("0, 0.5, 2").delays == (0.0, 0.5, 2.0)


@pytest.mark.parametrize(("status", "verdict"), [
    (200, Verdict.DELIVERED), (204, Verdict.DELIVERED), (None, Verdict.RETRY),
    (500, Verdict.RETRY), (503, Verdict.RETRY), (408, Verdict.RETRY), (429, Verdict.RETRY),
    (301, Verdict.RETRY), (400, Verdict.FAILED), (401, Verdict.FAILED),
    (404, Verdict.FAILED), (410, Verdict.FAILED)])
def test_classify(status, verdict):
    assert classify(status) is verdict


def test_chosen_4xx_are_retried():
    assert classify(409, frozenset({409})) is Verdict.RETRY
    assert classify(404, frozenset({409})) is Verdict.FAILED


def test_retry_after_seconds_and_dates():
    now = 1_800_000_000.0
    assert retry_after("7", now) == 7
    assert retry_after(None, now) is None
    assert retry_after("soon", now) is None
    assert retry_after("99999999", now) == 86400  # capped
    later = datetime.fromtimestamp(now, UTC) + timedelta(seconds=90)
    assert retry_after(format_datetime(later, usegmt=True), now) == pytest.approx(90)
    earlier = datetime.fromtimestamp(now, UTC) - timedelta(seconds=90)
    assert retry_after(format_datetime(earlier, usegmt=True), now) == 0


class Scripted:
    """A transport whose answers the test scripts per message; records every call."""

    def __init__(self, answers: dict[str, list[int | None]] | None = None):
        self.answers = answers or {}
        self.calls: list[tuple[str, str]] = []  # (msg_id, key) in the order sent
        self.lock = threading.Lock()
        self.gates: dict[str, threading.Event] = {}

    def __call__(self, message: Message, target: Target) -> Answer:
        with self.lock:
            self.calls.append((message.msg_id, message.key))
            script = self.answers.get(message.msg_id) or [200]
            status = script.pop(0) if len(script) > 1 else script[0]
        gate = self.gates.get(message.msg_id)
        if gate is not None:
            assert gate.wait(10), f"{message.msg_id} was never let through"
        return Answer(status=status, error=None if status else "connection reset")


def run_until(outbox: Outbox, done, limit: int = 2000) -> None:
    for _ in range(limit):
        if done():
            return
        outbox.pump()
        outbox.collect(0.01)
    raise AssertionError("the outbox did not get there")


def logged(log_dir) -> list[Attempt]:
    return [Attempt.from_payload(r.payload) for r in iter_records(log_dir, 0)
            if r.kind == KIND_ATTEMPT]


@pytest.fixture
def log(tmp_path):
    found = OutboxLog(tmp_path / "outbox")
    yield found
    found.close()


def test_per_key_order_holds_under_retries_while_keys_go_in_parallel(tmp_path, log):
    # a1 fails twice; a2 and a3 must wait for it. b1 is held until a1's first attempt ran
    # and a2 was not sent meanwhile: b goes on while a's head retries.
    transport = Scripted({"a1": [503, None, 200], "b2": [500, 200]})
    transport.gates["b1"] = threading.Event()
    outbox = Outbox("relay", transport, RetrySchedule((0, 0.01, 0.01, 0.01), jitter=0), log,
                    workers=4)
    outbox.set_target(Target("t", "erp"))
    for n, key in enumerate(["a", "b", "a", "b", "a"], start=1):
        index = sum(1 for k in ["a", "b", "a", "b", "a"][:n] if k == key)
        outbox.add(Message(f"{key}{index}", "t", n, key=key))
    run_until(outbox, lambda: sum(1 for c in transport.calls if c[0] == "a1") >= 1)
    transport.gates["b1"].set()
    run_until(outbox, lambda: outbox.pending("t") == 0)
    outbox.close()
    log.flush()
    sent = [msg for msg, _ in transport.calls]
    for key in "ab":
        mine = [m for m in sent if m.startswith(key)]
        firsts = [mine.index(m) for m in dict.fromkeys(mine)]
        assert [m for m in dict.fromkeys(mine)] == sorted(set(mine))  # a1 < a2 < a3
        assert firsts == sorted(firsts)
        last_try_of = {m: max(i for i, x in enumerate(mine) if x == m) for m in set(mine)}
        for earlier, later in zip(sorted(set(mine)), sorted(set(mine))[1:], strict=False):
            assert last_try_of[earlier] < mine.index(later)  # retries end before the next
    assert sent.index("b1") < sent.index("a2")  # b1 was sent while a1 retried
    attempts = logged(tmp_path / "outbox")
    a1 = [a for a in attempts if a.msg_id == "a1"]
    assert [(a.number, a.verdict, a.status) for a in a1] == [
        (1, Verdict.RETRY, 503), (2, Verdict.RETRY, None), (3, Verdict.DELIVERED, 200)]
    assert a1[0].next_at is not None and a1[2].next_at is None


def test_a_refusal_fails_at_once_and_exhausted_retries_fail(tmp_path, log):
    transport = Scripted({"refused": [404], "down": [500]})
    outbox = Outbox("relay", transport, RetrySchedule((0, 0.01, 0.01), jitter=0), log)
    outbox.set_target(Target("t", "erp"))
    outbox.add(Message("refused", "t", 1, key="x"))
    outbox.add(Message("down", "t", 2, key="y"))
    run_until(outbox, lambda: outbox.pending("t") == 0)
    outbox.close()
    log.flush()
    attempts = logged(tmp_path / "outbox")
    assert [(a.number, a.verdict) for a in attempts if a.msg_id == "refused"] == [
        (1, Verdict.FAILED)]
    down = [a for a in attempts if a.msg_id == "down"]
    assert [a.verdict for a in down] == [Verdict.RETRY, Verdict.RETRY, Verdict.FAILED]
    assert "gave up after 3 attempts" in (down[-1].error or "")
    assert outbox.failing_since("t") is not None


def test_a_paused_target_keeps_its_messages_until_resumed(tmp_path, log):
    transport = Scripted()
    outbox = Outbox("relay", transport, RetrySchedule((0,)), log)
    outbox.set_target(Target("t", "erp", paused=True))
    outbox.add(Message("m1", "t", 1, key="k"))
    for _ in range(20):
        outbox.pump()
        outbox.collect(0.005)
    assert transport.calls == [] and outbox.pending("t") == 1
    outbox.set_target(Target("t", "erp", paused=False))
    run_until(outbox, lambda: outbox.pending("t") == 0)
    outbox.close()
    assert transport.calls == [("m1", "k")]


def test_recover_reads_from_the_last_checkpoint(tmp_path):
    folder = tmp_path / "outbox"
    log = OutboxLog(folder)
    first = Attempt("m1", "relay", "t", "erp", 1, 1, 1.0, Verdict.DELIVERED, status=200)
    log.append(KIND_ATTEMPT, first.to_payload())
    log.append(KIND_CHECKPOINT, encode({"positions": {"t": 1}}))
    second = Attempt("m2", "relay", "t", "erp", 2, 1, 2.0, Verdict.RETRY, status=500)
    log.append_now(KIND_ATTEMPT, second.to_payload())
    log.close()
    found = recover(folder)
    assert found.checkpoint == {"positions": {"t": 1}}
    assert [Attempt.from_payload(r.payload).msg_id for r in found.records] == ["m2"]
