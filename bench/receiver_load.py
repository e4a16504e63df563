"""Benchmark: durable deliveries/s of the receiver against a Flask app that stores nothing.

Runs wrk (Debian package `wrk`) with 16 connections against, in one run:
  1. the baseline, bench/baseline_server.py: Flask answering without storing anything,
     served by waitress with 8 threads;
  2. receiver.py of this checkout on a fresh data dir (journal + fdatasync + ingest into
     DuckDB);
  3. with `--before DIR`, receiver.py of another checkout (e.g. `git worktree add DIR
     <commit>`), on a data dir of its own: the same figures before a change.

The servers run side by side and are loaded in turn, one at a time, for `--rounds`
rounds: this shared machine's speed drifts from one minute to the next, so only ratios
measured in the same round mean much. For each receiver it prints per round its answers/s
and ratio to the baseline, p99 answer time, CPU per answer of its processes (from /proc),
then the median ratio, the ingest lag (accepted → committed in DuckDB) from its own
`ploomes_ingest_lag_seconds` histogram, answer → row read in DuckDB by a probe that posts
a delivery every 0.5 s during its loads, and whether every 2xx answer is stored.
Prints the figures; asserts nothing.

    python bench/receiver_load.py [--seconds 10] [--rounds 3] [--before DIR]
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
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import free_port  # noqa: E402

from ploomes.config import load_settings  # noqa: E402
from ploomes.demo.generator import Simulation, delivery_body  # noqa: E402
from ploomes.store import Store, fetch_one  # noqa: E402

KEY = "bench-validation-key-0123456789abcdef"


@dataclass
class Server:
    """One server under load: how to start it, and what its rounds measured."""

    name: str
    command: list[str]
    data_dir: Path | None = None  # receivers only
    proc: subprocess.Popen | None = None
    url: str = ""
    rounds: list[dict] = field(default_factory=list)
    probe: Probe | None = None

    def start(self, env: dict[str, str]) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = [*self.command, "--port", str(port)]
        if self.data_dir is not None:
            args += ["--host", "127.0.0.1", "--data-dir", str(self.data_dir)]
        self.proc = subprocess.Popen([sys.executable, *args], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(self.url, self.proc)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until /healthz says "ok" (for a receiver: its ingest process runs too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if requests.get(url + "/healthz", timeout=1).json().get("status") == "ok":
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise SystemExit("server did not start")


def wait_caught_up(url: str) -> None:
    """Wait (300 s at most) until the journal is all in DuckDB, field changes too."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        health = requests.get(url + "/healthz", timeout=5).json()
        if not health["backlog"] and not health.get("derive_backlog"):
            return
        time.sleep(0.1)


def wrk_script(workdir: Path, n: int = 2000) -> Path:
    """Write wrk's Lua script posting n realistic, different deliveries in turn."""
    sim = Simulation(seed=11)
    bodies = [json.dumps(delivery_body(change, account_id=3100210, webhook_id=31005120,
                                       webhook_creator_id=31007700), ensure_ascii=False)
              for change in sim.steps(n)]
    lines = workdir / "bodies.jsonl"
    lines.write_text("\n".join(bodies) + "\n", encoding="utf-8")
    script = workdir / "post.lua"
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
    """Return {pid: (role, CPU seconds so far)} of a server and its children.

    Roles: "server" (the process itself, every thread), "ingest" (a spawned ingest
    process), "other child" (e.g. an older receiver's sync helper).
    """
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            pid, ppid, state = int(entry.name), int(fields[1]), fields[0]
            if pid == root_pid:
                role = "server"
            elif ppid == root_pid and state != b"Z":
                cmdline = (entry / "cmdline").read_bytes()
                if b"resource_tracker" in cmdline:
                    continue
                role = "ingest" if b"spawn_main" in cmdline else "other child"
            else:
                continue
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        found[pid] = (role, (int(fields[11]) + int(fields[12])) / tick)
    return found


def cpu_per_answer(before: dict, after: dict, answers: int) -> dict[str, float]:
    """Return µs of CPU per answer by role between two process_cpu readings."""
    out: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        used = seconds - before.get(pid, (role, 0.0))[1]
        out[role] = out.get(role, 0.0) + used / max(answers, 1) * 1e6
    return out


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         url + "/ploomes/webhook"], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else "none",
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p99_ms": float(p99.group(1)) * scale}


class Probe(threading.Thread):
    """Posts a distinct delivery every INTERVAL while active and times answer → row read.

    It waits until /healthz says the ingest got that far (polled every 20 ms: no DuckDB
    access), then opens the store through its read path once and confirms the row.
    """

    INTERVAL = 0.5

    def __init__(self, url: str, store: Store, stop: threading.Event, offset: int):
        super().__init__(daemon=True)
        self.url, self.store, self.stop, self.offset = url, store, stop, offset
        self.active = threading.Event()
        self.latencies: list[float] = []
        self.sent = 0

    def _ingested(self, health: http.client.HTTPConnection, delivery_id: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                health.request("GET", "/healthz")
                answer = health.getresponse().read()
            except (http.client.RemoteDisconnected, ConnectionError):
                health.close()
                continue
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
            record = self.offset + n
            body = {"Action": "Update", "Entity": "Deals", "ActionUserId": 1,
                    "Old": {"Id": record}, "New": {"Id": record, "Probe": n}}
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
                    row = fetch_one(con, "SELECT count(*) FROM events WHERE id = ?",
                                    [delivery_id])
                if row and row[0]:
                    self.latencies.append(time.perf_counter() - answered)
                    break
                time.sleep(0.05)
            time.sleep(max(0.0, self.INTERVAL - (time.perf_counter() - answered)))
        health.close()


def lag_histogram(url: str) -> dict[float, float]:
    """Return the receiver's ingest lag histogram: upper bound (s) -> cumulative count."""
    text = requests.get(url + "/metrics", timeout=10).text
    found = re.findall(r'^ploomes_ingest_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text,
                       re.MULTILINE)
    return {float(le): float(count) for le, count in found}


def bucket_of(buckets: dict[float, float], q: float) -> str:
    """Return the histogram bound under which a share q of the observations fell."""
    total = buckets[float("inf")]
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return f"<= {bound * 1000:.0f} ms" if bound != float("inf") else "> 30 s"
    return "?"


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def report(receiver: Server, baseline: Server, stored: int) -> None:
    """Print one receiver's figures against the baseline's, round by round."""
    print(f"\n== {receiver.name}")
    ratios = []
    for i, (base, ours) in enumerate(zip(baseline.rounds, receiver.rounds, strict=True), 1):
        ratios.append(ours["rps"] / base["rps"])
        cpu = ", ".join(f"{role} {us:.0f} µs" for role, us in sorted(ours["cpu"].items()))
        print(f"round {i}: {ours['rps']:.0f} answers/s (baseline {base['rps']:.0f}), ratio "
              f"{ratios[-1]:.2f}; p99 {ours['p99_ms']:.1f} ms (baseline "
              f"{base['p99_ms']:.1f}); non-2xx {ours['non2xx']}, socket errors "
              f"{ours['socket_errors']}; CPU per answer: {cpu} (baseline "
              f"{base['cpu'].get('server', 0):.0f} µs)")
    print(f"ratio to the baseline: median {statistics.median(ratios):.2f}, rounds "
          f"{min(ratios):.2f}-{max(ratios):.2f} (floor 0.8)")
    print(f"p99 answer: {max(r['p99_ms'] for r in receiver.rounds):.1f} ms, worst round "
          "(floor 50 ms)")
    lags = lag_histogram(receiver.url)
    within = lags.get(1.0, 0.0) / lags[float("inf")] if lags.get(float("inf")) else 0.0
    print(f"accepted -> committed in DuckDB (all {lags.get(float('inf'), 0):.0f} deliveries): "
          f"p50 {bucket_of(lags, 0.5)}, p99 {bucket_of(lags, 0.99)}, {within:.2%} within 1 s "
          "(floor p99 1 s)")
    probe = receiver.probe
    assert probe is not None
    print(f"answer -> row read (probe, {len(probe.latencies)} deliveries during the loads): "
          f"p50 {pct(probe.latencies, 50) * 1000:.0f} ms, p99 "
          f"{pct(probe.latencies, 99) * 1000:.0f} ms, max "
          f"{max(probe.latencies, default=float('nan')) * 1000:.0f} ms")
    acked = sum(r["requests"] - r["non2xx"] for r in receiver.rounds) + probe.sent
    print(f"2xx answers {acked}, rows in events {stored}: "
          f"{'all stored' if stored >= acked else 'MISSING ' + str(acked - stored)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10, help="per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--before", type=Path,
                        help="another checkout whose receiver.py is measured too")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="ploomes-bench-"))
    script = wrk_script(work)  # the same load for every server
    env = {**os.environ, "PLOOMES_VALIDATION_KEYS": KEY}
    baseline = Server("baseline: Flask storing nothing, waitress, 8 threads",
                      [str(ROOT / "bench" / "baseline_server.py"), "--key", KEY])
    receivers = [Server("receiver (this checkout)", [str(ROOT / "receiver.py")],
                        work / "now")]
    if args.before:
        receivers.append(Server(f"receiver ({args.before})",
                                [str(args.before.resolve() / "receiver.py")], work / "before"))
    stop = threading.Event()
    counts = {}
    try:
        for server in (baseline, *receivers):
            server.start(env)
        for i, server in enumerate(receivers):
            store = Store(load_settings(env={}, data_dir=server.data_dir,
                                        validation_keys=(KEY,)))
            server.probe = Probe(server.url, store, stop, 900_000_000 + i * 10_000_000)
            server.probe.start()
        for _ in range(args.rounds):
            for server in (baseline, *receivers):
                for receiver in receivers:
                    wait_caught_up(receiver.url)  # a quiet machine for each load
                assert server.proc is not None
                if server.probe:
                    server.probe.active.set()
                before = process_cpu(server.proc.pid)
                result = run_wrk(server.url, script, args.seconds, args.connections)
                result["cpu"] = cpu_per_answer(before, process_cpu(server.proc.pid),
                                               result["requests"])
                if server.probe:
                    server.probe.active.clear()
                server.rounds.append(result)
        stop.set()
        for receiver in receivers:
            assert receiver.probe is not None
            receiver.probe.join()
            wait_caught_up(receiver.url)
            with receiver.probe.store.reader() as con:
                row = fetch_one(con, "SELECT count(*) FROM events")
            counts[receiver.name] = row[0] if row else 0
        print(f"connections={args.connections}, {args.rounds} rounds of {args.seconds} s per "
              "server, loaded in turn (wrk -t2, same machine)")
        for receiver in receivers:
            report(receiver, baseline, counts[receiver.name])
    finally:
        stop.set()
        for server in (baseline, *receivers):
            if server.proc is not None:
                server.proc.terminate()
                server.proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
