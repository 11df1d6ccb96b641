"""Handshakes over loopback: new connections per second through our asyncio APIs, each authenticated, then closed.

``ours.asyncio-streams.handshake`` and ``ours.asyncio-protocol.handshake`` include the TCP connect, accept and
close (``baseline.asyncio-streams.connect`` measures that share alone; the report subtracts it for
``cost_excl_tcp``). The bare step loop and the in-memory Connection handshake are in ``floors`` and ``sans_io``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from negotiate_stream import Connection, SecurityContext

from .adapters import run_on
from .config import LOCALHOST
from .registry import Context, Scenario, options, require
from .results import Result, async_best_rate, handshake_result

__all__ = ["handshake_scenarios", "protocol_handshakes", "streams_handshakes"]

_NOTE = "includes TCP connect and close"
#: Lets the server's last handler (or waiter callback) run before the count of authenticated peers is checked.
_SETTLE = 0.05


async def _open_close(module: Any, port: int, client_options: dict[str, Any]) -> None:
    _reader, writer = await module.open_connection(LOCALHOST, port, **client_options)
    writer.close()


async def streams_handshakes(ctx: Context) -> Result:
    """Handshakes/s of our asyncio streams: ``open_connection`` to ``start_server``, then close."""
    module = require("negotiate_stream.asyncio_")
    identities: list[Any] = []

    async def handle(reader: Any, writer: Any) -> None:
        identities.append(writer.get_extra_info("peer_identity"))
        writer.close()

    server = await module.start_server(handle, LOCALHOST, 0, **options(ctx, "sealed", True))
    port = server.sockets[0].getsockname()[1]
    client_options = options(ctx, "sealed", False)
    await _open_close(module, port, client_options)  # warm-up
    rate, seconds, done = await async_best_rate(
        ctx.config.handshakes, lambda: _open_close(module, port, client_options)
    )
    await asyncio.sleep(_SETTLE)
    server.close()
    await server.wait_closed()
    verified = len(identities) == done + 1 and all(identity is not None for identity in identities)
    return handshake_result("ours.asyncio-streams.handshake", "ours", rate, seconds, verified, note=_NOTE)


async def protocol_handshakes(ctx: Context) -> Result:
    """Handshakes/s of our NegotiateProtocol on both ends (empty application protocols), then close."""
    module = require("negotiate_stream.asyncio_")
    loop = asyncio.get_running_loop()
    authenticated: list[Any] = []

    def server_factory() -> asyncio.BaseProtocol:
        waiter: asyncio.Future[Any] = loop.create_future()
        waiter.add_done_callback(lambda f: authenticated.append(f.result().get_extra_info("peer_identity")))
        connection = Connection(SecurityContext.server(**options(ctx, "sealed", True)))
        protocol: asyncio.BaseProtocol = module.NegotiateProtocol(connection, asyncio.Protocol(), waiter=waiter)
        return protocol

    server = await loop.create_server(server_factory, LOCALHOST, 0)
    port = server.sockets[0].getsockname()[1]

    async def once() -> None:
        # Not open_negotiate_protocol: its wait_for timeout would be timed too, and the streams API has none.
        waiter: asyncio.Future[Any] = loop.create_future()
        connection = Connection(SecurityContext.client(**options(ctx, "sealed", False)))
        transport, _ = await loop.create_connection(
            lambda: module.NegotiateProtocol(connection, asyncio.Protocol(), waiter=waiter), LOCALHOST, port
        )
        await waiter
        transport.close()

    await once()  # warm-up
    rate, seconds, done = await async_best_rate(ctx.config.handshakes, once)
    await asyncio.sleep(_SETTLE)
    server.close()
    await server.wait_closed()
    verified = len(authenticated) == done + 1 and all(authenticated)
    return handshake_result("ours.asyncio-protocol.handshake", "ours", rate, seconds, verified, note=_NOTE)


def handshake_scenarios() -> list[Scenario]:
    """The loopback handshake scenarios, in report order."""
    return [
        Scenario(
            "ours.asyncio-protocol.handshake",
            "ours",
            "handshake",
            "sealed",
            lambda c: run_on("asyncio-protocol", lambda: protocol_handshakes(c)),
        ),
        Scenario(
            "ours.asyncio-streams.handshake",
            "ours",
            "handshake",
            "sealed",
            lambda c: run_on("asyncio-streams", lambda: streams_handshakes(c)),
        ),
    ]
