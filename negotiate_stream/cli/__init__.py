"""The ``negotiate-stream`` command line: one sub-module per sub-command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import connect, demo, serve

__all__ = ["build_parser", "main"]

# Sub-command modules, each named as its command: its docstring is the command's --help description, SUMMARY its
# line in the command list, EPILOG its examples, add_arguments(parser) its options and run(args) -> int the command.
# Only the user's commands: the benchmark harness lives in benchmarks/ (`scripts/run bench`), outside the package.
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
        command = subparsers.add_parser(
            module.__name__.rpartition(".")[2],
            help=module.SUMMARY,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,  # both shown as written (line breaks kept)
            epilog=module.EPILOG,
        )
        module.add_arguments(command)
        command.set_defaults(func=module.run)
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
