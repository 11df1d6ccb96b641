"""asyncio adapter failures over real loopback TCP: wrong password, silent peers, truncation, tampering.

Every failure must surface as a typed error from :mod:`negotiate_stream.errors`, and nothing unverified may reach
the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from tests.asyncio_helpers import client_opts, run_guarded, server_opts

from negotiate_stream import asyncio_ as nsa
from negotiate_stream._connection import NEED_DATA, Connection, Data, HandshakeComplete, SessionInfo
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

T = TypeVar("T")
GUARD = 60.0  # a hung test fails after this long instead of stalling the suite; never a performance check


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh loop, failing after GUARD seconds rather than hanging."""
    return run_guarded(coro, GUARD)


def port_of(server: asyncio.Server) -> int:
    """The port ``server`` listens on."""
    return int(server.sockets[0].getsockname()[1])


class Recorder(asyncio.Protocol):
    """An application protocol that records every callback."""

    def __init__(self) -> None:
        self.made = False
        self.data = bytearray()
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def raw_handshake(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> SessionInfo:
    """Drive a bare Connection over plain asyncio streams until the handshake completes (a hand-made peer)."""
    writer.write(conn.data_to_send())
    while True:
        chunk = await reader.read(65536)
        conn.receive_data(chunk)
        try:
            event = conn.next_event()
        finally:
            writer.write(conn.data_to_send())
        if isinstance(event, HandshakeComplete):
            return event.info


# -- wrong password -----------------------------------------------------------------------------------------------


def test_wrong_password_error_frame_typed_errors_no_connection_made(ntlm_users: NTLMUsers) -> None:
    """A raw client with a wrong password receives an MS-NNS Error frame carrying SEC_E_LOGON_DENIED; the
    streams client raises HandshakeError(SEC_E_LOGON_DENIED); the server side fails with an AuthenticationError;
    no application protocol ever sees connection_made."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        apps: list[Recorder] = []
        server_failures: list[BaseException | None] = []

        def factory() -> nsa.NegotiateProtocol:
            app = Recorder()
            apps.append(app)
            waiter: asyncio.Future[nsa.NegotiateTransport] = loop.create_future()
            waiter.add_done_callback(lambda fut: server_failures.append(fut.exception()))
            return nsa.NegotiateProtocol(
                Connection(SecurityContext.create(True, **server_opts(ntlm_users))), app, waiter=waiter
            )

        server = await loop.create_server(factory, "127.0.0.1", 0)
        async with server:
            # A raw peer: record every byte the server sends back until it closes.
            conn = Connection(SecurityContext.create(False, **client_opts(ntlm_users, password="wrong")))
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(conn.data_to_send())  # NTLM Negotiate
            received = bytearray()
            while (parsed := nns.parse_handshake(received)) is None:
                chunk = await reader.read(65536)
                assert chunk, "the server closed before sending its challenge"
                received += chunk
            challenge_end = parsed[1]
            conn.receive_data(bytes(received[:challenge_end]))
            assert conn.next_event() is NEED_DATA
            writer.write(conn.data_to_send())  # NTLM Authenticate, computed with the wrong password
            reply = bytearray(received[challenge_end:])
            while chunk := await reader.read(65536):  # everything until the server closes
                reply += chunk
            writer.close()
            parsed = nns.parse_handshake(reply)
            assert parsed is not None, f"no Error frame from the server, got {bytes(reply)!r}"
            frame, end = parsed
            assert frame.message_id is nns.MessageId.HANDSHAKE_ERROR
            assert frame.error_code == SEC_E_LOGON_DENIED
            assert end == len(reply) == nns.HANDSHAKE_HEADER_SIZE + nns.ERROR_PAYLOAD_SIZE
            # The bare Connection turns the frame into the typed error.
            conn.receive_data(bytes(reply))
            with pytest.raises(HandshakeError) as raised:
                conn.next_event()
            assert raised.value.status == SEC_E_LOGON_DENIED

            # The streams client turns that frame into a typed error.
            with pytest.raises(HandshakeError) as raised:
                await nsa.open_connection("127.0.0.1", port_of(server), **client_opts(ntlm_users, password="wrong"))
            assert raised.value.status == SEC_E_LOGON_DENIED

            while len(server_failures) < 2:
                await asyncio.sleep(0.01)
        assert len(apps) == 2
        assert all(isinstance(exc, AuthenticationError) for exc in server_failures), server_failures
        assert not any(app.made for app in apps)
        assert not any(app.lost.done() for app in apps)  # never made, so never told it was lost

    run(main())


def test_start_server_logs_a_failed_handshake_and_keeps_serving(
    ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture
) -> None:
    """One client's wrong password is logged on the negotiate_stream logger; the next client is served."""
    connected: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.append(writer.get_extra_info("peer_identity"))
        writer.write(await reader.read(100))
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_opts(ntlm_users))
        async with server:
            with pytest.raises(HandshakeError):
                await nsa.open_connection("127.0.0.1", port_of(server), **client_opts(ntlm_users, password="bad"))
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_opts(ntlm_users))
            writer.write(b"still serving")
            assert await reader.read() == b"still serving"
            writer.close()
            await writer.wait_closed()

    with caplog.at_level(logging.WARNING, logger="negotiate_stream"):
        run(main())
    assert connected == ["NEGOTIATE-TEST\\alice"]
    failures = [r for r in caplog.records if r.name == "negotiate_stream" and "handshake" in r.getMessage()]
    assert len(failures) == 1
    assert "127.0.0.1" in failures[0].getMessage()


# -- handshake timeout ---------------------------------------------------------------------------------------------


def test_client_handshake_timeout_against_silent_server(ntlm_users: NTLMUsers) -> None:
    """A server that accepts but never answers: HandshakeTimeoutError, and the connection is closed."""

    async def main() -> None:
        peer_saw_close: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received = bytearray()
            try:
                while chunk := await reader.read(65536):
                    received += chunk
            except ConnectionResetError:
                pass  # abort() may reset rather than FIN: both mean "closed"
            peer_saw_close.set_result(bytes(received))
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with server:
            with pytest.raises(HandshakeTimeoutError) as raised:
                await nsa.open_connection(
                    "127.0.0.1", port_of(server), handshake_timeout=0.3, **client_opts(ntlm_users)
                )
            assert isinstance(raised.value, TimeoutError) and isinstance(raised.value, AuthenticationError)
            assert "did not complete within 0.3 s" in str(raised.value)
            # The silent peer got our first token, then the connection went away.
            sent = await peer_saw_close
            assert sent[0] == nns.MessageId.HANDSHAKE_IN_PROGRESS

    run(main())


def test_server_handshake_timeout_against_silent_client(
    ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture
) -> None:
    """start_server drops a client that never speaks after handshake_timeout, logging a typed error."""

    async def never_called(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise AssertionError("a client that never authenticated reached the handler")

    async def main() -> None:
        server = await nsa.start_server(never_called, "127.0.0.1", 0, handshake_timeout=0.3, **server_opts(ntlm_users))
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            with contextlib.suppress(ConnectionResetError):  # abort() may reset rather than FIN
                assert await reader.read() == b""
            writer.close()

    with caplog.at_level(logging.WARNING, logger="negotiate_stream"):
        run(main())
    assert any("did not complete within 0.3 s" in r.getMessage() for r in caplog.records)


# -- truncation ----------------------------------------------------------------------------------------------------


async def _truncating_server(users: NTLMUsers, first: bytes, partial_of: bytes) -> asyncio.Server:
    """A hand-made server peer: handshake, one whole record ``first``, then half a record and a close."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(SecurityContext.create(True, **server_opts(users)))
        await raw_handshake(conn, reader, writer)
        # Answer a request, so the client is already waiting in read() when the cut arrives (StreamReader raises a
        # pending exception before returning data it buffered earlier).
        while not isinstance(event := conn.next_event(), Data):
            conn.receive_data(await reader.read(65536))
        assert event.data == b"go"
        whole = conn.send(first)
        cut = conn.send(partial_of)  # protected after `first`: sequence numbers stay in order
        writer.write(whole + cut[: len(cut) // 2])
        await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_peer_closing_mid_record_streams_reader_raises_truncated(ntlm_users: NTLMUsers) -> None:
    """The whole record before the cut is delivered; the reader then raises TruncatedStreamError, and later
    writes say the stream is broken."""

    async def main() -> None:
        server = await _truncating_server(ntlm_users, b"complete record", b"x" * 3000)
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_opts(ntlm_users))
            writer.write(b"go")
            assert await reader.readexactly(15) == b"complete record"
            with pytest.raises(TruncatedStreamError, match="middle of a"):
                await reader.read(65536)
            with pytest.raises(BrokenStreamError):
                writer.write(b"after the failure")
            writer.close()

    run(main())


def test_peer_closing_mid_record_protocol_connection_lost(ntlm_users: NTLMUsers) -> None:
    """Protocol API: connection_lost(TruncatedStreamError); only the complete record was delivered."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await _truncating_server(ntlm_users, b"whole", b"y" * 70000)  # the cut record spans two records
        async with server:
            app = Recorder()
            conn = Connection(SecurityContext.create(False, **client_opts(ntlm_users)))
            protocol = nsa.NegotiateProtocol(conn, app)
            await loop.create_connection(lambda: protocol, "127.0.0.1", port_of(server))
            while protocol.app_transport is None:
                await asyncio.sleep(0.005)
            protocol.app_transport.write(b"go")
            exc = await app.lost
            assert isinstance(exc, TruncatedStreamError)
            assert app.made
            # The first 0xFC00 bytes of the cut message form a complete, verified record: delivered.
            assert bytes(app.data) in (b"whole", b"whole" + b"y" * nns.MAX_PLAINTEXT_PER_RECORD)

    run(main())


# -- tampering (a man-in-the-middle proxy) --------------------------------------------------------------------------


class FlippingProxy:
    """A TCP proxy that forwards both directions and flips one byte of the first data record in one direction.

    The handshake is left intact (it ends, in each direction, with that side's HandshakeDone frame); ``offset``
    counts from the start of the first record (its 4-byte length header).
    """

    def __init__(self, upstream_port: int, direction: str, offset: int) -> None:
        self.upstream_port = upstream_port
        self.direction = direction
        self.offset = offset
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
                        chunk[target] ^= 0x20
                        self.flipped = True
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()  # pass a half-close on as a half-close
        except ConnectionError:
            writer.close()


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
@pytest.mark.parametrize("where", ["signature", "body"])
def test_tampered_record_raises_integrity_error_and_delivers_nothing(
    ntlm_users: NTLMUsers, level: str, direction: str, where: str
) -> None:
    """A proxy flips one byte of the first data record (in its signature or its body): the receiver raises
    IntegrityError and its application receives not a single byte."""
    offset = nns.RECORD_HEADER_SIZE + (6 if where == "signature" else 16 + 3)
    message = b"transfer 100 to account 42; " * 4

    async def main() -> None:
        server_result: asyncio.Future[tuple[bytes, BaseException | None]] = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if direction == "server_to_client":
                writer.write(message)
            received = bytearray()
            error: BaseException | None = None
            try:
                while chunk := await reader.read(65536):
                    received += chunk
            except IntegrityError as exc:
                error = exc
            server_result.set_result((bytes(received), error))
            writer.close()

        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_opts(ntlm_users, level))
        proxy = FlippingProxy(port_of(server), direction, offset)
        proxy_server = await proxy.start()
        async with server, proxy_server:
            reader, writer = await nsa.open_connection(
                "127.0.0.1", port_of(proxy_server), **client_opts(ntlm_users, level)
            )
            if direction == "client_to_server":
                writer.write(message)
                received, error = await server_result
                assert received == b""
                assert isinstance(error, IntegrityError)
            else:
                with pytest.raises(IntegrityError) as raised:
                    await reader.read(65536)
                assert raised.value.status is not None
                # Nothing was queued for the app.
                assert not reader._buffer  # type: ignore[attr-defined]
                with pytest.raises(BrokenStreamError):
                    writer.write(b"more")
            writer.close()
        assert proxy.flipped

    run(main())


def test_untampered_proxy_passes_data(ntlm_users: NTLMUsers) -> None:
    """Control for the tampering test: the same proxy with an offset beyond the data changes nothing."""

    async def main() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(65536):
                writer.write(chunk)
            writer.close()

        server = await nsa.start_server(echo, "127.0.0.1", 0, **server_opts(ntlm_users))
        proxy = FlippingProxy(port_of(server), "client_to_server", offset=10**9)
        proxy_server = await proxy.start()
        async with server, proxy_server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(proxy_server), **client_opts(ntlm_users))
            writer.write(b"intact")
            writer.write_eof()
            assert await reader.read() == b"intact"
            writer.close()
        assert not proxy.flipped

    run(main())
