"""Helpers shared by the asyncio adapter tests: real loopback sockets, real NTLM contexts, raw peers.

One copy of each: the hang guard (:func:`run`), both sides' NTLM options, payloads and digests, the recording app
protocol (:class:`Collector`), a hand-driven peer (:class:`RawPeer`), a byte-flipping man in the middle
(:class:`TamperingProxy`) and the leak probes (:func:`rss_bytes`, :func:`other_tasks`, :func:`settle`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from negotiate_stream import Connection, Data, HandshakeComplete, SessionInfo
from negotiate_stream import asyncio_ as nsa
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


def client_options(
    users: NTLMUsers, level: str = "encrypt_and_sign", *, password: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Options for a client context of the first account (``password`` overrides its password)."""
    return {
        "credentials": users.client_credentials(password=password),
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


def port_of(server: asyncio.AbstractServer) -> int:
    """The listening port of ``server``."""
    sockets = server.sockets  # type: ignore[attr-defined]
    return int(sockets[0].getsockname()[1])


def negotiator(server_side: bool, app: asyncio.BaseProtocol, options: dict[str, Any]) -> nsa.NegotiateProtocol:
    """A NegotiateProtocol over a fresh context, running ``app`` once the handshake succeeds."""
    return nsa.NegotiateProtocol(Connection(SecurityContext.create(server_side, **options)), app)


class Collector(asyncio.Protocol):
    """An application protocol under a NegotiateProtocol that records every callback.

    ``made``, ``eof`` and ``lost`` are futures resolved by ``connection_made``, ``eof_received`` and the first
    ``connection_lost``; ``lost_calls`` lists every ``connection_lost`` argument, so a test can prove it came
    exactly once (or never). ``keep_open_on_eof`` is ``eof_received``'s answer; ``pause_on_connect`` pauses
    reading inside ``connection_made``. Callbacks out of order (data before ``connection_made`` or after EOF)
    fail an assertion.
    """

    def __init__(self, *, keep_open_on_eof: bool = False, pause_on_connect: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.keep_open_on_eof = keep_open_on_eof
        self.pause_on_connect = pause_on_connect
        self.transport: nsa.NegotiateTransport | None = None
        self.made: asyncio.Future[nsa.NegotiateTransport] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.lost_calls: list[BaseException | None] = []
        self.data = bytearray()
        self.chunks = 0
        self.writing_paused = 0
        self.writing_resumed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Record the (protected) transport; pause reading at once if asked to."""
        assert isinstance(transport, nsa.NegotiateTransport)
        self.transport = transport
        if self.pause_on_connect:
            transport.pause_reading()
        self.made.set_result(transport)

    def data_received(self, data: bytes) -> None:
        """Append ``data``; count the calls."""
        assert self.transport is not None, "data before connection_made"
        assert not self.eof.done(), "data after EOF"
        self.data += data
        self.chunks += 1

    def eof_received(self) -> bool:
        """Resolve ``eof``; keep our side open only if asked to."""
        self.eof.set_result(None)
        return self.keep_open_on_eof

    def connection_lost(self, exc: Exception | None) -> None:
        """Record the call; resolve ``lost`` with the first one's argument."""
        self.lost_calls.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        """Count flow-control pauses."""
        self.writing_paused += 1

    def resume_writing(self) -> None:
        """Count flow-control resumes."""
        self.writing_resumed += 1


async def serve_app(users: NTLMUsers, app: asyncio.BaseProtocol, level: str = "encrypt_and_sign") -> asyncio.Server:
    """A loopback server whose connections all run the one ``app`` under a server-side NegotiateProtocol."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: negotiator(True, app, server_options(users, level)), "127.0.0.1", 0)


async def open_client(
    server: asyncio.AbstractServer, users: NTLMUsers, level: str = "encrypt_and_sign"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``open_connection`` to ``server`` as the first account (see :func:`client_options`)."""
    return await nsa.open_connection("127.0.0.1", port_of(server), **client_options(users, level))


async def connect_app(
    port: int, users: NTLMUsers, app: asyncio.BaseProtocol, level: str = "encrypt_and_sign"
) -> nsa.NegotiateProtocol:
    """Connect to loopback ``port`` with a client-side NegotiateProtocol running ``app``; return that protocol."""
    protocol = negotiator(False, app, client_options(users, level))
    await asyncio.get_running_loop().create_connection(lambda: protocol, "127.0.0.1", port)
    return protocol


@asynccontextmanager
async def writer_to_paused_app(
    users: NTLMUsers,
) -> AsyncIterator[tuple[Collector, nsa.NegotiateTransport, asyncio.StreamWriter]]:
    """A streams client's writer to a :class:`Collector` server app that has paused reading; the server closes on exit.

    Yields (the server's app, its transport, the client's writer).
    """
    app = Collector()
    server = await serve_app(users, app)
    async with server:
        _reader, writer = await open_client(server, users)
        server_transport = await app.made
        server_transport.pause_reading()
        yield app, server_transport, writer


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
        """Receive at least ``size`` bytes of verified plaintext (fewer only at EOF)."""
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
    """A man-in-the-middle TCP proxy: forwards both ways and flips one byte of the first data record in one direction.

    It follows each direction's MS-NNS handshake (frames parsed by ``_framing.nns``) and leaves it intact: the data
    phase of a direction starts after that side's HandshakeDone frame. ``offset`` counts from the start of the
    first record (its 4-byte length header); ``flipped`` tells whether the byte was reached. A half-close is
    passed on as a half-close.
    """

    def __init__(self, upstream_port: int, direction: str, offset: int, mask: int = 0x20) -> None:
        self.upstream_port = upstream_port
        self.direction = direction
        self.offset = offset
        self.mask = mask
        self.flipped = False

    async def start(self) -> asyncio.Server:
        """Listen on an ephemeral loopback port."""
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(
            self._pump(client_r, server_w, "client_to_server"),
            self._pump(server_r, client_w, "server_to_client"),
            return_exceptions=True,
        )
        client_w.close()
        server_w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        seen = bytearray()
        data_start: int | None = None
        try:
            while chunk := bytearray(await reader.read(65536)):
                chunk_start = len(seen)
                seen += chunk
                position = 0
                while data_start is None and (parsed := nns.parse_handshake(seen, position)) is not None:
                    frame, position = parsed
                    if frame.message_id is nns.MessageId.HANDSHAKE_DONE:
                        data_start = position
                if direction == self.direction and data_start is not None and not self.flipped:
                    target = data_start + self.offset - chunk_start
                    if 0 <= target < len(chunk):
                        chunk[target] ^= self.mask
                        self.flipped = True
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            writer.close()


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
