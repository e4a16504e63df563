"""When to try again, and what an answer means: pure functions, no clock of their own."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum

# Svix's documented schedule: the first attempt at once, then after 5 s, 5 min, 30 min,
# 2 h, 5 h, 10 h and 10 h again (eight attempts, about 27.5 h in all).
SVIX_SCHEDULE: tuple[float, ...] = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0,
                                    36000.0)
JITTER = 0.1  # each wait is stretched or shrunk by up to this share, at random, so that
#               messages that failed together do not all come back in the same second
RETRY_AFTER_MAX = 86400.0  # a Retry-After further away than this is taken as this


class Verdict(StrEnum):
    """What one attempt's answer means for its message."""

    DELIVERED = "delivered"  # 2xx: done
    RETRY = "retry"  # try again later (timeouts, connection errors, 408, 429, 5xx, ...)
    FAILED = "failed"  # final: a refusal that retrying cannot change, or retries exhausted


RETRYABLE_4XX = frozenset({408, 429})


def classify(status: int | None, retry_statuses: frozenset[int] = frozenset()) -> Verdict:
    """Classify an answer: 2xx delivered; 4xx failed at once except 408, 429 and those in
    `retry_statuses`; anything else (no answer, 1xx, 3xx, 5xx) is retried."""
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if 400 <= status < 500 and status not in RETRYABLE_4XX and status not in retry_statuses:
        return Verdict.FAILED
    return Verdict.RETRY


def retry_after(value: str | None, now: float) -> float | None:
    """Return the seconds a `Retry-After` header asks to wait (delay-seconds or an HTTP
    date, RFC 9110 10.2.3), at most RETRY_AFTER_MAX; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), RETRY_AFTER_MAX)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return min(max(0.0, moment.timestamp() - now), RETRY_AFTER_MAX)


@dataclass(frozen=True)
class RetrySchedule:
    """The waits before each attempt: `delays[0]` before the first (0: at once), then one
    per retry; a message fails for good once every attempt is used.

    Tests and impatient installations pass short delays; the default is Svix's.
    """

    delays: tuple[float, ...] = SVIX_SCHEDULE
    jitter: float = JITTER

    def __post_init__(self) -> None:
        if not self.delays:
            raise ValueError("a retry schedule needs at least one attempt")
        if any(not delay >= 0 for delay in self.delays):
            raise ValueError("a retry schedule's waits must be zero or more seconds")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be at least 0 and below 1")

    @property
    def attempts(self) -> int:
        """Return how many attempts a message gets."""
        return len(self.delays)

    def base_delay(self, attempts_made: int) -> float | None:
        """Return the wait before the next attempt after `attempts_made` attempts, without
        jitter; None once every attempt is used."""
        if attempts_made < 0:
            raise ValueError("attempts_made cannot be negative")
        return self.delays[attempts_made] if attempts_made < len(self.delays) else None

    def next_delay(self, attempts_made: int, rng: random.Random | None = None
                   ) -> float | None:
        """Return the wait before the next attempt, with jitter; None once exhausted."""
        base = self.base_delay(attempts_made)
        if base is None or not base or not self.jitter:
            return base
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return base * (1.0 + spread)

    def bounds(self, attempts_made: int) -> tuple[float, float] | None:
        """Return the shortest and longest wait `next_delay` can give; None once exhausted."""
        base = self.base_delay(attempts_made)
        if base is None:
            return None
        return base * (1.0 - self.jitter), base * (1.0 + self.jitter)


def parse_schedule(text: str) -> RetrySchedule:
    """Read a schedule written as comma-separated seconds (`0, 5, 300`); ValueError if not."""
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"a retry schedule is comma-separated seconds, got {text!r}") from None
    return RetrySchedule(delays)
