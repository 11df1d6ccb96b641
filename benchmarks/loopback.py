"""Connected loopback pairs for every stream API under test, and the self-signed TLS contexts of the baselines.

Each async pair comes with its ``cleanup`` coroutine; the stream ends are wrapped as :class:`~.workloads.AsyncPipe`
(:class:`StreamsPipe`, :class:`AnyioPipe`) so that one bulk and one ping-pong loop serve every API.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute

from .config import LOCALHOST

__all__ = [
    "AnyioPipe",
    "Cleanup",
    "StreamsPipe",
    "anyio_tcp_pair",
    "make_tls_contexts",
    "socket_pair",
    "spawn_thread",
    "streams_pair",
]

#: Closes what a pair factory opened.
Cleanup = Callable[[], Awaitable[None]]


class StreamsPipe:
    """:class:`~.workloads.AsyncPipe` over an asyncio ``(StreamReader, StreamWriter)`` pair (stdlib or ours)."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        """Write and drain."""
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, max_bytes: int) -> bytes:
        """Read up to ``max_bytes``."""
        data: bytes = await self.reader.read(max_bytes)
        return data

    async def aclose(self) -> None:
        """Close the writer."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def streams_pair(
    open_connection: Callable[..., Awaitable[tuple[Any, Any]]] = asyncio.open_connection,
    start_server: Callable[..., Awaitable[asyncio.Server]] = asyncio.start_server,
    client_kwargs: dict[str, Any] | None = None,
    server_kwargs: dict[str, Any] | None = None,
) -> tuple[StreamsPipe, StreamsPipe, Cleanup]:
    """A connected client/server pair made with ``start_server`` + ``open_connection`` (stdlib or ours)."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[StreamsPipe] = loop.create_future()
    finished = asyncio.Event()

    async def handle(reader: Any, writer: Any) -> None:
        accepted.set_result(StreamsPipe(reader, writer))
        await finished.wait()  # some servers close the connection when the handler returns

    server = await start_server(handle, LOCALHOST, 0, **(server_kwargs or {}))
    port = server.sockets[0].getsockname()[1]
    reader, writer = await open_connection(LOCALHOST, port, **(client_kwargs or {}))
    client = StreamsPipe(reader, writer)
    server_end = await asyncio.wait_for(accepted, 30)

    async def cleanup() -> None:
        finished.set()
        await client.aclose()
        await server_end.aclose()
        server.close()
        await server.wait_closed()

    return client, server_end, cleanup


class AnyioPipe:
    """:class:`~.workloads.AsyncPipe` over an anyio ByteStream (plain or ours)."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.send = stream.send

    async def receive(self, max_bytes: int) -> bytes:
        """Receive up to ``max_bytes``; empty at end of stream."""
        try:
            return await self.stream.receive(max_bytes)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return b""

    async def aclose(self) -> None:
        """Close the stream."""
        await self.stream.aclose()


async def anyio_tcp_pair() -> tuple[ByteStream, ByteStream, Cleanup]:
    """A connected plain anyio TCP pair (client, server) on the current backend."""
    multi = await anyio.create_tcp_listener(local_host=LOCALHOST)
    listener: Any = multi.listeners[0]  # a SocketListener: it has accept()
    port = listener.extra(SocketAttribute.local_port)
    accepted: list[ByteStream] = []

    async def accept() -> None:
        accepted.append(await listener.accept())

    async with anyio.create_task_group() as group:
        group.start_soon(accept)
        client = await anyio.connect_tcp(LOCALHOST, port)
    server = accepted[0]

    async def cleanup() -> None:
        await client.aclose()
        await server.aclose()
        await multi.aclose()

    return client, server, cleanup


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (client, server) of blocking sockets."""
    with socket.create_server((LOCALHOST, 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def spawn_thread(target: Callable[[], None]) -> threading.Thread:
    """Start ``target`` in a daemon thread; an error it raises is re-raised by ``join``."""
    thread = _Thread(target)
    thread.start()
    return thread


class _Thread(threading.Thread):
    def __init__(self, target: Callable[[], None]) -> None:
        super().__init__(name="bench-peer", daemon=True)
        self._work = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # handed to the joining thread
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def make_tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server and a client SSLContext for a self-signed ``localhost`` certificate made now with cryptography.

    The certificate is the tests' (:func:`tests.support.tls.self_signed_channel`: ECDSA P-256, SHA-256, with
    ``localhost`` and ``127.0.0.1`` as names); unlike the tests' client, this one verifies it and the host name.
    """
    from tests.support.tls import self_signed_channel

    channel = self_signed_channel()
    return channel.server, ssl.create_default_context(cadata=channel.pem)
