"""Run the selected scenarios one after the other (memory scenarios each in a fresh child) into a :class:`Report`."""

from __future__ import annotations

import gc
import json
import subprocess
import time
import traceback
from collections.abc import Iterable
from typing import TextIO

from negotiate_stream.testing import NTLMUsers

from .adapters import adapter_scenarios
from .alternative import alternative_scenarios
from .baselines import baseline_scenarios
from .config import BenchConfig
from .floors import floor_scenarios
from .handshakes import handshake_scenarios
from .kerberos import kerberos_scenarios
from .memory import memory_scenarios
from .processes import child_command, child_environment
from .progress import Progress
from .registry import Context, Scenario, Unavailable, select, unit_of
from .report import Report
from .results import Result
from .sans_io import in_memory_scenarios, reference_scenarios
from .two_process import two_process_scenarios

__all__ = ["all_scenarios", "run_bench", "run_child"]

#: A child process running one isolated scenario gives up after this long.
CHILD_TIMEOUT = 900.0


def all_scenarios() -> list[Scenario]:
    """Every scenario, in the order of the report."""
    return [
        *floor_scenarios(),
        *kerberos_scenarios(),
        *in_memory_scenarios(),
        *baseline_scenarios(),
        *reference_scenarios(),
        *adapter_scenarios(),
        *handshake_scenarios(),
        *memory_scenarios(),
        *two_process_scenarios(),
        *alternative_scenarios(),
    ]


def _failed(scenario: Scenario, status: str) -> Result:
    return Result(
        scenario.name, scenario.group, scenario.kind, level=scenario.level, unit=unit_of(scenario.kind), status=status
    )


def _run_here(scenario: Scenario, ctx: Context) -> Result:
    """Run ``scenario`` in this process; a missing module makes it skipped, any other failure an error result."""
    try:
        return scenario.run(ctx)
    except Unavailable as exc:
        return _failed(scenario, f"skipped: {exc}")
    except Exception as exc:
        return _failed(scenario, f"error: {traceback.format_exception_only(type(exc), exc)[-1].strip()}")


#: Scenario kinds measured ``config.repeats`` times (best kept): the ones a throughput ratio is computed from.
REPEATED_KINDS = ("bulk", "crypto", "pingpong")


def _run_best_of(scenario: Scenario, ctx: Context) -> Result:
    """Run ``scenario`` ``ctx.config.repeats`` times and keep the fastest run; any run that failed or was not
    verified is reported instead (a retry never hides a failure). Other kinds run once (they repeat inside)."""
    repeats = ctx.config.repeats if scenario.kind in REPEATED_KINDS else 1
    best: Result | None = None
    for _ in range(max(1, repeats)):
        result = _run_here(scenario, ctx)
        if not result.ok or result.verified is False:
            return result
        assert result.value is not None
        if best is None or result.value > (best.value or 0.0):
            best = result
        gc.collect()
    assert best is not None
    best.extra["runs"] = max(1, repeats)
    return best


def _run_isolated(scenario: Scenario, config: BenchConfig) -> Result:
    """Run ``scenario`` in a fresh interpreter (so RSS deltas are not blurred by earlier scenarios' heaps)."""
    command = child_command("--child", scenario.name, "--config", json.dumps(config.to_json()))
    try:
        child = subprocess.run(
            command, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False, env=child_environment()
        )
    except subprocess.TimeoutExpired:
        return _failed(scenario, "error: timed out")
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return _failed(scenario, f"error: child failed: {tail}")
    return Result.from_json(json.loads(lines[-1]))


def run_child(name: str, config: BenchConfig) -> Result:
    """Run one scenario in this process (the child side of an isolated scenario)."""
    scenario = next((s for s in all_scenarios() if s.name == name), None)
    if scenario is None:
        raise ValueError(f"unknown scenario {name!r}")
    with NTLMUsers.generate() as users:
        ctx = Context(config, users)
        try:
            return _run_here(scenario, ctx)
        finally:
            ctx.close()


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
        raise ValueError(f"no scenario matches {list(only or [])!r}: see 'scripts/run bench --list'")
    results: list[Result] = []
    started = time.perf_counter()
    with NTLMUsers.generate() as users, Progress(len(scenarios), stream=progress_stream, enabled=progress) as bar:
        ctx = Context(config, users)
        try:
            for scenario in scenarios:
                with bar.scenario(scenario.name):
                    gc.collect()
                    isolated = scenario.isolated and isolate
                    result = _run_isolated(scenario, config) if isolated else _run_best_of(scenario, ctx)
                results.append(result)
                bar.finished(result)
        finally:
            ctx.close()  # e.g. stop the Kerberos realm
    report = Report(config, results)
    report.seconds = time.perf_counter() - started
    return report
