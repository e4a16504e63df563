"""Benchmark: what the Portuguese interface costs (ploomes/i18n.py).

Prints:
  1. the cold start of the language part in a fresh Python process: importing it (Babel),
     compiling the pt_BR catalog from its .po, Babel's locale data for the charts;
  2. the cost of one translation (`_()`), one `ngettext()`, one formatted date, number and
     amount, and a 50-row time column (the Events table) in Portuguese;
  3. the first render of the Events page with AppTest, a fresh process per render, pt_BR
     and en alternated on the same small store (the difference is the language's cost;
     alternating keeps a busy machine's drift out of it).
Asserts nothing.

    python bench/i18n.py [--renders 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import timeit
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLD = textwrap.dedent("""
    import json, time
    t0 = time.perf_counter()
    from ploomes import i18n
    t1 = time.perf_counter()
    i18n.translations("pt_BR")
    t2 = time.perf_counter()
    i18n.vega_locale()
    t3 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "catalog": t2 - t1, "locale": t3 - t2}))
""")

RENDER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    from streamlit.testing.v1 import AppTest
    t0 = time.perf_counter()
    at = AppTest.from_file({page!r}, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    print(json.dumps({{"seconds": time.perf_counter() - t0, "title": at.title[0].value}}))
""")


def _run(code: str, env: dict[str, str] | None = None) -> dict:
    import os

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def cold_start(rounds: int = 5) -> None:
    runs = [_run(COLD) for _ in range(rounds)]
    print(f"Cold start in a fresh process (median of {rounds}), ms")
    print(f"{'import (Babel)':<26}{'pt_BR catalog':<16}{'chart locale':<14}")
    print(f"{_ms(statistics.median(r['import'] for r in runs)):<26}"
          f"{_ms(statistics.median(r['catalog'] for r in runs)):<16}"
          f"{_ms(statistics.median(r['locale'] for r in runs)):<14}\n")


def per_call() -> None:
    import pandas as pd

    from ploomes import i18n

    i18n.activate("pt_BR")
    moment = datetime(2026, 12, 7, 22, 17, tzinfo=UTC)
    column = pd.Series(pd.date_range("2026-12-01", periods=50, freq="h", tz="UTC"))
    cases = {
        "_('Events')": lambda: i18n._("Events"),
        "ngettext(…, 3)": lambda: i18n.ngettext("{count} record found",
                                                "{count} records found", 3),
        "format_datetime": lambda: i18n.format_datetime(moment, "America/Sao_Paulo"),
        "format_number(1234567)": lambda: i18n.format_number(1234567),
        "format_money(1234.56)": lambda: i18n.format_money(1234.56),
        "50-row time column": lambda: column.dt.tz_convert("America/Sao_Paulo").dt.strftime(
            i18n.date_pattern(True)),
    }
    print("One call in Portuguese (best of 5 × 200 calls), µs")
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=200, repeat=5)) / 200
        print(f"{name:<26}{best * 1e6:>10.1f}")
    print()


def renders(count: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from store_seeds import seed_activity

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        seed_activity(data)
        page = str(ROOT / "views" / "events.py")
        times: dict[str, list[float]] = {"pt_BR": [], "en": []}
        titles = {}
        for _ in range(count):
            for language in times:
                result = _run(RENDER.format(root=str(ROOT), page=page),
                              {"PLOOMES_DATA_DIR": str(data), "PLOOMES_LANGUAGE": language})
                times[language].append(result["seconds"])
                titles[language] = result["title"]
    print(f"First render of the Events page (AppTest, fresh process, {count} each, "
          "alternated), s")
    print(f"{'language':<10}{'median':>8}{'min':>8}{'max':>8}  title")
    for language, values in times.items():
        print(f"{language:<10}{statistics.median(values):>8.2f}{min(values):>8.2f}"
              f"{max(values):>8.2f}  {titles[language]}")
    delta = statistics.median(times["pt_BR"]) - statistics.median(times["en"])
    print(f"pt_BR − en, medians: {delta * 1000:+.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=5)
    args = parser.parse_args()
    cold_start()
    per_call()
    renders(args.renders)


if __name__ == "__main__":
    main()
