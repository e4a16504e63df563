"""`python -m ploomes relay …`: destinations and replays from the command line.

The commands and their options are a contract scripts rely on (issue 19): add, list,
pause, resume, remove, replay. Errors are one line on standard error and exit code 1.
Secrets are only ever printed masked.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from ploomes.config import ConfigError, Settings, load_settings
from ploomes.relay.destinations import (
    RelayError,
    add_destination,
    build_destination,
    read_config,
    remove_destination,
    set_paused,
)
from ploomes.relay.replays import request_replay


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(data_dir=getattr(args, "data_dir", None))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def parse_time(text: str, settings: Settings) -> datetime:
    """Read an ISO time; one without a zone is in the display time zone. ValueError if
    it is not one."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO time such as 2026-12-01T08:00 or "
                         "2026-12-01T08:00:00-03:00") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=settings.tz)


def cmd_add(args: argparse.Namespace) -> int:
    """Add a destination."""
    settings = _settings(args)
    destination = build_destination(
        settings, args.name, args.url, entities=args.entity or (), actions=args.action or (),
        timeout=args.timeout, rate=args.rate, secret=args.secret, ploomes_key=args.ploomes_key)
    add_destination(settings, destination)
    shown = destination.masked()
    print(f"added {destination.name}: {destination.url} ({shown['address']} address), "
          f"{shown['filter']}, authentication: {destination.auth}")
    if shown["address"] in ("loopback", "private", "link-local"):
        print(f"note: {destination.url} is a {shown['address']} address (allowed: a local "
              "integration is a real target)")
    if not destination.secret and not destination.ploomes_key:
        print("warning: nothing authenticates what is sent; give --secret whsec_… "
              "(Standard Webhooks) or --ploomes-key", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print every destination, secrets masked."""
    config = read_config(_settings(args))
    if not config.destinations:
        print("no destinations (add one with `python -m ploomes relay add NAME URL`)")
        return 0
    for destination in config.destinations:
        shown = destination.masked()
        print(f"{shown['name']}  [{shown['state']}]  {shown['url']}  ({shown['address']})")
        rate = "no limit" if destination.rate is None else f"{destination.rate:g}/s"
        print(f"    filter: {shown['filter']}; timeout {destination.timeout:g} s; rate {rate}")
        secrets = [f"{label} {shown[key]}" for label, key in (
            ("secret", "secret"), ("Ploomes key", "ploomes_key")) if shown[key]]
        print(f"    authentication: {shown['auth']}"
              + (f" ({', '.join(secrets)})" if secrets else ""))
        if shown["headers"]:
            print(f"    extra headers: {shown['headers']}")
        if shown["paused_reason"]:
            print(f"    paused at {shown['paused_at']}: {shown['paused_reason']}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause a destination by hand."""
    set_paused(_settings(args), args.name, True, by="cli", reason="paused from the command line")
    print(f"{args.name} paused: deliveries wait for it until `relay resume {args.name}`")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a destination (paused by hand or by the relay)."""
    set_paused(_settings(args), args.name, False)
    print(f"{args.name} resumed: what waited for it is sent in order")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Remove a destination; what it had queued is dropped."""
    removed = remove_destination(_settings(args), args.name)
    print(f"{removed.name} removed")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Ask the forwarder to send deliveries to a destination again."""
    settings = _settings(args)
    if not args.event and args.since is None:
        return _fail("say what to replay: --since ISO-TIME and/or --event ID")
    since = parse_time(args.since, settings) if args.since is not None else None
    destination = read_config(settings).by_name(args.name)
    events = tuple(args.event or ())
    if any(e < 1 for e in events):
        return _fail("event ids are positive numbers (the Events page's delivery ids)")
    request = request_replay(settings, destination.id, destination.name, events=events,
                             since=since, requested_by="cli")
    what = (f"{len(events)} event(s)" if events else
            f"everything it did not confirm since {since.isoformat() if since else ''}")
    print(f"replay {request.id} for {destination.name} requested: {what}; the running "
          "receiver's forwarder takes it within a second (or at its next start)")
    return 0


def run_relay_command(args: argparse.Namespace) -> int:
    """Run one `relay` subcommand; errors become one line on stderr and exit code 1."""
    try:
        return int(args.relay_handler(args))
    except (RelayError, ConfigError, ValueError) as exc:
        return _fail(str(exc))


def add_relay_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
                     ) -> argparse.ArgumentParser:
    """Add the `relay` command and its subcommands to the `python -m ploomes` dispatcher."""
    parser = subparsers.add_parser(
        "relay", help="forward deliveries to your own integrations",
        description="Destinations the receiver forwards every accepted delivery to, with "
                    "retries, per-record order and replay.")
    parser.set_defaults(handler=run_relay_command)
    commands = parser.add_subparsers(dest="relay_command", required=True)

    def sub(name: str, handler: object, text: str) -> argparse.ArgumentParser:
        found = commands.add_parser(name, help=text, description=text)
        found.add_argument("--data-dir", help="data folder (default: PLOOMES_DATA_DIR or data/)")
        found.set_defaults(relay_handler=handler)
        return found

    add = sub("add", cmd_add, "add a destination")
    add.add_argument("name", help="a short name: letters, digits, '.', '_' or '-'")
    add.add_argument("url", help="http:// or https:// URL that receives the deliveries")
    add.add_argument("--entity", action="append", metavar="E",
                     help="only this entity (Deals, Contacts…); repeat for more")
    add.add_argument("--action", action="append", metavar="A",
                     help="only this action (Create, Update, Delete, Win…); repeat for more")
    add.add_argument("--secret", metavar="whsec_…",
                     help="Standard Webhooks secret: each request is signed with it")
    add.add_argument("--ploomes-key", metavar="K",
                     help="sent as X-Ploomes-Validation-Key (an integration written for "
                          "Ploomes works unchanged)")
    add.add_argument("--timeout", type=float, default=15.0, metavar="S",
                     help="seconds to wait for an answer (default: %(default)s)")
    add.add_argument("--rate", type=float, default=None, metavar="N",
                     help="at most N deliveries per second (default: no limit)")
    sub("list", cmd_list, "list the destinations (secrets masked)")
    for name, handler, text in (("pause", cmd_pause, "pause a destination"),
                                ("resume", cmd_resume, "resume a destination"),
                                ("remove", cmd_remove, "remove a destination")):
        sub(name, handler, text).add_argument("name")
    replay = sub("replay", cmd_replay, "send deliveries to a destination again")
    replay.add_argument("name")
    replay.add_argument("--since", metavar="ISO-TIME",
                        help="everything the destination did not confirm since then")
    replay.add_argument("--event", action="append", type=int, metavar="ID",
                        help="this event (delivery id); repeat for more")
    return parser
