"""A peer that vanishes is typed: TruncatedStreamError in a handshake or a record, else ConnectionLostError.

The fake peers are real sockets driven by hand around a real sans-I/O Connection; a reset is an abortive close
(SO_LINGER 0, then close), so the other end sees an RST instead of a FIN. The server-side cuts and the reset are
shared with the asyncio and anyio suites (tests/support/streams.py).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from negotiate_stream import Connection, SecurityContext
from negotiate_stream.errors import BrokenStreamError, ConnectionLostError, TruncatedStreamError
from negotiate_stream.sync import NegotiateSocket
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import client_options, server_options
from tests.support.streams import (
    GUARD_TIMEOUT,
    RESET_ERRORS,
    SERVER_CUTS,
    Worker,
    assert_truncated_by_reset,
    negotiated_sockets,
    read_frame,
    recv_exactly,
    reset,
    tcp_pair,
)


@pytest.mark.parametrize("cut", SERVER_CUTS)
def test_server_reset_at_each_handshake_step(cut: str, ntlm_users: NTLMUsers) -> None:
    """A server resetting at any point of the handshake gives the client TruncatedStreamError (cause: the OS error)."""
    raw_client, raw_server = tcp_pair()

    def fake_server() -> None:
        server = Connection(SecurityContext.create(True, **server_options(ntlm_users)))
        SERVER_CUTS[cut](raw_server, server)
        time.sleep(0.05)  # let the client block in its next read before the RST arrives
        reset(raw_server)

    peer = Worker(fake_server)
    with pytest.raises(TruncatedStreamError) as excinfo:
        NegotiateSocket.client(raw_client, handshake_timeout=GUARD_TIMEOUT, **client_options(ntlm_users))
    peer.result()
    assert_truncated_by_reset(excinfo.value)
    assert raw_client.fileno() == -1


def after_challenge(sock: socket.socket, negotiate: bytes) -> None:
    """Send NEGOTIATE and read the server's CHALLENGE (and never send AUTHENTICATE)."""
    sock.sendall(negotiate)
    read_frame(sock)


# Where the fake client resets a server's handshake.
CLIENT_CUTS: dict[str, Callable[[socket.socket, bytes], object]] = {
    "on-connect": lambda sock, negotiate: None,
    "mid-negotiate": lambda sock, negotiate: sock.sendall(negotiate[:10]),
    "after-negotiate": lambda sock, negotiate: sock.sendall(negotiate),
    "after-challenge": after_challenge,
}


@pytest.mark.parametrize("cut", CLIENT_CUTS)
def test_client_reset_at_each_handshake_step(cut: str, ntlm_users: NTLMUsers) -> None:
    """A client resetting at any point of the handshake gives the server TruncatedStreamError, socket closed."""
    raw_client, raw_server = tcp_pair()
    negotiate = Connection(SecurityContext.create(False, **client_options(ntlm_users))).data_to_send()
    server = Worker(lambda: NegotiateSocket.server(raw_server, **server_options(ntlm_users)))
    CLIENT_CUTS[cut](raw_client, negotiate)
    time.sleep(0.05)  # let the server block in its next read before the RST arrives
    reset(raw_client)
    assert_truncated_by_reset(server.outcome())
    assert raw_server.fileno() == -1


def test_server_closing_right_after_accept_is_always_truncation(ntlm_users: NTLMUsers) -> None:
    """100 servers that accept and close at once (FIN or RST, racing our first write): always TruncatedStreamError."""
    seen: set[type[BaseException]] = set()
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept_and_close() -> None:
            listener.accept()[0].close()

        for _ in range(100):
            closer = Worker(accept_and_close)
            sock = socket.create_connection(listener.getsockname(), timeout=GUARD_TIMEOUT)
            try:
                NegotiateSocket.client(sock, **client_options(ntlm_users))
            except Exception as exc:
                seen.add(type(exc))
                assert exc.__cause__ is None or isinstance(exc.__cause__, RESET_ERRORS), repr(exc.__cause__)
            closer.result()
    assert seen == {TruncatedStreamError}


def test_client_closing_right_after_connect_is_always_truncation(ntlm_users: NTLMUsers) -> None:
    """100 clients that connect and close (or reset) at once: the server always raises TruncatedStreamError."""
    seen: set[type[BaseException]] = set()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for attempt in range(100):
            client = socket.create_connection(listener.getsockname(), timeout=GUARD_TIMEOUT)
            if attempt % 2:  # half of them with an RST, half with a FIN: the type must not depend on it
                reset(client)
            else:
                client.close()
            sock, _ = listener.accept()
            sock.settimeout(GUARD_TIMEOUT)
            try:
                NegotiateSocket.server(sock, **server_options(ntlm_users))
            except Exception as exc:
                seen.add(type(exc))
    assert seen == {TruncatedStreamError}


def test_reset_at_a_record_boundary_is_connection_lost(ntlm_users: NTLMUsers) -> None:
    """A reset between records: ConnectionLostError (not truncation), cause ECONNRESET; then BrokenStreamError."""
    with negotiated_sockets(ntlm_users) as (client, server, raw):
        client.sendall(b"a whole record")
        assert recv_exactly(server, 14) == b"a whole record"
        reset(raw)
        with pytest.raises(ConnectionLostError) as excinfo:
            server.recv()
        assert type(excinfo.value) is ConnectionLostError
        assert isinstance(excinfo.value.__cause__, ConnectionResetError)
        with pytest.raises(BrokenStreamError) as broken:
            server.recv()
        assert broken.value.__cause__ is excinfo.value


def test_reset_inside_a_record_is_truncation(ntlm_users: NTLMUsers) -> None:
    """A reset with part of a record received: TruncatedStreamError, cause ECONNRESET; then BrokenStreamError."""
    with negotiated_sockets(ntlm_users) as (client, server, raw):
        wire = client.connection.send(b"cut short" * 50)  # driven by hand to send a partial record
        reader = Worker(lambda: server.recv(65536))
        raw.sendall(wire[:-5])
        deadline = time.monotonic() + GUARD_TIMEOUT
        while server.connection.buffered < len(wire) - 5:  # the reader holds the partial record
            assert time.monotonic() < deadline, "the reader never received the partial record"
            time.sleep(0.01)
        reset(raw)
        error = reader.outcome()
        assert_truncated_by_reset(error)
        with pytest.raises(BrokenStreamError) as broken:
            server.recv()
        assert broken.value.__cause__ is error


def test_send_to_a_reset_peer_is_connection_lost(ntlm_users: NTLMUsers) -> None:
    """Sending after the peer reset: ConnectionLostError (cause EPIPE/ECONNRESET), then BrokenStreamError."""
    with negotiated_sockets(ntlm_users) as (_, server, raw):
        reset(raw)
        with pytest.raises(ConnectionLostError) as excinfo:
            for _ in range(1000):  # the first writes may still fit the socket buffer before the RST is seen
                server.sendall(b"into the void" * 1000)
                time.sleep(0.001)
        assert type(excinfo.value) is ConnectionLostError
        assert isinstance(excinfo.value.__cause__, RESET_ERRORS)
        with pytest.raises(BrokenStreamError) as broken:
            server.sendall(b"more")
        assert broken.value.__cause__ is excinfo.value
