"""Benchmark: durable deliveries/s of the receiver vs the same server storing nothing.

Runs wrk (Debian package `wrk`) with 16 connections against, in one run:
  1. bench/baseline_server.py: Flask on the receiver's server (gevent), answering without
     storing;
  2. receiver.py on a fresh data dir (journal + fdatasync + ingest worker into DuckDB).

Both servers run side by side and are loaded in turn, one at a time, for `--rounds`
rounds (baseline, receiver, baseline, receiver, ...): this shared machine's speed drifts
by ±15 % from one minute to the next, so one ratio of two loads a minute apart says as
much about the drift as about the receiver. Each round gives a ratio; the median and
the ratio of the totals are printed.

Each load starts once the server's /healthz says "ok" (for the receiver: its ingest
process runs too). Answer → visible in DuckDB is measured two ways during (2):
  - a probe posts a distinct delivery every 0.5 s, waits until the receiver's /healthz
    says its ingest got that far (polled every 20 ms: no DuckDB access), then opens the
    store through its read path and confirms the row is there; the figure is answer →
    row read. One read per probe: each read makes the ingest close the file
    (checkpoint) and reopen it, 29-43 ms of CPU with the reader's own on a 20,000-event
    store, so a reader polling every 100 ms measured the probe more than the receiver.
    Two reads a second is still more than the dashboard does (its Overview refreshes
    every 10 s);
  - for every delivery of the run, the receiver's own `ploomes_ingest_lag_seconds`
    histogram (journal timestamp → committed in DuckDB), read from /metrics.
Afterwards it checks that every 2xx delivery is in `events`. Also prints, per round, the
CPU time per answer of each process during the load (from /proc): the baseline's, the
receiver's own process (its event loop and threads), its ingest process and its sync
helper; and how each server's event loop thread spent the load: running, waiting for a
CPU (runnable while another thread, such as wrk's, holds it) or asleep (all its
connections waiting for their answers). Prints the figures; asserts nothing.

    python bench/receiver_load.py [--seconds 10] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import free_port  # noqa: E402

from ploomes.config import load_settings  # noqa: E402
from ploomes.demo.generator import Simulation, delivery_body  # noqa: E402
from ploomes.store import Store, fetch_one  # noqa: E402, fetch_one

KEY = "bench-validation-key-0123456789abcdef"


def server_command(which: str, port: int, data_dir: Path) -> list[str]:
    """Return the arguments (after the interpreter) that start one of the two servers."""
    if which == "baseline":
        return [str(ROOT / "bench" / "baseline_server.py"), "--port", str(port), "--key", KEY]
    return [str(ROOT / "receiver.py"), "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir)]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            # "ok" also means the ingest worker runs: a load started while it is still
            # starting (~1.5 s after the receiver answers) measures the start, not the
            # steady state; the first deliveries then wait up to ~1.7 s for it
            if requests.get(url + "/healthz", timeout=1).json().get("status") == "ok":
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise SystemExit("server did not start")


def wait_caught_up(url: str, derived: bool = False) -> None:
    """Wait (120 s at most) until the journal is all in DuckDB (derived: stage 2 too)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        health = requests.get(url + "/healthz", timeout=5).json()
        if not health["backlog"] and not (derived and health["derive_backlog"]):
            return
        time.sleep(0.1)


def sample_bodies(n: int = 2000) -> list[str]:
    """Return n realistic, different deliveries (creates, updates, wins...) as JSON lines."""
    sim = Simulation(seed=11)
    return [json.dumps(delivery_body(change, account_id=3100210, webhook_id=31005120,
                                     webhook_creator_id=31007700), ensure_ascii=False)
            for change in sim.steps(n)]


def wrk_script(bodies: list[str], workdir: Path) -> Path:
    """Write wrk's Lua script posting these bodies in turn; return its path."""
    lines = workdir / "bodies.jsonl"
    lines.write_text("\n".join(bodies) + "\n", encoding="utf-8")
    script = workdir / "post.lua"
    # each wrk thread cycles through the same deliveries, so both servers get the same load
    script.write_text(
        "local bodies = {}\n"
        f'for line in io.lines("{lines}") do bodies[#bodies + 1] = line end\n'
        "local i = 0\n"
        'local headers = {["Content-Type"] = "application/json", '
        f'["X-Ploomes-Validation-Key"] = "{KEY}"}}\n'
        "request = function()\n"
        "  i = i % #bodies + 1\n"
        '  return wrk.format("POST", nil, headers, bodies[i])\n'
        "end\n", encoding="utf-8")
    return script


def process_cpu(root_pid: int) -> dict[int, tuple[str, float]]:
    """Return {pid: (role, CPU seconds so far)} of a server process and its helpers.

    Roles: "loop" (the server process, every thread of it), "ingest" (the receiver's
    spawned ingest process) and "helper" (its sync helper); other children (such as
    multiprocessing's resource tracker) and exited ones are left out.
    """
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # bytes: a process name may hold any bytes (and parentheses)
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            pid, ppid, state = int(entry.name), int(fields[1]), fields[0]
            if pid == root_pid:
                role = "loop"
            elif ppid == root_pid and state != b"Z":
                cmdline = (entry / "cmdline").read_bytes()
                role = ("helper" if b"syncd" in cmdline else
                        "ingest" if b"spawn_main" in cmdline else None)
                if role is None:
                    continue
            else:
                continue
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        found[pid] = (role, (int(fields[11]) + int(fields[12])) / tick)
    return found


def loop_thread(pid: int) -> tuple[float, float, float] | None:
    """Return (wall clock, seconds run, seconds waited for a CPU) of a process's main thread.

    From /proc/<pid>/task/<pid>/schedstat (None where the kernel does not keep it). The
    server's event loop is its main thread: a load is limited by the loop's CPU time, and
    a loop that is runnable but waiting for a CPU (another thread of the machine, the
    load generator's too, holds it) or asleep (every connection waits for its answer)
    answers nobody meanwhile. The readings frame wrk's whole run, its start and end
    included (25-120 ms beyond a 5 s load, measured), so the shares count a little time
    without load; the baseline's loop shows 0.1-0.6 % asleep.
    """
    try:
        ran, waited, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
        return time.monotonic(), int(ran) / 1e9, int(waited) / 1e9
    except (OSError, ValueError):
        return None


def loop_shares(before: tuple[float, float, float] | None,
                after: tuple[float, float, float] | None) -> str:
    """Describe how the loop thread spent the time between two loop_thread readings."""
    if before is None or after is None:
        return "-"
    wall, ran, waited = (b - a for a, b in zip(before, after, strict=True))
    return (f"ran {ran / wall:.0%}, waited for a CPU {waited / wall:.1%}, "
            f"asleep {max(0.0, 1 - (ran + waited) / wall):.1%}")


def cpu_per_answer(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                   answers: int) -> dict[str, float | str]:
    """Return µs of CPU per answer by role between two process_cpu readings.

    A process that started meanwhile counts in full. One that ended meanwhile (a
    restarted helper or ingest) is not counted: its role is marked "restarted" instead.
    """
    out: dict[str, float | str] = {}
    for pid, (role, seconds) in after.items():
        used = seconds - before.get(pid, (role, 0.0))[1]
        out[role] = out.get(role, 0.0) + used / max(answers, 1) * 1e6
    for pid, (role, _) in before.items():
        if pid not in after:
            out[role] = "restarted"
    return out


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         url + "/ploomes/webhook"], capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return {"requests": total, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else "none",
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p99_ms": float(p99.group(1)) * scale}


class Probe(threading.Thread):
    """Posts a distinct delivery every interval and times how long until DuckDB shows it."""

    INTERVAL = 0.5

    def __init__(self, url: str, store: Store, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.store, self.stop = url, store, stop
        self.active = threading.Event()  # probes only while the receiver is under load
        self.latencies: list[float] = []
        self.sent = 0
        self.early = 0  # /healthz said ingested but the row was not readable yet

    def _ingested(self, health: http.client.HTTPConnection, delivery_id: int) -> None:
        # http.client, not requests: ~15 polls per probe, and with requests the probe
        # thread cost 30-36 µs of CPU per answer of the load it measures, 13-16 with this
        def poll() -> bytes:
            health.request("GET", "/healthz")
            return health.getresponse().read()

        deadline = time.monotonic() + 60  # a stalled ingest must not hang the benchmark
        while True:
            try:
                answer = poll()
            except (http.client.RemoteDisconnected, ConnectionError):
                # the server let the kept connection go while the probe was idle
                health.close()
                answer = poll()
            if json.loads(answer)["ingested_seq"] >= delivery_id:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"delivery {delivery_id} not ingested after 60 s")
            time.sleep(0.02)

    def run(self) -> None:
        session = requests.Session()
        where = urlsplit(self.url)
        health = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
        n = 0
        while not self.stop.is_set():
            if not self.active.wait(0.1):
                continue
            n += 1
            body = {"Action": "Update", "Entity": "Deals", "ActionUserId": 1,
                    "Old": {"Id": 900_000_000 + n}, "New": {"Id": 900_000_000 + n, "Probe": n}}
            r = session.post(self.url + "/ploomes/webhook", json=body, timeout=10,
                             headers={"X-Ploomes-Validation-Key": KEY})
            answered = time.perf_counter()
            if r.status_code != 200:
                continue
            self.sent += 1
            delivery_id = r.json()["delivery_id"]
            self._ingested(health, delivery_id)
            while True:
                with self.store.reader() as con:
                    found = fetch_one(con, "SELECT count(*) FROM events WHERE id = ?",
                                      [delivery_id])[0]
                if found:
                    self.latencies.append(time.perf_counter() - answered)
                    break
                self.early += 1
                time.sleep(0.1)
            time.sleep(max(0.0, self.INTERVAL - (time.perf_counter() - answered)))
        health.close()


def lag_histogram(url: str) -> dict[float, float]:
    """Return the receiver's ingest lag histogram: upper bound (s) -> cumulative count."""
    text = requests.get(url + "/metrics", timeout=10).text
    found = re.findall(r'^ploomes_ingest_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text,
                       re.MULTILINE)
    return {float(le): float(count) for le, count in found}


def histogram_quantile(buckets: dict[float, float], q: float) -> str:
    """Return the bucket bound under which a share q of the observations fell."""
    total = buckets[float("inf")]
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return f"<= {bound * 1000:.0f} ms" if bound != float("inf") else "> 30 s"
    return "?"


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10, help="per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="ploomes-bench-"))
    script = wrk_script(sample_bodies(), work)  # the same load for both servers
    env = {**os.environ, "PLOOMES_VALIDATION_KEYS": KEY}
    base = recv = None
    try:
        port = free_port()
        base = subprocess.Popen([sys.executable, *server_command("baseline", port, work)],
                                env=env)
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, base)

        data_dir = work / "data"
        port = free_port()
        recv = subprocess.Popen([sys.executable, *server_command("receiver", port, data_dir)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, recv)
        store = Store(load_settings(env={}, data_dir=data_dir, validation_keys=(KEY,)))
        stop = threading.Event()
        probe = Probe(url, store, stop)
        probe.start()
        rounds = []
        for _ in range(args.rounds):
            # the receiver's last round is all in DuckDB, field changes too: it is quiet
            # and takes no CPU from the baseline's load
            wait_caught_up(url, derived=True)
            before, loop = process_cpu(base.pid), loop_thread(base.pid)
            baseline = run_wrk(base_url, script, args.seconds, args.connections)
            baseline["loop"] = loop_shares(loop, loop_thread(base.pid))
            baseline["cpu"] = cpu_per_answer(before, process_cpu(base.pid),
                                             baseline["requests"])
            probe.active.set()
            before, loop = process_cpu(recv.pid), loop_thread(recv.pid)
            ours = run_wrk(url, script, args.seconds, args.connections)
            ours["loop"] = loop_shares(loop, loop_thread(recv.pid))
            ours["cpu"] = cpu_per_answer(before, process_cpu(recv.pid), ours["requests"])
            probe.active.clear()
            rounds.append((baseline, ours))
        stop.set()
        probe.join()
        wait_caught_up(url)
        lags = lag_histogram(url)
        with store.reader() as con:
            events = fetch_one(con, "SELECT count(*) FROM events")[0]
    finally:
        for proc in (base, recv):
            if proc is not None:
                proc.terminate()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)

    acked = sum(ours["requests"] - ours["non2xx"] for _, ours in rounds) + probe.sent
    print(f"connections={args.connections}, {args.rounds} rounds of {args.seconds} s per "
          "server (wrk -t2, same machine)")
    for i, (baseline, ours) in enumerate(rounds, 1):
        print(f"round {i}: baseline (stores nothing) {baseline['rps']:.0f} answers/s, p99 "
              f"{baseline['p99_ms']:.1f} ms; receiver (durable) {ours['rps']:.0f} answers/s, "
              f"p99 {ours['p99_ms']:.1f} ms, non-2xx {ours['non2xx']}, socket errors "
              f"{ours['socket_errors']}; ratio {ours['rps'] / baseline['rps']:.2f}")
        cpu = {role: value if isinstance(value, str) else f"{value:.0f} µs"
               for role, value in ours["cpu"].items()}
        print(f"         CPU per answer during the load: baseline "
              f"{baseline['cpu']['loop']:.0f} µs; receiver process {cpu.get('loop', '-')}, "
              f"ingest {cpu.get('ingest', '-')}, sync helper {cpu.get('helper', '-')} (the "
              "ingest's stage 2 catches up after the load, not counted)")
        print(f"         event loop thread during the load: baseline {baseline['loop']}; "
              f"receiver {ours['loop']}")
    ratios = [ours["rps"] / baseline["rps"] for baseline, ours in rounds]
    total = (sum(ours["requests"] for _, ours in rounds)
             / sum(baseline["requests"] for baseline, _ in rounds))
    print(f"ratio receiver/baseline:   median {statistics.median(ratios):.2f}, "
          f"totals {total:.2f}, rounds {min(ratios):.2f}-{max(ratios):.2f} (target >= 0.8)")
    print(f"p99 answer, receiver:      {max(ours['p99_ms'] for _, ours in rounds):.1f} ms "
          "(worst round; target <= 50 ms)")
    print(f"answer -> read from DuckDB (probe): p50 {pct(probe.latencies, 50) * 1000:.0f} ms, "
          f"p99 {pct(probe.latencies, 99) * 1000:.0f} ms, max {max(probe.latencies) * 1000:.0f}"
          f" ms over {len(probe.latencies)} probes (target p99 <= 1000 ms); "
          f"read before visible: {probe.early}")
    within = lags.get(1.0, 0.0) / lags[float("inf")] if lags else 0.0
    print(f"received -> committed in DuckDB (all {lags[float('inf')]:.0f} deliveries, "
          f"receiver histogram): p50 {histogram_quantile(lags, 0.5)}, "
          f"p99 {histogram_quantile(lags, 0.99)}, {within:.2%} within 1 s")
    print(f"2xx answers {acked}, rows in events {events}: "
          f"{'all stored' if events >= acked else 'MISSING ' + str(acked - events)}")


if __name__ == "__main__":
    main()
