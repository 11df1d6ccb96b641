"""Protocol API over real loopback TCP and real NTLM: NegotiateProtocol, NegotiateTransport, start_negotiate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from negotiate_stream import SessionInfo
from negotiate_stream import asyncio_ as nsa
from negotiate_stream._context import ProtectionLevel
from negotiate_stream._framing import nns
from negotiate_stream.errors import StreamClosedError
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import (
    LEVELS,
    Collector,
    client_options,
    connect_app,
    digest,
    negotiator,
    payload,
    port_of,
    run,
    serve_app,
    server_options,
)


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


class BufferedCollector(asyncio.BufferedProtocol):
    """A BufferedProtocol app protocol with a deliberately small buffer (forces many get_buffer calls)."""

    def __init__(self) -> None:
        self.buffer = bytearray(1000)
        self.data = bytearray()
        self.calls = 0
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> bytearray:
        """Always the same small buffer."""
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        """Copy out what was written into the buffer (never more than it holds)."""
        assert nbytes <= len(self.buffer)
        self.data += self.buffer[:nbytes]
        self.calls += 1

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve ``lost``."""
        if not self.lost.done():
            self.lost.set_result(exc)


async def protocol_pair(
    users: NTLMUsers, level: str = "encrypt_and_sign", *, server_app: Callable[[], asyncio.BaseProtocol] = Collector
) -> tuple[asyncio.Server, list[asyncio.BaseProtocol], Collector, nsa.NegotiateProtocol]:
    """A NegotiateProtocol server on loopback and one connected NegotiateProtocol client.

    Returns (server, the server's app protocols, the client's Collector app, the client's NegotiateProtocol).
    """
    loop = asyncio.get_running_loop()
    server_apps: list[asyncio.BaseProtocol] = []

    def factory() -> nsa.NegotiateProtocol:
        app = server_app()
        server_apps.append(app)
        return negotiator(True, app, server_options(users, level))

    server = await loop.create_server(factory, "127.0.0.1", 0)
    app = Collector()
    client = await connect_app(port_of(server), users, app, level)
    return server, server_apps, app, client


async def first_server_app(apps: list[asyncio.BaseProtocol]) -> Collector:
    """Wait for the server's first connection to be authenticated; return its app protocol."""
    while not apps:
        await asyncio.sleep(0.001)
    app = apps[0]
    assert isinstance(app, Collector)
    await app.made
    return app


# -- transfers and extras ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["write_eof", "close"])
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
def test_protocol_transfer_1mib_checksums_match(ntlm_users: NTLMUsers, level: str, direction: str, ending: str) -> None:
    """1 MiB in varied writes, ended by write_eof or close, arrives intact with a clean EOF at every level."""
    data = payload(1 << 20, seed=len(level))

    async def main() -> None:
        server, server_apps, client_app, _ = await protocol_pair(ntlm_users, level)
        async with server:
            client_transport = await client_app.made
            server_app = await first_server_app(server_apps)
            assert server_app.transport is not None
            assert server_app.transport.get_extra_info("peer_identity") == "NEGOTIATE-TEST\\alice"
            assert client_transport.get_extra_info("protection_level") is ProtectionLevel(level)
            assert client_transport.get_extra_info("negotiated_protocol") == "ntlm"
            assert client_transport.get_extra_info("sockname")[0] == "127.0.0.1"
            sender, receiver = (client_app, server_app) if direction == "client_to_server" else (server_app, client_app)
            assert sender.transport is not None
            for part in chunked(data):
                sender.transport.write(part)
            if ending == "write_eof":
                sender.transport.write_eof()
            else:
                sender.transport.close()  # flushes the queued records first
            await receiver.eof
            assert await receiver.lost is None
            assert digest(receiver.data) == digest(data)

    run(main())


def test_extra_info_names_and_fallback(ntlm_users: NTLMUsers) -> None:
    """get_extra_info answers the session names on both sides and falls back to the socket transport's extras."""

    async def main() -> None:
        server, server_apps, client_app, _ = await protocol_pair(ntlm_users, "sign")
        async with server:
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
            assert client.get_extra_info("peername") == ("127.0.0.1", port_of(server))
            assert client.get_extra_info("sockname")[0] == "127.0.0.1"
            assert client.get_extra_info("socket") is not None
            assert client.get_extra_info("no such name", "fallback") == "fallback"
            assert client.can_write_eof()
            client.close()
            assert client.is_closing()
            assert await client_app.lost is None

    run(main())


# -- BufferedProtocol app protocols -------------------------------------------------------------------------------


def test_buffered_app_protocol_receives_through_small_buffers(ntlm_users: NTLMUsers) -> None:
    """An app BufferedProtocol with a 1000-byte buffer gets every record copied into it, in order, intact."""
    data = payload(300_000, seed=9)

    async def main() -> None:
        server, server_apps, _, client = await protocol_pair(ntlm_users, server_app=BufferedCollector)
        async with server:
            while client.app_transport is None:
                await asyncio.sleep(0.001)
            client.app_transport.write(data)
            client.app_transport.close()
            while not server_apps:
                await asyncio.sleep(0.001)
            app = server_apps[0]
            assert isinstance(app, BufferedCollector)
            assert await app.lost is None
            assert digest(app.data) == digest(data)
            assert app.calls >= 300

    run(main())


def test_buffered_protocol_with_empty_buffer_fails_instead_of_spinning(ntlm_users: NTLMUsers) -> None:
    """An app whose get_buffer() returns an empty buffer gets connection_lost(RuntimeError), not a hung loop."""

    class Empty(BufferedCollector):
        def get_buffer(self, sizehint: int) -> bytearray:
            return bytearray()

    async def main() -> None:
        app = Empty()
        server = await serve_app(ntlm_users, app)
        async with server:
            _reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            writer.write(b"data")
            # asyncio itself fails a BufferedProtocol the same way.
            assert isinstance(await app.lost, RuntimeError)
            writer.close()

    run(main(), timeout=10)


# -- writing, half-close, close -------------------------------------------------------------------------------------


def test_write_protects_before_returning_and_writelines_is_one_write(ntlm_users: NTLMUsers) -> None:
    """write() may be followed by buffer reuse; writelines sends the concatenation; writes after write_eof raise."""

    async def main() -> None:
        server, server_apps, client_app, _ = await protocol_pair(ntlm_users)
        async with server:
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
            # StreamClosedError (not asyncio's RuntimeError): the send side is finished.
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
            transport = await client_app.made
            transport.write(b"q" * 100_000)
            transport.write_eof()
            await client_app.eof
            assert bytes(client_app.data) == b"you sent 100000 bytes"
            assert await client_app.lost is None

    run(main())


def test_abort_and_writes_after_close(ntlm_users: NTLMUsers) -> None:
    """abort() ends the connection at once (clean loss here, EOF at the peer); later writes raise StreamClosedError."""

    async def main() -> None:
        server, server_apps, client_app, _ = await protocol_pair(ntlm_users)
        async with server:
            transport = await client_app.made
            server_app = await first_server_app(server_apps)
            transport.abort()
            assert await client_app.lost is None
            assert await server_app.lost is None or isinstance(server_app.lost.result(), ConnectionError)
            with pytest.raises(StreamClosedError):  # never dropped silently
                transport.write(b"after abort")

    run(main())


class ClosesAt(Collector):
    """Closes its transport from inside a callback (``connection_made`` or the first ``data_received``)."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Close at once if asked to (e.g. a server rejecting the user)."""
        super().connection_made(transport)
        if self.where == "connection_made":
            transport.close()

    def data_received(self, data: bytes) -> None:
        """Close on the first data if asked to."""
        super().data_received(data)
        if self.where == "data_received":
            assert self.transport is not None
            self.transport.close()


@pytest.mark.parametrize("where", ["connection_made", "data_received"])
def test_app_closing_inside_callback_is_a_clean_close(ntlm_users: NTLMUsers, where: str) -> None:
    """An app closing inside a callback with records queued gets one connection_lost(None) and no later data."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.writelines([b"first", b" record"])  # one protected write
        for _ in range(50):
            writer.write(b"more records in the same segment")
        await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            app = ClosesAt(where)
            await connect_app(port_of(server), ntlm_users, app)
            assert await app.lost is None
            assert app.lost_calls == [None]
            assert app.chunks <= 1
            if app.chunks:
                assert bytes(app.data) == b"first record"

    run(main())


# -- flow control ---------------------------------------------------------------------------------------------------


def test_flow_control_slow_reader_pauses_writer_with_bounded_buffers(ntlm_users: NTLMUsers) -> None:
    """A paused reader pauses the writing app (once, then resumes it) with both ends' buffers bounded."""
    high = 256 * 1024
    chunk = payload(64 * 1024, seed=3)
    record_overhead = 64  # per record: length header + NTLM signature, generously

    async def main() -> None:
        server, server_apps, client_app, _ = await protocol_pair(
            ntlm_users, server_app=lambda: Collector(pause_on_connect=True)
        )
        async with server:
            transport = await client_app.made
            server_app = await first_server_app(server_apps)
            assert server_app.transport is not None and not server_app.transport.is_reading()
            transport.set_write_buffer_limits(high=high)
            assert transport.get_write_buffer_limits()[1] == high
            sent = 0
            # The client app gets pause_writing once the socket buffers fill; its write buffer stays near `high`.
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


def test_paused_reader_at_eof_loses_nothing(ntlm_users: NTLMUsers) -> None:
    """The peer sends 1 MiB and closes while our app has paused reading: every byte still arrives, then EOF."""
    data = payload(1 << 20, 11)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    async def main() -> bytes:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            # Do not read yet: the StreamReader pauses the transport with records still undelivered, then the
            # peer's EOF arrives.
            await asyncio.sleep(0.3)
            received = bytearray()
            while chunk := await reader.read(16384):  # a slow consumer: resumes and pauses many times
                received += chunk
                await asyncio.sleep(0.001)
            writer.close()
            return bytes(received)

    received = run(main())
    assert len(received) == len(data)
    assert digest(received) == digest(data)


# -- start_negotiate ------------------------------------------------------------------------------------------------


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
        """Keep the plain transport."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Wait for the line and the first handshake byte, then start the upgrade."""
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
            self.transport, app, server_side=True, initial_data=rest, **server_options(self.users)
        )
        return app, secure


def test_start_negotiate_after_plaintext_preamble(ntlm_users: NTLMUsers) -> None:
    """Both sides upgrade a plaintext connection; bytes read past the preamble go in as initial_data; data flows."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        preamble = Preamble(ntlm_users)
        server = await loop.create_server(lambda: preamble, "127.0.0.1", 0)
        async with server:
            plain_app = asyncio.Protocol()
            raw, _ = await loop.create_connection(lambda: plain_app, "127.0.0.1", port_of(server))
            # The preamble and the first handshake token may leave in one segment: the server reads past the line.
            raw.write(b"application/negotiate\n")
            client_app = Collector()
            secure = await nsa.start_negotiate(raw, client_app, **client_options(ntlm_users))
            assert await client_app.made is secure  # connection_made gets the new transport
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
    """call_connection_made=False (like loop.start_tls): the app only receives data and uses the returned transport."""

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(100))
            writer.close()

        server = await nsa.start_server(echo, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            raw, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port_of(server))
            app = Collector()
            secure = await nsa.start_negotiate(raw, app, call_connection_made=False, **client_options(ntlm_users))
            assert not app.made.done()
            app.transport = secure  # an app keeping its plaintext-era state is handed the new transport itself
            secure.write(b"ping")
            await app.eof
            assert bytes(app.data) == b"ping"

    run(main())


def test_start_negotiate_on_closed_transport_raises_at_once(ntlm_users: NTLMUsers) -> None:
    """start_negotiate on a transport whose peer already left raises StreamClosedError instead of waiting forever."""

    class Plain(asyncio.Protocol):
        def __init__(self) -> None:
            self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set_result(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        async with server:
            plain = Plain()
            transport, _ = await loop.create_connection(lambda: plain, "127.0.0.1", port_of(server))
            await plain.lost  # the peer closed: the plain protocol already saw connection_lost
            # With handshake_timeout=None, waiting for a connection_lost that was already delivered would hang.
            with pytest.raises(StreamClosedError):
                await nsa.start_negotiate(transport, Collector(), handshake_timeout=None, **client_options(ntlm_users))

    run(main(), timeout=10)
