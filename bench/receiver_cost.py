"""Benchmark: what one delivery costs the receiver's process, counted rather than timed.

bench/receiver_load.py measures answers per second, the figure issue #2 asks for, but on
this shared machine the same code gives ratios 0.6-0.8 from one run to the next, and a
change worth 5 % cannot be seen in it. This script counts instead, for the same two
servers (bench/baseline_server.py storing nothing, receiver.py storing durably), with the
same deliveries and 16 keep-alive connections:

  - instructions per request in the server process (valgrind's callgrind, counted only
    between a warm-up and the end of the measured requests; the receiver's ingest and
    sync helper processes are not counted). Runs ~50x slower, so fewer requests;
  - Python function calls per request (cProfile over the server's whole life, divided by
    the requests; start-up and stop are included, so use enough requests).

Counts do not see cache misses or a blocking pattern that only appears at full speed
(gevent arms a timer for a socket read that has to wait: under valgrind reads rarely
wait), so they complement receiver_load.py, they do not replace it. What a server does
on its own while time passes (the receiver's watch thread wakes every 0.1 s) would weigh
~50x too much under valgrind: it is counted over as long a time with no requests, after
the measured ones, and taken off (both figures are printed).

    python bench/receiver_cost.py [--requests 500] [--calls-requests 4000] [--no-valgrind]

valgrind is a Debian package (`apt-get install valgrind`); without it only the calls
are counted. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import free_port  # noqa: E402
from receiver_load import KEY, sample_bodies, server_command, wait_healthy  # noqa: E402

CONNECTIONS = 16


def post_all(port: int, bodies: list[bytes], count: int) -> int:
    """POST count deliveries over CONNECTIONS keep-alive connections; return non-200s."""
    lock, next_index, failed = threading.Lock(), [0], [0]

    def run() -> None:
        con = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                if next_index[0] >= count:
                    break
                i = next_index[0]
                next_index[0] += 1
            con.request("POST", "/ploomes/webhook", bodies[i % len(bodies)],
                        {"Content-Type": "application/json", "X-Ploomes-Validation-Key": KEY})
            response = con.getresponse()
            response.read()
            if response.status != 200:
                with lock:
                    failed[0] += 1
        con.close()

    threads = [threading.Thread(target=run) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failed[0]


def start(prefix: list[str], which: str, workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PLOOMES_VALIDATION_KEYS": KEY}
    with open(workdir / f"{which}.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(prefix + server_command(which, port, workdir / which),
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=300)  # valgrind starts slowly
    except SystemExit:
        proc.kill()
        raise
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def instructions_per_request(which: str, bodies: list[bytes], count: int,
                             workdir: Path) -> tuple[float, float]:
    """Return instructions per request, and the background's share of them."""
    out = workdir / f"{which}.callgrind"
    # the real interpreter, not a wrapper script (pyenv's shims): valgrind follows no exec
    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
              "--dump-line=no", "--compress-pos=no", os.path.realpath(sys.executable)]
    proc, port = start(prefix, which, workdir)
    try:
        post_all(port, bodies, 300)  # warm-up: imports, caches, the first segment
        def control(flag: str) -> None:  # -z: zero the counts; -d: dump them to a file
            subprocess.run(["callgrind_control", flag, str(proc.pid)], check=True,
                           capture_output=True)

        control("-z")
        started = time.monotonic()
        failed = post_all(port, bodies, count)
        took = time.monotonic() - started
        control("-d")
        time.sleep(took)  # the same time with no requests: the background's share
        control("-d")
    finally:
        stop(proc)
    if failed:
        raise SystemExit(f"{which}: {failed} answers were not 200")
    dumps = sorted(workdir.glob(f"{which}.callgrind.{proc.pid}*"),
                   key=lambda p: p.stat().st_mtime)
    loaded, idle = (_total(dump) for dump in dumps[-3:-1])  # the last one is the exit's
    return loaded / count, idle / count


def _total(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {dump}")


def calls_per_request(which: str, bodies: list[bytes], count: int, workdir: Path) -> float:
    out = workdir / f"{which}.pstats"
    proc, port = start([sys.executable, "-m", "cProfile", "-o", str(out)], which, workdir)
    try:
        failed = post_all(port, bodies, count)
    finally:
        stop(proc)  # cProfile writes its file at exit
    if failed:
        raise SystemExit(f"{which}: {failed} answers were not 200")
    stats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    return sum(calls for _, calls, _, _, _ in stats.values()) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500,
                        help="measured requests under valgrind (default 500)")
    parser.add_argument("--calls-requests", type=int, default=4000,
                        help="requests for the Python call count (default 4000)")
    parser.add_argument("--no-valgrind", action="store_true")
    parser.add_argument("--only", choices=("baseline", "receiver"),
                        help="count one server only (to compare two versions of it)")
    args = parser.parse_args()
    bodies = [body.encode("utf-8") for body in sample_bodies(2000)]
    use_valgrind = not args.no_valgrind and shutil.which("valgrind") is not None
    if not args.no_valgrind and not use_valgrind:
        print("valgrind not found (apt-get install valgrind): counting Python calls only")
    with tempfile.TemporaryDirectory(prefix="receiver-cost-") as tmp:
        workdir = Path(tmp)
        rows = []
        for which in [args.only] if args.only else ["baseline", "receiver"]:
            calls = calls_per_request(which, bodies, args.calls_requests, workdir)
            instructions = None
            text = f"{which:9} Python calls/request {calls:8.1f}"
            if use_valgrind:
                loaded, idle = instructions_per_request(which, bodies, args.requests, workdir)
                instructions = loaded - idle
                text += (f"   instructions/request {instructions:11,.0f} (background taken "
                         f"off: {idle:,.0f})")
            rows.append((which, calls, instructions))
            print(text, flush=True)
    if len(rows) < 2:
        return
    (_, base_calls, base_ir), (_, calls, ir) = rows
    print(f"receiver/baseline: calls {calls / base_calls:.3f}"
          + (f", instructions {ir / base_ir:.3f}" if ir and base_ir else "")
          + "  (a receiver costing 1.25x the baseline per request answers at best 0.8x as many)")


if __name__ == "__main__":
    main()
