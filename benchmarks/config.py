"""The sizes of one benchmark run (:class:`BenchConfig`) and the constants every scenario shares."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KIB",
    "LOCALHOST",
    "MIB",
    "PING_SIZE",
    "RECEIVE_SIZE",
    "RECORD_PLAINTEXT",
    "WRITE_SIZE",
    "BenchConfig",
]

KIB = 1024
MIB = 1024 * 1024
#: The payload of one write in the bulk scenarios.
WRITE_SIZE = 64 * KIB
#: Bytes asked of one receive call, and the size of the reused buffer of the Protocol-level receivers.
RECEIVE_SIZE = 256 * KIB
#: Plaintext per MS-NNS record (the crypto floor uses the same chunks).
RECORD_PLAINTEXT = 0xFC00
#: The message of the ping-pong scenarios.
PING_SIZE = 64
#: Every server of the benchmark listens on loopback only.
LOCALHOST = "127.0.0.1"


#: The unscaled sizes of each field of :class:`BenchConfig`: (quick run, full run).
_UNSCALED: dict[str, tuple[Any, Any]] = {
    "bulk_bytes": (32 * MIB, 256 * MIB),
    "pingpong_rounds": (2_000, 10_000),
    "handshakes": (50, 300),
    "concurrent": ((100, 300), (100, 1_000)),
    "concurrent_bytes": (64 * KIB, 256 * KIB),
    "growth_bytes": (128 * MIB, 1024 * MIB),
    "growth_sample_every": (16 * MIB, 128 * MIB),
}


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
    #: Runs of each bulk, ping-pong and crypto-floor scenario; the best is reported (the noise of a shared machine
    #: only slows a run down, so the fastest of a few is the steadiest figure, for the floors and scenarios alike).
    repeats: int = 3
    quick: bool = False
    scale: float = 1.0

    @classmethod
    def create(cls, *, quick: bool = False, scale: float = 1.0) -> BenchConfig:
        """The full-size run (256 MiB bulk, 1,000 connections, 1 GiB growth) or ``quick`` (< 60 s), times ``scale``.

        ``scale`` multiplies every size and count (``0.01`` is a smoke test that still runs every scenario).
        """
        if scale <= 0:
            raise ValueError("scale must be positive")
        base = cls(**{field: sizes[0] if quick else sizes[1] for field, sizes in _UNSCALED.items()}, quick=quick)

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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchConfig:
        """Rebuild a configuration written by :meth:`to_json` (JSON turned the tuple into a list)."""
        return cls(**{**data, "concurrent": tuple(data["concurrent"])})
