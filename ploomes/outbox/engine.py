"""The outbox engine: messages queued per target and order key, sent by worker threads,
every attempt logged, retried on the schedule until delivered or failed for good.

Order: messages of one target with the same order key (for the relay, one CRM record)
go one at a time, in the order they were added; the next waits until the one before it
is delivered or has failed for good. Different keys go in parallel, up to the target's
`concurrency`, at most `rate` per second. A paused target keeps its messages and sends
none until it is resumed.

The engine's state is kept by one thread (the sender's main loop calls `pump` and
`collect`); workers only send. It knows nothing of HTTP or of the journal: the sender
gives it a transport and messages with their bodies.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ploomes.outbox.log import OutboxLog
from ploomes.outbox.records import KIND_ATTEMPT, Attempt, cut_error
from ploomes.outbox.schedule import RetrySchedule, Verdict, classify

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class Message:
    """One thing to send to one target, and where it stands."""

    msg_id: str
    target: str
    seq: int
    key: str = ""  # order key within the target; "" orders it with nothing else
    born: float = 0.0  # when the source accepted it (seconds since the epoch)
    body: Any = None  # what the transport sends; not logged
    attempts: int = 0  # attempts made so far
    due: float = 0.0  # when the next attempt may start (seconds since the epoch)
    replay: bool = False
    sending: bool = False
    queued: bool = False  # its lane's head entry is in the ready heap

    @property
    def lane(self) -> tuple[str, str]:
        """Return the queue the message waits in: its target and order key."""
        return self.target, self.key or self.msg_id


@dataclass
class Target:
    """Where messages go, and the limits the engine keeps for it."""

    id: str
    name: str
    timeout: float = 15.0
    rate: float | None = None  # messages per second at most; None: no limit
    concurrency: int = 16  # attempts in flight at once at most
    retry_statuses: frozenset[int] = frozenset()  # 4xx retried instead of failing at once
    paused: bool = False
    details: Any = None  # what the transport needs (URL, secrets, ...)


class Answer(NamedTuple):
    """What a transport got for one attempt."""

    status: int | None = None  # None: no answer (timeout, connection error)
    headers: dict[str, str] = {}
    body: str = ""
    error: str | None = None
    latency: float = 0.0
    retry_after: float | None = None  # seconds the target asked to wait (Retry-After)
    final: bool = False  # refused for good without asking the target (e.g. an unsafe URL)


Transport = Callable[[Message, Target], Answer]


@dataclass
class TargetStats:
    """What /metrics shows per target, since the sender started."""

    attempts: dict[str, int] = field(default_factory=lambda: {v.value: 0 for v in Verdict})
    latency: list[float] = field(default_factory=lambda: [0.0] * (len(LATENCY_BUCKETS) + 2))
    last_failure: str | None = None  # what the last attempt that was not delivered got


class Outbox:
    """Queues, sends and retries messages for several targets; logs every attempt."""

    def __init__(self, channel: str, transport: Transport, schedule: RetrySchedule,
                 log: OutboxLog, workers: int = 16, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None):
        self.channel = channel
        self.transport = transport
        self.schedule = schedule
        self.log = log
        self.clock = clock
        self.rng = rng or random.Random()
        self.targets: dict[str, Target] = {}
        self._lanes: dict[tuple[str, str], deque[Message]] = {}
        self._by_id: dict[str, Message] = {}
        self._count: dict[str, int] = {}  # messages per target
        self._ready: list[tuple[float, int, int, Message]] = []
        self._tiebreak = itertools.count()
        self._held: dict[str, deque[Message]] = {}  # heads waiting for a pause or a slot
        self._in_flight: dict[str, int] = {}
        self._tokens: dict[str, tuple[float, float]] = {}  # target: (tokens, at)
        self._failing_since: dict[str, float] = {}
        self.stats: dict[str, TargetStats] = {}
        self._work: queue.SimpleQueue[tuple[Message, Target] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[Message, Target, Answer, float]] = (
            queue.SimpleQueue())
        self._workers = [threading.Thread(target=self._work_loop, name=f"outbox-{i}",
                                          daemon=True) for i in range(max(1, workers))]
        for worker in self._workers:
            worker.start()

    # -- targets -------------------------------------------------------------------

    def set_target(self, target: Target) -> None:
        """Add a target or change its settings; resuming one releases what it held."""
        previous = self.targets.get(target.id)
        self.targets[target.id] = target
        self._count.setdefault(target.id, 0)
        self._in_flight.setdefault(target.id, 0)
        self.stats.setdefault(target.id, TargetStats())
        if previous is not None and previous.paused and not target.paused:
            self._release(target.id, all_of_them=True)

    def remove_target(self, target_id: str) -> int:
        """Forget a target and drop its messages; return how many were dropped."""
        self.targets.pop(target_id, None)
        dropped = [lane for lane in self._lanes if lane[0] == target_id]
        count = 0
        for lane in dropped:
            for message in self._lanes.pop(lane):
                self._by_id.pop(message.msg_id, None)
                count += 1
        self._count.pop(target_id, None)
        self._held.pop(target_id, None)
        self._tokens.pop(target_id, None)
        self._failing_since.pop(target_id, None)
        self.stats.pop(target_id, None)
        return count

    def failing_since(self, target_id: str) -> float | None:
        """Return since when every attempt to the target failed (None: the last one was
        delivered, or none was made)."""
        return self._failing_since.get(target_id)

    def set_failing_since(self, target_id: str, since: float | None) -> None:
        """Restore since when a target fails (from the log, at start)."""
        if since is None:
            self._failing_since.pop(target_id, None)
        else:
            self._failing_since[target_id] = since

    # -- messages ------------------------------------------------------------------

    def add(self, message: Message) -> bool:
        """Queue a message behind those of its lane; False if it is already queued."""
        if message.msg_id in self._by_id or message.target not in self.targets:
            return False
        self._by_id[message.msg_id] = message
        self._count[message.target] = self._count.get(message.target, 0) + 1
        lane = self._lanes.setdefault(message.lane, deque())
        lane.append(message)
        if len(lane) == 1:
            self._push(message)
        return True

    def has(self, msg_id: str) -> bool:
        """Return whether a message is queued (waiting, retrying or being sent)."""
        return msg_id in self._by_id

    def pending(self, target_id: str) -> int:
        """Return how many messages a target has queued."""
        return self._count.get(target_id, 0)

    def messages(self, target_id: str | None = None) -> Iterable[Message]:
        """Yield the queued messages (of one target), lane by lane."""
        for lane, messages in self._lanes.items():
            if target_id is None or lane[0] == target_id:
                yield from messages

    def oldest(self, target_id: str) -> float | None:
        """Return when the oldest queued message of a target was accepted."""
        return min((m.born for m in self.messages(target_id)), default=None)

    def in_flight(self) -> int:
        """Return how many attempts are being made now."""
        return sum(self._in_flight.values())

    def _push(self, message: Message) -> None:
        if not message.queued and not message.sending:
            message.queued = True
            heapq.heappush(self._ready, (message.due, message.seq, next(self._tiebreak),
                                         message))

    def _release(self, target_id: str, all_of_them: bool = False) -> None:
        held = self._held.get(target_id)
        while held:
            self._push(held.popleft())
            if not all_of_them:
                break

    def pump(self) -> int:
        """Start every attempt that is due and allowed now; return how many started."""
        now = self.clock()
        started = 0
        while self._ready and self._ready[0][0] <= now:
            _, _, _, message = heapq.heappop(self._ready)
            message.queued = False
            lane = self._lanes.get(message.lane)
            if not lane or lane[0] is not message:
                continue  # dropped meanwhile (its target was removed)
            target = self.targets[message.target]
            if target.paused or self._in_flight[target.id] >= target.concurrency:
                self._held.setdefault(target.id, deque()).append(message)
                continue
            if target.rate:
                wait = self._take_token(target, now)
                if wait:
                    message.due = now + wait
                    self._push(message)
                    continue
            message.sending = True
            self._in_flight[target.id] += 1
            self._work.put((message, target))
            started += 1
        return started

    def _take_token(self, target: Target, now: float) -> float:
        """Take one of the target's rate tokens; return 0, or the seconds until one."""
        assert target.rate
        burst = max(1.0, target.rate)
        tokens, at = self._tokens.get(target.id, (burst, now))
        tokens = min(burst, tokens + (now - at) * target.rate)
        if tokens >= 1.0:
            self._tokens[target.id] = (tokens - 1.0, now)
            return 0.0
        self._tokens[target.id] = (tokens, now)
        return (1.0 - tokens) / target.rate

    def next_due(self) -> float | None:
        """Return when the earliest waiting attempt is due (None: nothing waits)."""
        return self._ready[0][0] if self._ready else None

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            message, target = item
            started = self.clock()
            try:
                answer = self.transport(message, target)
            except Exception as exc:  # noqa: BLE001 - a transport's bug is one failed attempt
                answer = Answer(error=cut_error(f"{type(exc).__name__}: {exc}"),
                                latency=self.clock() - started)
            self._results.put((message, target, answer, started))

    def collect(self, timeout: float) -> int:
        """Handle the outcomes of finished attempts, waiting up to `timeout` seconds for
        the first; return how many were handled."""
        handled = 0
        try:
            item = self._results.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return 0
        while True:
            self._finish(*item)
            handled += 1
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                return handled

    def _finish(self, message: Message, target: Target, answer: Answer, started: float
                ) -> None:
        message.sending = False
        if target.id in self._in_flight:
            self._in_flight[target.id] -= 1
        now = self.clock()
        message.attempts += 1
        verdict = Verdict.FAILED if answer.final else classify(answer.status,
                                                               target.retry_statuses)
        error = answer.error
        next_at = None
        if verdict is Verdict.RETRY:
            delay = self.schedule.next_delay(message.attempts, self.rng)
            if delay is None:
                verdict = Verdict.FAILED
                error = cut_error(f"gave up after {message.attempts} attempts"
                                  + (f"; last: {error}" if error else ""))
            else:
                if answer.retry_after is not None:
                    delay = answer.retry_after  # the target said when: neither sooner nor later
                next_at = now + delay
        attempt = Attempt(
            msg_id=message.msg_id, channel=self.channel, target=target.id,
            target_name=target.name, seq=message.seq, number=message.attempts, at=started,
            verdict=verdict, status=answer.status, latency=answer.latency, error=error,
            headers=answer.headers, body=answer.body, next_at=next_at, replay=message.replay)
        self.log.append(KIND_ATTEMPT, attempt.to_payload())
        stats = self.stats.get(target.id)
        if stats is not None:
            stats.attempts[verdict.value] += 1
            _observe(stats.latency, answer.latency)
            if verdict is not Verdict.DELIVERED:
                stats.last_failure = (f"HTTP {answer.status}" if answer.status is not None
                                      else error or "no answer")
        if verdict is Verdict.DELIVERED:
            self._failing_since.pop(target.id, None)
        else:
            self._failing_since.setdefault(target.id, started)
        live = self._by_id.get(message.msg_id) is message
        if live and verdict is Verdict.RETRY:
            assert next_at is not None
            message.due = next_at
            self._push(message)
        elif live:
            self._done(message)
        self._release(target.id)

    def _done(self, message: Message) -> None:
        del self._by_id[message.msg_id]
        self._count[message.target] -= 1
        lane = self._lanes[message.lane]
        lane.popleft()
        if lane:
            following = lane[0]
            following.due = max(following.due, self.clock())
            self._push(following)
        else:
            del self._lanes[message.lane]

    # -- state ---------------------------------------------------------------------

    def snapshot(self) -> list[list]:
        """Return the queued messages as [msg_id, target, seq, attempts, due, replay],
        in queue order (for a checkpoint)."""
        return [[m.msg_id, m.target, m.seq, m.attempts, m.due, m.replay]
                for m in self.messages()]

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers once their current attempts end (at most `timeout` seconds)."""
        for _ in self._workers:
            self._work.put(None)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))


def _observe(histogram: list[float], value: float) -> None:
    for i, bound in enumerate(LATENCY_BUCKETS):
        if value <= bound:
            histogram[i] += 1
            break
    else:
        histogram[len(LATENCY_BUCKETS)] += 1
    histogram[len(LATENCY_BUCKETS) + 1] += value
