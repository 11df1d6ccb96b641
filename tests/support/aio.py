"""Helpers shared by the asyncio adapter tests: real loopback sockets, real NTLM contexts, raw peers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from negotiate_stream import asyncio_ as nsa
from negotiate_stream._connection import Connection, Data, HandshakeComplete, SessionInfo
from negotiate_stream._context import SecurityContext
from negotiate_stream._framing import nns
from negotiate_stream.testing import NTLMUsers

T = TypeVar("T")

LEVELS = ["encrypt_and_sign", "sign", "none"]
# Generous guard so a hanging test fails instead of stalling the suite; never a performance assertion.
GUARD_TIMEOUT = 60.0


def run(coro: Coroutine[Any, Any, T], timeout: float = GUARD_TIMEOUT) -> T:
    """Run ``coro`` in a fresh event loop, failing (not hanging) if it takes longer than ``timeout``."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


def client_options(users: NTLMUsers, level: str = "encrypt_and_sign", **extra: Any) -> dict[str, Any]:
    """Options for a client context of the first account."""
    return {
        "credentials": users.client_credentials(),
        "protocol": "ntlm",
        "target": "host/localhost",
        "protection_level": level,
        **extra,
    }


def server_options(users: NTLMUsers, level: str = "encrypt_and_sign") -> dict[str, Any]:
    """Options for a server context accepting ``users``."""
    return {"credentials": users.server_credentials(), "protocol": "ntlm", "protection_level": level}


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (cheap to generate, checksummable)."""
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest() * 2048  # 64 KiB
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


def digest(data: bytes | bytearray) -> str:
    """SHA-256 of ``data`` (hex)."""
    return hashlib.sha256(data).hexdigest()


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo everything until EOF, then close."""
    try:
        while chunk := await reader.read(256 * 1024):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()


async def start_echo_server(users: NTLMUsers, level: str = "encrypt_and_sign", **kwargs: Any) -> asyncio.Server:
    """A negotiate echo server on an ephemeral loopback port."""
    return await nsa.start_server(echo_handler, "127.0.0.1", 0, **server_options(users, level), **kwargs)


def port_of(server: asyncio.AbstractServer) -> int:
    """The listening port of ``server``."""
    sockets = server.sockets  # type: ignore[attr-defined]
    return int(sockets[0].getsockname()[1])


class RawPeer:
    """One end of a real MS-NNS session driven by a bare :class:`Connection` over plain asyncio streams.

    Lets a test write exactly the bytes it wants after an honest handshake (truncated or tampered records, huge
    length headers) and observe the raw bytes our adapter sends.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: Connection) -> None:
        self.reader = reader
        self.writer = writer
        self.connection = connection
        self.info: SessionInfo | None = None
        self.received = bytearray()

    async def handshake(self) -> SessionInfo:
        """Run the handshake to completion over the raw stream."""
        conn = self.connection
        while True:
            await self._flush()
            try:
                event = conn.next_event()
            finally:
                await self._flush()  # replies, or the Error frame for the peer
            if isinstance(event, HandshakeComplete):
                self.info = event.info
                return event.info
            if isinstance(event, Data):
                self.received += event.data
                continue
            chunk = await self.reader.read(65536)
            conn.receive_data(chunk)

    async def _flush(self) -> None:
        out = self.connection.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def receive(self, size: int) -> bytes:
        """Receive at least ``size`` bytes of verified plaintext."""
        while len(self.received) < size:
            event = self.connection.next_event()
            if isinstance(event, Data):
                self.received += event.data
                continue
            chunk = await self.reader.read(65536)
            self.connection.receive_data(chunk)
            if not chunk:
                break
        data = bytes(self.received[:size])
        del self.received[:size]
        return data


async def start_raw_server(
    users: NTLMUsers,
    behaviour: Callable[[RawPeer], Awaitable[None]],
    *,
    level: str = "encrypt_and_sign",
) -> asyncio.Server:
    """A server that authenticates with a bare Connection, then hands the :class:`RawPeer` to ``behaviour``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = RawPeer(reader, writer, Connection(SecurityContext.create(True, **server_options(users, level))))
        try:
            await peer.handshake()
            await behaviour(peer)
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


class TamperingProxy:
    """A man-in-the-middle TCP proxy: forwards both ways, passing each server->client record through ``tamper``.

    It follows the MS-NNS handshake (frames from ``_framing.nns``) so it knows where data records start.
    """

    def __init__(self, upstream_port: int, tamper: Callable[[bytearray], bytearray]) -> None:
        self.upstream_port = upstream_port
        self.tamper = tamper
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on an ephemeral port and return it."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return port_of(self.server)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        upward = asyncio.ensure_future(self._pipe(client_reader, up_writer))
        try:
            await self._down(up_reader, client_writer)
        finally:
            upward.cancel()
            client_writer.close()
            up_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
        writer.write_eof()

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        handshaking = True
        while chunk := await reader.read(65536):
            buffer += chunk
            while handshaking:
                parsed = nns.parse_handshake(buffer, 0)
                if parsed is None:
                    break
                frame, end = parsed
                writer.write(bytes(buffer[:end]))
                del buffer[:end]
                if frame.message_id is nns.MessageId.HANDSHAKE_DONE:
                    handshaking = False
            while not handshaking and len(buffer) >= 4:
                (length,) = struct.unpack_from("<I", buffer, 0)
                if len(buffer) < 4 + length:
                    break
                record = bytearray(buffer[: 4 + length])
                del buffer[: 4 + length]
                writer.write(bytes(self.tamper(record)))

    async def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks of the running loop other than the current one and the :func:`run` guard."""
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if task is not current and not task.done()}


async def settle(rounds: int = 20) -> None:
    """Let callbacks scheduled by closes and cancellations run."""
    for _ in range(rounds):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
