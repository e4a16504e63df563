"""The forwarder's figures, handed to the receiver in shared memory and shown at /metrics.

The forwarder publishes a small JSON document every second (`RelayShared.publish`); the
receiver's collector turns it into Prometheus families per destination: attempts by
outcome, a latency histogram, the backlog and the age of the oldest pending delivery.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ploomes.intake.shared import CONTEXT
from ploomes.outbox.engine import LATENCY_BUCKETS

BLOB_BYTES = 512 * 1024


class RelayShared:
    """What the receiver and its forwarder process tell each other."""

    def __init__(self) -> None:
        self.blob = CONTEXT.RawArray(ctypes.c_char, BLOB_BYTES)
        self.length = CONTEXT.RawValue(ctypes.c_int64, 0)
        self.version = CONTEXT.RawValue(ctypes.c_int64, 0)  # odd while being written
        self.stop = CONTEXT.RawValue(ctypes.c_bool, False)
        self.ready = CONTEXT.RawValue(ctypes.c_bool, False)
        self.receiver_port = CONTEXT.RawValue(ctypes.c_int, 0)  # never forward to it

    def publish(self, figures: dict[str, Any]) -> None:
        """Replace the published figures (by the forwarder)."""
        data = orjson.dumps(figures)
        if len(data) > BLOB_BYTES:
            data = orjson.dumps({"targets": {}, "truncated": True})
        self.version.value += 1
        ctypes.memmove(self.blob, data, len(data))
        self.length.value = len(data)
        self.version.value += 1

    def figures(self) -> dict[str, Any]:
        """Return the last published figures (by the receiver)."""
        for _ in range(100):
            before = self.version.value
            if before % 2:
                continue
            data = ctypes.string_at(self.blob, self.length.value)
            if self.version.value == before:
                try:
                    found = orjson.loads(data) if data else {}
                except orjson.JSONDecodeError:
                    continue
                return found if isinstance(found, dict) else {}
        return {}


class RelayCollector:
    """Yields the relay's metrics from the figures the forwarder published."""

    def __init__(self, shared: RelayShared, alive: Callable[[], bool]):
        self.shared = shared
        self.alive = alive

    def collect(self) -> Iterator[Metric]:
        """Yield the relay's metric families."""
        yield GaugeMetricFamily("ploomes_relay_up", "1 while the relay's forwarder runs",
                                value=int(self.alive()))
        targets = self.shared.figures().get("targets") or {}
        attempts = CounterMetricFamily(
            "ploomes_relay_attempts", "Attempts to forward deliveries since the forwarder "
            "started, by destination and outcome", labels=["destination", "outcome"])
        latency = HistogramMetricFamily(
            "ploomes_relay_latency_seconds", "Time from sending a delivery to the "
            "destination's answer (or error)", labels=["destination"])
        backlog = GaugeMetricFamily(
            "ploomes_relay_backlog", "Deliveries queued for a destination: waiting, "
            "retrying or being sent", labels=["destination"])
        oldest = GaugeMetricFamily(
            "ploomes_relay_oldest_pending_seconds", "Age of the oldest delivery a "
            "destination has not confirmed yet (0: none)", labels=["destination"])
        paused = GaugeMetricFamily("ploomes_relay_paused", "1 while a destination is paused",
                                   labels=["destination"])
        for target in targets.values():
            name = str(target.get("name", "?"))
            for outcome, count in (target.get("attempts") or {}).items():
                attempts.add_metric([name, str(outcome)], float(count))
            histogram = target.get("latency") or [0.0] * (len(LATENCY_BUCKETS) + 2)
            buckets, total = [], 0.0
            for bound, count in zip(LATENCY_BUCKETS, histogram, strict=False):
                total += count
                buckets.append((str(bound), total))
            buckets.append(("+Inf", total + histogram[len(LATENCY_BUCKETS)]))
            latency.add_metric([name], buckets, histogram[len(LATENCY_BUCKETS) + 1])
            backlog.add_metric([name], float(target.get("backlog", 0)))
            oldest.add_metric([name], float(target.get("oldest_age", 0.0)))
            paused.add_metric([name], float(bool(target.get("paused"))))
        yield from (attempts, latency, backlog, oldest, paused)
