"""The command line: `python -m ploomes <command>`.

The top of the project's layers: it may import every part. Errors are turned into one
line on standard error and exit code 1 (2 for bad usage), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from ploomes import i18n
from ploomes.config import ConfigError, Settings, load_settings
from ploomes.ingest.upgrade import UPGRADES
from ploomes.store import Store, StoreError, fetch_one, schema_version


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(data_dir=getattr(args, "data_dir", None))


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Recreate the DuckDB file from the journal; one line per step on standard output."""
    from ploomes.ingest.rebuild import rebuild

    try:
        settings = _settings(args)
        print(f"rebuilding {settings.db_path} from the journal in {settings.journal_dir}",
              flush=True)
        report = rebuild(settings)
    except (ConfigError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report.moved_aside is not None:
        print(f"{settings.db_path.name} did not open ({report.unreadable}): "
              f"moved aside to {report.moved_aside}")
    if report.carried_over:
        print("kept from the previous file: users, custom fields, the audit trail, the "
              f"sample of refused keys and {report.kept_events} events older than the journal")
    print(f"rebuilt from {report.journal_records} journal records: "
          f"{report.events} events, {report.field_changes} field changes, "
          f"{report.duplicates} duplicates, {report.gaps} continuity gaps")
    if not report.carried_over:
        _resync_directory(settings)
    return 0


def _resync_directory(settings: Settings) -> None:
    """Fetch users and custom fields again: the rebuilt file starts without them."""
    from ploomes.crm.api import PloomesClient, PloomesError
    from ploomes.crm.directory import sync_directory

    if not settings.user_key:
        print("users and custom fields not re-synced: no Ploomes User-Key configured "
              "(PLOOMES_USER_KEY); pages show raw ids until a sync from the Webhooks page")
        return
    try:
        with PloomesClient(settings.api_url, settings.user_key, timeout=10.0,
                           retry_total=2) as client:
            result = sync_directory(client, Store(settings))
    except (PloomesError, StoreError) as exc:  # the rebuild itself is done and kept
        print(f"warning: users and custom fields could not be re-synced from Ploomes: {exc}. "
              "Pages show raw ids until a sync from the Webhooks page.", file=sys.stderr)
        return
    print(f"users and custom fields re-synced from Ploomes: {result.users} users, "
          f"{result.fields} custom fields")


def cmd_status(args: argparse.Namespace) -> int:
    """Print the store's schema version and row counts as JSON, with what the refused
    counts include (the Status page counts the same)."""
    from ploomes.queries.status import (
        KEY_ATTEMPTS_MEANING,
        REFUSED_DELIVERIES_MEANING,
        refused_counts,
    )

    try:
        settings = _settings(args)
        with Store(settings, upgrades=UPGRADES).reader() as con:
            info: dict[str, object] = {"data_dir": str(settings.data_dir),
                                       "schema_version": schema_version(con)}
            for table in ("events", "field_changes", "continuity_gaps"):
                row = fetch_one(con, f"SELECT count(*) FROM {table}")  # names from the tuple
                info[table] = row[0] if row else 0
            row = fetch_one(con, "SELECT count(*) FILTER (WHERE is_test), "
                                 "count(*) FILTER (WHERE is_demo) FROM events")
            info["test_deliveries"], info["demo_events"] = row if row else (0, 0)
            info.update(refused_counts(con))
            info["counts_include"] = [
                "events: every stored delivery, test deliveries and demo events included",
                REFUSED_DELIVERIES_MEANING, KEY_ATTEMPTS_MEANING]
    except (ConfigError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one subparser per command."""
    from ploomes.demo.sandbox import add_sandbox_parser
    from ploomes.relay.command_line import add_relay_parser

    parser = argparse.ArgumentParser(prog="python -m ploomes",
                                     description="Ploomes webhook monitor: maintenance and tools.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("rebuild", cmd_rebuild, "recreate the DuckDB file from the journal"),
        ("status", cmd_status, "show schema version and row counts"),
    ):
        sub = subparsers.add_parser(name, help=text, description=text)
        sub.add_argument("--data-dir", help="data folder (default: PLOOMES_DATA_DIR or data/)")
        sub.set_defaults(handler=handler)
    add_sandbox_parser(subparsers)
    add_relay_parser(subparsers)
    from ploomes.alerts.commands import add_alerts_parser

    add_alerts_parser(subparsers, lambda settings: Store(settings, upgrades=UPGRADES))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command named on the command line and return its exit code."""
    args = build_parser().parse_args(argv)
    i18n.activate("en")  # the command line speaks English: scripts read what it prints
    return int(args.handler(args) or 0)
