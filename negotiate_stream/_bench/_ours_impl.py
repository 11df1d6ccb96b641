"""The measurements of our adapters; each function raises :class:`Unavailable` when its module is missing."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ._anyio_sync_plain import AnyioPipe, socket_pair, spawn_thread
from ._asyncio_plain import LOCALHOST, StreamsPipe, streams_pair
from ._baselines import bulk_result, pingpong_result
from ._core import KIB, MIB, WRITE_SIZE, Result, StreamVerifier, mbps, pattern_block, rss_bytes
from ._ours import Unavailable, options, require
from ._registry import Context
from ._workloads import (
    PING_SIZE,
    AsyncPipe,
    BulkOutcome,
    PingPongOutcome,
    async_bulk,
    async_pingpong,
    sync_bulk,
    sync_pingpong,
)

__all__ = ["bulk", "concurrent", "growth", "handshakes", "jetblack", "pingpong"]

Cleanup = Callable[[], Awaitable[None]]


# -- blocking sockets ------------------------------------------------------------------------------------------


def _sync_pair(ctx: Context, level: str) -> tuple[Any, Any]:
    sync = require("negotiate_stream.sync")
    client_sock, server_sock = socket_pair()
    accepted: list[Any] = []
    thread = spawn_thread(
        lambda: accepted.append(sync.NegotiateSocket.server(server_sock, **options(ctx, level, True)))
    )
    client = sync.NegotiateSocket.client(client_sock, **options(ctx, level, False))
    thread.join()
    return client, accepted[0]


def _sync(ctx: Context, level: str, pingpong: bool) -> Result:
    name = f"ours.sync.{'pingpong' if pingpong else 'bulk'}.{level}"
    client, server = _sync_pair(ctx, level)
    try:
        if pingpong:
            outcome = sync_pingpong(client, server, ctx.config.pingpong_rounds, spawn_thread)
            return pingpong_result(name, "ours", level, outcome)
        return bulk_result(name, "ours", level, sync_bulk(client, server, ctx.config.bulk_bytes, spawn_thread))
    finally:
        client.close()
        server.close()


# -- asyncio streams ---------------------------------------------------------------------------------------------


async def _our_streams_pair(ctx: Context, level: str) -> tuple[StreamsPipe, StreamsPipe, Cleanup]:
    module = require("negotiate_stream.asyncio_")
    return await streams_pair(
        module.open_connection,
        module.start_server,
        client_kwargs=options(ctx, level, False),
        server_kwargs=options(ctx, level, True),
    )


# -- anyio -------------------------------------------------------------------------------------------------------


async def _our_anyio_pair(ctx: Context, level: str) -> tuple[AnyioPipe, AnyioPipe, Cleanup]:
    raise Unavailable("negotiate_stream.anyio_ is not importable")


# -- asyncio Protocol --------------------------------------------------------------------------------------------


async def _protocol_bulk(ctx: Context, level: str) -> Result:
    raise Unavailable("negotiate_stream.asyncio_ NegotiateProtocol is not importable")


async def _protocol_pingpong(ctx: Context, level: str) -> Result:
    raise Unavailable("negotiate_stream.asyncio_ NegotiateProtocol is not importable")


# -- dispatch ------------------------------------------------------------------------------------------------------


async def _async_pipes(ctx: Context, api: str, level: str) -> tuple[AsyncPipe, AsyncPipe, Cleanup]:
    if api == "asyncio-streams":
        return await _our_streams_pair(ctx, level)
    return await _our_anyio_pair(ctx, level)


def _run_async(api: str, main: Callable[[], Awaitable[Result]]) -> Result:
    backend = "trio" if api == "anyio-trio" else "asyncio"
    result: Result = anyio.run(main, backend=backend)
    return result


def bulk(ctx: Context, api: str, level: str) -> Result:
    """Bulk transfer of ``ctx.config.bulk_bytes`` over our ``api`` at ``level``."""
    if api == "sync":
        return _sync(ctx, level, pingpong=False)
    if api == "asyncio-protocol":
        return _run_async(api, lambda: _protocol_bulk(ctx, level))
    name = f"ours.{api}.bulk.{level}"

    async def main() -> Result:
        client, server, cleanup = await _async_pipes(ctx, api, level)
        try:
            return bulk_result(name, "ours", level, await async_bulk(client, server, ctx.config.bulk_bytes))
        finally:
            await cleanup()

    return _run_async(api, main)


def pingpong(ctx: Context, api: str, level: str) -> Result:
    """64-byte round trips over our ``api`` at ``level``."""
    if api == "sync":
        return _sync(ctx, level, pingpong=True)
    if api == "asyncio-protocol":
        return _run_async(api, lambda: _protocol_pingpong(ctx, level))
    name = f"ours.{api}.pingpong.{level}"

    async def main() -> Result:
        client, server, cleanup = await _async_pipes(ctx, api, level)
        try:
            outcome = await async_pingpong(client, server, ctx.config.pingpong_rounds)
            return pingpong_result(name, "ours", level, outcome)
        finally:
            await cleanup()

    return _run_async(api, main)


def handshakes(ctx: Context, api: str) -> Result:
    """New loopback connections per second, each authenticated with NTLM (sealed), one at a time, then closed.

    Includes the TCP connect/accept/close (see ``baseline.asyncio-streams.connect`` for that share alone).
    """
    if api == "asyncio-protocol":
        return _run_async(api, lambda: _protocol_handshakes(ctx))
    module = require("negotiate_stream.asyncio_")
    count = ctx.config.handshakes

    async def main() -> Result:
        identities: list[Any] = []

        async def handle(reader: Any, writer: Any) -> None:
            identities.append(writer.get_extra_info("negotiate_session"))
            writer.close()

        server = await module.start_server(handle, LOCALHOST, 0, **options(ctx, "sealed", True))
        port = server.sockets[0].getsockname()[1]
        client_options = options(ctx, "sealed", False)
        _reader, writer = await module.open_connection(LOCALHOST, port, **client_options)  # warm-up
        writer.close()
        rate, seconds, done = await async_best_rate(count, lambda: _open_close(module, port, client_options))
        await asyncio.sleep(0.05)  # let the last handler run
        server.close()
        await server.wait_closed()
        verified = len(identities) == done + 1 and all(identity is not None for identity in identities)
        return _handshake_result("ours.asyncio-streams.handshake", rate, seconds, verified)

    return _run_async(api, main)


async def _open_close(module: Any, port: int, client_options: dict[str, Any]) -> None:
    _reader, writer = await module.open_connection(LOCALHOST, port, **client_options)
    writer.close()


async def async_best_rate(
    count: int, once: Callable[[], Awaitable[None]], batches: int = 3
) -> tuple[float, float, int]:
    """Await ``once`` about ``count`` times in timed batches; return (best batch's rate/s, total seconds, calls)."""
    size = max(1, count // batches)
    best, total = float("inf"), 0.0
    for _ in range(batches):
        started = time.perf_counter()
        for _ in range(size):
            await once()
        elapsed = time.perf_counter() - started
        total += elapsed
        best = min(best, elapsed / size)
    return 1.0 / best, total, size * batches


def _handshake_result(name: str, rate: float, seconds: float, verified: bool) -> Result:
    return Result(
        name=name,
        group="ours",
        kind="handshake",
        unit="handshakes/s",
        level="sealed",
        value=rate,
        seconds=seconds,
        verified=verified,
        extra={"ms_per_handshake": round(1e3 / rate, 3), "note": "includes TCP connect and close"},
    )


async def _protocol_handshakes(ctx: Context) -> Result:
    raise Unavailable("negotiate_stream.asyncio_ NegotiateProtocol is not importable")


async def concurrent_streams(
    ctx: Context | None,
    count: int,
    nbytes: int,
    *,
    open_connection: Callable[..., Awaitable[tuple[Any, Any]]] = asyncio.open_connection,
    start_server: Callable[..., Awaitable[asyncio.Server]] = asyncio.start_server,
    level: str = "sealed",
) -> dict[str, Any]:
    """Open ``count`` connections (all kept open), then stream ``nbytes`` on each at once.

    Returns the seconds of the streaming phase, RSS before, RSS with all connections open and idle, the peak RSS
    while streaming, the bytes received and whether all were verified.
    """
    block = pattern_block()
    verifiers: list[StreamVerifier] = []
    all_done = asyncio.Event()
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
        finished += 1
        if finished == count:
            all_done.set()
        await release.wait()
        writer.close()

    release = asyncio.Event()
    gc.collect()
    rss_before = rss_bytes()
    client_kwargs = options(ctx, level, False) if ctx is not None else {}
    server_kwargs = options(ctx, level, True) if ctx is not None else {}
    server = await start_server(handle, LOCALHOST, 0, backlog=count, **server_kwargs)
    port = server.sockets[0].getsockname()[1]
    writers: list[Any] = []
    batch = 64  # connect in batches: a listen backlog of 1,000 simultaneous handshakes is not the point here
    for first in range(0, count, batch):
        pairs = await asyncio.gather(
            *(open_connection(LOCALHOST, port, **client_kwargs) for _ in range(min(batch, count - first)))
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
            await asyncio.sleep(0.02)

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
        if module is None:
            return await concurrent_streams(None, count, nbytes)
        return await concurrent_streams(
            ctx, count, nbytes, open_connection=module.open_connection, start_server=module.start_server
        )

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
    module = require("negotiate_stream.asyncio_")
    total, every = ctx.config.growth_bytes, ctx.config.growth_sample_every

    async def main() -> tuple[float, list[int], bool]:
        client, server, cleanup = await streams_pair(
            module.open_connection,
            module.start_server,
            client_kwargs=options(ctx, "sealed", False),
            server_kwargs=options(ctx, "sealed", True),
        )
        block = pattern_block()
        verifier = StreamVerifier(block, total)
        samples: list[int] = []

        async def receive_all() -> None:
            next_sample = every
            while not verifier.complete:
                chunk = await server.receive(256 * KIB)
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


def jetblack(ctx: Context, kind: str) -> Result:
    """jetblack-negotiate-stream's NegotiateStreamAsync client against our asyncio streams server (sealed, SPNEGO).

    It is a client only; the server side is ours, so the figure mixes both implementations' costs.
    """
    alternative = require("jetblack_negotiate_stream")
    ours = require("negotiate_stream.asyncio_")
    name = f"alternative.jetblack.{kind}.sealed"
    credentials = ctx.users.client_credentials()
    server_options = {**options(ctx, "sealed", True), "protocol": "negotiate"}

    async def main() -> Result:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[StreamsPipe] = loop.create_future()
        release = asyncio.Event()

        async def handle(reader: Any, writer: Any) -> None:
            accepted.set_result(StreamsPipe(reader, writer))
            await release.wait()

        server = await ours.start_server(handle, LOCALHOST, 0, **server_options)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        client = alternative.NegotiateStreamAsync(
            reader,
            writer,
            username=f"{credentials.domain}\\{credentials.username}",
            password=credentials.password,
            local_hostname="localhost",
        )
        await client.authenticate_as_client()
        peer = await asyncio.wait_for(accepted, 30)
        try:
            if kind == "bulk":
                return bulk_result(name, "alternative", "sealed", await _jetblack_bulk(client, peer, ctx))
            return pingpong_result(name, "alternative", "sealed", await _jetblack_pingpong(client, peer, ctx))
        finally:
            release.set()
            client.close()
            server.close()

    result: Result = asyncio.run(main())
    return result


async def _jetblack_bulk(client: Any, peer: StreamsPipe, ctx: Context) -> BulkOutcome:
    total = ctx.config.bulk_bytes
    block = pattern_block()
    verifier = StreamVerifier(block, total)

    async def receive_all() -> None:
        while not verifier.complete:
            chunk = await peer.receive(256 * KIB)
            if not chunk:
                break
            verifier.feed(chunk)

    task = asyncio.ensure_future(receive_all())
    started = time.perf_counter()
    for _ in range(total // WRITE_SIZE):
        client.write(block)
        await client.drain()
    await task
    return BulkOutcome(verifier.received, time.perf_counter() - started, verifier.ok)


async def _jetblack_pingpong(client: Any, peer: StreamsPipe, ctx: Context) -> PingPongOutcome:
    rounds = ctx.config.pingpong_rounds
    ping = bytes(range(PING_SIZE))

    async def echo() -> None:
        for _ in range(rounds):
            data = b""
            while len(data) < PING_SIZE:
                data += await peer.receive(PING_SIZE - len(data))
            await peer.send(data)

    task = asyncio.ensure_future(echo())
    verified = True
    started = time.perf_counter()
    for _ in range(rounds):
        client.write(ping)
        await client.drain()
        verified = await client.read() == ping and verified
    seconds = time.perf_counter() - started
    await task
    return PingPongOutcome(rounds, seconds, verified)
