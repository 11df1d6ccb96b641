"""Backend-neutral workloads over a minimal async byte pipe, and the blocking-socket equivalents.

Every stream API under test (asyncio streams, anyio streams, our wrappers, TLS) is adapted to :class:`AsyncPipe`
so that the bulk and ping-pong loops are the same code for all of them; the adaptation costs one extra coroutine
call per operation, the same for baselines and for our adapters.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from ._core import WRITE_SIZE, StreamVerifier, mbps, pattern_block

__all__ = ["AsyncPipe", "BulkOutcome", "PingPongOutcome", "async_bulk", "async_pingpong", "sync_bulk", "sync_pingpong"]

PING_SIZE = 64
RECEIVE_SIZE = 256 * 1024


class AsyncPipe(Protocol):
    """One end of an established async byte stream."""

    async def send(self, data: bytes) -> None:
        """Write all of ``data`` (waiting for flow control)."""

    async def receive(self, max_bytes: int) -> bytes | bytearray | memoryview:
        """Return the next bytes (at most ``max_bytes``); empty at end of stream."""

    async def aclose(self) -> None:
        """Close this end."""


class SyncPipe(Protocol):
    """One end of an established blocking byte stream."""

    def sendall(self, data: bytes) -> None:
        """Write all of ``data``."""

    def recv(self, max_bytes: int) -> bytes:
        """Return the next bytes; empty at end of stream."""


@dataclass
class BulkOutcome:
    """What a bulk transfer measured."""

    nbytes: int
    seconds: float
    verified: bool

    @property
    def mbps(self) -> float:
        """Throughput in MB/s."""
        return mbps(self.nbytes, self.seconds)


@dataclass
class PingPongOutcome:
    """What a ping-pong run measured."""

    rounds: int
    seconds: float
    verified: bool

    @property
    def rate(self) -> float:
        """Round trips per second."""
        return self.rounds / self.seconds if self.seconds > 0 else 0.0


async def async_bulk(sender: AsyncPipe, receiver: AsyncPipe, total: int) -> BulkOutcome:
    """Send ``total`` bytes in 64 KiB writes from ``sender``; ``receiver`` counts and verifies them."""
    block = pattern_block()
    verifier = StreamVerifier(block, total)
    done = anyio.Event()

    async def receive_all() -> None:
        receive, feed = receiver.receive, verifier.feed
        while not verifier.complete:
            chunk = await receive(RECEIVE_SIZE)
            if not chunk:
                break
            feed(chunk)
        done.set()

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        group.start_soon(receive_all)
        send = sender.send
        for _ in range(total // WRITE_SIZE):
            await send(block)
        await done.wait()
        seconds = time.perf_counter() - started
    return BulkOutcome(verifier.received, seconds, verifier.ok)


async def _read_exactly(pipe: AsyncPipe, size: int, pending: bytearray) -> bytes:
    while len(pending) < size:
        chunk = await pipe.receive(RECEIVE_SIZE)
        if not chunk:
            raise EOFError("the peer closed the stream during the ping-pong")
        pending += chunk
    message = bytes(pending[:size])
    del pending[:size]
    return message


async def async_pingpong(client: AsyncPipe, server: AsyncPipe, rounds: int) -> PingPongOutcome:
    """``rounds`` round trips of a 64-byte message echoed by ``server``; returns round trips/s."""
    ping = bytes(range(PING_SIZE))

    async def echo() -> None:
        pending = bytearray()
        for _ in range(rounds):
            await server.send(await _read_exactly(server, PING_SIZE, pending))

    verified = True
    async with anyio.create_task_group() as group:
        group.start_soon(echo)
        pending = bytearray()
        started = time.perf_counter()
        for _ in range(rounds):
            await client.send(ping)
            verified = await _read_exactly(client, PING_SIZE, pending) == ping and verified
        seconds = time.perf_counter() - started
    return PingPongOutcome(rounds, seconds, verified)


def sync_bulk(
    sender: SyncPipe, receiver: SyncPipe, total: int, spawn: Callable[[Callable[[], None]], Any]
) -> BulkOutcome:
    """Blocking bulk transfer: ``spawn`` runs the receiver in another thread and returns something to ``join``."""
    block = pattern_block()
    verifier = StreamVerifier(block, total)

    def receive_all() -> None:
        while not verifier.complete:
            chunk = receiver.recv(RECEIVE_SIZE)
            if not chunk:
                break
            verifier.feed(chunk)

    started = time.perf_counter()
    thread = spawn(receive_all)
    sendall = sender.sendall
    for _ in range(total // WRITE_SIZE):
        sendall(block)
    thread.join()
    seconds = time.perf_counter() - started
    return BulkOutcome(verifier.received, seconds, verifier.ok)


def _sync_read_exactly(pipe: SyncPipe, size: int, pending: bytearray) -> bytes:
    while len(pending) < size:
        chunk = pipe.recv(RECEIVE_SIZE)
        if not chunk:
            raise EOFError("the peer closed the stream during the ping-pong")
        pending += chunk
    message = bytes(pending[:size])
    del pending[:size]
    return message


def sync_pingpong(
    client: SyncPipe, server: SyncPipe, rounds: int, spawn: Callable[[Callable[[], None]], Any]
) -> PingPongOutcome:
    """Blocking ping-pong; the echo runs in a thread started by ``spawn``."""
    ping = bytes(range(PING_SIZE))

    def echo() -> None:
        pending = bytearray()
        for _ in range(rounds):
            server.sendall(_sync_read_exactly(server, PING_SIZE, pending))

    thread = spawn(echo)
    pending = bytearray()
    verified = True
    started = time.perf_counter()
    for _ in range(rounds):
        client.sendall(ping)
        verified = _sync_read_exactly(client, PING_SIZE, pending) == ping and verified
    seconds = time.perf_counter() - started
    thread.join()
    return PingPongOutcome(rounds, seconds, verified)


AsyncFactory = Callable[[], Awaitable[tuple[AsyncPipe, AsyncPipe, Callable[[], Awaitable[None]]]]]
