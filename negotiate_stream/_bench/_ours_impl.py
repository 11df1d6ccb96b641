"""The measurements of our adapters; each function raises :class:`Unavailable` when its module is missing."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
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
    """Wrap both ends of a plain anyio TCP pair with NegotiateStream.wrap (handshakes run concurrently)."""
    module = require("negotiate_stream.anyio_")
    from ._anyio_sync_plain import anyio_tcp_pair

    client_raw, server_raw, cleanup_raw = await anyio_tcp_pair()
    wrapped: dict[str, Any] = {}

    async def wrap_server() -> None:
        wrapped["server"] = await module.NegotiateStream.wrap(server_raw, server_side=True, **options(ctx, level, True))

    async with anyio.create_task_group() as group:
        group.start_soon(wrap_server)
        client = await module.NegotiateStream.wrap(client_raw, **options(ctx, level, False))
    server = wrapped["server"]

    async def cleanup() -> None:
        await client.aclose()
        await server.aclose()
        await cleanup_raw()

    return AnyioPipe(client), AnyioPipe(server), cleanup


# -- asyncio Protocol --------------------------------------------------------------------------------------------


class _AppSink(asyncio.Protocol):
    """The application protocol receiving the bulk stream (verified plaintext) from a NegotiateProtocol."""

    def __init__(self, verifier: StreamVerifier, done: asyncio.Future[None]) -> None:
        self.verifier = verifier
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.verifier.feed(data)
        if self.verifier.complete and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _protocol_pair(
    ctx: Context, level: str, client_app: asyncio.BaseProtocol, server_app: asyncio.BaseProtocol
) -> tuple[Any, Any, Cleanup]:
    """Connect a client NegotiateProtocol to a server one over loopback; returns both app transports."""
    module = require("negotiate_stream.asyncio_")
    from .._connection import Connection
    from .._context import SecurityContext

    loop = asyncio.get_running_loop()
    server_waiter: asyncio.Future[Any] = loop.create_future()
    client_waiter: asyncio.Future[Any] = loop.create_future()

    def server_factory() -> asyncio.BaseProtocol:
        connection = Connection(SecurityContext.create(True, **options(ctx, level, True)))
        protocol: asyncio.BaseProtocol = module.NegotiateProtocol(connection, server_app, waiter=server_waiter)
        return protocol

    def client_factory() -> asyncio.BaseProtocol:
        connection = Connection(SecurityContext.create(False, **options(ctx, level, False)))
        protocol: asyncio.BaseProtocol = module.NegotiateProtocol(connection, client_app, waiter=client_waiter)
        return protocol

    server = await loop.create_server(server_factory, LOCALHOST, 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(client_factory, LOCALHOST, port)
    client_transport = await asyncio.wait_for(client_waiter, 30)
    server_transport = await asyncio.wait_for(server_waiter, 30)

    async def cleanup() -> None:
        transport.close()
        server_transport.close()
        server.close()
        await server.wait_closed()

    return client_transport, server_transport, cleanup


async def _protocol_bulk(ctx: Context, level: str) -> Result:
    from ._asyncio_plain import _Source

    loop = asyncio.get_running_loop()
    total = ctx.config.bulk_bytes
    block = pattern_block()
    verifier = StreamVerifier(block, total)
    done: asyncio.Future[None] = loop.create_future()
    source = _Source()
    client, _server, cleanup = await _protocol_pair(ctx, level, source, _AppSink(verifier, done))
    try:
        write = client.write
        started = time.perf_counter()
        for _ in range(total // WRITE_SIZE):
            write(block)
            if source.resumed is not None:
                await source.resumed
        await done
        seconds = time.perf_counter() - started
    finally:
        await cleanup()
    return bulk_result(
        f"ours.asyncio-protocol.bulk.{level}", "ours", level, BulkOutcome(verifier.received, seconds, verifier.ok)
    )


async def _protocol_pingpong(ctx: Context, level: str) -> Result:
    from ._asyncio_plain import _Echo, _Pinger

    loop = asyncio.get_running_loop()
    rounds = ctx.config.pingpong_rounds
    done: asyncio.Future[bool] = loop.create_future()
    pinger = _Pinger(rounds, done)
    _client, _server, cleanup = await _protocol_pair(ctx, level, pinger, _Echo())
    try:
        started = time.perf_counter()
        pinger.start()
        verified = await done
        seconds = time.perf_counter() - started
    finally:
        await cleanup()
    outcome = PingPongOutcome(rounds, seconds, verified)
    return pingpong_result(f"ours.asyncio-protocol.pingpong.{level}", "ours", level, outcome)


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
            identities.append(writer.get_extra_info("peer_identity"))
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
    module = require("negotiate_stream.asyncio_")
    from .._connection import Connection
    from .._context import SecurityContext

    loop = asyncio.get_running_loop()
    authenticated: list[Any] = []

    def server_factory() -> asyncio.BaseProtocol:
        waiter: asyncio.Future[Any] = loop.create_future()
        waiter.add_done_callback(lambda f: authenticated.append(f.result().get_extra_info("peer_identity")))
        connection = Connection(SecurityContext.create(True, **options(ctx, "sealed", True)))
        protocol: asyncio.BaseProtocol = module.NegotiateProtocol(connection, asyncio.Protocol(), waiter=waiter)
        return protocol

    server = await loop.create_server(server_factory, LOCALHOST, 0)
    port = server.sockets[0].getsockname()[1]

    async def once() -> None:
        waiter: asyncio.Future[Any] = loop.create_future()
        connection = Connection(SecurityContext.create(False, **options(ctx, "sealed", False)))
        transport, _ = await loop.create_connection(
            lambda: module.NegotiateProtocol(connection, asyncio.Protocol(), waiter=waiter), LOCALHOST, port
        )
        await waiter
        transport.close()

    await once()  # warm-up
    rate, seconds, done = await async_best_rate(ctx.config.handshakes, once)
    await asyncio.sleep(0.05)
    server.close()
    await server.wait_closed()
    verified = len(authenticated) == done + 1 and all(authenticated)
    return _handshake_result("ours.asyncio-protocol.handshake", rate, seconds, verified)


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
    server = await start_server(handle, LOCALHOST, 0, **server_kwargs)
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
        client = _jetblack_client(alternative, ctx, reader, writer, credentials)
        try:
            await client.authenticate_as_client()
        except Exception as exc:  # its client picks its own mechanism and credentials; report why, do not fail
            client.close()
            server.close()
            raise Unavailable(f"its client could not authenticate here ({type(exc).__name__}: {exc})") from exc
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


def _jetblack_client(alternative: Any, ctx: Context, reader: Any, writer: Any, credentials: Any) -> Any:
    """Build its client with whichever constructor the installed version has.

    0.2.x takes ``(hostname, reader, writer)`` and the current user's credentials, which for NTLM pyspnego reads
    from ``$NTLM_USER_FILE`` (first entry) when the context is created: point it at the run's test account.
    """
    cls = alternative.NegotiateStreamAsync
    if "username" in inspect.signature(cls).parameters:
        principal = f"{credentials.domain}\\{credentials.username}"
        return cls(reader, writer, username=principal, password=credentials.password, local_hostname="localhost")
    previous = os.environ.get("NTLM_USER_FILE")
    os.environ["NTLM_USER_FILE"] = ctx.users.path
    try:
        return cls("localhost", reader, writer)
    finally:
        if previous is None:
            del os.environ["NTLM_USER_FILE"]
        else:
            os.environ["NTLM_USER_FILE"] = previous


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
