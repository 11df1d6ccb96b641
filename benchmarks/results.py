"""What a scenario measured: :class:`Result`, the outcomes of the bulk and ping-pong loops, and timed batches."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BulkOutcome",
    "PingPongOutcome",
    "Result",
    "async_best_rate",
    "best_rate",
    "bulk_result",
    "handshake_result",
    "mbps",
    "measured_result",
    "pingpong_result",
]


def mbps(nbytes: int, seconds: float) -> float:
    """Throughput in MB/s (10**6 bytes per second); 0 when nothing was measured."""
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0


@dataclass
class Result:
    """One measured scenario (or why it was not measured)."""

    #: ``family.variant``, e.g. ``ours.asyncio-protocol.sealed``.
    name: str
    #: ``floor``, ``baseline``, ``reference``, ``ours`` or ``alternative``.
    group: str
    #: ``bulk``, ``pingpong``, ``handshake``, ``concurrent``, ``growth``, ``crypto``, ``2proc-*``, ...
    kind: str
    #: The headline number (MB/s, round trips/s, handshakes/s, ...); ``None`` when skipped or failed.
    value: float | None = None
    unit: str = "MB/s"
    #: ``none``, ``sign``, ``sealed`` or ``-``.
    level: str = "-"
    nbytes: int = 0
    seconds: float = 0.0
    #: True when the received data was checked (byte count plus checksums of samples) and matched.
    verified: bool | None = None
    #: ``ok``, ``skipped: why`` or ``error: what``.
    status: str = "ok"
    #: Ratios to baselines, filled in by the report (``floor``, ``plain``, ...).
    ratios: dict[str, float] = field(default_factory=dict)
    #: Secondary figures (protect-only MB/s, RSS per connection, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the scenario ran and produced a number."""
        return self.status == "ok" and self.value is not None

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        """Rebuild a result written by :meth:`to_json` (results of isolated child processes)."""
        return cls(**data)


@dataclass
class BulkOutcome:
    """What a bulk transfer measured."""

    nbytes: int
    seconds: float
    verified: bool

    @property
    def mbps(self) -> float:
        """Throughput in MB/s."""
        return mbps(self.nbytes, self.seconds)


@dataclass
class PingPongOutcome:
    """What a ping-pong run measured."""

    rounds: int
    seconds: float
    verified: bool

    @property
    def rate(self) -> float:
        """Round trips per second."""
        return self.rounds / self.seconds if self.seconds > 0 else 0.0


def measured_result(
    name: str,
    group: str,
    kind: str,
    level: str,
    value: float,
    seconds: float,
    verified: bool,
    *,
    unit: str = "MB/s",
    nbytes: int = 0,
    extra: dict[str, Any],
) -> Result:
    """A :class:`Result` of a scenario that ran: its headline ``value`` in ``unit``, timing and verification."""
    return Result(name, group, kind, value, unit, level, nbytes=nbytes, seconds=seconds, verified=verified, extra=extra)


def bulk_result(
    name: str, group: str, level: str, outcome: BulkOutcome, *, kind: str = "bulk", **extra: object
) -> Result:
    """A bulk :class:`Result` (MB/s) from a measured outcome."""
    return measured_result(
        name, group, kind, level, outcome.mbps, outcome.seconds, outcome.verified, nbytes=outcome.nbytes, extra=extra
    )


def pingpong_result(
    name: str, group: str, level: str, outcome: PingPongOutcome, *, kind: str = "pingpong", **extra: object
) -> Result:
    """A ping-pong :class:`Result` (round trips/s) from a measured outcome."""
    figures = {"us_per_round_trip": round(outcome.seconds / outcome.rounds * 1e6, 2), **extra}
    return measured_result(
        name, group, kind, level, outcome.rate, outcome.seconds, outcome.verified, unit="round trips/s", extra=figures
    )


def handshake_result(name: str, group: str, rate: float, seconds: float, verified: bool, **extra: object) -> Result:
    """A handshake :class:`Result` (handshakes/s, NTLM sealed) from a measured rate."""
    figures = {"ms_per_handshake": round(1e3 / rate, 3), **extra}
    return measured_result(
        name, group, "handshake", "sealed", rate, seconds, verified, unit="handshakes/s", extra=figures
    )


# Short timed runs (handshakes, 64-byte messages) are split into batches and the best batch is reported: it is the
# one least disturbed by the other processes of the machine.


def best_rate(count: int, once: Callable[[], bool], batches: int = 3) -> tuple[float, float, bool]:
    """Run ``once`` about ``count`` times in timed batches; return (best batch's rate/s, total seconds, all ok)."""
    size = max(1, count // batches)
    timings: list[float] = []
    ok = True
    for _ in range(batches):
        started = time.perf_counter()
        for _ in range(size):
            ok = once() and ok
        timings.append(time.perf_counter() - started)
    return size / min(timings), sum(timings), ok


async def async_best_rate(
    count: int, once: Callable[[], Awaitable[None]], batches: int = 3
) -> tuple[float, float, int]:
    """Await ``once`` about ``count`` times in timed batches; return (best batch's rate/s, total seconds, calls)."""
    size = max(1, count // batches)
    timings: list[float] = []
    for _ in range(batches):
        started = time.perf_counter()
        for _ in range(size):
            await once()
        timings.append(time.perf_counter() - started)
    return size / min(timings), sum(timings), size * batches
