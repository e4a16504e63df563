"""Command line: `python -m ploomes <command>`."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(prog="python -m ploomes", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    from ploomes import cli

    cli.add_store_parsers(subparsers)
    try:
        from ploomes.sandbox import add_sandbox_parser
    except ImportError:  # the sandbox is optional for the store commands
        pass
    else:
        add_sandbox_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command named on the command line and return its exit code."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
