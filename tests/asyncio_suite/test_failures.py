"""Failures: wrong password, silent peer, truncation, tampering; every error typed, nothing corrupt delivered."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from negotiate_stream import asyncio_ as nsa
from negotiate_stream._connection import Connection
from negotiate_stream._context import SecurityContext
from negotiate_stream._framing import nns
from negotiate_stream.errors import (
    SEC_E_LOGON_DENIED,
    AuthenticationError,
    BrokenStreamError,
    HandshakeError,
    HandshakeTimeoutError,
    IntegrityError,
    TruncatedStreamError,
)
from negotiate_stream.testing import NTLMUsers

from tests.support.aio import RawPeer, TamperingProxy, client_options, port_of, run, server_options, start_echo_server, start_raw_server
from .test_protocol import Collector


def test_wrong_password_error_frame_and_typed_errors(ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture) -> None:
    """The server answers a wrong password with an MS-NNS Error frame (seen by a raw client), the streams
    client gets HandshakeError(SEC_E_LOGON_DENIED), the server side a typed error; connection_made never runs."""
    server_errors: list[BaseException] = []
    apps: list[Collector] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def factory() -> nsa.NegotiateProtocol:
            app = Collector()
            apps.append(app)
            waiter: asyncio.Future[nsa.NegotiateTransport] = loop.create_future()
            waiter.add_done_callback(lambda fut: server_errors.append(fut.exception()))  # type: ignore[arg-type]
            context = SecurityContext.create(True, **server_options(ntlm_users))
            return nsa.NegotiateProtocol(Connection(context), app, waiter=waiter)

        server = await loop.create_server(factory, "127.0.0.1", 0)
        async with server:
            # 1. A raw client driving a bare Connection: check the bytes the server sends back.
            bad = client_options(ntlm_users, credentials=ntlm_users.client_credentials(password="wrong"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            peer = RawPeer(reader, writer, Connection(SecurityContext.create(False, **bad)))
            with pytest.raises(HandshakeError) as raised:
                await peer.handshake()
            assert raised.value.status == SEC_E_LOGON_DENIED
            writer.close()
            # 2. The streams client.
            with pytest.raises(HandshakeError) as raised:
                await nsa.open_connection("127.0.0.1", port_of(server), **bad)
            assert raised.value.status == SEC_E_LOGON_DENIED
            while len(server_errors) < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # a late connection_made/connection_lost would show up by now
        assert len(server_errors) == 2
        assert all(isinstance(exc, AuthenticationError) for exc in server_errors)
        assert all(not app.made.done() for app in apps)  # the app's connection_made never ran
        assert all(app.lost == [] for app in apps)  # nor connection_lost (it never had a connection)

    # Raw wire check: the server's last frame is a HandshakeError frame carrying SEC_E_LOGON_DENIED.
    async def raw_bytes() -> bytes:
        server = await nsa.start_server(lambda r, w: None, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            bad = client_options(ntlm_users, credentials=ntlm_users.client_credentials(password="wrong"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            conn = Connection(SecurityContext.create(False, **bad))
            writer.write(conn.data_to_send())
            received = bytearray()
            frames: list[nns.HandshakeFrame] = []
            while not frames or frames[-1].message_id is not nns.MessageId.HANDSHAKE_ERROR:
                chunk = await reader.read(65536)
                assert chunk, f"server closed without an error frame after {frames}"
                received += chunk
                while parsed := nns.parse_handshake(received, 0):
                    frame, end = parsed
                    del received[:end]
                    frames.append(frame)
                    if frame.message_id is nns.MessageId.HANDSHAKE_IN_PROGRESS:
                        conn.receive_data(nns.encode_handshake(frame.message_id, frame.payload))
                        conn.next_event()
                        writer.write(conn.data_to_send())
            assert await reader.read() == b""  # and the server closed the connection
            writer.close()
            return frames[-1].payload

    with caplog.at_level(logging.WARNING, logger="negotiate_stream"):
        run(main())
        error_payload = run(raw_bytes())
    assert nns.decode_error_code(error_payload) == SEC_E_LOGON_DENIED
    assert any("handshake" in record.getMessage() for record in caplog.records)  # start_server logged it


def test_handshake_timeout_against_silent_peer() -> None:
    """A server that accepts and says nothing: HandshakeTimeoutError, and our side closed the connection."""
    closed: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        closed.append(await reader.read())  # reads our first token, then EOF when we give up
        closed.append(await reader.read())
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with server:
            with NTLMUsers.generate() as users, pytest.raises(HandshakeTimeoutError):
                await nsa.open_connection("127.0.0.1", port_of(server), handshake_timeout=0.3, **client_options(users))
            while len(closed) < 2:
                await asyncio.sleep(0.01)

    run(main())
    assert closed[-1] == b""  # the transport was closed on our side


def _truncating(peer: RawPeer) -> Any:
    async def behave(peer: RawPeer = peer) -> None:
        wire = peer.connection.send(b"a" * 1000) + peer.connection.send(b"b" * 1000)
        peer.writer.write(wire[:-10])  # the first record whole, the second cut short
        await peer.writer.drain()

    return behave()


def test_peer_closing_mid_record_streams(ntlm_users: NTLMUsers) -> None:
    """StreamReader: the whole first record, then TruncatedStreamError (never a silent short read)."""

    async def main() -> None:
        server = await start_raw_server(ntlm_users, _truncating)
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            assert await reader.readexactly(1000) == b"a" * 1000
            with pytest.raises(TruncatedStreamError):
                await reader.read()
            writer.close()

    run(main())


def test_peer_closing_mid_record_protocol(ntlm_users: NTLMUsers) -> None:
    """Protocol API: connection_lost(TruncatedStreamError) after the complete record only."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await start_raw_server(ntlm_users, _truncating)
        async with server:
            app = Collector()
            await loop.create_connection(
                lambda: nsa.NegotiateProtocol(
                    Connection(SecurityContext.create(False, **client_options(ntlm_users))), app
                ),
                "127.0.0.1",
                port_of(server),
            )
            exc = await app.done
            assert isinstance(exc, TruncatedStreamError)
            assert bytes(app.data) == b"a" * 1000
            assert not app.eof  # a truncation is not a clean end of stream
            assert app.transport is not None
            with pytest.raises(BrokenStreamError):
                app.transport.write(b"after failure")

    run(main())


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
@pytest.mark.parametrize("where", ["signature", "payload"])
def test_mitm_flipped_byte(ntlm_users: NTLMUsers, level: str, where: str) -> None:
    """A proxy flips one byte of the first data record: IntegrityError, nothing of it (or later) delivered."""

    def flip(record: bytearray) -> bytearray:
        # NTLM record payload: 16-byte signature then (sealed or plain) data.
        record[4 + 5 if where == "signature" else 4 + 16 + 3] ^= 0x40
        return record

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await start_echo_server(ntlm_users, level)
        proxy = TamperingProxy(port_of(server), flip)
        proxy_port = await proxy.start()
        async with server:
            app = Collector()
            await loop.create_connection(
                lambda: nsa.NegotiateProtocol(
                    Connection(SecurityContext.create(False, **client_options(ntlm_users, level))), app
                ),
                "127.0.0.1",
                proxy_port,
            )
            transport = await app.made
            transport.write(b"secret payload " * 10)
            transport.write(b"second record")
            exc = await app.done
            assert isinstance(exc, IntegrityError)
            assert app.data == b""
            assert app.chunks == 0
        await proxy.close()

    run(main())
