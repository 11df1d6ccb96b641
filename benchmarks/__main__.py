"""``scripts/run bench`` (``python -m benchmarks``): measure every wrapper, its plain baselines and the crypto floor.

Most scenarios run both ends of every connection in this process over loopback, so each pays the crypto of both
ends: the crypto floor (``floor.context.*``) is bytes / (protect time + unprotect time) of the records a 64 KiB
write becomes, without any I/O, and a perfect I/O layer would reach it. The ``*.2proc-*`` scenarios run the peer
in a child process (each end on its own core, as between two machines) and are judged against the one-way floor,
bytes / max(protect time, unprotect time). Ratios: ``floor`` / ``one_way_floor`` = our MB/s / that floor,
``primitives`` = / the same work done with ``cryptography`` only, ``plain`` = / the same API without Negotiate,
``tls`` = / the same asyncio API over stdlib TLS, ``vs_pyspnego_path`` = the NTLM fast path / the same scenario on
pyspnego's record path (``*.pyspnego-path``, same run), ``io_ceiling`` = / the best one thread can do with its crypto
plus the plain API's socket work, ``cost_vs_step_loop`` = time per handshake / a bare in-memory SecurityContext step
loop (``cost_excl_tcp``: the same without the TCP connect + close), ``cost_vs_gssapi`` = Kerberos time per message
through our context / through python-gssapi's own wrap + unwrap on the same contexts.

A line per scenario (and a heartbeat during long ones) goes to stderr; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
from collections.abc import Sequence

from .config import BenchConfig
from .registry import select
from .runner import all_scenarios, run_bench, run_child

__all__ = ["main", "run"]

PROG = "scripts/run bench"
#: Functions listed by ``--profile``.
PROFILE_TOP = 25

_EXAMPLES = f"""examples:
  {PROG}                       # everything, full size (several minutes)
  {PROG} --quick               # everything, smaller sizes (< 60 s)
  {PROG} --quick --only floor,asyncio-protocol --json out.json --plot out.png
  {PROG} --list                # scenario names for --only
  {PROG} --only ours.asyncio-streams.bulk.sign --scale 0.25 --profile   # cProfile one scenario
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark (``--peer`` and ``--child`` are internal: the harness's child processes)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXAMPLES
    )
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
    parser.add_argument(
        "--profile",
        nargs="?",
        const="tottime",
        choices=["tottime", "cumulative"],
        help=f"run under cProfile (implies --no-isolate) and print the top {PROFILE_TOP} functions by own time "
        "(or cumulative time)",
    )
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--peer", metavar="SPEC", help=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns 0 when every selected scenario ran (or was skipped) and its data verified, 1 when
    one failed, 2 for a bad selection or size."""
    only = [part for part in (args.only or "").split(",") if part.strip()]
    if args.list:
        for scenario in select(all_scenarios(), only):
            print(f"{scenario.name:52} {scenario.kind:15} {scenario.level}")
        return 0
    profiler = cProfile.Profile() if args.profile else None
    try:
        config = BenchConfig.create(quick=args.quick, scale=args.scale)
        if profiler is not None:
            profiler.enable()
        isolate = not args.no_isolate and profiler is None  # a child's work would be invisible to the profiler
        report = run_bench(config, only=only, progress=not args.no_progress, isolate=isolate)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    finally:
        if profiler is not None:
            profiler.disable()
    print(report.table(markdown=args.markdown))
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats(args.profile).print_stats(PROFILE_TOP)
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
        print(f"{PROG}: {result.name}: {result.status}, verified={result.verified}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point: the benchmark, or one of the harness's child processes."""
    args = build_parser().parse_args(argv)
    if args.peer is not None:
        from .two_process_peer import main as peer_main

        return peer_main(args.peer)
    if args.child is not None:
        config = BenchConfig.from_json(json.loads(args.config))
        print(json.dumps(run_child(args.child, config).to_json()))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
