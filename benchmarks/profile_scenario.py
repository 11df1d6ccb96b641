"""Profile one benchmark scenario with cProfile: ``python benchmarks/profile_scenario.py NAME [--scale F]``.

Prints the top functions by own time; use it on a scenario that misses its target (see benchmarks/README.md).
For a sampling profile of native frames as well, run the scenario under py-spy instead::

    py-spy record --native -o profile.svg -- python -m negotiate_stream._bench --only NAME --no-isolate
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from negotiate_stream._bench import BenchConfig, run_bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="one scenario name or selector (see: negotiate-stream bench --list)")
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    args = parser.parse_args()
    config = BenchConfig.create(scale=args.scale)
    profiler = cProfile.Profile()
    profiler.enable()
    report = run_bench(config, only=[args.name], progress=False, isolate=False)
    profiler.disable()
    print(report.table())
    pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
