"""Our adapters over loopback, both ends in this process: bulk and 64-byte ping-pong at each protection level.

``ours.<api>.bulk.<level>`` and ``ours.<api>.pingpong.<level>`` for the asyncio Protocol, asyncio streams, anyio
(asyncio and trio backends) and blocking-socket APIs; each runs the same workload code as its plain baseline
(``workloads`` or ``protocols``), so the ``plain`` ratio compares like with like. The asyncio Protocol's sealed and
sign-only bulk and its sealed ping-pong run twice: on the NTLM fast path (checked, see ``paths``) and on pyspnego's
record path (``*.pyspnego-path``), side by side in one run. The connected pairs of our adapters live here too: the
handshake, memory and two-process scenarios reuse them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from negotiate_stream import Connection, SecurityContext

from .config import LOCALHOST
from .loopback import AnyioPipe, Cleanup, StreamsPipe, anyio_tcp_pair, socket_pair, spawn_thread, streams_pair
from .paths import RecordPath, check_record_path, expected_path, record_path_env, suffix_of
from .protocols import ProtocolPair, Sink, protocol_bulk, protocol_pingpong
from .registry import APIS, Context, Scenario, options, require
from .results import BulkOutcome, PingPongOutcome, Result, bulk_result, pingpong_result
from .workloads import AsyncPipe, async_bulk, async_pingpong, sync_bulk, sync_pingpong

__all__ = [
    "PATH_TWINS",
    "adapter_scenarios",
    "measure",
    "negotiate_protocol_pair",
    "open_negotiate_protocol",
    "our_streams_pair",
    "run_on",
]


#: The (kind, level) of the asyncio Protocol scenarios that also run on pyspnego's record path.
PATH_TWINS = (("bulk", "sealed"), ("bulk", "sign"), ("pingpong", "sealed"))


def run_on(api: str, main: Callable[[], Awaitable[Result]]) -> Result:
    """Run ``main`` on the event loop ``api`` needs (trio for ``anyio-trio``, else asyncio)."""
    backend = "trio" if api == "anyio-trio" else "asyncio"
    result: Result = anyio.run(main, backend=backend)
    return result


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


async def our_streams_pair(ctx: Context, level: str) -> tuple[StreamsPipe, StreamsPipe, Cleanup]:
    """A connected pair of our asyncio streams (``open_connection`` to ``start_server``)."""
    module = require("negotiate_stream.asyncio_")
    return await streams_pair(
        module.open_connection,
        module.start_server,
        client_kwargs=options(ctx, level, False),
        server_kwargs=options(ctx, level, True),
    )


async def _our_anyio_pair(ctx: Context, level: str) -> tuple[AnyioPipe, AnyioPipe, Cleanup]:
    """Wrap both ends of a plain anyio TCP pair with NegotiateStream.wrap (handshakes run concurrently)."""
    module = require("negotiate_stream.anyio_")
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


async def open_negotiate_protocol(
    ctx: Context,
    level: str,
    app: asyncio.BaseProtocol,
    port: int,
    contexts: list[SecurityContext] | None = None,
) -> tuple[asyncio.BaseTransport, asyncio.Transport]:
    """Connect ``app`` behind a client NegotiateProtocol to ``port``; returns (TCP transport, app transport).

    The client's SecurityContext is appended to ``contexts`` if given (to check its record path).
    """
    module = require("negotiate_stream.asyncio_")
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[asyncio.Transport] = loop.create_future()
    context = SecurityContext.client(**options(ctx, level, False))
    if contexts is not None:
        contexts.append(context)
    connection = Connection(context)
    transport, _ = await loop.create_connection(
        lambda: module.NegotiateProtocol(connection, app, waiter=waiter), LOCALHOST, port
    )
    return transport, await asyncio.wait_for(waiter, 30)


def negotiate_protocol_pair(ctx: Context, level: str, path: RecordPath = "fast") -> ProtocolPair:
    """A :data:`~.protocols.ProtocolPair` that puts our NegotiateProtocol in front of both application protocols.

    Both handshakes complete with NTLM record ``path`` selected; the connection fails (RuntimeError) unless both
    contexts then report that path, so a scenario cannot measure the other one under its name.
    """
    module = require("negotiate_stream.asyncio_")

    async def connect(
        client_app: asyncio.BaseProtocol, server_app: asyncio.BaseProtocol
    ) -> tuple[asyncio.Transport, Cleanup]:
        loop = asyncio.get_running_loop()
        server_waiter: asyncio.Future[asyncio.Transport] = loop.create_future()
        contexts: list[SecurityContext] = []

        def server_factory() -> asyncio.BaseProtocol:
            context = SecurityContext.server(**options(ctx, level, True))
            contexts.append(context)
            protocol: asyncio.BaseProtocol = module.NegotiateProtocol(
                Connection(context), server_app, waiter=server_waiter
            )
            return protocol

        with record_path_env(path):  # until both ends completed their handshake (the path is chosen there)
            server = await loop.create_server(server_factory, LOCALHOST, 0)
            port = server.sockets[0].getsockname()[1]
            transport, client_transport = await open_negotiate_protocol(ctx, level, client_app, port, contexts)
            server_transport = await asyncio.wait_for(server_waiter, 30)

        async def cleanup() -> None:
            transport.close()
            server_transport.close()
            server.close()
            await server.wait_closed()

        try:
            check_record_path(contexts, expected_path(path, level))
        except RuntimeError:
            await cleanup()
            raise
        return client_transport, cleanup

    return connect


def _measure_sync(ctx: Context, name: str, level: str, pingpong: bool) -> Result:
    client, server = _sync_pair(ctx, level)
    try:
        if pingpong:
            outcome = sync_pingpong(client, server, ctx.config.pingpong_rounds, spawn_thread)
            return pingpong_result(name, "ours", level, outcome)
        return bulk_result(name, "ours", level, sync_bulk(client, server, ctx.config.bulk_bytes, spawn_thread))
    finally:
        client.close()
        server.close()


def measure(ctx: Context, api: str, level: str, kind: str, path: RecordPath | None = None) -> Result:
    """Bulk transfer of ``ctx.config.bulk_bytes`` or ``pingpong_rounds`` 64-byte round trips (``kind``) over our
    ``api`` at ``level``.

    ``path`` (asyncio Protocol only) selects and checks the NTLM record path; ``None`` leaves it to the
    environment (the library's default: fast).
    """
    name = f"ours.{api}.{kind}.{level}" + suffix_of(path)
    figures: dict[str, Any] = {} if path is None else {"record_path": expected_path(path, level)}
    pingpong = kind == "pingpong"
    if api == "sync":
        return _measure_sync(ctx, name, level, pingpong)
    rounds, total = ctx.config.pingpong_rounds, ctx.config.bulk_bytes

    async def main() -> Result:
        outcome: BulkOutcome | PingPongOutcome
        if api == "asyncio-protocol":
            connect = negotiate_protocol_pair(ctx, level, path or "fast")
            outcome = await (protocol_pingpong(connect, rounds) if pingpong else protocol_bulk(connect, total, Sink))
        else:
            pair = our_streams_pair if api == "asyncio-streams" else _our_anyio_pair
            pipes: tuple[AsyncPipe, AsyncPipe, Cleanup] = await pair(ctx, level)
            client, server, cleanup = pipes
            try:
                if pingpong:
                    outcome = await async_pingpong(client, server, rounds)
                else:
                    outcome = await async_bulk(client, server, total)
            finally:
                await cleanup()
        if isinstance(outcome, PingPongOutcome):
            return pingpong_result(name, "ours", level, outcome, **figures)
        return bulk_result(name, "ours", level, outcome, **figures)

    return run_on(api, main)


def adapter_scenarios() -> list[Scenario]:
    """Bulk at every level and ping-pong sealed and unprotected, for every API, in report order; the asyncio
    Protocol's fast-path scenarios of :data:`PATH_TWINS` each followed by their pyspnego-path twin."""
    scenarios: list[Scenario] = []
    for kind, levels in (("bulk", ("sealed", "sign", "none")), ("pingpong", ("sealed", "none"))):
        for level in levels:
            for api in APIS:
                paths: tuple[RecordPath | None, ...] = (None,)
                if api == "asyncio-protocol":
                    paths = ("fast", "pyspnego") if (kind, level) in PATH_TWINS else ("fast",)
                for path in paths:
                    suffix = suffix_of(path)
                    run = functools.partial(measure, api=api, level=level, kind=kind, path=path)
                    scenarios.append(Scenario(f"ours.{api}.{kind}.{level}{suffix}", "ours", kind, level, run))
    return scenarios
