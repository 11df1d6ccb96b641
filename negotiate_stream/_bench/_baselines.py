"""Baseline scenarios: plain asyncio / anyio / socket loopback copies and stdlib TLS, no Negotiate at all."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import anyio

from ._anyio_sync_plain import AnyioPipe, anyio_tcp_pair, socket_pair, spawn_thread
from ._asyncio_plain import LOCALHOST, protocol_bulk, protocol_pingpong, streams_pair
from ._core import Result
from ._registry import Context, Scenario
from ._workloads import BulkOutcome, PingPongOutcome, async_bulk, async_pingpong, sync_bulk, sync_pingpong

__all__ = ["baseline_scenarios"]


def bulk_result(
    name: str, group: str, level: str, outcome: BulkOutcome, *, kind: str = "bulk", **extra: object
) -> Result:
    """A bulk :class:`Result` (MB/s) from a measured outcome."""
    return Result(
        name=name,
        group=group,
        kind=kind,
        level=level,
        value=outcome.mbps,
        nbytes=outcome.nbytes,
        seconds=outcome.seconds,
        verified=outcome.verified,
        extra=dict(extra),
    )


def pingpong_result(
    name: str, group: str, level: str, outcome: PingPongOutcome, *, kind: str = "pingpong", **extra: object
) -> Result:
    """A ping-pong :class:`Result` (round trips/s) from a measured outcome."""
    return Result(
        name=name,
        group=group,
        kind=kind,
        unit="round trips/s",
        level=level,
        value=outcome.rate,
        seconds=outcome.seconds,
        verified=outcome.verified,
        extra={"us_per_round_trip": round(outcome.seconds / outcome.rounds * 1e6, 2), **extra},
    )


def _streams(ctx: Context, tls: bool, pingpong: bool) -> Result:
    name = f"baseline.{'tls' if tls else 'asyncio'}-streams.{'pingpong' if pingpong else 'bulk'}"

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
    name = f"baseline.{'tls' if tls else 'asyncio'}-protocol.{'pingpong' if pingpong else 'bulk'}"

    async def main() -> Result:
        if pingpong:
            return pingpong_result(name, "baseline", "-", await protocol_pingpong(ctx.config.pingpong_rounds))
        ssl_pair = ctx.tls_contexts() if tls else None
        return bulk_result(name, "baseline", "-", await protocol_bulk(ctx.config.bulk_bytes, ssl_pair=ssl_pair))

    return asyncio.run(main())


def _anyio(ctx: Context, backend: str, pingpong: bool) -> Result:
    name = f"baseline.anyio-{backend}.{'pingpong' if pingpong else 'bulk'}"

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
    name = f"baseline.sync.{'pingpong' if pingpong else 'bulk'}"
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
        kind = "pingpong" if pingpong else "bulk"
        scenarios += [
            make(f"baseline.asyncio-protocol.{kind}", functools.partial(_protocol, tls=False, pingpong=pingpong), kind),
            make(f"baseline.asyncio-streams.{kind}", functools.partial(_streams, tls=False, pingpong=pingpong), kind),
            make(f"baseline.tls-streams.{kind}", functools.partial(_streams, tls=True, pingpong=pingpong), kind),
            make(
                f"baseline.anyio-asyncio.{kind}", functools.partial(_anyio, backend="asyncio", pingpong=pingpong), kind
            ),
            make(f"baseline.anyio-trio.{kind}", functools.partial(_anyio, backend="trio", pingpong=pingpong), kind),
            make(f"baseline.sync.{kind}", functools.partial(_sync, pingpong=pingpong), kind),
        ]
        if not pingpong:
            scenarios.append(
                make("baseline.tls-protocol.bulk", functools.partial(_protocol, tls=True, pingpong=False), kind)
            )
    scenarios.append(make("baseline.asyncio-streams.connect", _connect, "connect"))
    return scenarios
