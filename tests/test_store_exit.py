"""A program that used a store with a kept read connection (the dashboard) exits cleanly.

The kept connection is closed by a daemon thread once idle. A process ending while that
thread was inside DuckDB's close aborted ("FATAL: exception not rethrown", exit status
134), even a test run whose tests had all passed; the store now closes it at exit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ROOT, make_settings

from ploomes.store import Store

KEEP = 0.05  # seconds the connection stays open once idle

PROGRAM = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from ploomes.config import load_settings
    from ploomes.store import Store

    data = Path(sys.argv[2])
    store = Store(load_settings(env={}, secrets_path=data / "none.toml", data_dir=data),
                  keep_reader=float(sys.argv[3]))
    with store.reader() as con:
        con.execute("SELECT count(*) FROM events").fetchall()
    time.sleep(float(sys.argv[4]))  # exit about when the idle connection gets closed
""")


def test_exiting_while_the_kept_reader_closes_does_not_abort(tmp_path):
    data = tmp_path / "data"
    with Store(make_settings(data)).writer():
        pass
    # the close happens KEEP..KEEP + 0.05 s after the query (the watcher ticks every
    # 0.05 s): exits spread over that window; before the fix about 1 in 40 aborted
    statuses = []
    for run in range(30):
        wait = KEEP + (run % 20) * 0.0075
        done = subprocess.run([sys.executable, "-c", PROGRAM, str(ROOT), str(data), str(KEEP),
                               str(wait)], capture_output=True, text=True, timeout=60)
        statuses.append((wait, done.returncode, done.stderr[-200:]))
    assert [s for s in statuses if s[1] != 0] == []
