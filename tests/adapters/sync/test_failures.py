"""NegotiateSocket when things go wrong: bad credentials, damaged records, resets, timeouts."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from negotiate_stream.errors import (
    SEC_E_LOGON_DENIED,
    AuthenticationError,
    BrokenStreamError,
    ConnectionLostError,
    FramingError,
    HandshakeError,
    HandshakeTimeoutError,
    IntegrityError,
    TruncatedStreamError,
)
from negotiate_stream.sync import NegotiateSocket
from negotiate_stream.testing import NTLMUsers
from tests.support.streams import (
    GUARD_TIMEOUT,
    MIB,
    BareTap,
    Tap,
    Worker,
    handshake_sockets,
    negotiated_sockets,
    recv_exactly,
    tcp_pair,
)


def test_wrong_password_fails_both_ends_with_an_error_frame(ntlm_users: NTLMUsers) -> None:
    """A wrong password: HandshakeError for the client, AuthenticationError and an error frame from the server."""
    raw_client, raw_server = tcp_pair()
    tap = Tap(raw_server)
    client, server = handshake_sockets(ntlm_users, raw_client, tap, client_password="wrong")
    assert isinstance(client, HandshakeError) and client.status == SEC_E_LOGON_DENIED, client
    assert isinstance(server, AuthenticationError) and not isinstance(server, HandshakeError), server
    assert tap.writes[-1][:5] == b"\x15\x01\x00\x00\x08"  # MS-NNS HandshakeError, 8-byte payload, in one write
    error_frame = tap.sent[-13:]
    assert error_frame[:5] == b"\x15\x01\x00\x00\x08"
    assert SEC_E_LOGON_DENIED in {int.from_bytes(error_frame[9:], "big"), int.from_bytes(error_frame[9:], "little")}
    assert raw_client.fileno() == -1 and raw_server.fileno() == -1  # both sides closed their socket


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
def test_tampered_record_delivers_nothing_and_breaks_the_stream(level: str, ntlm_users: NTLMUsers) -> None:
    """One flipped bit: IntegrityError, then BrokenStreamError (caused by it) for every later call."""
    with negotiated_sockets(ntlm_users, wrap=BareTap, level=level) as (client, server, tap):
        client.sendall(b"intact")
        assert server.recv(100) == b"intact"
        tap.flip_next = True
        client.sendall(b"tampered" * 100)
        with pytest.raises(IntegrityError):
            server.recv(65536)
        with pytest.raises(BrokenStreamError) as excinfo:
            server.recv(65536)
        assert isinstance(excinfo.value.__cause__, IntegrityError)
        with pytest.raises(BrokenStreamError):
            server.sendall(b"reply")


def test_eof_inside_a_record_is_truncation(ntlm_users: NTLMUsers) -> None:
    """EOF in the middle of a record is TruncatedStreamError, then BrokenStreamError."""
    with negotiated_sockets(ntlm_users) as (client, server, raw):
        wire = client.connection.send(b"cut short" * 50)  # driven by hand to send a partial record
        raw.sendall(wire[:-5])
        raw.shutdown(socket.SHUT_WR)
        with pytest.raises(TruncatedStreamError):
            server.recv(65536)
        with pytest.raises(BrokenStreamError):
            server.recv(65536)


def test_garbage_during_the_handshake_is_answered_with_an_error_frame(ntlm_users: NTLMUsers) -> None:
    """An unknown MS-NNS message id fails the server's handshake with FramingError and an error frame."""
    client_sock, server_sock = tcp_pair()
    with client_sock:
        server = Worker(lambda: NegotiateSocket.server(server_sock, credentials=ntlm_users.server_credentials()))
        client_sock.sendall(b"\x42\x01\x00\x00\x03abc")  # unknown MS-NNS message id
        with pytest.raises(FramingError):
            server.result()
        reply = client_sock.makefile("rb").read()
    assert reply[:5] == b"\x15\x01\x00\x00\x08"


def test_connection_reset_is_sticky(ntlm_users: NTLMUsers) -> None:
    """A reset surfaces as ConnectionLostError (cause: ConnectionResetError) once, then BrokenStreamError."""
    with negotiated_sockets(ntlm_users) as (client, server, raw):
        client.sendall(b"before the reset")
        assert recv_exactly(server, 16) == b"before the reset"
        # An abortive close: the server's next read fails with ECONNRESET instead of a clean EOF.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        with pytest.raises(ConnectionLostError) as lost:
            server.recv()
        assert isinstance(lost.value.__cause__, ConnectionResetError)
        with pytest.raises(BrokenStreamError) as broken:  # never a silent b"" (clean EOF) afterwards
            server.recv()
        assert broken.value.__cause__ is lost.value
        assert isinstance(broken.value.__cause__.__cause__, ConnectionResetError)


def test_handshake_timeout_closes_the_socket(ntlm_users: NTLMUsers) -> None:
    """A silent peer: HandshakeTimeoutError (a TimeoutError), and the socket is closed."""
    raw_client, raw_server = tcp_pair()
    with raw_client:
        raw_server.settimeout(0.2)
        with pytest.raises(HandshakeTimeoutError) as excinfo:
            NegotiateSocket.server(raw_server, protocol="ntlm", credentials=ntlm_users.server_credentials())
        assert isinstance(excinfo.value, TimeoutError)
        assert raw_server.fileno() == -1
        assert raw_client.recv(10) == b""


def test_recv_timeout_mid_record_keeps_the_stream_consistent(ntlm_users: NTLMUsers) -> None:
    """A recv timeout, even with half a record buffered, loses nothing: the record and later ones arrive."""
    payload = os.urandom(5000)
    with negotiated_sockets(ntlm_users) as (client, server, raw):
        server.settimeout(0.2)
        assert server.gettimeout() == 0.2
        with pytest.raises(TimeoutError):  # nothing arrived
            server.recv(65536)
        wire = client.connection.send(payload)
        raw.sendall(wire[:2000])  # part of the record: the server consumes it, then times out
        with pytest.raises(socket.timeout):
            server.recv(65536)
        assert server.connection.buffered > 0
        raw.sendall(wire[2000:])
        server.settimeout(GUARD_TIMEOUT)
        assert recv_exactly(server, len(payload)) == payload
        client.sendall(b"next record")  # sequence numbers still in step
        assert recv_exactly(server, 11) == b"next record"


def test_sendall_timeout_breaks_the_stream(ntlm_users: NTLMUsers) -> None:
    """A sendall timeout mid-record breaks the stream both ways; the peer got a clean prefix."""
    with negotiated_sockets(ntlm_users) as (client, server, _):
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.sendall(b"x" * (64 * MIB))  # nobody reads: the socket buffer fills mid-record
        with pytest.raises(BrokenStreamError):
            client.sendall(b"more")
        with pytest.raises(BrokenStreamError):
            client.recv(10)
        assert server.recv(10)  # the server got a clean prefix of the stream
