"""anyio (asyncio and trio): a peer that vanishes is typed.

A reset or EOF during the handshake or inside a record is TruncatedStreamError; a reset at a record boundary, or
met by a send, is ConnectionLostError; the transport's error (anyio's ``BrokenResourceError``, itself caused by
the OS error) is the ``__cause__``. The fake peers are the blocking sockets of :func:`scripted_peer`, with the
server-side cuts the asyncio and blocking suites use too (both in tests/support/streams.py).
"""

from __future__ import annotations

import socket

import anyio
import pytest

from negotiate_stream import BrokenStreamError, Connection, ConnectionLostError, SecurityContext, TruncatedStreamError
from negotiate_stream.anyio_ import NegotiateStream, connect, memory_stream_pair
from negotiate_stream.sync import NegotiateSocket
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import client_options, server_options
from tests.support.streams import (
    GUARD_TIMEOUT,
    RESET_ERRORS,
    SERVER_CUTS,
    authenticated_server,
    cut_record_then_reset,
    reset,
    scripted_peer,
)

pytestmark = pytest.mark.anyio


def caused_by_a_reset(error: BaseException) -> bool:
    """Whether ``error``'s cause is a reset: the OS error, or anyio's BrokenResourceError raised from one."""
    cause = error.__cause__
    if isinstance(cause, anyio.BrokenResourceError):
        cause = cause.__cause__ or cause  # a memory stream's BrokenResourceError has no OS error under it
    return isinstance(cause, (*RESET_ERRORS, anyio.BrokenResourceError))


async def authenticate(port: int, users: NTLMUsers) -> NegotiateStream:
    """connect() to ``port`` as the test account's client."""
    return await connect("127.0.0.1", port, **client_options(users))


@pytest.mark.parametrize("cut", SERVER_CUTS)
async def test_server_reset_at_each_handshake_step(cut: str, ntlm_users: NTLMUsers) -> None:
    """A server resetting at any point of the handshake: TruncatedStreamError, caused by the reset if one was seen."""

    def fake_server(sock: socket.socket) -> None:
        server = Connection(SecurityContext.create(True, **server_options(ntlm_users)))
        SERVER_CUTS[cut](sock, server)
        reset(sock)

    with scripted_peer(fake_server) as (port, peer):
        with pytest.raises(TruncatedStreamError) as excinfo:
            await authenticate(port, ntlm_users)
        peer.result()
    error = excinfo.value
    assert type(error) is TruncatedStreamError
    # An RST that overtakes our last write is a reset; one that arrives after the kernel saw a FIN is an EOF.
    assert error.__cause__ is None or caused_by_a_reset(error), repr(error.__cause__)


async def test_reset_after_our_first_message_is_caused_by_the_reset(ntlm_users: NTLMUsers) -> None:
    """A server that reads our first message and resets: TruncatedStreamError caused by the reset."""

    def fake_server(sock: socket.socket) -> None:
        SERVER_CUTS["after-negotiate"](sock, Connection(SecurityContext.create(True, **server_options(ntlm_users))))
        reset(sock)

    with scripted_peer(fake_server) as (port, peer):
        with pytest.raises(TruncatedStreamError) as excinfo:
            await authenticate(port, ntlm_users)
        peer.result()
    assert caused_by_a_reset(excinfo.value), repr(excinfo.value.__cause__)


async def test_server_closing_right_after_accept_is_always_truncation(ntlm_users: NTLMUsers) -> None:
    """100 servers that accept and close at once (FIN or RST, racing our first write): always TruncatedStreamError."""
    seen: set[type[BaseException]] = set()
    for _ in range(100):
        with scripted_peer(lambda sock: sock.close()) as (port, peer):
            try:
                await authenticate(port, ntlm_users)
            except Exception as exc:
                seen.add(type(exc))
                assert exc.__cause__ is None or caused_by_a_reset(exc), repr(exc.__cause__)
            peer.result()
    assert seen == {TruncatedStreamError}


async def test_reset_inside_a_record_is_truncation(ntlm_users: NTLMUsers) -> None:
    """Part of a record, then a reset: TruncatedStreamError caused by the reset; every later call raises Broken."""

    async def receive_the_rest(stream: NegotiateStream) -> None:
        with pytest.raises(TruncatedStreamError, match="middle of a record") as excinfo:
            await stream.receive()
        errors.append(excinfo.value)

    errors: list[BaseException] = []
    with scripted_peer(authenticated_server(ntlm_users, cut_record_then_reset)) as (port, peer):
        async with await authenticate(port, ntlm_users) as stream:
            assert await stream.receive() == b"whole"
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive_the_rest, stream)  # it reads the partial record, then waits for the rest
                with anyio.fail_after(GUARD_TIMEOUT):
                    while stream.connection.buffered == 0:
                        await anyio.sleep(0.005)
                await stream.send(b"go")
            peer.result()
            [error] = errors
            assert caused_by_a_reset(error), repr(error.__cause__)
            for call in (stream.receive, lambda: stream.send(b"after the reset")):
                with pytest.raises(BrokenStreamError) as broken:
                    await call()
                assert broken.value.__cause__ is error


async def test_reset_at_a_record_boundary_is_connection_lost(ntlm_users: NTLMUsers) -> None:
    """A whole record, then a reset: the record arrives, then ConnectionLostError (not truncation)."""

    def cut(server: NegotiateSocket, sock: socket.socket) -> None:
        server.sendall(b"a whole record")
        assert server.recv(2) == b"go"
        reset(sock)

    with scripted_peer(authenticated_server(ntlm_users, cut)) as (port, peer):
        async with await authenticate(port, ntlm_users) as stream:
            assert await stream.receive() == b"a whole record"
            await stream.send(b"go")
            with pytest.raises(ConnectionLostError) as excinfo:
                await stream.receive()
            peer.result()
            assert type(excinfo.value) is ConnectionLostError
            assert caused_by_a_reset(excinfo.value), repr(excinfo.value.__cause__)
            with pytest.raises(BrokenStreamError) as broken:
                await stream.receive()
            assert broken.value.__cause__ is excinfo.value


async def test_sending_to_a_reset_peer_is_connection_lost(ntlm_users: NTLMUsers) -> None:
    """Sends to a peer that reset: ConnectionLostError caused by the reset, then BrokenStreamError."""
    with scripted_peer(authenticated_server(ntlm_users, lambda server, sock: reset(sock))) as (port, peer):
        async with await authenticate(port, ntlm_users) as stream:
            peer.result()
            with pytest.raises(ConnectionLostError) as excinfo:
                for _ in range(1000):  # the first sends may still fit the socket buffer before the RST is seen
                    await stream.send(b"into the void" * 1000)
                    await anyio.sleep(0.001)
            assert type(excinfo.value) is ConnectionLostError
            assert caused_by_a_reset(excinfo.value), repr(excinfo.value.__cause__)
            with pytest.raises(BrokenStreamError) as broken:
                await stream.send(b"more")
            assert broken.value.__cause__ is excinfo.value


async def test_memory_peer_closing_mid_handshake_is_truncation(ntlm_users: NTLMUsers) -> None:
    """Over in-memory streams, a peer that closes while we send (BrokenResourceError) is TruncatedStreamError too."""
    client_end, server_end = memory_stream_pair(0)
    await server_end.aclose()
    with pytest.raises(TruncatedStreamError) as excinfo:
        await NegotiateStream.wrap(client_end, **client_options(ntlm_users))
    assert isinstance(excinfo.value.__cause__, anyio.BrokenResourceError)
