"""Sending alerts: the outbox (queue, retries, attempt log) with an Apprise transport.

Who sends: a thread of the ingest process, the process that decides the alerts and
writes the store. Decisions reach it in memory right after their transaction commits;
at start it takes every stored alert its log does not show as done. Its own outbox log
(`data/alerts/outbox/`, this process its single writer) is the memory of what was sent:
every outcome is on disk before the rule's next alert starts (`SyncedLog`; alerts are
few, a sync each costs nothing that matters), and alerts of one rule go one at a time.
So a `kill -9` loses no alert (decided = stored; not done = sent at the next start) and
re-sends at most the one alert whose answer was not yet on disk, under the same id (a
JSON webhook gets it as `X-Ploomes-Alert-Id`).

Apprise URLs are secrets: never logged (Apprise's own log goes only to the capture that
becomes an attempt's error, with the URL's parts masked) and shown only masked.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from ploomes.alerts.decide import Decision
from ploomes.alerts.rules import Rule
from ploomes.config import Settings
from ploomes.intake.journal import iter_records
from ploomes.outbox.engine import Answer, Message, Outbox, Target
from ploomes.outbox.log import OutboxLog
from ploomes.outbox.records import KIND_ATTEMPT, Attempt, cut_error
from ploomes.outbox.schedule import Verdict, parse_schedule

log = logging.getLogger("ploomes.alerts")

CHANNEL = "alert"
POSITION = "alerts_outbox"  # the ingest_state row of the alerts' outbox log
ID_HEADER = "X-Ploomes-Alert-Id"
_HEADER_SCHEMES = ("json", "jsons", "form", "forms", "xml", "xmls")


def alerts_outbox_dir(settings: Settings) -> Path:
    """Return the alerts' outbox log folder."""
    return settings.data_dir / "alerts" / "outbox"


class SyncedLog(OutboxLog):
    """An outbox log whose appends return once they are on disk."""

    def append(self, kind: int, payload: bytes) -> None:
        """Append one record and wait until it is durable."""
        super().append(kind, payload)
        self.flush()


def scrub(text: str, url: str) -> str:
    """Return a text with every part of a URL that may be secret masked."""
    parts = urlsplit(url)
    secrets = {parts.username, parts.password, parts.netloc, parts.hostname, url}
    secrets.update(p for p in parts.path.split("/") if p)
    secrets.update(v for _, v in parse_qsl(parts.query))
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "••••")
    return text


def with_alert_id(url: str, msg_id: str) -> str:
    """Return the URL that also sends the alert's id as a header, where Apprise can."""
    if urlsplit(url).scheme.lower() not in _HEADER_SCHEMES:
        return url
    return f"{url}{'&' if '?' in url else '?'}+{ID_HEADER}={msg_id}"


def apprise_transport(message: Message, target: Target) -> Answer:
    """Send one alert through Apprise; a refusal or an error is an attempt to retry."""
    import apprise

    url = target.details
    if not url:
        return Answer(error="nenhum endereço de notificação: defina o da regra ou "
                            "PLOOMES_ALERTS_NOTIFY", final=True)
    started = time.monotonic()
    notifier = apprise.Apprise()
    if not notifier.add(with_alert_id(url, message.msg_id)):
        return Answer(error="o Apprise não entende o endereço desta regra", final=True)
    with apprise.LogCapture(level=logging.WARNING) as captured:
        ok = notifier.notify(title=message.body["title"], body=message.body["body"])
        text = captured.getvalue() if hasattr(captured, "getvalue") else ""
    latency = time.monotonic() - started
    if ok:
        return Answer(status=200, latency=latency)
    lines = [line.split(" - ", 2)[-1] for line in str(text).splitlines() if line.strip()]
    return Answer(error=cut_error(scrub("; ".join(lines[-3:]) or "o envio falhou", url)),
                  latency=latency)


class AlertSender:
    """A thread that sends decided alerts through the outbox, in the ingest process."""

    def __init__(self, settings: Settings, transport: Callable[[Message, Target], Answer]
                 = apprise_transport, workers: int = 4):
        self.settings = settings
        self.transport = transport
        self.workers = workers
        self.log: SyncedLog | None = None
        self.outbox: Outbox | None = None
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rules: dict[int, Rule] = {}

    @property
    def synced_seq(self) -> int:
        """Return the last durable record of the alerts' outbox log (0: not started)."""
        return self.log.synced_seq if self.log is not None else 0

    def start(self, rules: Iterable[Rule], stored: Iterable[Decision]) -> None:
        """Open the log (its single writer), queue what it does not show as done, and
        start sending. `stored` is every alert stored as queued."""
        logging.getLogger("apprise").propagate = False  # its lines may name the URL
        self.log = SyncedLog(alerts_outbox_dir(self.settings))
        self.outbox = Outbox(CHANNEL, self.transport, parse_schedule(self.settings.alerts_retry),
                             self.log, workers=self.workers)
        done: set[str] = set()
        retrying: dict[str, tuple[int, float]] = {}
        for record in iter_records(alerts_outbox_dir(self.settings), 0):
            if record.kind != KIND_ATTEMPT:
                continue
            attempt = Attempt.from_payload(record.payload)
            if attempt.verdict is Verdict.RETRY:
                retrying[attempt.msg_id] = (attempt.number, attempt.next_at or 0.0)
            else:
                done.add(attempt.msg_id)
                retrying.pop(attempt.msg_id, None)
        self._set_rules(rules)
        waiting = [d for d in stored if d.msg_id not in done]
        for decision in waiting:
            self._queue(decision, *retrying.get(decision.msg_id, (0, 0.0)))
        if waiting:
            log.info("alerts: %d not yet delivered are sent again", len(waiting))
        self._thread = threading.Thread(target=self._run, name="alert-sender", daemon=True)
        self._thread.start()

    def set_rules(self, rules: Iterable[Rule]) -> None:
        """Give the sender the rules as they are now (addresses, names)."""
        self._inbox.put(("rules", list(rules)))

    def add(self, decisions: list[Decision]) -> None:
        """Queue decided alerts (committed to the store) for sending."""
        if decisions:
            self._inbox.put(("alerts", decisions))

    def _set_rules(self, rules: Iterable[Rule]) -> None:
        assert self.outbox is not None
        self._rules = {r.id: r for r in rules}
        for rule in self._rules.values():
            self.outbox.set_target(self._target(rule.id))
        for target_id in list(self.outbox.targets):
            if int(target_id) not in self._rules:
                self.outbox.set_target(self._target(int(target_id)))

    def _target(self, rule_id: int) -> Target:
        rule = self._rules.get(rule_id)
        url = (rule.notify or self.settings.alerts_notify) if rule else None
        return Target(str(rule_id), rule.name if rule else f"regra {rule_id} (removida)",
                      timeout=30.0, concurrency=1, details=url)

    def _queue(self, decision: Decision, attempts: int = 0, due: float = 0.0) -> None:
        assert self.outbox is not None
        target = str(decision.rule_id)
        if target not in self.outbox.targets:
            self.outbox.set_target(self._target(decision.rule_id))
        self.outbox.add(Message(
            decision.msg_id, target, decision.event_id or 0, key=target,
            born=decision.fired_ns / 1e9, body={"title": decision.title, "body": decision.body},
            attempts=attempts, due=due))

    def _run(self) -> None:
        assert self.outbox is not None
        while not self._stop.is_set():
            try:
                while True:
                    what, value = self._inbox.get_nowait()
                    if what == "rules":
                        self._set_rules(value)  # type: ignore[arg-type]
                    else:
                        for decision in value:  # type: ignore[attr-defined]
                            self._queue(decision)
            except queue.Empty:
                pass
            try:
                self.outbox.pump()
                due = self.outbox.next_due()
                wait = 0.05 if due is None else min(0.05, max(0.0, due - time.time()))
                self.outbox.collect(wait)
            except Exception as exc:  # noqa: BLE001 - the log broke: stop, restart resumes
                log.error("alerts: sending stopped: %s", exc)
                return

    def pending(self) -> int:
        """Return how many alerts wait to be delivered."""
        if self.outbox is None:
            return 0
        return sum(self.outbox.pending(t) for t in list(self.outbox.targets))

    def close(self) -> None:
        """Stop sending and release the log."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self.outbox is not None:
            self.outbox.close(2.0)
        if self.log is not None:
            self.log.close()
