"""asyncio Protocol API over real loopback TCP and real NTLM: NegotiateProtocol, NegotiateTransport, start_negotiate."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from tests.asyncio_helpers import LEVELS, client_opts, run_guarded, server_opts

from negotiate_stream import asyncio_ as nsa
from negotiate_stream._connection import Connection, SessionInfo
from negotiate_stream._context import ProtectionLevel, SecurityContext
from negotiate_stream._framing import nns
from negotiate_stream.errors import StreamClosedError
from negotiate_stream.testing import NTLMUsers

T = TypeVar("T")
GUARD = 60.0  # a hung test fails after this long instead of stalling the suite; never a performance check


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh loop, failing after GUARD seconds rather than hanging."""
    return run_guarded(coro, GUARD)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest() * 4096  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


def chunked(data: bytes) -> list[bytes]:
    """Split ``data`` into writes of varied sizes: tiny, exactly one record, just over, several records."""
    sizes = [1, 7, nns.MAX_PLAINTEXT_PER_RECORD, nns.MAX_PLAINTEXT_PER_RECORD + 1, 200_000, 4096]
    parts, position, index = [], 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        parts.append(data[position : position + size])
        position += size
        index += 1
    return parts


class Collector(asyncio.Protocol):
    """An application protocol that records every callback; ``keep_open_on_eof`` is eof_received's answer."""

    def __init__(self, *, keep_open_on_eof: bool = False, pause_on_connect: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.keep_open_on_eof = keep_open_on_eof
        self.pause_on_connect = pause_on_connect
        self.transport: nsa.NegotiateTransport | None = None
        self.made: asyncio.Future[nsa.NegotiateTransport] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.data = bytearray()
        self.writing_paused = 0
        self.writing_resumed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, nsa.NegotiateTransport)
        self.transport = transport
        if self.pause_on_connect:
            transport.pause_reading()
        self.made.set_result(transport)

    def data_received(self, data: bytes) -> None:
        assert not self.eof.done(), "data after EOF"
        self.data += data

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return self.keep_open_on_eof

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.writing_paused += 1

    def resume_writing(self) -> None:
        self.writing_resumed += 1


async def protocol_pair(
    users: NTLMUsers,
    level: str = "encrypt_and_sign",
    *,
    server_app: Callable[[], asyncio.BaseProtocol] = Collector,
    client_app: asyncio.BaseProtocol | None = None,
) -> tuple[asyncio.Server, list[asyncio.BaseProtocol], asyncio.BaseProtocol, nsa.NegotiateProtocol]:
    """A NegotiateProtocol server on loopback and one connected NegotiateProtocol client.

    Returns (server, the server's app protocols, the client's app protocol, the client's NegotiateProtocol).
    """
    loop = asyncio.get_running_loop()
    server_apps: list[asyncio.BaseProtocol] = []

    def factory() -> nsa.NegotiateProtocol:
        app = server_app()
        server_apps.append(app)
        return nsa.NegotiateProtocol(Connection(SecurityContext.create(True, **server_opts(users, level))), app)

    server = await loop.create_server(factory, "127.0.0.1", 0)
    app = client_app if client_app is not None else Collector()
    client = nsa.NegotiateProtocol(Connection(SecurityContext.create(False, **client_opts(users, level))), app)
    await loop.create_connection(lambda: client, "127.0.0.1", server.sockets[0].getsockname()[1])
    return server, server_apps, app, client


async def first_server_app(apps: list[asyncio.BaseProtocol]) -> Collector:
    """Wait for the server's first connection to be authenticated; return its app protocol."""
    while not apps:
        await asyncio.sleep(0.001)
    app = apps[0]
    assert isinstance(app, Collector)
    await app.made
    return app


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
def test_protocol_transfer_1mib_checksums_match(ntlm_users: NTLMUsers, level: str, direction: str) -> None:
    """1 MiB in writes of varied sizes, then write_eof: the receiver gets every byte (SHA-256) and a clean EOF."""
    data = payload(1 << 20, seed=len(level))

    async def main() -> None:
        server, server_apps, client_app, _ = await protocol_pair(ntlm_users, level)
        async with server:
            assert isinstance(client_app, Collector)
            client_transport = await client_app.made
            server_app = await first_server_app(server_apps)
            sender, receiver = (client_app, server_app) if direction == "client_to_server" else (server_app, client_app)
            assert sender.transport is not None
            for part in chunked(data):
                sender.transport.write(part)
            sender.transport.write_eof()
            await receiver.eof
            assert await receiver.lost is None
            assert hashlib.sha256(receiver.data).hexdigest() == hashlib.sha256(data).hexdigest()
            assert client_transport.get_extra_info("protection_level") is ProtectionLevel(level)

    run(main())


def test_extra_info_names_and_fallback(ntlm_users: NTLMUsers) -> None:
    """get_extra_info answers the session names on both sides and falls back to the socket transport's extras."""

    async def main() -> None:
        server, server_apps, client_app, _ = await protocol_pair(ntlm_users, "sign")
        async with server:
            assert isinstance(client_app, Collector)
            client = await client_app.made
            server_side = (await first_server_app(server_apps)).transport
            assert server_side is not None
            info = client.get_extra_info("negotiate_stream")
            assert isinstance(info, SessionInfo) and not info.is_server and info.is_signed and not info.is_encrypted
            assert server_side.get_extra_info("negotiate_stream").is_server
            assert client.get_extra_info("peer_identity") == "host/localhost"  # the client knows the target SPN
            assert server_side.get_extra_info("peer_identity") == "NEGOTIATE-TEST\\alice"
            assert client.get_extra_info("negotiated_protocol") == "ntlm"
            assert client.get_extra_info("protection_level") is ProtectionLevel.SIGN
            assert client.get_extra_info("mutually_authenticated") is info.mutually_authenticated
            assert client.get_extra_info("peername") == ("127.0.0.1", server.sockets[0].getsockname()[1])
            assert client.get_extra_info("socket") is not None
            assert client.get_extra_info("no such name", "fallback") == "fallback"
            assert client.can_write_eof()
            client.close()
            assert client.is_closing()
            assert await client_app.lost is None

    run(main())


def test_buffered_app_protocol_receives_through_small_buffers(ntlm_users: NTLMUsers) -> None:
    """An app BufferedProtocol with a 1000-byte buffer gets records copied into it, in order, intact."""
    data = payload(300_000, seed=9)

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buffer = bytearray(1000)
            self.received = bytearray()
            self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buffer

        def buffer_updated(self, nbytes: int) -> None:
            assert nbytes <= 1000
            self.received += self.buffer[:nbytes]

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set_result(exc)

    async def main() -> None:
        server, server_apps, _, client = await protocol_pair(ntlm_users, server_app=Buffered)
        async with server:
            while client.app_transport is None:
                await asyncio.sleep(0.001)
            client.app_transport.write(data)
            client.app_transport.close()
            while not server_apps:
                await asyncio.sleep(0.001)
            app = server_apps[0]
            assert isinstance(app, Buffered)
            assert await app.lost is None
            assert app.received == data

    run(main())


def test_write_protects_before_returning_and_writelines_is_one_write(ntlm_users: NTLMUsers) -> None:
    """The caller may reuse its buffer as soon as write() returns; writelines sends the concatenation."""

    async def main() -> None:
        server, server_apps, client_app, _ = await protocol_pair(ntlm_users)
        async with server:
            assert isinstance(client_app, Collector)
            transport = await client_app.made
            buffer = bytearray(b"original contents")
            transport.write(buffer)
            buffer[:] = b"overwritten!!!!!!"  # must not change what was sent
            transport.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
            transport.write(b"")  # sends nothing
            transport.write_eof()
            server_app = await first_server_app(server_apps)
            await server_app.eof
            assert bytes(server_app.data) == b"original contentsabc"
            with pytest.raises(StreamClosedError, match="write_eof"):
                transport.write(b"too late")

    run(main())


def test_write_eof_is_a_half_close_the_peer_can_still_answer(ntlm_users: NTLMUsers) -> None:
    """write_eof ends our direction at a record boundary; the peer keeps its side open and answers."""

    class Answerer(Collector):
        def __init__(self) -> None:
            super().__init__(keep_open_on_eof=True)

        def eof_received(self) -> bool:
            assert self.transport is not None
            self.transport.write(b"you sent %d bytes" % len(self.data))
            self.transport.close()
            return super().eof_received()

    async def main() -> None:
        server, _, client_app, _ = await protocol_pair(ntlm_users, server_app=Answerer)
        async with server:
            assert isinstance(client_app, Collector)
            transport = await client_app.made
            transport.write(b"q" * 100_000)
            transport.write_eof()
            await client_app.eof
            assert bytes(client_app.data) == b"you sent 100000 bytes"
            assert await client_app.lost is None

    run(main())


def test_abort_and_writes_after_close(ntlm_users: NTLMUsers) -> None:
    """abort() ends the connection at once (connection_lost(None) on our side, EOF at the peer); later writes
    raise StreamClosedError instead of being dropped silently."""

    async def main() -> None:
        server, server_apps, client_app, _ = await protocol_pair(ntlm_users)
        async with server:
            assert isinstance(client_app, Collector)
            transport = await client_app.made
            server_app = await first_server_app(server_apps)
            transport.abort()
            assert await client_app.lost is None
            assert await server_app.lost is None or isinstance(server_app.lost.result(), ConnectionError)
            with pytest.raises(StreamClosedError):
                transport.write(b"after abort")

    run(main())


def test_flow_control_slow_reader_pauses_writer_with_bounded_buffers(ntlm_users: NTLMUsers) -> None:
    """The server app pauses reading: the client's app protocol gets pause_writing once the socket buffers fill,
    the client's write buffer stays near its high-water mark and the server buffers at most one read; after
    resume_reading everything arrives and the client gets resume_writing."""
    high = 256 * 1024
    chunk = payload(64 * 1024, seed=3)
    record_overhead = 64  # per record: length header + NTLM signature, generously

    async def main() -> None:
        server, server_apps, client_app, _ = await protocol_pair(
            ntlm_users, server_app=lambda: Collector(pause_on_connect=True)
        )
        async with server:
            assert isinstance(client_app, Collector)
            transport = await client_app.made
            server_app = await first_server_app(server_apps)
            assert server_app.transport is not None and not server_app.transport.is_reading()
            transport.set_write_buffer_limits(high=high)
            assert transport.get_write_buffer_limits()[1] == high
            sent = 0
            while not client_app.writing_paused:
                transport.write(chunk)
                sent += len(chunk)
                assert transport.get_write_buffer_size() <= high + len(chunk) + 2 * record_overhead
                assert sent < 512 * 1024 * 1024, "the writer was never paused"
                await asyncio.sleep(0)
            # Nothing was delivered, and the paused server holds at most one receive buffer of wire bytes.
            assert server_app.data == b""
            server_negotiator = server_app.transport.get_protocol()
            assert server_negotiator is server_app
            server_conn = server_app.transport._neg.connection
            assert server_conn.buffered <= 256 * 1024 + 2 * nns.MAX_RECORD_PAYLOAD
            server_app.transport.resume_reading()
            assert server_app.transport.is_reading()
            while len(server_app.data) < sent:
                await asyncio.sleep(0.001)
            assert client_app.writing_resumed == client_app.writing_paused == 1
            assert server_app.data == chunk * (sent // len(chunk))
            transport.close()

    run(main())


class Preamble(asyncio.Protocol):
    """A plaintext server protocol: reads ``application/negotiate\\n``, then upgrades with start_negotiate.

    It sniffs the first byte after the line (an MS-NNS handshake message starts with 0x16) before upgrading, so
    the bytes it has read past the line must be handed over as ``initial_data``.
    """

    def __init__(self, users: NTLMUsers) -> None:
        self.users = users
        self.buffer = bytearray()
        self.upgrade: asyncio.Task[tuple[Collector, nsa.NegotiateTransport]] | None = None
        self.initial_data = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        line, newline, rest = bytes(self.buffer).partition(b"\n")
        if newline and rest and self.upgrade is None:
            assert line == b"application/negotiate"
            assert rest[0] == nns.MessageId.HANDSHAKE_IN_PROGRESS
            self.transport.pause_reading()  # start_negotiate resumes it
            self.initial_data = rest
            self.upgrade = asyncio.ensure_future(self._upgrade(rest))

    async def _upgrade(self, rest: bytes) -> tuple[Collector, nsa.NegotiateTransport]:
        app = Collector()
        secure = await nsa.start_negotiate(
            self.transport, app, server_side=True, initial_data=rest, **server_opts(self.users)
        )
        return app, secure


def test_start_negotiate_after_plaintext_preamble(ntlm_users: NTLMUsers) -> None:
    """Both sides speak plaintext first, then upgrade the same connection; bytes read past the preamble are
    handed over as initial_data; connection_made gets the new transport; data flows both ways."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        preamble = Preamble(ntlm_users)
        server = await loop.create_server(lambda: preamble, "127.0.0.1", 0)
        async with server:
            plain_app = asyncio.Protocol()
            raw, _ = await loop.create_connection(lambda: plain_app, "127.0.0.1", server.sockets[0].getsockname()[1])
            raw.write(b"application/negotiate\n")
            client_app = Collector()
            secure = await nsa.start_negotiate(raw, client_app, **client_opts(ntlm_users))
            assert await client_app.made is secure
            assert isinstance(secure, nsa.NegotiateTransport) and secure.get_extra_info("negotiate_stream").is_encrypted
            assert preamble.upgrade is not None
            server_app, server_secure = await preamble.upgrade
            assert preamble.initial_data  # the upgrade really started with bytes read past the line
            assert await server_app.made is server_secure
            assert server_secure.get_extra_info("peer_identity") == "NEGOTIATE-TEST\\alice"
            secure.write(b"hello after upgrade")
            server_secure.write(b"welcome")
            while bytes(client_app.data) != b"welcome" or bytes(server_app.data) != b"hello after upgrade":
                await asyncio.sleep(0.001)
            secure.close()
            assert await server_app.lost is None

    run(main())


def test_start_negotiate_without_connection_made(ntlm_users: NTLMUsers) -> None:
    """call_connection_made=False (loop.start_tls behaviour): the app protocol only receives data and uses the
    returned transport."""

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(100))
            writer.close()

        server = await nsa.start_server(echo, "127.0.0.1", 0, **server_opts(ntlm_users))
        async with server:
            raw, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", server.sockets[0].getsockname()[1])
            app = Collector()
            secure = await nsa.start_negotiate(raw, app, call_connection_made=False, **client_opts(ntlm_users))
            assert not app.made.done()
            secure.write(b"ping")
            await app.eof
            assert bytes(app.data) == b"ping"

    run(main())
