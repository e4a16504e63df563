"""Benchmark: what the change model costs at ingest, a rebuild, and its queries at 1M events.

Prints, in one run on the seeded deliveries of `bench/common.py`:
  1. ingest throughput (events/s) through `Pipeline.apply` with diffs (`derive=True`) and
     without (`derive=False`, events only) on the same first `--ingest-events` journal
     records, each into a fresh store, and their ratio;
  2. the time of `rebuild(settings)` (what `python -m ploomes rebuild` runs) on the whole
     journal of `--events` records, with its steps' seconds and the CPU it took;
  3. the median of several runs of each query function of `ploomes.queries` on that
     store, against the 100 ms target.
Asserts nothing.

    python bench/change_model.py [--events 1000000] [--data-dir DIR] [--ingest-events 100000]
                                 [--only rebuild] [--workers N]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from common import (
    add_common_args,
    bench_settings,
    ensure_data,
    median_ms,
    print_table,
    store_counts,
    timed_rebuild,
    verdict,
)

from ploomes.ingest.pipeline import Pipeline
from ploomes.intake.journal import iter_records
from ploomes.queries import events as qevents
from ploomes.queries import records as qrecords
from ploomes.queries import users as qusers
from ploomes.store import Store, fetch_one

QUERY_TARGET_MS = 100.0
BATCH = 5000  # records per Pipeline.apply, as rebuild and the ingest worker use
RARE_TEXT = "no-such-text-xq"  # matches nothing: the whole search space is read


def ingest_rate(records: list, derive: bool) -> float:
    """Apply records to a fresh store in batches; return events per second."""
    folder = Path(tempfile.mkdtemp(prefix="ploomes-ingest-"))
    try:
        store = Store(bench_settings(folder / "data"))
        store.ensure_ready()
        pipeline = Pipeline(derive=derive)
        with store.writer() as con:
            start = time.perf_counter()
            for i in range(0, len(records), BATCH):
                pipeline.apply(con, records[i:i + BATCH])
                # stage 2 (the change model) for what stage 1 just stored
                while pipeline.derive_pending(con, BATCH) is not None:
                    pass
            seconds = time.perf_counter() - start
        return len(records) / seconds
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench_ingest(settings, count: int, rounds: int) -> None:
    """Print ingest throughput with and without diffs on the same records."""
    records = []
    for record in iter_records(settings.journal_dir):
        records.append(record)
        if len(records) >= count:
            break
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):  # alternate, so drift in the machine hits both alike
        for derive in (False, True):
            rates[derive].append(ingest_rate(records, derive))
    without, with_diffs = statistics.median(rates[False]), statistics.median(rates[True])
    print_table(f"Ingest throughput: Pipeline.apply on the first {len(records):,} journal "
                f"records, batches of {BATCH}, median of {rounds} round(s)",
                ["run", "events/s", "rounds (events/s)"],
                [["without diffs (derive=False)", f"{without:,.0f}",
                  ", ".join(f"{r:,.0f}" for r in rates[False])],
                 ["with diffs (derive=True)", f"{with_diffs:,.0f}",
                  ", ".join(f"{r:,.0f}" for r in rates[True])],
                 ["ratio with / without", f"{with_diffs / without:.2f}",
                  f"the change model costs {100 * (1 - with_diffs / without):.0f} % of "
                  "ingest throughput"]])


def pick_parameters(con) -> dict:
    """Choose realistic arguments from the data: a busy deal, a busy user, a name…"""
    deal = fetch_one(con, "SELECT entity, record_id FROM events WHERE entity = 'Deals' "
                          "AND record_id IS NOT NULL GROUP BY ALL ORDER BY count(*) DESC, "
                          "record_id LIMIT 1")
    user = fetch_one(con, "SELECT action_user_id FROM events WHERE action_user_id IS NOT NULL "
                          "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1")[0]
    newest, oldest = fetch_one(con, "SELECT max(received_at), min(received_at) FROM events")
    event_id = fetch_one(con, "SELECT max(id) FROM events WHERE duplicate_of IS NULL")[0]
    gap = fetch_one(con, "SELECT entity, record_id FROM continuity_gaps "
                         "ORDER BY event_id DESC LIMIT 1")
    # a word of a deal title seen a year ago and still present: a realistic name search
    title = fetch_one(con, "SELECT state->>'$.Title' FROM record_state "
                           "WHERE entity = 'Deals' AND state->>'$.Title' IS NOT NULL "
                           "ORDER BY last_event_id LIMIT 1")[0]
    return {"entity": deal[0], "record_id": int(deal[1]), "user": int(user),
            "newest": newest, "oldest": oldest, "event_id": int(event_id),
            "gap": (gap[0], int(gap[1])) if gap else (deal[0], int(deal[1])),
            "title_word": max(title.split(), key=len)}


def query_cases(p: dict) -> list[tuple[str, object]]:
    """Return (label, call) for each query function, as the pages and tests use them."""
    week_ago = p["newest"] - timedelta(days=7)
    flt = qevents.EventFilter
    return [
        ("field_changes_of('StageId')",
         lambda con: qrecords.field_changes_of(con, "StageId")),
        ("field_changes_of('StageId', entity, last 7 d)",
         lambda con: qrecords.field_changes_of(con, "StageId", entity="Deals", start=week_ago)),
        ("user_changes(busiest user)", lambda con: qusers.user_changes(con, p["user"])),
        ("changes_matching(common word)", lambda con: qrecords.changes_matching(con, "Padaria")),
        (f"changes_matching('{RARE_TEXT}')", lambda con: qrecords.changes_matching(con, RARE_TEXT)),
        ("changes_matching(word, field=Title)",
         lambda con: qrecords.changes_matching(con, "Padaria", field_path="Title")),
        ("record_events(busiest deal)",
         lambda con: qrecords.record_events(con, p["entity"], p["record_id"])),
        ("record_history(busiest deal)",
         lambda con: qrecords.record_history(con, p["entity"], p["record_id"])),
        ("state_at(busiest deal, now)",
         lambda con: qrecords.state_at(con, p["entity"], p["record_id"])),
        ("find_records(entity, record_id)",
         lambda con: qrecords.find_records(con, entity=p["entity"], record_id=p["record_id"])),
        (f"find_records(Deals, text='{p['title_word']}')",
         lambda con: qrecords.find_records(con, entity="Deals", text=p["title_word"])),
        (f"find_records(text='{RARE_TEXT}')",
         lambda con: qrecords.find_records(con, text=RARE_TEXT)),
        ("continuity_gaps(all)", lambda con: qrecords.continuity_gaps(con)),
        ("continuity_gaps(one record)",
         lambda con: qrecords.continuity_gaps(con, p["gap"][0], p["gap"][1])),
        ("count_events(no filter)", lambda con: qevents.count_events(con, flt())),
        ("list_events(no filter, 50)", lambda con: qevents.list_events(con, flt())),
        ("events_page(no filter, page 1)", lambda con: qevents.events_page(con, flt())),
        ("events_page(no filter, page 100)",
         lambda con: qevents.events_page(con, flt(), page=100)),
        ("events_page(entity+action)",
         lambda con: qevents.events_page(con, flt(entity="Deals", action="Win"))),
        ("events_page(user)",
         lambda con: qevents.events_page(con, flt(action_user_id=p["user"]))),
        ("events_page(record)",
         lambda con: qevents.events_page(con, flt(entity=p["entity"], record_id=p["record_id"]))),
        ("events_page(field=StageId)", lambda con: qevents.events_page(con, flt(field="StageId"))),
        ("events_page(text=common word)",
         lambda con: qevents.events_page(con, flt(text="Padaria"))),
        (f"events_page(text='{RARE_TEXT}')",
         lambda con: qevents.events_page(con, flt(text=RARE_TEXT))),
        (f"events_page(text='{RARE_TEXT}', last 7 d)",
         lambda con: qevents.events_page(con, flt(text=RARE_TEXT, start=week_ago))),
        ("filter_options()", lambda con: qevents.filter_options(con)),
        ("field_options()", lambda con: qevents.field_options(con)),
        ("field_options('Deals')", lambda con: qevents.field_options(con, "Deals")),
        ("event_detail(newest event)", lambda con: qevents.event_detail(con, p["event_id"])),
    ]


def bench_queries(settings, repeat: int) -> None:
    """Print the median time of each query function on the store."""
    store = Store(settings)
    rows = []
    with store.reader() as con:
        params = pick_parameters(con)
        for label, call in query_cases(params):
            median, runs = median_ms(lambda call=call: call(con), repeat=repeat)
            rows.append([label, f"{median:.1f}", f"{max(runs):.1f}", f"{QUERY_TARGET_MS:.0f}",
                         verdict(median, QUERY_TARGET_MS)])
    print_table(f"Query functions of ploomes.queries on {store_counts(settings)['events']:,} "
                f"events (median of {repeat} runs after one warm-up, one open connection)",
                ["query", "median ms", "max ms", "target ms", "result"], rows)
    missed = sum(1 for r in rows if r[-1] == "MISS")
    print(f"{len(rows) - missed} of {len(rows)} within {QUERY_TARGET_MS:.0f} ms")


def main() -> None:
    """Run the three parts and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--ingest-events", type=int, default=100_000,
                        help="journal records for the with/without diffs comparison")
    parser.add_argument("--ingest-rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each query")
    parser.add_argument("--reuse-rebuild", action="store_true",
                        help="report the cached data dir's rebuild time instead of "
                             "rebuilding again")
    parser.add_argument("--only", choices=("ingest", "rebuild", "queries"),
                        help="run one part only")
    parser.add_argument("--workers", type=int, default=None,
                        help="rebuild's worker processes (default: its own choice)")
    args = parser.parse_args()

    built = ensure_data(args.events, args.data_dir, args.seed)
    settings = built.settings
    print(f"\ndata dir: {built.data_dir}\n{store_counts(settings)}")

    if args.only in (None, "ingest"):
        bench_ingest(settings, min(args.ingest_events, args.events), args.ingest_rounds)
    if args.only in (None, "rebuild"):
        bench_rebuild(built, settings, args.reuse_rebuild, args.workers)
    if args.only in (None, "queries"):
        bench_queries(settings, args.repeat)


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its ended children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def bench_rebuild(built, settings, reuse: bool, workers: int | None) -> None:
    """Print the time of a rebuild of the whole journal, step by step."""
    if built.reused and not reuse:
        cpu_before = _cpu_seconds()
        seconds, report = timed_rebuild(settings, workers)
        cpu = [after - before for after, before in zip(_cpu_seconds(), cpu_before,
                                                       strict=True)]
        rebuilt = f"{seconds:.1f}"
        note = (f"{report.journal_records:,} journal records → {report.events:,} events, "
                f"{report.field_changes:,} field changes; CPU {cpu[0]:.0f} s in this "
                f"process, {cpu[1]:.0f} s in workers")
        print_table("Rebuild steps (seconds of wall time; derive = waiting for the workers)",
                    list(report.seconds), [[f"{v:.1f}" for v in report.seconds.values()]])
    else:
        rebuilt = f"{built.rebuild_seconds:.1f}"
        note = ("measured when this data dir was built" if not built.reused
                else "cached figure from when this data dir was built (--reuse-rebuild)")
        note += f"; {built.stored_events:,} events, {built.field_changes:,} field changes"
    print_table("Rebuild: rebuild(settings), i.e. `python -m ploomes rebuild`",
                ["journal records", "seconds", "events/s", "note"],
                [[f"{built.journal_records:,}", rebuilt,
                  f"{built.journal_records / float(rebuilt):,.0f}", note]])


if __name__ == "__main__":
    main()
