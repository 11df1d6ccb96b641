"""Baselines for the anyio (asyncio and trio backends) and blocking-socket families."""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute

__all__ = ["AnyioPipe", "anyio_tcp_pair", "socket_pair", "spawn_thread"]

LOCALHOST = "127.0.0.1"


class AnyioPipe:
    """:class:`~._workloads.AsyncPipe` over an anyio ByteStream (plain or ours)."""

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


async def anyio_tcp_pair() -> tuple[ByteStream, ByteStream, Callable[[], Awaitable[None]]]:
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
    """Start ``target`` in a daemon thread; errors are re-raised by ``join`` via :class:`_Thread`."""
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
