"""Backend-neutral workloads over a minimal async byte pipe, and their blocking-socket twins.

Every stream API under test (asyncio streams, anyio streams, our wrappers, TLS) is adapted to :class:`AsyncPipe`
so that the bulk and ping-pong loops are the same code for all of them; the adaptation costs one extra coroutine
call per operation, the same for baselines and for our adapters. The halves of each loop (send the pattern,
receive and verify it, ping, echo) are separate functions because the two-process scenarios run one half only.
The blocking twins repeat the async loops without ``await``: a blocking API must be measured with blocking calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from .config import PING_SIZE, RECEIVE_SIZE, WRITE_SIZE
from .results import BulkOutcome, PingPongOutcome
from .verify import StreamVerifier, pattern_block

__all__ = [
    "AsyncPipe",
    "SyncPipe",
    "async_bulk",
    "async_pingpong",
    "echo",
    "ping",
    "read_exactly",
    "receive_into",
    "send_pattern",
    "sync_bulk",
    "sync_ping",
    "sync_pingpong",
    "sync_read_exactly",
    "sync_receive_into",
    "sync_send_pattern",
]

#: The message of every ping-pong (the echo sends back the same bytes).
PING = bytes(range(PING_SIZE))


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


# -- async halves -------------------------------------------------------------------------------------------------


async def send_pattern(pipe: AsyncPipe, block: bytes, total: int) -> None:
    """Send ``total`` bytes as 64 KiB writes of ``block``."""
    send = pipe.send
    for _ in range(total // WRITE_SIZE):
        await send(block)


async def receive_into(pipe: AsyncPipe, verifier: StreamVerifier) -> None:
    """Receive until ``verifier`` has its total (or the stream ends), feeding it every chunk."""
    receive, feed = pipe.receive, verifier.feed
    while not verifier.complete:
        chunk = await receive(RECEIVE_SIZE)
        if not chunk:
            break
        feed(chunk)


def _buffer(pending: bytearray, chunk: bytes | bytearray | memoryview) -> None:
    """Add a received ``chunk`` to ``pending``; an empty one (the peer closed) ends the ping-pong."""
    if not chunk:
        raise EOFError("the peer closed the stream during the ping-pong")
    pending += chunk


def _take(pending: bytearray, size: int) -> bytes:
    """Remove and return the first ``size`` bytes of ``pending``."""
    message = bytes(pending[:size])
    del pending[:size]
    return message


async def read_exactly(pipe: AsyncPipe, size: int, pending: bytearray) -> bytes:
    """The next ``size`` bytes; ``pending`` keeps what arrived beyond them for the next call."""
    while len(pending) < size:
        _buffer(pending, await pipe.receive(RECEIVE_SIZE))
    return _take(pending, size)


async def ping(pipe: AsyncPipe, rounds: int) -> bool:
    """The client half of a ping-pong: ``rounds`` round trips of :data:`PING`; True when every echo matched."""
    pending, verified = bytearray(), True
    for _ in range(rounds):
        await pipe.send(PING)
        verified = await read_exactly(pipe, PING_SIZE, pending) == PING and verified
    return verified


async def echo(pipe: AsyncPipe, rounds: int) -> None:
    """The server half of a ping-pong: send back ``rounds`` messages."""
    pending = bytearray()
    for _ in range(rounds):
        await pipe.send(await read_exactly(pipe, PING_SIZE, pending))


# -- async workloads (both ends in this process) ------------------------------------------------------------------


async def async_bulk(sender: AsyncPipe, receiver: AsyncPipe, total: int) -> BulkOutcome:
    """Send ``total`` bytes in 64 KiB writes from ``sender``; ``receiver`` counts and verifies them."""
    block = pattern_block()
    verifier = StreamVerifier(block, total)
    done = anyio.Event()

    async def receive_all() -> None:
        await receive_into(receiver, verifier)
        done.set()

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        group.start_soon(receive_all)
        await send_pattern(sender, block, total)
        await done.wait()
        seconds = time.perf_counter() - started
    return BulkOutcome(verifier.received, seconds, verifier.ok)


async def async_pingpong(client: AsyncPipe, server: AsyncPipe, rounds: int) -> PingPongOutcome:
    """``rounds`` round trips of a 64-byte message echoed by ``server``; returns round trips/s."""
    async with anyio.create_task_group() as group:
        group.start_soon(echo, server, rounds)
        started = time.perf_counter()
        verified = await ping(client, rounds)
        seconds = time.perf_counter() - started
    return PingPongOutcome(rounds, seconds, verified)


# -- blocking halves and workloads --------------------------------------------------------------------------------


def sync_send_pattern(pipe: SyncPipe, block: bytes, total: int) -> None:
    """Send ``total`` bytes as 64 KiB writes of ``block``."""
    sendall = pipe.sendall
    for _ in range(total // WRITE_SIZE):
        sendall(block)


def sync_receive_into(pipe: SyncPipe, verifier: StreamVerifier) -> None:
    """Receive until ``verifier`` has its total (or the stream ends), feeding it every chunk."""
    recv, feed = pipe.recv, verifier.feed
    while not verifier.complete:
        chunk = recv(RECEIVE_SIZE)
        if not chunk:
            break
        feed(chunk)


def sync_read_exactly(pipe: SyncPipe, size: int, pending: bytearray) -> bytes:
    """The next ``size`` bytes; ``pending`` keeps what arrived beyond them for the next call."""
    while len(pending) < size:
        _buffer(pending, pipe.recv(RECEIVE_SIZE))
    return _take(pending, size)


def sync_ping(pipe: SyncPipe, rounds: int) -> bool:
    """The client half of a blocking ping-pong; True when every echo matched."""
    pending, verified = bytearray(), True
    for _ in range(rounds):
        pipe.sendall(PING)
        verified = sync_read_exactly(pipe, PING_SIZE, pending) == PING and verified
    return verified


def sync_bulk(
    sender: SyncPipe, receiver: SyncPipe, total: int, spawn: Callable[[Callable[[], None]], Any]
) -> BulkOutcome:
    """Blocking bulk transfer: ``spawn`` runs the receiver in another thread and returns something to ``join``."""
    block = pattern_block()
    verifier = StreamVerifier(block, total)
    started = time.perf_counter()
    thread = spawn(lambda: sync_receive_into(receiver, verifier))
    sync_send_pattern(sender, block, total)
    thread.join()
    seconds = time.perf_counter() - started
    return BulkOutcome(verifier.received, seconds, verifier.ok)


def sync_pingpong(
    client: SyncPipe, server: SyncPipe, rounds: int, spawn: Callable[[Callable[[], None]], Any]
) -> PingPongOutcome:
    """Blocking ping-pong; the echo runs in a thread started by ``spawn``."""

    def echo_all() -> None:
        pending = bytearray()
        for _ in range(rounds):
            server.sendall(sync_read_exactly(server, PING_SIZE, pending))

    thread = spawn(echo_all)
    started = time.perf_counter()
    verified = sync_ping(client, rounds)
    seconds = time.perf_counter() - started
    thread.join()
    return PingPongOutcome(rounds, seconds, verified)
