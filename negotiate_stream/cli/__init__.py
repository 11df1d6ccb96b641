"""The ``negotiate-stream`` command line: one sub-module per sub-command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import connect, demo, serve

__all__ = ["build_parser", "main"]

# Sub-command modules: each has `add_parser(subparsers)` registering itself with `func=run(args) -> int`. Only
# the user's commands: the benchmark harness lives in benchmarks/ (`scripts/run bench`), outside the package.
_COMMANDS = (demo, serve, connect)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``negotiate-stream`` command."""
    parser = argparse.ArgumentParser(
        prog="negotiate-stream",
        description="Negotiate (SPNEGO/NTLM/Kerberos) protected streams, wire-compatible with .NET NegotiateStream.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'negotiate-stream COMMAND --help' for the options and examples of each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    status: int = args.func(args)
    return status
