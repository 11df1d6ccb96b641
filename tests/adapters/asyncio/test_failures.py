"""asyncio adapter failures over real loopback TCP: wrong password, silent peers, truncation, tampering.

Every failure must surface as a typed error from :mod:`negotiate_stream.errors`, and nothing unverified may reach
the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from negotiate_stream import NEED_DATA, Connection
from negotiate_stream import asyncio_ as nsa
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
from tests.support.aio import (
    Collector,
    RawPeer,
    TamperingProxy,
    client_options,
    connect_app,
    open_client,
    port_of,
    run,
    server_options,
    start_echo_server,
    start_raw_server,
)

# -- wrong password -----------------------------------------------------------------------------------------------


async def _raw_wrong_password_client(users: NTLMUsers, port: int) -> None:
    """A raw client with a wrong password: the server's answer is one MS-NNS Error frame, then it closes."""
    conn = Connection(SecurityContext.create(False, **client_options(users, password="wrong")))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
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
    assert nns.decode_error_code(frame.payload) == SEC_E_LOGON_DENIED
    assert end == len(reply) == nns.HANDSHAKE_HEADER_SIZE + nns.ERROR_PAYLOAD_SIZE
    # The bare Connection turns the frame into the typed error.
    conn.receive_data(bytes(reply))
    with pytest.raises(HandshakeError) as raised:
        conn.next_event()
    assert raised.value.status == SEC_E_LOGON_DENIED


def test_wrong_password_error_frame_typed_errors_no_connection_made(ntlm_users: NTLMUsers) -> None:
    """A wrong password: Error frame, HandshakeError(LOGON_DENIED), server AuthenticationError, app never called."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        apps: list[Collector] = []
        server_failures: list[BaseException | None] = []

        def factory() -> nsa.NegotiateProtocol:
            app = Collector()
            apps.append(app)
            waiter: asyncio.Future[nsa.NegotiateTransport] = loop.create_future()
            waiter.add_done_callback(lambda fut: server_failures.append(fut.exception()))
            return nsa.NegotiateProtocol(
                Connection(SecurityContext.create(True, **server_options(ntlm_users))), app, waiter=waiter
            )

        server = await loop.create_server(factory, "127.0.0.1", 0)
        async with server:
            await _raw_wrong_password_client(ntlm_users, port_of(server))
            # The streams client turns that frame into a typed error.
            with pytest.raises(HandshakeError) as raised:
                await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users, password="wrong"))
            assert raised.value.status == SEC_E_LOGON_DENIED
            while len(server_failures) < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # a late connection_made/connection_lost would show up by now
        assert len(apps) == 2
        assert len(server_failures) == 2
        assert all(isinstance(exc, AuthenticationError) for exc in server_failures), server_failures
        assert not any(app.made.done() for app in apps)  # the app's connection_made never ran
        assert all(app.lost_calls == [] for app in apps)  # never made, so never told it was lost

    run(main())


def test_start_server_answers_a_wrong_password_with_an_error_frame(
    ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture
) -> None:
    """start_server answers a raw client's wrong password with one Error frame (LOGON_DENIED), logs it, closes."""

    async def main() -> None:
        server = await nsa.start_server(lambda r, w: None, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            await _raw_wrong_password_client(ntlm_users, port_of(server))

    with caplog.at_level(logging.WARNING, logger="negotiate_stream"):
        run(main())
    assert any("handshake" in record.getMessage() for record in caplog.records)


def test_start_server_logs_a_failed_handshake_and_keeps_serving(
    ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture
) -> None:
    """One client's wrong password is logged once on the negotiate_stream logger; the next client is served."""
    connected: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.append(writer.get_extra_info("peer_identity"))
        writer.write(await reader.read(100))
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            with pytest.raises(HandshakeError):
                await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users, password="bad"))
            reader, writer = await open_client(server, ntlm_users)
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
    """A server that accepts but never answers: HandshakeTimeoutError, and our side closes the connection."""

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
                    "127.0.0.1", port_of(server), handshake_timeout=0.3, **client_options(ntlm_users)
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
        server = await nsa.start_server(
            never_called, "127.0.0.1", 0, handshake_timeout=0.3, **server_options(ntlm_users)
        )
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
    """A hand-made server peer: handshake, one whole record ``first``, then ``partial_of`` cut short and a close."""

    async def behave(peer: RawPeer) -> None:
        # Answer a request, so the client is already waiting in read() when the cut arrives (StreamReader raises a
        # pending exception before returning data it buffered earlier).
        assert await peer.receive(2) == b"go"
        whole = peer.connection.send(first)
        cut = peer.connection.send(partial_of)  # protected after `first`: sequence numbers stay in order
        peer.writer.write(whole + cut[:-10])  # only the last record of `partial_of` is incomplete
        await peer.writer.drain()

    return await start_raw_server(users, behave)


def test_peer_closing_mid_record_streams_reader_raises_truncated(ntlm_users: NTLMUsers) -> None:
    """The record before the cut arrives; then the reader raises TruncatedStreamError and writes raise Broken."""

    async def main() -> None:
        server = await _truncating_server(ntlm_users, b"complete record", b"x" * 3000)
        async with server:
            reader, writer = await open_client(server, ntlm_users)
            writer.write(b"go")
            assert await reader.readexactly(15) == b"complete record"
            with pytest.raises(TruncatedStreamError, match="middle of a"):  # never a silent short read
                await reader.read(65536)
            with pytest.raises(BrokenStreamError):
                writer.write(b"after the failure")
            writer.close()

    run(main())


def test_peer_closing_mid_record_protocol_connection_lost(ntlm_users: NTLMUsers) -> None:
    """Protocol API: every complete record, then connection_lost(TruncatedStreamError), no EOF, writes raise Broken."""

    async def main() -> None:
        # The cut message spans two records: its first record is whole, its second is cut.
        server = await _truncating_server(ntlm_users, b"whole", b"y" * 70000)
        async with server:
            app = Collector()
            await connect_app(port_of(server), ntlm_users, app)
            transport = await app.made
            transport.write(b"go")
            exc = await app.lost
            assert isinstance(exc, TruncatedStreamError)
            # The first 0xFC00 bytes of the cut message form a complete, verified record: delivered.
            assert bytes(app.data) == b"whole" + b"y" * nns.MAX_PLAINTEXT_PER_RECORD
            assert not app.eof.done()  # a truncation is not a clean end of stream
            with pytest.raises(BrokenStreamError):
                transport.write(b"after failure")

    run(main())


# -- tampering (a man-in-the-middle proxy) --------------------------------------------------------------------------


def _tamper_offset(where: str) -> int:
    """Offset of the flipped byte in the first record: NTLM payload = 16-byte signature, then (sealed) data."""
    return nns.RECORD_HEADER_SIZE + (6 if where == "signature" else 16 + 3)


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
@pytest.mark.parametrize("where", ["signature", "body"])
def test_tampered_record_raises_integrity_error_and_delivers_nothing(
    ntlm_users: NTLMUsers, level: str, direction: str, where: str
) -> None:
    """Streams API: a byte flipped in the first record gives the receiver IntegrityError and not one byte of data."""
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

        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users, level))
        proxy = TamperingProxy(port_of(server), direction, _tamper_offset(where))
        proxy_server = await proxy.start()
        async with server, proxy_server:
            reader, writer = await nsa.open_connection(
                "127.0.0.1", port_of(proxy_server), **client_options(ntlm_users, level)
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


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
@pytest.mark.parametrize("where", ["signature", "body"])
def test_tampered_record_protocol_api_connection_lost(ntlm_users: NTLMUsers, level: str, where: str) -> None:
    """Protocol API: a flipped byte in the echo's first record is connection_lost(IntegrityError), no data_received."""

    async def main() -> None:
        server = await start_echo_server(ntlm_users, level)
        proxy = TamperingProxy(port_of(server), "server_to_client", _tamper_offset(where))
        proxy_server = await proxy.start()
        async with server, proxy_server:
            app = Collector()
            await connect_app(port_of(proxy_server), ntlm_users, app, level)
            transport = await app.made
            transport.write(b"secret payload " * 10)
            transport.write(b"second record")
            exc = await app.lost
            assert isinstance(exc, IntegrityError)
            assert app.data == b""  # nothing of the tampered record, nor of any later one
            assert app.chunks == 0
        assert proxy.flipped

    run(main())


def test_untampered_proxy_passes_data(ntlm_users: NTLMUsers) -> None:
    """Control for the tampering tests: the same proxy with an offset beyond the data changes nothing."""

    async def main() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(65536):
                writer.write(chunk)
            writer.close()

        server = await nsa.start_server(echo, "127.0.0.1", 0, **server_options(ntlm_users))
        proxy = TamperingProxy(port_of(server), "client_to_server", offset=10**9)
        proxy_server = await proxy.start()
        async with server, proxy_server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(proxy_server), **client_options(ntlm_users))
            writer.write(b"intact")
            writer.write_eof()
            assert await reader.read() == b"intact"
            writer.close()
        assert not proxy.flipped

    run(main())
