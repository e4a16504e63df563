"""Shared by the benchmarks: a seeded data dir of N synthetic events, built once and reused.

The data dir holds a journal written from the one generator (`ploomes.demo.generator`) and the
DuckDB file `rebuild` makes from it, plus the directory (users, custom fields) a sync
would store. It lives under `--data-dir` (or the system temp folder) in a folder named
after N and the seed, and a `bench.json` beside it says what was built; the next
benchmark run with the same N and seed reuses it instead of building it again.

Deliveries look like a busy account's: a year of business-hours activity on Contacts,
Deals and Tasks ending now, about 2 % resent (duplicates, 2–45 s later), a few Updates
never delivered (continuity gaps), one WebhookId per entity and action.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ploomes.config import Settings, load_settings  # noqa: E402
from ploomes.crm.directory import upsert_directory  # noqa: E402
from ploomes.demo.generator import Simulation, delivery_body, demo_subscriptions  # noqa: E402
from ploomes.ingest.rebuild import rebuild  # noqa: E402
from ploomes.intake.journal import Journal  # noqa: E402
from ploomes.store import SCHEMA_VERSION, Store, fetch_one  # noqa: E402

DEFAULT_EVENTS = 1_000_000
DEFAULT_SEED = 20261128
SPAN_DAYS = 365  # the events cover this many days, the newest about now
DUPLICATE_RATE = 0.02
DROP_RATE = 0.0005  # Updates never delivered: the next delivery of the record shows a gap
CHUNK = 10_000
MARKER = "bench.json"
FORMAT = 2  # bump when the data a build produces changes meaning (2: zstd columns)


def free_port() -> int:
    """Return a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add --events, --data-dir and --seed to a benchmark's arguments."""
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS,
                        help=f"journal records to generate (default {DEFAULT_EVENTS:,})")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder that caches the built data dir between runs "
                             "(default: the system temp folder)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)


def bench_settings(data_dir: Path) -> Settings:
    """Return settings for a benchmark data dir, ignoring the environment and secrets."""
    return load_settings(env={}, secrets_path=data_dir / "no-secrets.toml", data_dir=data_dir)


@dataclass
class BuiltData:
    """A benchmark data dir and how it was made."""

    data_dir: str
    events: int
    seed: int
    journal_records: int
    schema_version: int
    generate_seconds: float
    rebuild_seconds: float
    stored_events: int
    field_changes: int
    duplicates: int
    gaps: int
    built_at: str
    format: int = FORMAT
    reused: bool = False

    @property
    def settings(self) -> Settings:
        """Return the settings of this data dir."""
        return bench_settings(Path(self.data_dir))


def _gap_for(events: int, seed: int) -> float:
    """Return the mean business-hours gap that spreads `events` over about SPAN_DAYS."""
    probe = 20_000
    sim = Simulation(seed=seed, mean_gap_seconds=60.0)
    first = last = None
    for change in sim.steps(probe):
        first = first or change.at
        last = change.at
    per_step = (last - first).total_seconds() / probe  # at a 60 s gap
    return max(0.05, 60.0 * SPAN_DAYS * 86400 / (per_step * events))


def _arrivals(events: int, seed: int, gap: float) -> Iterator[tuple[int, object, object]]:
    """Yield (received_ns, change, simulation) in arrival order, resends included."""
    sim = Simulation(seed=seed, mean_gap_seconds=gap)
    rng = random.Random(seed * 7919 + 17)  # delivery noise, independent of the simulation
    resends: list[tuple[int, int, object]] = []  # (received_ns, tie-break, change)
    emitted = previous = 0
    while emitted < events:
        change = sim.step()
        received = int(change.at.timestamp() * 1e9) + rng.randint(120, 2400) * 1_000_000
        received = max(received, previous + 1000)
        while resends and resends[0][0] <= received and emitted < events:
            ns, _, resent = heapq.heappop(resends)
            previous = ns
            emitted += 1
            yield ns, resent, sim
        if emitted >= events:
            return
        if change.action == "Update" and rng.random() < DROP_RATE:
            continue
        previous = received
        emitted += 1
        yield received, change, sim
        if rng.random() < DUPLICATE_RATE:
            heapq.heappush(resends, (received + int(rng.uniform(2.0, 45.0) * 1e9), emitted,
                                     change))


def iter_deliveries(events: int, seed: int, end: datetime | None = None
                    ) -> Iterator[tuple[int, bytes]]:
    """Yield `events` (received_ns, body) in arrival order; the last arrives near `end`."""
    end = end or datetime.now(UTC)
    gap = _gap_for(events, seed)
    last = 0
    for ns, _, _ in _arrivals(events, seed, gap):  # clock only: where does the data end?
        last = ns
    shift = int((end - timedelta(seconds=3)).timestamp() * 1e9) - last
    hooks = creator = None
    for ns, change, sim in _arrivals(events, seed, gap):
        if hooks is None:
            hooks = demo_subscriptions(sim.account_id)
            creator = sim.users[0]["Id"]
        body = delivery_body(change, account_id=sim.account_id,
                             webhook_id=hooks[(change.entity, change.action)],
                             webhook_creator_id=creator)
        yield ns + shift, orjson.dumps(body)


def write_journal(settings: Settings, events: int, seed: int) -> int:
    """Write the seeded deliveries to the data dir's journal; return how many."""
    journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
    written = 0
    try:
        payloads: list[bytes] = []
        stamps: list[int] = []
        for ns, body in iter_deliveries(events, seed):
            payloads.append(body)
            stamps.append(ns)
            if len(payloads) >= CHUNK:
                journal.append_many(payloads, received_ns=stamps)
                written += len(payloads)
                payloads, stamps = [], []
        if payloads:
            journal.append_many(payloads, received_ns=stamps)
            written += len(payloads)
    finally:
        journal.close()
    return written


def sync_directory_rows(settings: Settings, seed: int) -> None:
    """Store the simulated account's users and custom fields, as a directory sync would."""
    sim = Simulation(seed=seed)
    with Store(settings).writer() as con:
        upsert_directory(con, sim.users, sim.fields, datetime.now(UTC))


def timed_rebuild(settings: Settings, workers: int | None = None) -> tuple[float, object]:
    """Run `rebuild(settings)` and return (seconds, report)."""
    start = time.perf_counter()
    report = rebuild(settings, workers=workers)
    return time.perf_counter() - start, report


def _read_marker(path: Path) -> BuiltData | None:
    try:
        info = json.loads((path / MARKER).read_text())
        return BuiltData(**info)
    except (OSError, ValueError, TypeError):
        return None


def _write_marker(built: BuiltData) -> None:
    info = asdict(built)
    info.pop("reused")
    (Path(built.data_dir) / MARKER).write_text(json.dumps(info, indent=2))


def ensure_data(events: int, cache_dir: Path | None, seed: int = DEFAULT_SEED,
                log: Callable[[str], None] = print) -> BuiltData:
    """Return the benchmark data dir for (events, seed), building it if it is not cached.

    A cached dir whose store has an older schema is migrated in place, as the program
    does to a user's data dir.
    """
    base = (cache_dir or Path(tempfile.gettempdir()) / "ploomes-bench").expanduser().resolve()
    path = base / f"events-{events}-seed-{seed}"
    built = _read_marker(path)
    if built and built.format == FORMAT and built.journal_records == events:
        if (path / "ploomes.duckdb").exists():
            if built.schema_version != SCHEMA_VERSION:
                # what an upgraded program does to a user's data dir: migrate in place
                start = time.perf_counter()
                Store(built.settings).ensure_ready()
                log(f"{path}: migrated schema {built.schema_version} → {SCHEMA_VERSION} "
                    f"in {time.perf_counter() - start:.1f} s")
                built.schema_version = SCHEMA_VERSION
                _write_marker(built)
            built.reused = True
            log(f"reusing {path} (built {built.built_at})")
            return built
        log(f"{path}: journal reused, store rebuilt")
        generate_seconds = built.generate_seconds
    else:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        log(f"generating {events:,} deliveries into {path / 'journal'} …")
        start = time.perf_counter()
        written = write_journal(bench_settings(path), events, seed)
        generate_seconds = time.perf_counter() - start
        log(f"  {written:,} journal records in {generate_seconds:.1f} s")
    settings = bench_settings(path)
    log(f"rebuilding the store from the journal ({events:,} records) …")
    seconds, report = timed_rebuild(settings)
    log(f"  rebuilt in {seconds:.1f} s")
    sync_directory_rows(settings, seed)
    built = BuiltData(
        data_dir=str(path), events=events, seed=seed, journal_records=report.journal_records,
        schema_version=SCHEMA_VERSION, generate_seconds=generate_seconds,
        rebuild_seconds=seconds, stored_events=report.events,
        field_changes=report.field_changes, duplicates=report.duplicates, gaps=report.gaps,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"))
    _write_marker(built)
    return built


def store_counts(settings: Settings) -> dict[str, int]:
    """Return row counts of the main tables."""
    with Store(settings).reader() as con:
        row = fetch_one(con, "SELECT (SELECT count(*) FROM events), "
                             "(SELECT count(*) FROM field_changes), "
                             "(SELECT count(*) FROM record_state), "
                             "(SELECT count(*) FROM continuity_gaps)")
    return dict(zip(("events", "field_changes", "record_state", "continuity_gaps"), row,
                    strict=True))


# -- timing and tables -------------------------------------------------------------------

def median_ms(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> tuple[float, list]:
    """Run fn `warmup` times, then `repeat` times; return (median ms, all ms)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs), runs


def verdict(value: float, target: float) -> str:
    """Return 'pass' when value is within target, else 'MISS'."""
    return "pass" if value <= target else "MISS"


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    """Print a plain-text table with a title."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
