"""The forwarder process: reads the delivery journal and sends what each destination's
filter takes, through the outbox (queue, retries, attempt log).

Durability without a second writer on the DuckDB file: the forwarder's memory is the
outbox log in `data/outbox/` (it is its single writer). Each destination has a position
in the delivery journal (never past the durable position the receiver publishes); every
attempt's outcome, every replay taken and every destination started or removed is a log
record, and every few seconds a checkpoint holds the positions and the queued messages.
At start it reads the last checkpoint and the records after it, then the journal again
from the positions: what was confirmed (2xx) is not sent again, the rest is. A `kill -9`
of the forwarder or the receiver loses nothing; what was in flight is sent again (the
`webhook-id` lets the receiving side drop a repeat).

A paused destination keeps its place: nothing is read or sent for it, and it resumes
where it stopped. One that keeps failing for `RelayOptions.pause_after` is paused by the
forwarder itself, saying why.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from pathlib import Path

from ploomes.config import Settings
from ploomes.intake.journal import JournalReader, Record, iter_records, scan_segment, segment_paths
from ploomes.intake.shared import CONTEXT, SharedState
from ploomes.outbox.engine import Message, Outbox, Target
from ploomes.outbox.log import OutboxLog, prune, recover
from ploomes.outbox.records import KIND_ATTEMPT, KIND_CHECKPOINT, KIND_CONTROL, Attempt
from ploomes.outbox.records import decode as decode_control
from ploomes.outbox.records import encode as encode_control
from ploomes.outbox.schedule import Verdict
from ploomes.relay.destinations import (
    Destination,
    RelayConfig,
    RelayError,
    destinations_file,
    read_config,
    set_paused,
)
from ploomes.relay.matching import DeliveryFacts, facts, matches, message_id
from ploomes.relay.metrics import RelayShared
from ploomes.relay.replays import ReplayRequest, read_request, spool_dir, waiting
from ploomes.relay.transport import HttpTransport

log = logging.getLogger("ploomes.relay")

CHANNEL = "relay"
READ_BATCH = 500  # journal records read per destination per turn
POLL = 0.01  # seconds between looks at the journal while nothing else happens
LOOK_EVERY = 0.5  # seconds between looks at the destinations file and the replay spool
CHECKPOINT_EVERY = 5.0
PRUNE_EVERY = 600.0


def outbox_dir(settings: Settings) -> Path:
    """Return the relay's outbox log folder."""
    return settings.data_dir / "outbox"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} hours"
    return f"{seconds:g} seconds"


class Forwarder:
    """Forwards durable deliveries to the destinations; one per data dir at a time."""

    def __init__(self, settings: Settings, shared: SharedState, relay: RelayShared,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.shared = shared
        self.relay = relay
        self.clock = clock
        self.config = RelayConfig()
        self.positions: dict[str, int] = {}  # destination id: last journal seq read
        self._readers: dict[str, JournalReader] = {}
        self._done: dict[str, int] = {}  # confirmed or failed since the checkpoint: msg: seq
        self._file_stamp: tuple[int, int, int] | None = None
        self._config_error: str | None = None
        self.log: OutboxLog | None = None
        self.outbox: Outbox | None = None

    # -- start: the state from the outbox log -----------------------------------------

    def start(self) -> None:
        """Open the outbox log (its single writer) and resume from what it holds."""
        self.log = OutboxLog(outbox_dir(self.settings), on_synced=self._published)
        self.shared.outbox_synced_seq.value = self.log.synced_seq
        self.config = self._read_config() or RelayConfig()
        options = self.config.options
        transport = HttpTransport(lambda: int(self.relay.receiver_port.value), self.clock)
        self.outbox = Outbox(CHANNEL, transport, options.schedule, self.log,
                             workers=options.workers, clock=self.clock)
        self._recover()

    def _published(self, seq: int) -> None:
        self.shared.outbox_synced_seq.value = seq

    def _read_config(self) -> RelayConfig | None:
        path = destinations_file(self.settings)
        try:
            stat = path.stat()
            self._file_stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            self._file_stamp = None
        try:
            config = read_config(self.settings)
        except RelayError as exc:
            # keep forwarding with what was read before: a half-edited file must not
            # drop every destination's place
            if str(exc) != self._config_error:
                log.error("the relay keeps its previous destinations: %s", exc)
            self._config_error = str(exc)
            return None
        self._config_error = None
        return config

    def _recover(self) -> None:
        assert self.outbox is not None
        found = recover(outbox_dir(self.settings))
        checkpoint = found.checkpoint or {}
        positions = {str(k): int(v) for k, v in (checkpoint.get("positions") or {}).items()}
        failing: dict[str, float | None] = dict(checkpoint.get("failing") or {})
        queued: dict[str, list] = {entry[0]: list(entry)
                                   for entry in checkpoint.get("messages") or ()}
        done: dict[str, int] = {}
        for record in found.records:
            if record.kind == KIND_ATTEMPT:
                attempt = Attempt.from_payload(record.payload)
                if attempt.verdict is Verdict.DELIVERED:
                    failing[attempt.target] = None
                elif failing.get(attempt.target) is None:
                    failing[attempt.target] = attempt.at
                if attempt.verdict is Verdict.RETRY:
                    entry = queued.get(attempt.msg_id) or [
                        attempt.msg_id, attempt.target, attempt.seq, 0, 0.0, attempt.replay]
                    entry[3], entry[4] = attempt.number, attempt.next_at or 0.0
                    queued[attempt.msg_id] = entry
                else:
                    queued.pop(attempt.msg_id, None)
                    done[attempt.msg_id] = attempt.seq
            elif record.kind == KIND_CONTROL:
                control = decode_control(record.payload)
                target = str(control.get("target"))
                if control.get("op") == "start":
                    positions[target] = int(control["after"])
                elif control.get("op") == "remove":
                    positions.pop(target, None)
                    failing.pop(target, None)
                    queued = {k: v for k, v in queued.items() if v[1] != target}
                elif control.get("op") == "replay":
                    for seq in control.get("seqs") or ():
                        msg = message_id(int(seq), target)
                        done.pop(msg, None)
                        queued.setdefault(msg, [msg, target, int(seq), 0, 0.0, True])
        self.positions = positions
        self._done = done
        self._sync_destinations()  # targets first: messages need theirs
        for target, since in failing.items():
            if target in self.outbox.targets:
                self.outbox.set_failing_since(target, since)
        entries = [e for e in queued.values() if e[1] in self.outbox.targets]
        entries.sort(key=lambda e: (bool(e[5]), int(e[2])))
        bodies = self._records({int(e[2]) for e in entries})
        restored = 0
        for msg, target, seq, attempts, due, replay in entries:
            found_facts = bodies.get(int(seq))
            if found_facts is None:
                log.warning("delivery %s is no longer in the journal: %s is not sent again",
                            seq, msg)
                continue
            restored += self.outbox.add(Message(
                msg, target, int(seq), found_facts.order_key, found_facts.received_ns / 1e9,
                found_facts.body, attempts=int(attempts), due=float(due), replay=bool(replay)))
        if restored or positions:
            log.info("relay resumed: %d deliveries queued, destinations at journal positions "
                     "%s", restored, self.positions)

    def _records(self, seqs: set[int]) -> dict[int, DeliveryFacts]:
        """Return the forwardable deliveries among these journal sequence numbers."""
        out: dict[int, DeliveryFacts] = {}
        if not seqs:
            return out
        last = max(seqs)
        for record in iter_records(self.settings.journal_dir, min(seqs) - 1):
            if record.seq > last:
                break
            if record.seq in seqs:
                found = facts(record)
                if found is not None:
                    out[record.seq] = found
        return out

    # -- destinations --------------------------------------------------------------

    def _start_position(self, destination: Destination) -> int:
        """Where a destination seen for the first time starts: after the last delivery
        accepted before it was added (those accepted since are sent)."""
        synced = int(self.shared.synced_seq.value)
        try:
            created = datetime.fromisoformat(destination.created_at).timestamp() * 1e9
        except ValueError:
            return synced
        position = synced
        for path in reversed(segment_paths(self.settings.journal_dir)[-3:]):
            before = None
            for record, _ in scan_segment(path):
                if record.seq > synced:
                    break
                if record.received_ns < created:
                    before = record.seq
                else:
                    break
            if before is not None:
                return min(before, synced)
            position = int(path.stem) - 1  # every record of this segment came later
        return min(position, synced)

    def _sync_destinations(self) -> None:
        """Bring the outbox's targets in line with the destinations file."""
        assert self.outbox is not None and self.log is not None
        options = self.config.options
        self.outbox.schedule = options.schedule
        ids = set()
        for destination in self.config.destinations:
            ids.add(destination.id)
            if destination.id not in self.positions:
                start = self._start_position(destination)
                self.log.append_now(KIND_CONTROL, encode_control({
                    "op": "start", "target": destination.id, "name": destination.name,
                    "after": start}))
                self.positions[destination.id] = start
                log.info("relay: destination %s starts after delivery %d", destination.name,
                         start)
            previous = self.outbox.targets.get(destination.id)
            if previous is not None and previous.paused and not destination.paused:
                self.outbox.set_failing_since(destination.id, None)  # a fresh start
            self.outbox.set_target(Target(
                destination.id, destination.name, destination.timeout, destination.rate,
                options.concurrency, frozenset(destination.retry_statuses),
                destination.paused, destination))
        for gone in [t for t in self.positions if t not in ids]:
            self.log.append_now(KIND_CONTROL, encode_control({"op": "remove", "target": gone}))
            del self.positions[gone]
            self._readers.pop(gone, None)
            dropped = self.outbox.remove_target(gone)
            log.info("relay: destination %s removed (%d queued deliveries dropped)", gone,
                     dropped)

    def _look(self) -> None:
        """Re-read the destinations file if it changed; take replay requests; pause what
        keeps failing."""
        path = destinations_file(self.settings)
        try:
            stat = path.stat()
            stamp: tuple[int, int, int] | None = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._file_stamp or self._config_error:
            config = self._read_config()
            if config is not None:
                self.config = config
                self._sync_destinations()
        self._take_replays()
        self._pause_failing()

    def _pause_failing(self) -> None:
        assert self.outbox is not None and self.log is not None
        limit = self.config.options.pause_after
        now = self.clock()
        paused = False
        for destination in self.config.destinations:
            since = self.outbox.failing_since(destination.id)
            if destination.paused or since is None or now - since < limit:
                continue
            stats = self.outbox.stats.get(destination.id)
            last = stats.last_failure if stats is not None and stats.last_failure else "?"
            reason = (f"every attempt failed since {_iso(since)} (longer than "
                      f"{_duration(limit)}; the last got: {last}). Resume it once it answers.")
            try:
                set_paused(self.settings, destination.name, True, by="relay", reason=reason)
            except RelayError as exc:
                log.error("relay: cannot pause the failing destination %s: %s",
                          destination.name, exc)
                continue
            self.log.append(KIND_CONTROL, encode_control({
                "op": "paused", "target": destination.id, "reason": reason}))
            log.warning("relay: destination %s paused: %s", destination.name, reason)
            paused = True
        if paused:  # hold its messages now, not at the next look at the file
            config = self._read_config()
            if config is not None:
                self.config = config
                self._sync_destinations()

    # -- replays -------------------------------------------------------------------

    def _take_replays(self) -> None:
        assert self.log is not None
        for path in waiting(self.settings)[:20]:
            try:
                request = read_request(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("relay: replay request %s is unreadable, set aside: %s", path.name,
                          exc)
                self._set_aside(path)
                continue
            destination = self.config.by_id(request.destination_id)
            if destination is None or destination.id not in self.positions:
                log.warning("relay: replay for %s dropped: no such destination any more",
                            request.destination)
                self._set_aside(path)
                continue
            seqs = list(request.events) or self._missed_since(destination, request)
            self.log.append_now(KIND_CONTROL, encode_control({
                "op": "replay", "target": destination.id, "request": request.id,
                "by": request.requested_by, "seqs": seqs}))
            path.unlink(missing_ok=True)
            added = self._add_replays(destination, seqs)
            log.info("relay: replay %s for %s: %d deliveries queued again", request.id,
                     destination.name, added)

    def _set_aside(self, path: Path) -> None:
        folder = spool_dir(self.settings) / "set-aside"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(path, folder / path.name)

    def _missed_since(self, destination: Destination, request: ReplayRequest) -> list[int]:
        """Return the deliveries accepted since the request's time that the destination's
        filter takes and that it has not confirmed."""
        assert request.since is not None
        since = request.since.timestamp()
        since_ns = since * 1e9
        confirmed: set[int] = set()
        marker = destination.id.encode()
        for path in segment_paths(outbox_dir(self.settings)):
            try:
                if path.stat().st_mtime < since:
                    continue  # written before then: no confirmation of a later delivery
            except FileNotFoundError:
                continue
            for record, _ in scan_segment(path):
                if (record.kind == KIND_ATTEMPT and marker in record.payload
                        and b"delivered" in record.payload):
                    attempt = Attempt.from_payload(record.payload)
                    if (attempt.target == destination.id
                            and attempt.verdict is Verdict.DELIVERED):
                        confirmed.add(attempt.seq)
        position = self.positions.get(destination.id, 0)
        out: list[int] = []
        for record in iter_records(self.settings.journal_dir, self._first_after(since_ns)):
            if record.seq > position:
                break  # not read for it yet: it will be sent anyway
            if record.received_ns < since_ns or record.seq in confirmed:
                continue
            found = facts(record)
            if found is not None and matches(destination, found):
                out.append(record.seq)
        return out

    def _first_after(self, since_ns: float) -> int:
        """Return a journal position at or before the first delivery accepted at since_ns."""
        after = 0
        for path in segment_paths(self.settings.journal_dir):
            first = next(iter(scan_segment(path)), None)
            if first is None or first[0].received_ns >= since_ns:
                break
            after = first[0].seq - 1
        return after

    def _add_replays(self, destination: Destination, seqs: list[int]) -> int:
        assert self.outbox is not None
        added = 0
        found = self._records(set(seqs))
        for seq in sorted(found):
            delivery = found[seq]
            msg = message_id(seq, destination.id)
            self._done.pop(msg, None)
            added += self.outbox.add(Message(msg, destination.id, seq, delivery.order_key,
                                             delivery.received_ns / 1e9, delivery.body,
                                             replay=True))
        return added

    # -- reading the journal -------------------------------------------------------

    def _read(self) -> bool:
        """Queue what each active destination takes of the new deliveries; return whether
        some destination has more to read at once."""
        assert self.outbox is not None
        synced = int(self.shared.synced_seq.value)
        limit = self.config.options.max_pending
        seen: dict[int, DeliveryFacts | None] = {}  # each record read once for all
        more = False
        for destination in self.config.destinations:
            position = self.positions.get(destination.id)
            if (destination.paused or position is None or position >= synced
                    or self.outbox.pending(destination.id) >= limit):
                continue
            reader = self._readers.get(destination.id)
            if reader is None or reader.last_seq != position:
                reader = self._readers[destination.id] = JournalReader(
                    self.settings.journal_dir, position)
            for record in reader.read(READ_BATCH, synced):
                self._consider(destination, record, seen)
            self.positions[destination.id] = reader.last_seq
            more = more or reader.last_seq < synced
        if self._done and all(p >= max(self._done.values()) for p in self.positions.values()):
            self._done.clear()  # every reader is past what the log said was done
        return more

    def _consider(self, destination: Destination, record: Record,
                  seen: dict[int, DeliveryFacts | None]) -> None:
        assert self.outbox is not None
        if record.seq in seen:
            delivery = seen[record.seq]
        else:
            delivery = seen[record.seq] = facts(record)
        if delivery is None or not matches(destination, delivery):
            return
        msg = message_id(record.seq, destination.id)
        if msg in self._done:
            return
        self.outbox.add(Message(msg, destination.id, record.seq, delivery.order_key,
                                delivery.received_ns / 1e9, delivery.body))

    # -- checkpoints and figures -----------------------------------------------------

    def checkpoint(self) -> None:
        """Append the whole pending state, so the next start reads little of the log."""
        assert self.outbox is not None and self.log is not None
        failing = {t: self.outbox.failing_since(t) for t in self.outbox.targets}
        self.log.append(KIND_CHECKPOINT, encode_control({
            "positions": self.positions, "messages": self.outbox.snapshot(),
            "failing": {t: s for t, s in failing.items() if s is not None},
            "at": self.clock()}))

    def figures(self) -> dict:
        """Return the figures /metrics shows, per destination."""
        assert self.outbox is not None
        now = self.clock()
        targets = {}
        for target in self.outbox.targets.values():
            stats = self.outbox.stats.get(target.id)
            oldest = self.outbox.oldest(target.id)
            targets[target.id] = {
                "name": target.name, "paused": target.paused,
                "attempts": stats.attempts if stats else {},
                "latency": stats.latency if stats else [],
                "backlog": self.outbox.pending(target.id),
                "oldest_age": max(0.0, now - oldest) if oldest is not None else 0.0,
                "position": self.positions.get(target.id, 0)}
        return {"targets": targets, "pid": os.getpid()}

    def _prune(self) -> None:
        assert self.log is not None
        retention = self.settings.journal_retention_days * 86400
        if not retention:
            return
        self.checkpoint()
        self.log.flush()
        upto = min(int(self.shared.outbox_ingested_seq.value), self.log.synced_seq - 1)
        for path in prune(outbox_dir(self.settings), upto, retention):
            log.info("outbox log segment %s removed (retention)", path.name)

    # -- the loop ------------------------------------------------------------------

    def run(self, parent_pid: int) -> None:
        """Forward until asked to stop or until the receiver is gone."""
        self.start()
        assert self.outbox is not None and self.log is not None
        self.relay.ready.value = True
        last_look = last_figures = 0.0
        last_checkpoint = last_prune = time.monotonic()
        try:
            while os.getppid() == parent_pid and not self.relay.stop.value:
                if self.log.failing:
                    raise RelayError(self.log.failing)
                now = time.monotonic()
                if now - last_look >= LOOK_EVERY:
                    self._look()
                    last_look = now
                more = self._read()
                self.outbox.pump()
                if now - last_checkpoint >= CHECKPOINT_EVERY:
                    self.checkpoint()
                    last_checkpoint = now
                if now - last_figures >= 1.0:
                    self.relay.publish(self.figures())
                    last_figures = now
                if now - last_prune >= PRUNE_EVERY:
                    self._prune()
                    last_prune = now
                wait = 0.0 if more else POLL
                due = self.outbox.next_due()
                if due is not None:
                    wait = min(wait, max(0.0, due - self.clock()))
                self.outbox.collect(wait)
        finally:
            self.close()

    def close(self) -> None:
        """Let attempts in flight end (briefly), write a checkpoint and release the log."""
        if self.outbox is not None and self.log is not None and not self.log.failing:
            deadline = time.monotonic() + 2.0
            while self.outbox.in_flight() and time.monotonic() < deadline:
                self.outbox.collect(0.05)
            self.checkpoint()
        if self.outbox is not None:
            self.outbox.close(timeout=0.5)
        if self.log is not None:
            self.log.close()


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the receiver dies (even by kill -9)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the loop also ends when it notices a new parent


def forwarder_main(settings: Settings, shared: SharedState, relay: RelayShared,
                   parent_pid: int) -> None:
    """Entry point of the forwarder process."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the receiver decides when we stop
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s ploomes.relay: %(message)s")
    Forwarder(settings, shared, relay).run(parent_pid)


class ForwarderProcess:
    """Runs the forwarder as a child process of the receiver, restarting it if it stops."""

    RESTART_BACKOFF_MAX = 10.0

    def __init__(self, settings: Settings, shared: SharedState):
        self.settings = settings
        self.shared = shared
        self.relay = RelayShared()
        self._process: BaseProcess | None = None
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Start the forwarder and a thread that restarts it if it stops."""
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="relay-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        self.relay.ready.value = False
        self._process = CONTEXT.Process(
            target=forwarder_main, name="ploomes-relay",
            args=(self.settings, self.shared, self.relay, os.getpid()), daemon=True)
        self._process.start()

    def _watch(self) -> None:
        delay = 0.0  # before the next restart: grows while the forwarder dies at once
        started = time.monotonic()
        while not self._closing.wait(0.1):
            process = self._process
            if process is None or process.is_alive() or self._closing.is_set():
                continue
            lived = time.monotonic() - started
            delay = 0.0 if lived > 30 else min(max(delay * 2, 0.5), self.RESTART_BACKOFF_MAX)
            log.error("the relay's forwarder stopped (exit code %s); restarting it%s",
                      process.exitcode, f" in {delay:g} s" if delay else "")
            if self._closing.wait(delay):
                return
            self._spawn()
            started = time.monotonic()

    @property
    def pid(self) -> int | None:
        """Return the forwarder's process id while it runs."""
        return self._process.pid if self.alive() and self._process is not None else None

    def alive(self) -> bool:
        """Return whether the forwarder process is running."""
        return self._process is not None and self._process.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the forwarder to stop (it writes a checkpoint), then wait for it."""
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join()
        process = self._process
        if process is not None and process.is_alive():
            self.relay.stop.value = True
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(5)
