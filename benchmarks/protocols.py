"""asyncio Protocol workloads: the leanest asyncio code this benchmark can write, for plain TCP, TLS and ours.

A flow-controlled :class:`Source`, verifying sinks (:class:`Sink` on ``data_received``, :class:`BufferedSink` on
one reused buffer), an :class:`Echo` and a :class:`Pinger` that sends each ping from the callback that received the
previous pong. :func:`protocol_bulk` and :func:`protocol_pingpong` run over any :data:`ProtocolPair`: plain or TLS
(:func:`plain_protocol_pair`) or behind our NegotiateProtocol (``adapters.negotiate_protocol_pair``), so the
baselines and our Protocol adapter are measured by the same code.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .config import LOCALHOST, PING_SIZE, RECEIVE_SIZE, WRITE_SIZE
from .loopback import Cleanup
from .results import BulkOutcome, PingPongOutcome
from .verify import StreamVerifier, pattern_block
from .workloads import PING

__all__ = [
    "BufferedSink",
    "Echo",
    "Pinger",
    "ProtocolPair",
    "Sink",
    "Source",
    "plain_protocol_pair",
    "protocol_bulk",
    "protocol_pingpong",
]

#: Connect a client application protocol to a server one; returns the client's transport and a cleanup.
ProtocolPair = Callable[[asyncio.BaseProtocol, asyncio.BaseProtocol], Awaitable[tuple[asyncio.Transport, Cleanup]]]


class Source(asyncio.Protocol):
    """A sender honouring flow control (pause_writing / resume_writing)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.resumed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    async def write_pattern(self, write: Callable[[bytes], object], block: bytes, total: int) -> None:
        """Write ``total`` bytes as 64 KiB writes of ``block`` with ``write``, waiting whenever paused."""
        for _ in range(total // WRITE_SIZE):
            write(block)
            if self.resumed is not None:
                await self.resumed


class _VerifyingSink(asyncio.BaseProtocol):
    """Feeds a :class:`StreamVerifier` and resolves ``done`` once it is complete (or the connection is lost)."""

    def __init__(self, verifier: StreamVerifier, done: asyncio.Future[None]) -> None:
        self.verifier = verifier
        self.done = done

    def check_complete(self) -> None:
        """Resolve ``done`` once every expected byte arrived."""
        if self.verifier.complete and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Sink(_VerifyingSink, asyncio.Protocol):
    """Verifies the bulk stream delivered to ``data_received`` (the application side of our NegotiateProtocol)."""

    def data_received(self, data: bytes) -> None:
        self.verifier.feed(data)
        self.check_complete()


class BufferedSink(_VerifyingSink, asyncio.BufferedProtocol):
    """Receives into one reused buffer and verifies the bulk stream (the fastest plain receiver)."""

    def __init__(self, verifier: StreamVerifier, done: asyncio.Future[None]) -> None:
        super().__init__(verifier, done)
        self.buffer = memoryview(bytearray(RECEIVE_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.verifier.feed(self.buffer[:nbytes])
        self.check_complete()


class Echo(asyncio.Protocol):
    """Writes back every complete 64-byte message."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.pending = bytearray()

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while len(self.pending) >= PING_SIZE:
            self.transport.write(bytes(self.pending[:PING_SIZE]))
            del self.pending[:PING_SIZE]


class Pinger(asyncio.Protocol):
    """Sends the next ping from the callback that received the previous pong (no task switch per round)."""

    def __init__(self, rounds: int, done: asyncio.Future[bool]) -> None:
        self.left = rounds
        self.done = done
        self.pending = bytearray()
        self.verified = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def start(self) -> None:
        """Send the first ping."""
        self.transport.write(PING)

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while len(self.pending) >= PING_SIZE:
            self.verified = self.verified and self.pending[:PING_SIZE] == PING
            del self.pending[:PING_SIZE]
            self.left -= 1
            if self.left:
                self.transport.write(PING)
            elif not self.done.done():
                self.done.set_result(self.verified)


async def plain_protocol_pair(
    client_app: asyncio.BaseProtocol,
    server_app: asyncio.BaseProtocol,
    *,
    ssl_pair: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
) -> tuple[asyncio.Transport, Cleanup]:
    """:data:`ProtocolPair` over plain loopback TCP, or stdlib TLS with ``ssl_pair`` (server, client contexts)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: server_app, LOCALHOST, 0, ssl=ssl_pair[0] if ssl_pair else None)
    port = server.sockets[0].getsockname()[1]
    client_ssl: dict[str, Any] = {"ssl": ssl_pair[1], "server_hostname": "localhost"} if ssl_pair else {}
    transport, _ = await loop.create_connection(lambda: client_app, LOCALHOST, port, **client_ssl)

    async def cleanup() -> None:
        transport.close()
        server.close()
        await server.wait_closed()

    return transport, cleanup


async def protocol_bulk(
    connect: ProtocolPair,
    total: int,
    sink: Callable[[StreamVerifier, asyncio.Future[None]], _VerifyingSink] = BufferedSink,
) -> BulkOutcome:
    """Bulk transfer from a flow-controlled :class:`Source` to a verifying ``sink``, connected by ``connect``."""
    loop = asyncio.get_running_loop()
    block = pattern_block()
    verifier = StreamVerifier(block, total)
    done: asyncio.Future[None] = loop.create_future()
    source = Source()
    transport, cleanup = await connect(source, sink(verifier, done))
    try:
        started = time.perf_counter()
        await source.write_pattern(transport.write, block, total)
        await done
        seconds = time.perf_counter() - started
    finally:
        await cleanup()
    return BulkOutcome(verifier.received, seconds, verifier.ok)


async def protocol_pingpong(connect: ProtocolPair, rounds: int) -> PingPongOutcome:
    """Ping-pong between a :class:`Pinger` and an :class:`Echo` connected by ``connect``, driven from callbacks."""
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    pinger = Pinger(rounds, done)
    _transport, cleanup = await connect(pinger, Echo())
    try:
        started = time.perf_counter()
        pinger.start()
        verified = await done
        seconds = time.perf_counter() - started
    finally:
        await cleanup()
    return PingPongOutcome(rounds, seconds, verified)
