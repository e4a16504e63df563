"""Benchmark: the dashboard's pages on a store of 1M synthetic events.

Prints, on the seeded data dir of `bench/common.py`:
  1. per page (Overview, Events, Records, Users, Webhooks without an API key, Status):
     the time of each query function the page calls, called as the page calls it (one
     read connection opened per call, as `views.common.cached_query` does on a cache
     miss), and the page's total against the 150 ms target;
  2. each page's first full render with Streamlit's AppTest, in a fresh Python process
     per page (cold caches and imports), against 2 s, with that process's peak RSS;
  3. the dashboard process's peak memory: `streamlit run dashboard.py` on a loopback
     port, every page visited with headless Chromium (Debian /usr/bin/chromium via
     playwright), then VmHWM of the server process, against 400 MB. The browser's
     time to a fully rendered page is printed too.
Asserts nothing.

    python bench/dashboard.py [--events 1000000] [--data-dir DIR] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from common import (
    ROOT,
    add_common_args,
    ensure_data,
    free_port,
    median_ms,
    print_table,
    verdict,
)

from ploomes.queries import events as qevents
from ploomes.queries import records as qrecords
from ploomes.queries import status as qstatus
from ploomes.queries import users as qusers
from ploomes.queries.status import demo_count
from ploomes.store import Store, schema_version
from views import PAGES as DASHBOARD_PAGES

QUERY_TARGET_MS = 150.0
RENDER_TARGET_S = 2.0
MEMORY_TARGET_MB = 400.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TZ = "America/Sao_Paulo"
# (title, page file, URL path in the running app): the dashboard's own page list; the
# default page is served at "/", the others at their file's name
PAGES = tuple((f"{title} (no API key)" if title == "Webhooks" else title, path,
               "" if index == 0 else Path(path).stem)
              for index, (path, title, _icon) in enumerate(DASHBOARD_PAGES))


# -- 1. each page's queries ----------------------------------------------------------------

def page_queries(store: Store) -> dict[str, list[tuple[str, object]]]:
    """Return, per page, (label, fn(con)) for each query its first render runs, in order.

    Arguments are the pages' defaults: Overview's 7 d timeline by entity, Events' first
    page of 50 with no filter, Users' "All" range and its busiest user (and the same with
    the "90 d" range), Status' refused requests. Every page but Webhooks and Status lists
    the accounts seen (the sidebar's account choice). Records renders no other query until
    a record is asked for; its second row is a record looked up by name, as a user does next.
    """
    with store.reader() as con:
        top_user = qusers.users_summary(con).iloc[0]["action_user_id"]
        top_user = None if top_user != top_user else int(top_user)  # NaN: no ActionUserId
        deal = con.execute("SELECT entity, record_id FROM events WHERE entity = 'Deals' "
                           "GROUP BY ALL ORDER BY count(*) DESC, record_id LIMIT 1").fetchall()[0]
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(days=7)
    since90 = end - timedelta(minutes=1, days=90)  # the Users page's "90 d"
    banner = ("demo_count (banner)", demo_count)
    accounts = ("accounts_seen (account choice)", qstatus.accounts_seen)
    entity, record_id = deal[0], int(deal[1])
    # what the Events page runs before its table, whatever the filter
    events_page = [banner, accounts, ("filter_options", qevents.filter_options),
                   ("field_options(any entity)", lambda con: qevents.field_options(con, None))]
    first_page = ("events_page(no filter, 1, 50)",
                  lambda con: qevents.events_page(con, qevents.EventFilter(), 1, 50))
    return {
        "Overview": [
            banner, accounts,
            ("event_count", qstatus.event_count),
            ("overview_summary", lambda con: qstatus.overview_summary(con)),
            ("last_delivery_at", qstatus.last_delivery_at),
            ("timeline(7 d, by entity)",
             lambda con: qstatus.timeline(con, start, end, by="entity",
                                           bucket=qstatus.bucket_for(start, end), tz=TZ)),
        ],
        "Events": [*events_page, first_page],
        "Events, text search": [
            *events_page,
            ("events_page(text='Padaria')",
             lambda con: qevents.events_page(con, qevents.EventFilter(text="Padaria"), 1, 50)),
        ],
        "Events, one event open": [
            *events_page, first_page,
            ("event_detail", lambda con: qevents.event_detail(
                con, int(con.execute("SELECT max(id) FROM events").fetchall()[0][0]))),
        ],
        "Records": [
            banner, accounts,
            ("distinct_values(entity)", lambda con: qevents.distinct_values(con, "entity")),
        ],
        "Records, a record found by name": [
            banner, accounts,
            ("distinct_values(entity)", lambda con: qevents.distinct_values(con, "entity")),
            ("find_records(Deals, text)",
             lambda con: qrecords.find_records(con, entity="Deals", text="Padaria")),
            ("record_events", lambda con: qrecords.record_events(con, entity, record_id)),
            ("find_records(entity, id)",
             lambda con: qrecords.find_records(con, entity=entity, record_id=record_id)),
            ("continuity_gaps(record)",
             lambda con: qrecords.continuity_gaps(con, entity, record_id)),
            ("record_history", lambda con: qrecords.record_history(
                con, entity, record_id, include_bookkeeping=False)),
            ("state_at(last event)", lambda con: qrecords.state_at(
                con, entity, record_id, event_id=2**62)),
        ],
        "Users": [
            banner, accounts,
            ("event_count", qstatus.event_count),
            ("users_summary(all)", lambda con: qusers.users_summary(con)),
            ("user_entity_actions(all)", lambda con: qusers.user_entity_actions(con)),
            ("user_heatmap(busiest)", lambda con: qusers.user_heatmap(con, top_user, tz=TZ)),
            ("user_top_fields(busiest)",
             lambda con: qusers.user_top_fields(con, top_user, limit=10)),
        ],
        "Users, last 90 days": [
            banner, accounts,
            ("event_count", qstatus.event_count),
            ("users_summary(90 d)", lambda con: qusers.users_summary(con, since=since90)),
            ("user_entity_actions(90 d)",
             lambda con: qusers.user_entity_actions(con, since=since90)),
            ("user_heatmap(busiest, 90 d)",
             lambda con: qusers.user_heatmap(con, top_user, tz=TZ, since=since90)),
            ("user_top_fields(busiest, 90 d)",
             lambda con: qusers.user_top_fields(con, top_user, limit=10, since=since90)),
        ],
        "Webhooks (no API key)": [banner],
        "Status": [
            banner,
            ("schema_version", schema_version),
            ("ingest_positions", qstatus.ingest_positions),
            ("table_counts", qstatus.table_counts),
            ("refused_counts", qstatus.refused_counts),
            ("refused_requests(500)", lambda con: qstatus.refused_requests(con, limit=500)),
        ],
    }


def bench_queries(store: Store, plain: Store, repeat: int) -> None:
    """Print each page's query times against the target.

    Each query is timed three ways: through the dashboard's store (`store`: the file is
    kept open 0.5 s between queries, as a page render runs them), through a store that
    opens the file for each query (`plain`), and on an already open connection (the SQL
    alone).
    """
    def through(which: Store, fn) -> float:
        def call():
            with which.reader() as con:
                return fn(con)
        return median_ms(call, repeat=repeat)[0]

    # first with nothing open in this process (DuckDB shares an open file's instance
    # within a process: an open beside a kept one is cheap)
    pages = page_queries(plain)
    each = {(page, label): through(plain, fn) for page, calls in pages.items()
            for label, fn in calls}
    with plain.reader() as con:
        sql = {(page, label): median_ms(lambda fn=fn: fn(con), repeat=repeat)[0]
               for page, calls in pages.items() for label, fn in calls}
    rows = []
    for page, calls in pages.items():
        totals = [0.0, 0.0, 0.0]
        for label, fn in calls:
            key = (page, label)
            kept = through(store, fn)
            totals = [totals[0] + kept, totals[1] + each[key], totals[2] + sql[key]]
            rows.append([page, label, f"{kept:.1f}", f"{each[key]:.1f}", f"{sql[key]:.1f}",
                         verdict(kept, QUERY_TARGET_MS)])
        rows.append([page, "= page total", *(f"{t:.1f}" for t in totals),
                     verdict(totals[0], QUERY_TARGET_MS)])
        rows.append(["", "", "", "", "", ""])
    print_table(f"Page queries, median of {repeat} runs each (ms; target "
                f"{QUERY_TARGET_MS:.0f} ms per page): 'dashboard' through the dashboard's "
                "store, 'open each' opening the file per query, 'sql' on an open connection",
                ["page", "query", "dashboard", "open each", "sql", "result"], rows)


# -- 2. first render with AppTest, one fresh process per page ------------------------------

RENDER_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[2], default_timeout=120)
page = sys.argv[3]
if page != "views/overview.py":
    at.switch_page(page)
start = time.perf_counter()
at.run()
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec,
# so a big benchmark process would show up as every page's peak
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": seconds, "errors": [str(e.value)[:200] for e in at.exception],
                  "title": [t.value for t in at.title][:1], "maxrss_kb": int(hwm)}))
"""


def _dashboard_env(data_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLOOMES_")}
    env["PLOOMES_DATA_DIR"] = data_dir
    env["PLOOMES_RECEIVER_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens
    return env


def bench_apptest(data_dir: str) -> None:
    """Print each page's first render time in a fresh process, and that process's peak RSS."""
    rows = []
    for title, path, _ in PAGES:
        proc = subprocess.run(
            [sys.executable, "-c", RENDER_SCRIPT, str(ROOT), str(ROOT / "dashboard.py"), path],
            cwd=ROOT, env=_dashboard_env(data_dir), capture_output=True, text=True,
            timeout=600)
        try:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            rows.append([title, "failed", "", "", proc.stderr.strip()[-200:]])
            continue
        note = "; ".join(out["errors"]) or (out["title"][0] if out["title"] else "")
        rows.append([title, f"{out['seconds']:.2f}", f"{RENDER_TARGET_S:.0f}",
                     verdict(out["seconds"], RENDER_TARGET_S) if not out["errors"] else "ERROR",
                     f"{out['maxrss_kb'] / 1024:.0f}", note])
    print_table("First render with AppTest.from_file('dashboard.py') + switch_page, one fresh "
                "process per page (cold imports and caches)",
                ["page", "seconds", "target s", "result", "peak RSS MB", "title / error"], rows)


# -- 3. the real server and a browser ------------------------------------------------------

def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("streamlit exited before answering")
        try:
            if requests.get(url + "/_stcore/health", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError("streamlit did not answer in time")


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            name, value = line.split(":", 1)
            out[name] = int(value.split()[0])
    return out


def _wait_rendered(page, timeout: float = 60.0) -> float:
    """Wait until the script has run and the app is idle (no 'running' status).

    Returns the perf_counter time the app went quiet: the 0.3 s spent confirming it
    stays quiet is not part of the render.
    """
    page.wait_for_selector("[data-testid='stMainBlockContainer'] h1", timeout=timeout * 1000)
    quiet_since = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = page.query_selector("[data-testid='stStatusWidget']")
        if running is None:
            quiet_since = quiet_since or time.perf_counter()
            if time.perf_counter() - quiet_since >= 0.3:
                return quiet_since
        else:
            quiet_since = None
        time.sleep(0.02)
    raise TimeoutError("the page kept running")


def bench_server(data_dir: str) -> None:
    """Run the dashboard server, visit every page in Chromium, print its peak memory."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=_dashboard_env(data_dir), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    rows = []
    try:
        _wait_http(url, proc)
        idle = _status_kb(proc.pid)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                for title, _, path in PAGES:
                    start = time.perf_counter()
                    page.goto(f"{url}/{path}")
                    seconds = _wait_rendered(page) - start
                    mem = _status_kb(proc.pid)
                    rows.append([title, f"{seconds:.2f}", f"{RENDER_TARGET_S:.0f}",
                                 verdict(seconds, RENDER_TARGET_S),
                                 f"{mem['VmRSS'] / 1024:.0f}", f"{mem['VmHWM'] / 1024:.0f}"])
            finally:
                browser.close()
        peak = _status_kb(proc.pid)["VmHWM"] / 1024
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print_table("`streamlit run dashboard.py`, pages visited in order with headless Chromium "
                "(each a new page load; the script's first run there, warm imports)",
                ["page", "seconds to rendered", "target s", "result", "server RSS MB",
                 "server peak MB"], rows)
    print_table("Dashboard process peak memory (VmHWM of the streamlit server after every page)",
                ["idle after start MB", "peak MB", "target MB", "result"],
                [[f"{idle['VmHWM'] / 1024:.0f}", f"{peak:.0f}", f"{MEMORY_TARGET_MB:.0f}",
                  verdict(peak, MEMORY_TARGET_MB)]])


def main() -> None:
    """Run the three parts and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each page's queries")
    parser.add_argument("--no-browser", action="store_true",
                        help="skip the real server and Chromium (no peak memory figure)")
    args = parser.parse_args()
    built = ensure_data(args.events, args.data_dir, args.seed)
    print(f"\ndata dir: {built.data_dir} ({built.stored_events:,} events)")
    # the dashboard's own store settings (views/common.py)
    store = Store(built.settings, busy_timeout=10.0, memory_limit="256MB", keep_reader=0.5)
    plain = Store(built.settings, busy_timeout=10.0, memory_limit="256MB")
    bench_queries(store, plain, args.repeat)
    bench_apptest(built.data_dir)
    if args.no_browser:
        print("\n(--no-browser: the server's peak memory was not measured)")
    elif not Path(CHROMIUM).exists():
        print(f"\n{CHROMIUM} not found (apt-get install chromium): server memory not measured")
    else:
        bench_server(built.data_dir)


if __name__ == "__main__":
    main()
