"""Benchmark: the relay forwarding to a local sink while the receiver takes wrk's load.

Two receivers of this checkout run side by side, each on a fresh data dir: one with no
destination (relay off), one forwarding every delivery to a local sink (relay on). They
are loaded in turn with wrk (16 connections, the realistic bodies of
bench/receiver_load.py) for `--rounds` rounds: this shared machine's speed drifts, so
only figures of the same round are compared. The sink (a small asyncio HTTP server in
its own process, answering 200 at once) notes when each delivery arrives and the
`X-Ploomes-Received-At` the relay sends (when the receiver accepted it).

Prints per round: answers/s with the relay off and on, and their ratio; deliveries
forwarded per second while the receiver took the load; then ack-to-forwarded (receiver's
accept → the sink has the request) p50, p99 and max over every forwarded delivery, and
whether every 2xx answer reached the sink (how many twice). Asserts nothing.

    python bench/relay.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import free_port  # noqa: E402
from receiver_load import KEY, Server, run_wrk, wait_caught_up, wrk_script  # noqa: E402

from ploomes.config import load_settings  # noqa: E402
from ploomes.relay.destinations import (  # noqa: E402
    RelayOptions,
    add_destination,
    build_destination,
    set_options,
)


class _Sink(asyncio.Protocol):
    """HTTP/1.1 with keep-alive: reads each request, notes it, answers 200 at once."""

    arrivals: list[tuple[float, float, str]] = []  # (arrived, accepted by the receiver, msg)
    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            if head[0].startswith("GET /count"):
                body = json.dumps({"count": len(self.arrivals),
                                   "unique": len({a[2] for a in self.arrivals})}).encode()
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                     % (len(body), body))
                continue
            arrived = time.time()
            accepted = datetime.fromisoformat(
                headers["x-ploomes-received-at"].replace("Z", "+00:00")).timestamp()
            self.arrivals.append((arrived, accepted, headers.get("webhook-id", "")))
            self.transport.write(self.ANSWER)


def run_sink(port: int, out: Path) -> None:
    """The sink process: serve until SIGTERM, then write the arrivals to `out`."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Sink, "127.0.0.1", port,
                                                        backlog=1024))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()
    server.close()
    out.write_text(json.dumps(_Sink.arrivals))


def sink_count(url: str) -> dict:
    return requests.get(url + "/count", timeout=10).json()


def wait_forwarded(sink_url: str, acked: int, timeout: float = 300) -> float:
    """Wait until the sink has every acknowledged delivery; return the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if sink_count(sink_url)["unique"] >= acked:
            break
        time.sleep(0.05)
    return time.monotonic() - started


def cpu_seconds(pid: int | None) -> float:
    """Return the CPU time (user + system) a process has used so far."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10, help="per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None,
                        help="the relay's sending threads (default: RelayOptions')")
    parser.add_argument("--sink", nargs=2, metavar=("PORT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        run_sink(int(args.sink[0]), Path(args.sink[1]))
        return
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="ploomes-relay-bench-"))
    script = wrk_script(work)
    env = {**os.environ, "PLOOMES_VALIDATION_KEYS": KEY}
    sink_port = free_port()
    sink_url = f"http://127.0.0.1:{sink_port}"
    arrivals_file = work / "arrivals.json"
    sink = subprocess.Popen([sys.executable, __file__, "--sink", str(sink_port),
                             str(arrivals_file)])
    off = Server("relay off", [str(ROOT / "receiver.py")], work / "off")
    on = Server("relay on", [str(ROOT / "receiver.py")], work / "on")
    settings = load_settings(env={}, secrets_path=work / "none.toml", data_dir=on.data_dir,
                             validation_keys=(KEY,))
    add_destination(settings, build_destination(settings, "sink", sink_url + "/hook",
                                                secret="whsec_" + "A" * 44))
    if args.workers:
        set_options(settings, workers=args.workers,
                    concurrency=min(args.workers, RelayOptions().concurrency))
    cpu: list[tuple] = []  # per round with the relay: receiver, forwarder, sink
    windows: list[tuple[float, float]] = []
    acked_on = 0
    try:
        for _ in range(100):
            try:
                sink_count(sink_url)
                break
            except requests.RequestException:
                time.sleep(0.05)
        for server in (off, on):
            server.start(env)
        for _ in range(args.rounds):
            for server in (off, on):
                for other in (off, on):
                    wait_caught_up(other.url)
                wait_forwarded(sink_url, acked_on)
                started = time.time()
                pids = (server.proc.pid, requests.get(server.url + "/healthz", timeout=5)
                        .json().get("relay_pid"), sink.pid)
                before = [cpu_seconds(pid) for pid in pids]
                result = run_wrk(server.url, script, args.seconds, args.connections)
                ended = time.time()
                if server is on:
                    cpu.append(tuple(cpu_seconds(pid) - b for pid, b in zip(pids, before,
                                                                             strict=True)))
                server.rounds.append(result)
                if server is on:
                    windows.append((started, ended))
                    acked_on += result["requests"] - result["non2xx"]
        caught_up = wait_forwarded(sink_url, acked_on)
        counts = sink_count(sink_url)
    finally:
        for server in (off, on):
            if server.proc is not None:
                server.proc.terminate()
                server.proc.wait()
        sink.terminate()
        sink.wait()
    arrivals = json.loads(arrivals_file.read_text())
    shutil.rmtree(work, ignore_errors=True)
    lags = [arrived - accepted for arrived, accepted, _ in arrivals]
    print(f"wrk -t2 -c{args.connections}, {args.rounds} rounds of {args.seconds} s per "
          "receiver, loaded in turn (same machine, 2 cores); relay on: one destination, "
          "Standard Webhooks signature, a local sink")
    ratios = []
    rounds = zip(off.rounds, on.rounds, windows, cpu, strict=True)
    for i, (a, b, (t0, t1), used) in enumerate(rounds, 1):
        forwarded = sum(1 for arrived, _, _ in arrivals if t0 <= arrived <= t1)
        ratios.append(b["rps"] / a["rps"])
        print(f"round {i}: answers/s relay off {a['rps']:.0f}, on {b['rps']:.0f} (ratio "
              f"{ratios[-1]:.2f}; non-2xx {a['non2xx']}/{b['non2xx']}); forwarded while "
              f"loaded {forwarded / (t1 - t0):.0f}/s; CPU s of the load with the relay: "
              f"receiver {used[0]:.1f}, forwarder {used[1]:.1f}, sink {used[2]:.1f}")
    print(f"receiver's acknowledged rate, relay on / off: median {statistics.median(ratios):.2f}"
          f" (rounds {min(ratios):.2f}-{max(ratios):.2f}; goal >= 0.80)")
    print(f"ack -> forwarded ({len(lags)} deliveries): p50 {pct(lags, 50) * 1000:.0f} ms, "
          f"p99 {pct(lags, 99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms (goal p99 <= 1 s)")
    print(f"2xx answers with the relay on {acked_on}, at the sink {counts['unique']} "
          f"({counts['count'] - counts['unique']} twice); the last arrived "
          f"{caught_up:.1f} s after the last load")


if __name__ == "__main__":
    main()
