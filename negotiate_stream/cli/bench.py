"""``negotiate-stream bench``: measure every wrapper, its plain baselines and the crypto floor in one run.

Most scenarios run both ends of every connection in this process over loopback, so each pays the crypto of both
ends: the crypto floor (``floor.context.*``) is bytes / (protect time + unprotect time) of the records a 64 KiB
write becomes, without any I/O, and a perfect I/O layer would reach it. The ``*.2proc-*`` scenarios run the peer
in a child process (each end on its own core, as between two machines) and are judged against the one-way floor,
bytes / max(protect time, unprotect time). Ratios: ``floor`` / ``one_way_floor`` = our MB/s / that floor,
``primitives`` = / the same work done with ``cryptography`` only, ``plain`` = / the same API without Negotiate,
``io_ceiling`` = / the best one thread can do with its crypto plus the plain API's socket work,
``cost_vs_step_loop`` = time per handshake / a bare in-memory SecurityContext step loop (``cost_excl_tcp``: the
same without the TCP connect + close).

A line per scenario (and a heartbeat during long ones) goes to stderr; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["add_parser", "main", "run"]

_EXAMPLES = """examples:
  negotiate-stream bench                       # everything, full size (several minutes)
  negotiate-stream bench --quick               # everything, smaller sizes (< 60 s)
  negotiate-stream bench --quick --only floor,asyncio-protocol --json out.json --plot out.png
  negotiate-stream bench --list                # scenario names for --only
"""


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer connections (< 60 s)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="multiply every size and count by FACTOR (e.g. 0.01 for a smoke test; default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        default="",
        metavar="NAME[,NAME]",
        help="run only matching scenarios: a full name, a dotted prefix (ours.sync), one component "
        "(pingpong, sealed, anyio-trio, floor) or a glob (*tls*)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--plot", metavar="FILE", help="also write a PNG bar chart to FILE (needs matplotlib)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--list", action="store_true", help="list the scenario names and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--no-isolate",
        action="store_true",
        help="run the memory scenarios in this process too (faster, but RSS figures are blurred)",
    )


def add_parser(subparsers: Any) -> None:
    """Register the ``bench`` sub-command."""
    parser = subparsers.add_parser(
        "bench",
        help="measure throughput, latency, handshakes and memory of every wrapper against the crypto floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EXAMPLES,
    )
    _configure(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns 0 when every selected scenario ran (or was skipped) and its data verified, else 1."""
    from .._bench import BenchConfig, all_scenarios, run_bench
    from .._bench._registry import select

    only = [part for part in (args.only or "").split(",") if part.strip()]
    if args.list:
        for scenario in select(all_scenarios(), only):
            print(f"{scenario.name:45} {scenario.kind:10} {scenario.level}")
        return 0
    try:
        config = BenchConfig.create(quick=args.quick, scale=args.scale)
        report = run_bench(config, only=only, progress=not args.no_progress, isolate=not args.no_isolate)
    except ValueError as exc:
        print(f"negotiate-stream bench: {exc}", file=sys.stderr)
        return 2
    print(report.table(markdown=args.markdown))
    if args.json:
        report.write_json(args.json)
        print(f"results written to {args.json}", file=sys.stderr)
    if args.plot:
        if report.plot(args.plot):
            print(f"plot written to {args.plot}", file=sys.stderr)
        else:
            print("no plot: matplotlib is not installed (pip install 'negotiate-stream[bench]')", file=sys.stderr)
    failed = [r for r in report.results if r.status.startswith("error") or r.verified is False]
    for result in failed:
        print(f"negotiate-stream bench: {result.name}: {result.status}, verified={result.verified}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bench`` as a stand-alone command (``python -m negotiate_stream._bench``)."""
    parser = argparse.ArgumentParser(
        prog="negotiate-stream bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _configure(parser)
    return run(parser.parse_args(argv))
