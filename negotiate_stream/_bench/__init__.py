"""The benchmark behind ``negotiate-stream bench``: every wrapper, its baselines and the crypto floor, in one run.

Scenarios (select with :func:`run_bench`'s ``only``; see :func:`all_scenarios` for the names):

* ``floor.*`` -- no I/O: one established SecurityContext protects the records of 64 KiB writes, its peer unprotects them
  (sealed and sign-only); the same work with ``cryptography`` primitives only; the bare NTLM step loop.
* ``baseline.*`` -- plain loopback copies with no Negotiate: asyncio Protocols and streams, stdlib TLS, anyio on
  asyncio and trio, blocking sockets.
* ``ours.*`` -- our adapters at each protection level, ping-pong, handshakes over loopback, many concurrent
  connections, memory over a long transfer.
* ``*.2proc-*`` -- the API under test in this process, its peer in a child process (bulk send and receive,
  ping-pong), judged against the one-way crypto floor: each end's crypto on its own core, as between machines.
* ``alternative.*`` -- jetblack-negotiate-stream, only when it is importable.

Use::

    from negotiate_stream._bench import BenchConfig, run_bench
    report = run_bench(BenchConfig.create(quick=True), only=["floor", "asyncio-protocol"])
    print(report.table())
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable
from typing import TextIO

from ..testing import NTLMUsers
from ._baselines import baseline_scenarios
from ._core import BenchConfig, Progress, Result, child_environment
from ._floor import floor_scenarios
from ._ours import alternative_scenarios, our_scenarios
from ._registry import Context, Scenario, select
from ._report import Report
from ._split import split_scenarios

__all__ = ["BenchConfig", "Report", "Result", "Scenario", "all_scenarios", "run_bench"]

#: A child process running one isolated scenario gives up after this long.
CHILD_TIMEOUT = 900.0


def all_scenarios() -> list[Scenario]:
    """Every scenario, in the order of the report."""
    return [
        *floor_scenarios(),
        *baseline_scenarios(),
        *our_scenarios(),
        *split_scenarios(),
        *alternative_scenarios(),
    ]


def _run_here(scenario: Scenario, ctx: Context) -> Result:
    try:
        return scenario.run(ctx)
    except Exception as exc:
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Result(scenario.name, scenario.group, scenario.kind, level=scenario.level, status=f"error: {detail}")


def _run_isolated(scenario: Scenario, config: BenchConfig) -> Result:
    """Run ``scenario`` in a fresh interpreter (so RSS deltas are not blurred by earlier scenarios' heaps)."""
    command = [
        sys.executable,
        "-m",
        "negotiate_stream._bench",
        "--child",
        scenario.name,
        "--config",
        json.dumps(config.to_json()),
    ]
    try:
        child = subprocess.run(
            command, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False, env=child_environment()
        )
    except subprocess.TimeoutExpired:
        return Result(scenario.name, scenario.group, scenario.kind, level=scenario.level, status="error: timed out")
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return Result(
            scenario.name, scenario.group, scenario.kind, level=scenario.level, status=f"error: child failed: {tail}"
        )
    return Result.from_json(json.loads(lines[-1]))


def run_child(name: str, config: BenchConfig) -> Result:
    """Run one scenario in this process (the child side of an isolated scenario)."""
    scenario = next((s for s in all_scenarios() if s.name == name), None)
    if scenario is None:
        raise ValueError(f"unknown scenario {name!r}")
    with NTLMUsers.generate() as users:
        return _run_here(scenario, Context(config, users))


def run_bench(
    config: BenchConfig,
    *,
    only: Iterable[str] | None = None,
    progress: bool = True,
    progress_stream: TextIO | None = None,
    isolate: bool = True,
) -> Report:
    """Run the selected scenarios (all by default) one after the other and return the :class:`Report`.

    ``progress`` writes a line per scenario, and a heartbeat during long ones, to ``progress_stream`` (stderr).
    ``isolate`` runs the memory scenarios in child processes (needed for meaningful RSS figures). Scenarios that
    need a missing module are reported as skipped; one that fails is reported with its error; neither stops the
    run.
    """
    scenarios = select(all_scenarios(), only)
    if not scenarios:
        raise ValueError(f"no scenario matches {list(only or [])!r}: see 'negotiate-stream bench --list'")
    results: list[Result] = []
    started = time.perf_counter()
    with NTLMUsers.generate() as users, Progress(len(scenarios), stream=progress_stream, enabled=progress) as bar:
        ctx = Context(config, users)
        for scenario in scenarios:
            with bar.scenario(scenario.name):
                gc.collect()
                isolated = scenario.isolated and isolate
                result = _run_isolated(scenario, config) if isolated else _run_here(scenario, ctx)
            results.append(result)
            bar.finished(result)
    report = Report(config, results)
    report.seconds = time.perf_counter() - started
    return report
