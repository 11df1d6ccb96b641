"""Baselines: plain loopback copies with no Negotiate at all, for every API family, and stdlib TLS.

asyncio Protocols and streams, TLS streams and Protocols (a self-signed certificate made at run time; bulk and
ping-pong over both), anyio on asyncio and trio, blocking sockets with a thread, and the TCP connect + close of a
new connection. Our adapters' ``plain`` ratio divides by the baseline of the same API, their ``tls`` ratio (asyncio
streams and Protocols) by the TLS baseline of the same API.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import anyio

from .config import LOCALHOST
from .loopback import AnyioPipe, anyio_tcp_pair, socket_pair, spawn_thread, streams_pair
from .protocols import plain_protocol_pair, protocol_bulk, protocol_pingpong
from .registry import Context, Scenario
from .results import Result, bulk_result, pingpong_result
from .workloads import async_bulk, async_pingpong, sync_bulk, sync_pingpong

__all__ = ["baseline_scenarios"]


def _kind(pingpong: bool) -> str:
    return "pingpong" if pingpong else "bulk"


def _streams(ctx: Context, tls: bool, pingpong: bool) -> Result:
    name = f"baseline.{'tls' if tls else 'asyncio'}-streams.{_kind(pingpong)}"

    async def main() -> Result:
        client_kwargs, server_kwargs = {}, {}
        if tls:
            server_ctx, client_ctx = ctx.tls_contexts()
            client_kwargs = {"ssl": client_ctx, "server_hostname": "localhost"}
            server_kwargs = {"ssl": server_ctx}
        client, server, cleanup = await streams_pair(client_kwargs=client_kwargs, server_kwargs=server_kwargs)
        try:
            if pingpong:
                return pingpong_result(
                    name, "baseline", "-", await async_pingpong(client, server, ctx.config.pingpong_rounds)
                )
            return bulk_result(name, "baseline", "-", await async_bulk(client, server, ctx.config.bulk_bytes))
        finally:
            await cleanup()

    return asyncio.run(main())


def _protocol(ctx: Context, tls: bool, pingpong: bool) -> Result:
    name = f"baseline.{'tls' if tls else 'asyncio'}-protocol.{_kind(pingpong)}"

    async def main() -> Result:
        connect = functools.partial(plain_protocol_pair, ssl_pair=ctx.tls_contexts() if tls else None)
        if pingpong:
            return pingpong_result(name, "baseline", "-", await protocol_pingpong(connect, ctx.config.pingpong_rounds))
        return bulk_result(name, "baseline", "-", await protocol_bulk(connect, ctx.config.bulk_bytes))

    return asyncio.run(main())


def _anyio(ctx: Context, backend: str, pingpong: bool) -> Result:
    name = f"baseline.anyio-{backend}.{_kind(pingpong)}"

    async def main() -> Result:
        client, server, cleanup = await anyio_tcp_pair()
        try:
            a, b = AnyioPipe(client), AnyioPipe(server)
            if pingpong:
                return pingpong_result(name, "baseline", "-", await async_pingpong(a, b, ctx.config.pingpong_rounds))
            return bulk_result(name, "baseline", "-", await async_bulk(a, b, ctx.config.bulk_bytes))
        finally:
            await cleanup()

    result: Result = anyio.run(main, backend=backend)
    return result


def _sync(ctx: Context, pingpong: bool) -> Result:
    name = f"baseline.sync.{_kind(pingpong)}"
    client, server = socket_pair()
    with client, server:
        if pingpong:
            return pingpong_result(
                name, "baseline", "-", sync_pingpong(client, server, ctx.config.pingpong_rounds, spawn_thread)
            )
        return bulk_result(name, "baseline", "-", sync_bulk(client, server, ctx.config.bulk_bytes, spawn_thread))


def _connect(ctx: Context) -> Result:
    """Plain TCP connect + accept + close per second: the loopback share of a handshake over a new connection."""

    async def main() -> Result:
        accepted = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            writer.close()

        server = await asyncio.start_server(handle, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        count = ctx.config.handshakes
        started = time.perf_counter()
        for _ in range(count):
            reader, writer = await asyncio.open_connection(LOCALHOST, port)
            await reader.read()  # the server's close
            writer.close()
        seconds = time.perf_counter() - started
        server.close()
        await server.wait_closed()
        return Result(
            name="baseline.asyncio-streams.connect",
            group="baseline",
            kind="connect",
            unit="connects/s",
            value=count / seconds,
            seconds=seconds,
            verified=accepted == count,
            extra={"ms_per_handshake": round(seconds / count * 1e3, 3), "note": "TCP only, no authentication"},
        )

    return asyncio.run(main())


def baseline_scenarios() -> list[Scenario]:
    """Every baseline scenario, in report order."""

    def make(name: str, func: Callable[[Context], Result], kind: str) -> Scenario:
        return Scenario(name, "baseline", kind, "-", func)

    scenarios = []
    for pingpong in (False, True):
        kind = _kind(pingpong)
        scenarios += [
            make(f"baseline.asyncio-protocol.{kind}", functools.partial(_protocol, tls=False, pingpong=pingpong), kind),
            make(f"baseline.asyncio-streams.{kind}", functools.partial(_streams, tls=False, pingpong=pingpong), kind),
            make(f"baseline.tls-streams.{kind}", functools.partial(_streams, tls=True, pingpong=pingpong), kind),
            make(
                f"baseline.anyio-asyncio.{kind}", functools.partial(_anyio, backend="asyncio", pingpong=pingpong), kind
            ),
            make(f"baseline.anyio-trio.{kind}", functools.partial(_anyio, backend="trio", pingpong=pingpong), kind),
            make(f"baseline.sync.{kind}", functools.partial(_sync, pingpong=pingpong), kind),
            make(f"baseline.tls-protocol.{kind}", functools.partial(_protocol, tls=True, pingpong=pingpong), kind),
        ]
    scenarios.append(make("baseline.asyncio-streams.connect", _connect, "connect"))
    return scenarios
