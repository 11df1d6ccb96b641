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

#: The issue's target ratios whose two sides are measured interleaved: before each run of the scenario, one run of
#: its baseline, and the ratio is best scenario run / best baseline run of that window (``paired_ratios`` in the
#: extras, which replace the ratios computed from the separately measured baseline). On a shared machine the load
#: drifts over minutes, so a baseline measured minutes earlier can be off by 30 %; interleaved, both sides see
#: the same machine.
PAIRED: dict[str, tuple[tuple[str, str], ...]] = {
    "ours.asyncio-protocol.pingpong.sealed": (("plain", "baseline.asyncio-protocol.pingpong"),),
    "ours.asyncio-streams.pingpong.sealed": (("tls", "baseline.tls-streams.pingpong"),),
    "ours.asyncio-protocol.bulk.sealed": (("primitives", "floor.primitives.sealed"),),
    "ours.asyncio-protocol.bulk.sign": (("primitives", "floor.primitives.sign"),),
}


def _keep_faster(best: Result | None, result: Result) -> Result:
    return result if best is None or (result.value or 0.0) > (best.value or 0.0) else best


def _run_best_of(scenario: Scenario, ctx: Context, by_name: dict[str, Scenario]) -> Result:
    """Run ``scenario`` ``ctx.config.repeats`` times and keep the fastest run; any run that failed or was not
    verified is reported instead (a retry never hides a failure). Other kinds run once (they repeat inside).
    A scenario of :data:`PAIRED` runs each of its baselines before each of its own runs."""
    repeats = max(1, ctx.config.repeats if scenario.kind in REPEATED_KINDS else 1)
    pairs = [(key, by_name[name]) for key, name in PAIRED.get(scenario.name, ()) if name in by_name]
    best: Result | None = None
    baselines: dict[str, Result | None] = {key: None for key, _ in pairs}
    for _ in range(repeats):
        for key, baseline in pairs:
            baselines[key] = _keep_faster(baselines[key], _run_here(baseline, ctx))
        result = _run_here(scenario, ctx)
        if not result.ok or result.verified is False:
            return result
        best = _keep_faster(best, result)
        gc.collect()
    assert best is not None and best.value is not None
    best.extra["runs"] = repeats
    paired = {key: round(best.value / b.value, 3) for key, b in baselines.items() if b is not None and b.ok and b.value}
    if paired:
        best.extra["paired_ratios"] = paired
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
    by_name = {scenario.name: scenario for scenario in all_scenarios()}
    started = time.perf_counter()
    with NTLMUsers.generate() as users, Progress(len(scenarios), stream=progress_stream, enabled=progress) as bar:
        ctx = Context(config, users)
        try:
            for scenario in scenarios:
                with bar.scenario(scenario.name):
                    gc.collect()
                    isolated = scenario.isolated and isolate
                    result = _run_isolated(scenario, config) if isolated else _run_best_of(scenario, ctx, by_name)
                results.append(result)
                bar.finished(result)
        finally:
            ctx.close()  # e.g. stop the Kerberos realm
    report = Report(config, results)
    report.seconds = time.perf_counter() - started
    return report
