"""Memory and concurrency: many sealed connections open at once, and RSS over one long sealed transfer.

* ``*.asyncio-streams.concurrent.{small,large}``: ``config.concurrent`` connections on one loop (ours sealed, and
  stdlib asyncio streams for comparison), all open at once, each streaming ``concurrent_bytes``: aggregate MB/s
  and RSS per connection (idle and at the peak while streaming; both ends live in this process).
* ``ours.asyncio-streams.growth.sealed``: RSS sampled every ``growth_sample_every`` bytes of ``growth_bytes``.

All run in a fresh child process (``Scenario.isolated``): an RSS delta is meaningless on a heap that earlier
scenarios grew.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .adapters import our_streams_pair
from .config import KIB, LOCALHOST, MIB, RECEIVE_SIZE, WRITE_SIZE
from .registry import Context, Scenario, options, require
from .results import Result, mbps
from .verify import StreamVerifier, pattern_block

__all__ = ["concurrent", "concurrent_streams", "growth", "memory_scenarios", "rss_bytes"]

#: Connections are opened in batches: a listen backlog of 1,000 simultaneous handshakes is not the point here.
CONNECT_BATCH = 64
#: How often the peak RSS is sampled while the connections stream.
PEAK_SAMPLE_SECONDS = 0.02


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


async def concurrent_streams(
    ctx: Context | None,
    count: int,
    nbytes: int,
    *,
    open_connection: Callable[..., Awaitable[tuple[Any, Any]]] = asyncio.open_connection,
    start_server: Callable[..., Awaitable[asyncio.Server]] = asyncio.start_server,
) -> dict[str, Any]:
    """Open ``count`` connections (all kept open), then stream ``nbytes`` on each at once (sealed with ``ctx``).

    Returns the seconds of the streaming phase, RSS before, RSS with all connections open and idle, the peak RSS
    while streaming, the bytes received and whether all were verified.
    """
    block = pattern_block()
    verifiers: list[StreamVerifier] = []
    all_done = asyncio.Event()
    release = asyncio.Event()
    finished = 0

    async def handle(reader: Any, writer: Any) -> None:
        nonlocal finished
        verifier = StreamVerifier(block, nbytes, sample_every=WRITE_SIZE, window=4 * KIB)
        verifiers.append(verifier)
        while not verifier.complete:
            chunk = await reader.read(WRITE_SIZE)
            if not chunk:
                break
            verifier.feed(chunk)
            # Drop the chunk before awaiting the next read, so an idle handler does not keep up to WRITE_SIZE
            # referenced: the same handler serves ours and the plain baseline, so both are measured alike.
            del chunk
        finished += 1
        if finished == count:
            all_done.set()
        await release.wait()  # keep every connection open until all have streamed
        writer.close()

    gc.collect()
    rss_before = rss_bytes()
    client_kwargs = options(ctx, "sealed", False) if ctx is not None else {}
    server_kwargs = options(ctx, "sealed", True) if ctx is not None else {}
    server = await start_server(handle, LOCALHOST, 0, **server_kwargs)
    port = server.sockets[0].getsockname()[1]
    writers: list[Any] = []
    for first in range(0, count, CONNECT_BATCH):
        pairs = await asyncio.gather(
            *(open_connection(LOCALHOST, port, **client_kwargs) for _ in range(min(CONNECT_BATCH, count - first)))
        )
        writers.extend(writer for _, writer in pairs)
    gc.collect()
    idle = peak = rss_bytes()

    async def stream(writer: Any) -> None:
        for _ in range(nbytes // WRITE_SIZE):
            writer.write(block)
            await writer.drain()

    async def sample() -> None:
        nonlocal peak
        while not all_done.is_set():
            peak = max(peak, rss_bytes())
            await asyncio.sleep(PEAK_SAMPLE_SECONDS)

    sampler = asyncio.ensure_future(sample())
    started = time.perf_counter()
    await asyncio.gather(*(stream(writer) for writer in writers))
    await all_done.wait()
    seconds = time.perf_counter() - started
    peak = max(peak, rss_bytes())
    await sampler
    release.set()
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()
    received = sum(v.received for v in verifiers)
    verified = len(verifiers) == count and all(v.ok for v in verifiers)
    return {"seconds": seconds, "before": rss_before, "idle": idle, "peak": peak, "received": received, "ok": verified}


def concurrent(ctx: Context, index: int, *, plain: bool = False) -> Result:
    """``config.concurrent[index]`` sealed connections on one loop, all open at once, each streaming
    ``concurrent_bytes`` (``plain``: the same with stdlib asyncio streams, for comparison)."""
    module = None if plain else require("negotiate_stream.asyncio_")
    nbytes = ctx.config.concurrent_bytes
    count = ctx.config.concurrent[index]
    size = ("small", "large")[index]

    async def main() -> dict[str, Any]:
        run: Callable[[int, int], Awaitable[dict[str, Any]]]
        if module is None:
            run = functools.partial(concurrent_streams, None)
        else:
            run = functools.partial(
                concurrent_streams, ctx, open_connection=module.open_connection, start_server=module.start_server
            )
        # One connection first, not measured: what a process pays once (lazy imports, the OpenSSL bindings, the
        # loop's shared receive buffer) is not a cost per connection. Plain and ours are warmed up alike.
        await run(1, WRITE_SIZE)
        return await run(count, nbytes)

    measured = asyncio.run(main())
    seconds, before, received = measured["seconds"], measured["before"], measured["received"]
    per_connection = (measured["peak"] - before) / count / KIB
    return Result(
        name=f"{'baseline' if plain else 'ours'}.asyncio-streams.concurrent.{size}",
        group="baseline" if plain else "ours",
        kind="concurrent",
        level="-" if plain else "sealed",
        value=mbps(received, seconds),
        nbytes=received,
        seconds=seconds,
        verified=measured["ok"],
        extra={
            "connections": count,
            "bytes_per_connection": nbytes,
            "rss_before_mib": round(before / MIB, 2),
            "rss_peak_mib": round(measured["peak"] / MIB, 2),
            "rss_kib_per_connection": round(per_connection, 1),
            "rss_kib_per_idle_connection": round((measured["idle"] - before) / count / KIB, 1),
            "rss_kib_per_end": round(per_connection / 2, 1),
            "note": "both ends of every connection live in this process",
        },
    )


def growth(ctx: Context) -> Result:
    """RSS sampled every ``growth_sample_every`` bytes while one sealed connection transfers ``growth_bytes``."""
    total, every = ctx.config.growth_bytes, ctx.config.growth_sample_every

    async def main() -> tuple[float, list[int], bool]:
        client, server, cleanup = await our_streams_pair(ctx, "sealed")
        block = pattern_block()
        verifier = StreamVerifier(block, total)
        samples: list[int] = []

        async def receive_all() -> None:
            next_sample = every
            while not verifier.complete:
                chunk = await server.receive(RECEIVE_SIZE)
                if not chunk:
                    break
                verifier.feed(chunk)
                if verifier.received >= next_sample:
                    samples.append(rss_bytes())
                    next_sample += every

        task = asyncio.ensure_future(receive_all())
        started = time.perf_counter()
        for _ in range(total // WRITE_SIZE):
            await client.send(block)
        await task
        seconds = time.perf_counter() - started
        await cleanup()
        return seconds, samples, verifier.ok

    seconds, samples, verified = asyncio.run(main())
    spread = (max(samples) - min(samples)) / MIB if samples else 0.0
    return Result(
        name="ours.asyncio-streams.growth.sealed",
        group="ours",
        kind="growth",
        level="sealed",
        value=mbps(total, seconds),
        nbytes=total,
        seconds=seconds,
        verified=verified,
        extra={"rss_samples_mib": [round(s / MIB, 2) for s in samples], "rss_spread_mib": round(spread, 2)},
    )


def memory_scenarios() -> list[Scenario]:
    """The concurrency (plain and ours, small then large) and growth scenarios, in report order."""
    scenarios: list[Scenario] = []
    for index, size in enumerate(("small", "large")):
        for group, level, plain in (("baseline", "-", True), ("ours", "sealed", False)):
            scenarios.append(
                Scenario(
                    f"{group}.asyncio-streams.concurrent.{size}",
                    group,
                    "concurrent",
                    level,
                    functools.partial(concurrent, index=index, plain=plain),
                    isolated=True,
                )
            )
    scenarios.append(Scenario("ours.asyncio-streams.growth.sealed", "ours", "growth", "sealed", growth, isolated=True))
    return scenarios
