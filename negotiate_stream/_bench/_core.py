"""Shared pieces of the benchmark: configuration, results, progress, RSS and data verification."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = [
    "KIB",
    "MIB",
    "BenchConfig",
    "Progress",
    "Result",
    "StreamVerifier",
    "mbps",
    "rss_bytes",
]

KIB = 1024
MIB = 1024 * 1024
#: The payload of one write in the bulk scenarios.
WRITE_SIZE = 64 * KIB
#: Size of the reused receive buffer of the Protocol-level receivers.
RECEIVE_BUFFER = 256 * KIB
#: Plaintext per MS-NNS record (the crypto floor uses the same chunks).
RECORD_PLAINTEXT = 0xFC00


def mbps(nbytes: int, seconds: float) -> float:
    """Throughput in MB/s (10**6 bytes per second); 0 when nothing was measured."""
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0


def rss_bytes() -> int:
    """This process's resident set size (VmRSS from /proc/self/status); 0 where /proc is not available."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and counts of one benchmark run; build it with :meth:`create`."""

    #: Bytes sent one way in each bulk scenario (a multiple of 64 KiB).
    bulk_bytes: int
    #: 64-byte round trips in each ping-pong scenario.
    pingpong_rounds: int
    #: Handshakes timed in each handshake scenario.
    handshakes: int
    #: Numbers of concurrent sealed connections (one scenario each).
    concurrent: tuple[int, ...]
    #: Bytes each concurrent connection streams.
    concurrent_bytes: int
    #: Bytes transferred by the memory-growth scenario, and how often RSS is sampled.
    growth_bytes: int
    growth_sample_every: int
    quick: bool = False
    scale: float = 1.0

    @classmethod
    def create(cls, *, quick: bool = False, scale: float = 1.0) -> BenchConfig:
        """The full-size run (256 MiB bulk, 1,000 connections, 1 GiB growth) or ``quick`` (< 60 s), times ``scale``.

        ``scale`` multiplies every size and count (``0.01`` is a smoke test that still runs every scenario).
        """
        if scale <= 0:
            raise ValueError("scale must be positive")
        if quick:
            base = cls(
                bulk_bytes=32 * MIB,
                pingpong_rounds=2_000,
                handshakes=50,
                concurrent=(100, 300),
                concurrent_bytes=64 * KIB,
                growth_bytes=128 * MIB,
                growth_sample_every=16 * MIB,
                quick=True,
            )
        else:
            base = cls(
                bulk_bytes=256 * MIB,
                pingpong_rounds=10_000,
                handshakes=300,
                concurrent=(100, 1_000),
                concurrent_bytes=256 * KIB,
                growth_bytes=1024 * MIB,
                growth_sample_every=128 * MIB,
            )

        def writes(nbytes: int) -> int:
            return max(WRITE_SIZE, math.ceil(nbytes * scale / WRITE_SIZE) * WRITE_SIZE)

        return dataclasses.replace(
            base,
            bulk_bytes=writes(base.bulk_bytes),
            pingpong_rounds=max(20, round(base.pingpong_rounds * scale)),
            handshakes=max(3, round(base.handshakes * scale)),
            concurrent=tuple(max(2, round(n * min(1.0, scale * 10))) for n in base.concurrent),
            concurrent_bytes=writes(base.concurrent_bytes),
            growth_bytes=writes(base.growth_bytes),
            growth_sample_every=writes(base.growth_sample_every),
            scale=scale,
        )

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON-ready values."""
        return dataclasses.asdict(self)


@dataclass
class Result:
    """One measured scenario (or why it was not measured)."""

    #: ``family.variant``, e.g. ``ours.asyncio-protocol.sealed``.
    name: str
    #: ``floor``, ``baseline``, ``ours`` or ``alternative``.
    group: str
    #: ``bulk``, ``pingpong``, ``handshake``, ``concurrent``, ``growth`` or ``crypto``.
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


class Progress:
    """Periodic progress lines on a text stream (stderr) while the benchmark runs.

    A line is written when each scenario starts and ends, and a heartbeat every ``interval`` seconds during long
    ones, so a user sees the run is alive.
    """

    def __init__(
        self, total: int, *, stream: TextIO | None = None, interval: float = 5.0, enabled: bool = True
    ) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.enabled = enabled
        self.started = time.perf_counter()
        self._current: str | None = None
        self._current_started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _line(self, text: str) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        with self._lock:
            self.stream.write(f"[bench {self.done}/{self.total} {elapsed:6.1f}s] {text}\n")
            self.stream.flush()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval):
            current = self._current
            if current is not None:
                running = time.perf_counter() - self._current_started
                self._line(f"... {current} running for {running:.0f}s")

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._heartbeat, name="bench-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        """Report the start and the end of one scenario."""
        self._current, self._current_started = name, time.perf_counter()
        self._line(f"{name} ...")
        try:
            yield
        finally:
            self._current = None
            self.done += 1

    def finished(self, result: Result) -> None:
        """Report one scenario's headline number."""
        if result.ok:
            self._line(f"{result.name}: {result.value:,.1f} {result.unit}")
        else:
            self._line(f"{result.name}: {result.status}")


class StreamVerifier:
    """Count received bytes and check CRC-32 checksums of sampled windows of a known repeating pattern.

    The sender writes ``pattern`` (64 KiB) over and over; the receiver feeds every chunk it gets to :meth:`feed`.
    Every ``sample_every`` bytes, the next ``window`` bytes are checksummed and compared with the pattern's start
    (``sample_every`` is a multiple of the pattern length, so every window holds the same bytes). A lost,
    duplicated, reordered or corrupted record inside a window, or a wrong total, fails :attr:`ok`.
    """

    def __init__(self, pattern: bytes, total: int, *, sample_every: int = 4 * MIB, window: int = 4 * KIB) -> None:
        if sample_every % len(pattern) or window > len(pattern):
            raise ValueError("sample_every must be a multiple of the pattern length and window <= pattern")
        self.total = total
        self.received = 0
        self.windows_checked = 0
        self.mismatches = 0
        self._every = sample_every
        self._window = window
        self._expected = zlib.crc32(pattern[:window])
        self._crc = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Account for one received chunk."""
        start = self.received
        self.received = end = start + len(data)
        offset = start % self._every
        if offset >= self._window and end - start + offset < self._every:
            return  # the fast path: the chunk lies between two windows
        view = memoryview(data)
        position = start
        while position < end:
            offset = position % self._every
            if offset < self._window:
                take = min(self._window - offset, end - position)
                self._crc = zlib.crc32(view[position - start : position - start + take], self._crc)
                position += take
                if position % self._every == self._window:
                    self.windows_checked += 1
                    if self._crc != self._expected:
                        self.mismatches += 1
                    self._crc = 0
            else:
                position += self._every - offset

    @property
    def complete(self) -> bool:
        """True once ``total`` bytes arrived."""
        return self.received >= self.total

    @property
    def ok(self) -> bool:
        """True when exactly ``total`` bytes arrived and every sampled window matched."""
        return self.received == self.total and self.mismatches == 0 and self.windows_checked > 0


def child_environment() -> dict[str, str]:
    """The environment of a benchmark child process: it must import this same copy of the package, installed or
    not."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


def pattern_block(seed: int | None = None) -> bytes:
    """The 64 KiB block the bulk senders repeat (pseudo-random, so compression or zero pages cannot help).

    With a ``seed`` the block is reproducible, so a sender and a receiver in two processes agree on it.
    """
    if seed is None:
        return os.urandom(WRITE_SIZE)
    return random.Random(seed).randbytes(WRITE_SIZE)


def run_timed(func: Callable[[], float]) -> float:
    """Call ``func`` and return what it returns (a hook for one place to add CPU accounting later)."""
    return func()
