"""Benchmark: what 100 alert rules cost at ingest, and a 30-day rule test on 1M events.

Prints:
  1. ingest throughput (events/s) through `Pipeline.apply` + stage 2 on the same first
     `--ingest-events` journal records of the seeded data (`bench/common.py`), each run
     into a fresh store: without alerts, and with 100 rules evaluated once per event
     (`AlertDecider`, as the ingest process runs it: decisions and messages written in
     the stage-2 transaction), alternating, median of `--rounds`; goal at most 10 % slower;
  2. the time of `backtest(rule, 30 days)` (the Alerts page's "test against the last 30
     days" and `alerts test`) for rules of every kind on a copy of the 1M-event store,
     median of 5 after one warm-up; goal under 2 s.
Asserts nothing. Sending is not measured: it is a thread that waits on the channels.

    python bench/alerts.py [--events 1000000] [--ingest-events 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from common import add_common_args, bench_settings, ensure_data, median_ms, print_table, verdict

from ploomes.alerts.backtest import backtest
from ploomes.alerts.decide import AlertDecider
from ploomes.alerts.rules import Rule, add_rule, business_hours, check_spec
from ploomes.ingest.pipeline import Pipeline
from ploomes.intake.journal import iter_records
from ploomes.store import Store, fetch_one

BATCH = 5000
SLOWER_GOAL = 0.10
BACKTEST_GOAL_MS = 2000.0
PLAN = "deal_5BD0F521-BE84-462B-BB9B-E05D0E8E2329"  # a custom field of the seeded account


def hundred_rules() -> list[tuple[str, str, dict]]:
    """Return 100 rules like an account would keep: most watch one field or action, a
    few fire often (they hit the rate limit), some are bursts."""
    rules: list[tuple[str, str, dict]] = []
    for i in range(30):  # a deal moved to one stage
        rules.append((f"estágio {i}", "change", {"entity": "Deals", "actions": ["Update"],
                                                 "field": "StageId", "condition": "changed_to",
                                                 "to": str(1000 + i)}))
    for i in range(20):  # big wins, by amount
        rules.append((f"ganho acima {i}", "change", {
            "entity": "Deals", "actions": ["Win"], "field": "Amount", "condition": "greater",
            "value": str(50_000 + 10_000 * i)}))
    for i in range(15):  # a record reassigned, by someone
        rules.append((f"responsável {i}", "change", {
            "entity": ["Contacts", "Deals", "Tasks"][i % 3], "actions": ["Update"],
            "field": "OwnerId", "condition": "changed", "users": [i + 1]}))
    for i in range(10):  # deletions by anyone but the integration user
        rules.append((f"exclusão {i}", "change", {
            "entity": ["Contacts", "Deals", "Tasks"][i % 3], "actions": ["Delete"],
            "not_users": [999]}))
    for i in range(10):  # a custom field with a value
        rules.append((f"plano {i}", "change", {"entity": "Deals", "field": PLAN,
                                               "condition": "contains", "value": f"Plano {i}"}))
    for i in range(15):  # bursts: mass deletion and reassignment
        rules.append((f"rajada {i}", "burst", {
            "actions": ["Delete"] if i % 2 else ["Update"],
            "field": None if i % 2 else "OwnerId",
            "condition": "any" if i % 2 else "changed", "count": 20 + i, "minutes": 10}))
    return rules


def ingest_rate(records: list, rules: bool) -> tuple[float, float, int]:
    """Apply records to a fresh store; return (events per second, CPU µs per event of
    this process, alerts decided). CPU time is what the comparison uses: the machine is
    shared, and wall time moves with what others run."""
    folder = Path(tempfile.mkdtemp(prefix="ploomes-alerts-"))
    try:
        settings = bench_settings(folder / "data")
        store = Store(settings)
        store.ensure_ready()
        if rules:
            for name, kind, spec in hundred_rules():
                add_rule(store, name, kind, spec, "json://127.0.0.1:9/bench")
        pipeline = Pipeline()
        decider = AlertDecider(settings)
        with store.writer() as con:
            if rules:
                decider.reload(con)
                pipeline.observer = decider
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(records), BATCH):
                pipeline.apply(con, records[i:i + BATCH])
                while pipeline.derive_pending(con, BATCH) is not None:
                    decider.take_ready()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            decided = fetch_one(con, "SELECT count(*) FROM alerts")
        return (len(records) / seconds, cpu * 1e6 / len(records),
                int(decided[0]) if decided else 0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench_ingest(settings, count: int, rounds: int) -> None:
    """Print ingest throughput with 100 rules on and off on the same records."""
    records = []
    for record in iter_records(settings.journal_dir):
        records.append(record)
        if len(records) >= count:
            break
    rates: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    decided = 0
    for on in (False, True):  # warm-up, not counted: imports, caches, the first file
        ingest_rate(records[:2000], on)
    for _ in range(rounds):  # alternate, so drift in the machine hits both alike
        for on in (False, True):
            rate, cpu, found = ingest_rate(records, on)
            rates[on].append(rate)
            cpus[on].append(cpu)
            decided = max(decided, found)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    cpu_off, cpu_on = statistics.median(cpus[False]), statistics.median(cpus[True])
    slower = cpu_on / cpu_off - 1
    print_table(f"Ingest: Pipeline.apply + stage 2 on the first {len(records):,} journal "
                f"records, batches of {BATCH}, median of {rounds} round(s)",
                ["run", "CPU µs/event", "events/s (wall)", "rounds: CPU µs/event"],
                [["alerts off (no rules)", f"{cpu_off:,.0f}", f"{off:,.0f}",
                  ", ".join(f"{r:,.0f}" for r in cpus[False])],
                 [f"100 rules on ({decided:,} alerts decided)", f"{cpu_on:,.0f}",
                  f"{on:,.0f}", ", ".join(f"{r:,.0f}" for r in cpus[True])],
                 ["slower by (CPU per event)", f"{100 * slower:.1f} %",
                  f"wall: {100 * (1 - on / off):.1f} %",
                  f"goal ≤ {100 * SLOWER_GOAL:.0f} %: {verdict(slower, SLOWER_GOAL)}"]])


def bench_backtest(settings) -> None:
    """Print the time of a 30-day rule test per kind on a copy of the 1M-event store."""
    folder = Path(tempfile.mkdtemp(prefix="ploomes-alerts-bt-"))
    try:
        copy = bench_settings(folder / "data")
        copy.data_dir.mkdir(parents=True)
        shutil.copy2(settings.db_path, copy.db_path)  # the shared cache stays at its schema
        store = Store(copy)
        store.ensure_ready()
        hours = business_hours(copy)
        cases = [
            ("change: Deals · Update · StageId changed", "change",
             {"entity": "Deals", "actions": ["Update"], "field": "StageId"}),
            ("change: Deals · Win · Amount > 50000", "change",
             {"entity": "Deals", "actions": ["Win"], "field": "Amount",
              "condition": "greater", "value": "50000"}),
            ("change: any Delete except user 999", "change",
             {"actions": ["Delete"], "not_users": [999]}),
            ("change: custom field contains", "change",
             {"entity": "Deals", "field": PLAN, "condition": "contains", "value": "Plano"}),
            ("burst: 20 Deletes by a user in 10 min", "burst",
             {"actions": ["Delete"], "count": 20, "minutes": 10}),
            ("burst: 20 OwnerId changes in 10 min", "burst",
             {"field": "OwnerId", "count": 20, "minutes": 10}),
            ("silence: 30 min in business hours", "silence", {"minutes": 30}),
            ("quality: 1 gap in 60 min", "quality",
             {"what": "gaps", "count": 1, "minutes": 60}),
        ]
        rows = []
        with store.reader() as con:
            events = fetch_one(con, "SELECT count(*), max(received_at) FROM events")
            assert events is not None
            now = events[1] + timedelta(seconds=1)
            month = fetch_one(con, "SELECT count(*) FROM events WHERE received_at >= ?",
                              [now - timedelta(days=30)])
            for label, kind, spec in cases:
                rule = Rule(0, label, kind, check_spec(kind, spec))
                fired = backtest(con, rule, 30.0, hours, now).fired
                ms, runs = median_ms(lambda r=rule: backtest(con, r, 30.0, hours, now))
                rows.append([label, f"{fired:,}", f"{ms:,.0f}",
                             verdict(ms, BACKTEST_GOAL_MS),
                             ", ".join(f"{r:,.0f}" for r in runs)])
        print_table(f"Rule test over the last 30 days on {events[0]:,} events "
                    f"({month[0] if month else 0:,} in those 30 days), median of 5 "
                    f"after a warm-up", ["rule", "would fire", "ms", "goal < 2 s", "runs (ms)"],
                    rows)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--ingest-events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cached = ((args.data_dir or Path(tempfile.gettempdir()) / "ploomes-bench")
              / f"events-{args.events}-seed-{args.seed}")
    if (cached / "bench.json").exists() and (cached / "ploomes.duckdb").exists():
        # read only (its journal, and a copy of its store): other benchmarks share this
        # cache, and migrating it in place would leave them a schema they may not know
        print(f"reading {cached} (journal and a copy of its store)", flush=True)
        settings = bench_settings(cached)
    else:
        settings = ensure_data(args.events, args.data_dir, args.seed,
                               log=lambda text: print(text, flush=True)).settings
    bench_ingest(settings, args.ingest_events, args.rounds)
    bench_backtest(settings)


if __name__ == "__main__":
    main()
