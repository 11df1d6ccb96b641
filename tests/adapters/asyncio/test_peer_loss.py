"""asyncio: a peer that vanishes is typed, on the streams and the Protocol API.

A reset or EOF during the handshake or inside a record is TruncatedStreamError; a reset at a record boundary, or
met by a write, is ConnectionLostError; the OS error is the ``__cause__``. The fake peers are blocking sockets in a
thread (the cuts the blocking adapter's suite uses too, one copy in tests/support/streams.py), so each side's timing
is the real kernel's.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from negotiate_stream import BrokenStreamError, Connection, ConnectionLostError, SecurityContext, TruncatedStreamError
from negotiate_stream import asyncio_ as nsa
from negotiate_stream.sync import NegotiateSocket
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import Collector, client_options, run, server_options
from tests.support.streams import (
    GUARD_TIMEOUT,
    RESET_ERRORS,
    SERVER_CUTS,
    assert_truncated_by_reset,
    authenticated_server,
    cut_record_then_reset,
    reset,
    scripted_peer,
)

APIS = ["streams", "protocol"]


End = Collector | asyncio.StreamReader


@dataclass
class Client:
    """An authenticated client: the app protocol (Protocol API) or the reader (streams), and how it writes."""

    end: End
    transport: asyncio.WriteTransport
    #: The streams API's writer: kept alive, since a StreamWriter closes its transport when garbage-collected.
    writer: asyncio.StreamWriter | None = None


async def handshake(api: str, port: int, users: NTLMUsers) -> Client:
    """Authenticate to ``port`` through ``api`` (``"streams"``: open_connection, ``"protocol"``: NegotiateProtocol)."""
    options = client_options(users)
    if api == "streams":
        reader, writer = await nsa.open_connection("127.0.0.1", port, **options)
        return Client(reader, writer.transport, writer)
    loop = asyncio.get_running_loop()
    app = Collector()
    waiter: asyncio.Future[nsa.NegotiateTransport] = loop.create_future()
    connection = Connection(SecurityContext.create(False, **options))
    # Connected first: a reset racing the connect itself would fail loop.create_connection, before our protocol.
    sock = socket.create_connection(("127.0.0.1", port))
    await loop.create_connection(lambda: nsa.NegotiateProtocol(connection, app, waiter=waiter), sock=sock)
    return Client(app, await waiter)


async def next_failure(end: End) -> BaseException | None:
    """Read until the stream fails: the reader's exception, or the argument of the app's connection_lost."""
    if isinstance(end, asyncio.StreamReader):
        try:
            while await end.read(65536):
                pass
        except Exception as exc:
            return exc
        return None
    return await end.lost


async def handshake_failure(fake_server: Callable[[socket.socket], None], api: str, users: NTLMUsers) -> BaseException:
    """The TruncatedStreamError our client's handshake (``api``) gets from ``fake_server``; the peer must finish."""
    with scripted_peer(fake_server) as (port, peer):
        with pytest.raises(TruncatedStreamError) as excinfo:
            await handshake(api, port, users)
        peer.result()
    return excinfo.value


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("cut", SERVER_CUTS)
def test_server_reset_at_each_handshake_step(api: str, cut: str, ntlm_users: NTLMUsers) -> None:
    """A server resetting at any point of the handshake: TruncatedStreamError caused by the OS error, both APIs."""

    def fake_server(sock: socket.socket) -> None:
        server = Connection(SecurityContext.create(True, **server_options(ntlm_users)))
        SERVER_CUTS[cut](sock, server)
        reset(sock)

    error = run(handshake_failure(fake_server, api, ntlm_users))
    assert type(error) is TruncatedStreamError
    # An RST that overtakes our last write is a reset; one that arrives after the kernel saw a FIN is an EOF.
    assert error.__cause__ is None or isinstance(error.__cause__, RESET_ERRORS), repr(error.__cause__)


@pytest.mark.parametrize("api", APIS)
def test_reset_before_reading_the_first_message_is_caused_by_the_os_error(api: str, ntlm_users: NTLMUsers) -> None:
    """A server that reads our first message and resets: TruncatedStreamError whose __cause__ is ECONNRESET."""

    def fake_server(sock: socket.socket) -> None:
        SERVER_CUTS["after-negotiate"](sock, Connection(SecurityContext.create(True, **server_options(ntlm_users))))
        reset(sock)

    assert_truncated_by_reset(run(handshake_failure(fake_server, api, ntlm_users)))


def test_server_closing_right_after_accept_is_always_truncation(ntlm_users: NTLMUsers) -> None:
    """100 servers that accept and close at once (FIN or RST, racing our first write): always TruncatedStreamError."""
    seen: set[type[BaseException]] = set()

    async def main() -> None:
        for attempt in range(100):
            api = APIS[attempt % 2]
            with scripted_peer(lambda sock: sock.close()) as (port, peer):
                try:
                    await handshake(api, port, ntlm_users)
                except Exception as exc:
                    seen.add(type(exc))
                    assert exc.__cause__ is None or isinstance(exc.__cause__, RESET_ERRORS), repr(exc.__cause__)
                peer.result()

    run(main())
    assert seen == {TruncatedStreamError}


async def holding_part_of_a_record(transport: asyncio.WriteTransport) -> None:
    """Wait until the client's Connection (under its NegotiateTransport) holds part of a record."""
    assert isinstance(transport, nsa.NegotiateTransport)
    deadline = time.monotonic() + GUARD_TIMEOUT
    while transport._neg.connection.buffered == 0:
        assert time.monotonic() < deadline, "the partial record never arrived"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("api", APIS)
def test_reset_inside_a_record_is_truncation(api: str, ntlm_users: NTLMUsers) -> None:
    """Part of a record, then a reset: TruncatedStreamError caused by ECONNRESET; writes then raise Broken."""

    async def main() -> None:
        with scripted_peer(authenticated_server(ntlm_users, cut_record_then_reset)) as (port, peer):
            client = await handshake(api, port, ntlm_users)
            end, transport = client.end, client.transport
            if isinstance(end, asyncio.StreamReader):
                assert await end.readexactly(5) == b"whole"
            await holding_part_of_a_record(transport)
            transport.write(b"go")
            error = await next_failure(end)
            peer.result()
            assert error is not None
            assert_truncated_by_reset(error)
            assert "middle of a record" in str(error)
            with pytest.raises(BrokenStreamError) as broken:
                transport.write(b"after the reset")
            assert broken.value.__cause__ is error
            if isinstance(end, Collector):
                assert bytes(end.data) == b"whole" and not end.eof.done()

    run(main())


@pytest.mark.parametrize("api", APIS)
def test_reset_at_a_record_boundary_is_connection_lost(api: str, ntlm_users: NTLMUsers) -> None:
    """A whole record, then a reset: the record arrives, then ConnectionLostError (not truncation), cause ECONNRESET."""

    def cut(server: NegotiateSocket, sock: socket.socket) -> None:
        server.sendall(b"a whole record")
        assert server.recv(2) == b"go"
        reset(sock)

    async def main() -> None:
        with scripted_peer(authenticated_server(ntlm_users, cut)) as (port, peer):
            client = await handshake(api, port, ntlm_users)
            end = client.end
            if isinstance(end, asyncio.StreamReader):
                assert await end.readexactly(14) == b"a whole record"
            client.transport.write(b"go")
            error = await next_failure(end)
            peer.result()
            assert type(error) is ConnectionLostError, repr(error)
            assert isinstance(error.__cause__, ConnectionResetError), repr(error.__cause__)
            if isinstance(end, Collector):
                assert bytes(end.data) == b"a whole record" and end.lost_calls == [error]

    run(main())


def test_writing_to_a_reset_peer_is_connection_lost(ntlm_users: NTLMUsers) -> None:
    """Streams API: writes to a peer that reset end with drain() raising ConnectionLostError, then Broken writes."""

    def cut(server: NegotiateSocket, sock: socket.socket) -> None:
        reset(sock)

    async def main() -> None:
        with scripted_peer(authenticated_server(ntlm_users, cut)) as (port, peer):
            _, writer = await nsa.open_connection("127.0.0.1", port, **client_options(ntlm_users))
            peer.result()
            with pytest.raises(ConnectionLostError) as excinfo:
                for _ in range(1000):  # the first writes may still fit the socket buffer before the RST is seen
                    writer.write(b"into the void" * 1000)
                    await writer.drain()
                    await asyncio.sleep(0.001)
            assert type(excinfo.value) is ConnectionLostError
            assert isinstance(excinfo.value.__cause__, RESET_ERRORS), repr(excinfo.value.__cause__)
            with pytest.raises(BrokenStreamError) as broken:
                writer.write(b"more")
            assert broken.value.__cause__ is excinfo.value
            writer.close()

    run(main())
