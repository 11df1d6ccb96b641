"""The benchmark harness: every wrapper, its baselines and the crypto floor, in one run (not shipped in the wheel).

Run it with ``scripts/run bench [--quick] [--only ...] [--json F] [--plot F]`` (``python -m benchmarks`` from the
repository root). Scenarios, by module (select with ``--only``; ``--list`` prints the names):

* ``floors`` -- no I/O: the crypto floor of one established SecurityContext (``floor.context.*``, bulk and 64 B, on
  the NTLM fast path and on pyspnego's record path side by side), the same work with ``cryptography`` primitives
  only (``floor.primitives.*``), the bare NTLM step loop. ``paths`` selects and checks the record path.
* ``kerberos`` -- Kerberos per-message cost: our context against pyspnego and python-gssapi's own wrap/unwrap on
  the same contexts of a throwaway MIT realm (``floor.kerberos.*``; skipped when the realm cannot run here).
* ``sans_io`` -- the sans-I/O Connection in memory (``ours.connection-in-memory.*``) and behind minimal asyncio
  Protocols (``reference.*``).
* ``baselines`` -- plain loopback copies with no Negotiate: asyncio Protocols and streams, stdlib TLS (streams and
  Protocols, bulk and ping-pong), anyio on asyncio and trio, blocking sockets.
* ``adapters`` -- our adapters at each protection level: bulk and ping-pong (``ours.<api>.{bulk,pingpong}.*``);
  the asyncio Protocol's sealed/sign bulk and sealed ping-pong also on pyspnego's record path (``*.pyspnego-path``).
* ``handshakes`` -- new authenticated loopback connections per second (``ours.asyncio-*.handshake``).
* ``memory`` -- many concurrent connections and RSS over a long transfer (isolated in child processes).
* ``two_process`` -- the API under test in this process, its peer (``two_process_peer``) in a child process
  (``*.2proc-*``), judged against the one-way crypto floor.
* ``alternative`` -- jetblack-negotiate-stream, only when it is importable.

``report`` computes the ratios and renders the table, JSON and PNG; ``targets`` judges the issue's targets.

Use from Python (the repository root on ``sys.path``)::

    from benchmarks import BenchConfig, run_bench
    report = run_bench(BenchConfig.create(quick=True), only=["floor", "asyncio-protocol"])
    print(report.table())
"""

from __future__ import annotations

from .config import BenchConfig
from .registry import Scenario
from .report import Report
from .results import Result
from .runner import all_scenarios, run_bench

__all__ = ["BenchConfig", "Report", "Result", "Scenario", "all_scenarios", "run_bench"]
