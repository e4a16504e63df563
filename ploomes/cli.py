"""Store maintenance commands of `python -m ploomes`."""

from __future__ import annotations

import argparse
import json
import sys

from ploomes.config import ConfigError, load_settings
from ploomes.store import Store, StoreError, fetch_one


def _settings(args: argparse.Namespace):
    return load_settings(data_dir=getattr(args, "data_dir", None))


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Recreate the DuckDB file from the journal."""
    from ploomes.rebuild import rebuild

    try:
        report = rebuild(_settings(args))
    except (ConfigError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"rebuilt from {report.journal_records} journal records "
          f"({report.kept_events} older events kept from the previous file): "
          f"{report.events} events, {report.field_changes} field changes, "
          f"{report.duplicates} duplicates, {report.gaps} continuity gaps")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the store's schema version and row counts as JSON."""
    try:
        settings = _settings(args)
        store = Store(settings)
        with store.reader() as con:
            from ploomes.store import schema_version

            info = {"data_dir": str(settings.data_dir), "schema_version": schema_version(con)}
            for table in ("events", "field_changes", "continuity_gaps", "rejected_deliveries"):
                info[table] = fetch_one(con, f"SELECT count(*) FROM {table}")[0]
    except (ConfigError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2))
    return 0


def add_store_parsers(subparsers) -> None:
    """Register the store commands."""
    for name, handler, text in (
        ("rebuild", cmd_rebuild, "recreate the DuckDB file from the journal"),
        ("status", cmd_status, "show schema version and row counts"),
    ):
        sub = subparsers.add_parser(name, help=text, description=text)
        sub.add_argument("--data-dir", help="data folder (default: PLOOMES_DATA_DIR or data/)")
        sub.set_defaults(handler=handler)
