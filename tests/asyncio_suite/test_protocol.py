"""Protocol API: NegotiateProtocol under your own asyncio.Protocol, start_negotiate, flow control."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from negotiate_stream import asyncio_ as nsa
from negotiate_stream._connection import Connection
from negotiate_stream._context import SecurityContext
from negotiate_stream.testing import NTLMUsers

from tests.support.aio import LEVELS, client_options, digest, payload, port_of, run, server_options


class Collector(asyncio.Protocol):
    """Records every callback; ``done`` resolves at connection_lost."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.chunks = 0
        self.eof = False
        self.lost: list[BaseException | None] = []
        self.made = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None, "data before connection_made"
        self.data += data
        self.chunks += 1

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        if not self.done.done():
            self.done.set_result(exc)


class BufferedCollector(asyncio.BufferedProtocol):
    """A BufferedProtocol app protocol with a deliberately small buffer (forces several get_buffer calls)."""

    def __init__(self) -> None:
        self.buffer = bytearray(1000)
        self.data = bytearray()
        self.calls = 0
        self.done = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]
        self.calls += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)


def negotiator(server_side: bool, app: asyncio.BaseProtocol, options: dict[str, Any]) -> nsa.NegotiateProtocol:
    """A NegotiateProtocol over a fresh context."""
    return nsa.NegotiateProtocol(Connection(SecurityContext.create(server_side, **options)), app)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
def test_protocol_api_transfer(ntlm_users: NTLMUsers, level: str, direction: str) -> None:
    """1 MiB one way through app protocols on both ends; extras expose the session; close is clean."""
    data = payload(1 << 20, 5)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server_apps: list[Collector] = []

        def server_factory() -> nsa.NegotiateProtocol:
            server_apps.append(Collector())
            return negotiator(True, server_apps[-1], server_options(ntlm_users, level))

        server = await loop.create_server(server_factory, "127.0.0.1", 0)
        async with server:
            client_app = Collector()
            await loop.create_connection(
                lambda: negotiator(False, client_app, client_options(ntlm_users, level)), "127.0.0.1", port_of(server)
            )
            client_transport = await client_app.made
            server_transport = await server_apps[0].made
            assert server_transport.get_extra_info("peer_identity") == "NEGOTIATE-TEST\\alice"
            assert client_transport.get_extra_info("protection_level").value == level
            assert client_transport.get_extra_info("negotiated_protocol") == "ntlm"
            assert client_transport.get_extra_info("sockname")[0] == "127.0.0.1"
            sender, receiver = (
                (client_transport, server_apps[0])
                if direction == "client_to_server"
                else (server_transport, client_app)
            )
            sender.write(data)
            sender.close()  # flushes queued records first
            assert await receiver.done is None
            assert receiver.eof
            assert digest(receiver.data) == digest(data)

    run(main())


def test_buffered_protocol_app_gets_data(ntlm_users: NTLMUsers) -> None:
    """A BufferedProtocol app protocol receives every byte through get_buffer/buffer_updated."""
    data = payload(300_000, 9)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        app = BufferedCollector()
        server = await loop.create_server(lambda: negotiator(True, app, server_options(ntlm_users)), "127.0.0.1", 0)
        async with server:
            _reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            writer.write(data)
            writer.close()
            await writer.wait_closed()
            assert await app.done is None
        assert digest(app.data) == digest(data)
        assert app.calls >= 300

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


def test_flow_control_slow_reader(ntlm_users: NTLMUsers) -> None:
    """A reader that paused makes the writer's drain() wait; the write buffer stays bounded; all data arrives."""
    chunk = payload(256 * 1024, 13)
    total_chunks = 64

    async def main() -> None:
        loop = asyncio.get_running_loop()
        app = Collector()
        server = await loop.create_server(lambda: negotiator(True, app, server_options(ntlm_users)), "127.0.0.1", 0)
        async with server:
            _reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            server_transport = await app.made
            server_transport.pause_reading()
            assert not server_transport.is_reading()
            writer.transport.set_write_buffer_limits(high=128 * 1024)
            _low, high = writer.transport.get_write_buffer_limits()
            assert high == 128 * 1024
            max_buffered = 0
            written = 0
            drain = asyncio.ensure_future(asyncio.sleep(0))
            for _ in range(total_chunks):
                writer.write(chunk)
                written += 1
                max_buffered = max(max_buffered, writer.transport.get_write_buffer_size())
                drain = asyncio.ensure_future(writer.drain())
                done, _ = await asyncio.wait({drain}, timeout=0.2)
                if not done:
                    break  # drain() is waiting: the peer is not reading
            assert not drain.done(), "drain() never waited although the peer stopped reading"
            assert written < total_chunks
            # Bounded: at most the high-water mark plus one write's records (each record adds a 20-byte header+sig).
            assert max_buffered <= high + len(chunk) + 4096
            server_transport.resume_reading()
            await drain
            for _ in range(total_chunks - written):
                writer.write(chunk)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
            assert await app.done is None
        assert digest(app.data) == digest(chunk * total_chunks)

    run(main())


def test_start_negotiate_after_plaintext_preamble(ntlm_users: NTLMUsers) -> None:
    """The client sends a plaintext line then upgrades; the server reads the line with a plain protocol, then
    calls start_negotiate(server_side=True, initial_data=<bytes read past the line>)."""

    class Preamble(asyncio.Protocol):
        def __init__(self) -> None:
            self.buffer = bytearray()
            self.upgraded: asyncio.Task[None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            if b"\n" in self.buffer and self.upgraded is None:
                line, _, rest = bytes(self.buffer).partition(b"\n")
                assert line == b"application/negotiate"
                self.transport.pause_reading()
                self.upgraded = asyncio.ensure_future(self.upgrade(rest))

        async def upgrade(self, rest: bytes) -> None:
            inner = Collector()
            secure = await nsa.start_negotiate(
                self.transport,
                inner,
                server_side=True,
                initial_data=rest,
                call_connection_made=True,
                **server_options(ntlm_users),
            )
            results["server_identity"] = secure.get_extra_info("peer_identity")
            secure.write(b"welcome")
            results["server_got"] = await inner.done, bytes(inner.data)

    results: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        preamble = Preamble()
        server = await loop.create_server(lambda: preamble, "127.0.0.1", 0)
        async with server:
            client_app = Collector()
            transport, _ = await loop.create_connection(lambda: client_app, "127.0.0.1", port_of(server))
            client_app.made = loop.create_future()  # the upgraded transport is announced again
            # The plaintext preamble, then the upgrade: the preamble and the first handshake token may leave in one
            # segment, so the server reads past the line and must hand those bytes to start_negotiate.
            transport.write(b"application/negotiate\n")
            secure = await nsa.start_negotiate(
                transport,
                client_app,
                call_connection_made=True,
                initial_data=b"",
                **client_options(ntlm_users),
            )
            assert await client_app.made is secure
            assert secure.get_extra_info("negotiate_stream").is_encrypted
            assert preamble.upgraded is not None
            await asyncio.sleep(0)
            secure.write(b"hello after upgrade")
            while bytes(client_app.data) != b"welcome":
                await asyncio.sleep(0.01)
            secure.close()
            await preamble.upgraded

    run(main())
    assert results["server_identity"] == "NEGOTIATE-TEST\\alice"
    assert results["server_got"] == (None, b"hello after upgrade")


class ClosesAt(Collector):
    """Closes its transport from inside a callback (``connection_made`` or the first ``data_received``)."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.where == "connection_made":
            transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.where == "data_received":
            assert self.transport is not None
            self.transport.close()


@pytest.mark.parametrize("where", ["connection_made", "data_received"])
def test_app_closing_inside_callback_is_a_clean_close(ntlm_users: NTLMUsers, where: str) -> None:
    """An app protocol that closes its transport while records are still queued (e.g. a server rejecting a user
    in connection_made) gets connection_lost(None), not an error, and no data after the close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.writelines([b"first", b" record"])  # one protected write
        for _ in range(50):
            writer.write(b"more records in the same segment")
        await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            app = ClosesAt(where)
            await loop.create_connection(
                lambda: negotiator(False, app, client_options(ntlm_users)), "127.0.0.1", port_of(server)
            )
            assert await app.done is None
            assert app.lost == [None]
            assert app.chunks <= 1
            if app.chunks:
                assert bytes(app.data) == b"first record"

    run(main())


def test_write_after_write_eof_raises_stream_closed(ntlm_users: NTLMUsers) -> None:
    """After write_eof() the send side is finished: write() raises StreamClosedError (not RuntimeError)."""
    from negotiate_stream.errors import StreamClosedError

    async def main() -> None:
        server = await nsa.start_server(lambda r, w: None, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            _reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            assert writer.can_write_eof()
            writer.write_eof()
            with pytest.raises(StreamClosedError):
                writer.write(b"after eof")
            writer.close()

    run(main())


def test_buffered_protocol_with_empty_buffer_fails_instead_of_spinning(ntlm_users: NTLMUsers) -> None:
    """An app BufferedProtocol whose get_buffer() returns an empty buffer gets connection_lost(RuntimeError)
    (as asyncio itself does) instead of hanging the event loop."""

    class Empty(BufferedCollector):
        def get_buffer(self, sizehint: int) -> bytearray:
            return bytearray()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        app = Empty()
        server = await loop.create_server(lambda: negotiator(True, app, server_options(ntlm_users)), "127.0.0.1", 0)
        async with server:
            _reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            writer.write(b"data")
            assert isinstance(await app.done, RuntimeError)
            writer.close()

    run(main(), timeout=10)


def test_start_negotiate_on_closed_transport_raises_at_once(ntlm_users: NTLMUsers) -> None:
    """start_negotiate on a transport whose peer already went away raises StreamClosedError instead of waiting
    (forever, with handshake_timeout=None) for a connection_lost that was already delivered."""
    from negotiate_stream.errors import StreamClosedError

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        async with server:
            app = Collector()
            transport, _ = await loop.create_connection(lambda: app, "127.0.0.1", port_of(server))
            await app.done  # the peer closed: the plain protocol saw connection_lost
            with pytest.raises(StreamClosedError):
                await nsa.start_negotiate(transport, Collector(), handshake_timeout=None, **client_options(ntlm_users))

    run(main(), timeout=10)
