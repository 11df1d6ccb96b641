"""Run the benchmark from a source checkout: ``python benchmarks/run_bench.py [--quick] [...]``.

The same as ``negotiate-stream bench``; by default writes the table, JSON and (with matplotlib) the PNG into
``benchmarks/results/``.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from negotiate_stream.cli.bench import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    results = os.path.join(HERE, "results")
    if "--json" not in argv and "--list" not in argv:
        argv += ["--json", os.path.join(results, "bench.json")]
    if "--plot" not in argv and "--list" not in argv:
        argv += ["--plot", os.path.join(results, "bench.png")]
    sys.exit(main(argv))
