"""NegotiateSocket (blocking) over real loopback TCP sockets with real NTLM, including threads."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from negotiate_stream import ProtectionLevel
from negotiate_stream.errors import (
    SEC_E_LOGON_DENIED,
    AuthenticationError,
    BrokenStreamError,
    FramingError,
    HandshakeError,
    HandshakeTimeoutError,
    IntegrityError,
    StreamClosedError,
    TruncatedStreamError,
)
from negotiate_stream.sync import NegotiateSocket, create_connection
from negotiate_stream.testing import NTLMUsers

LEVELS = ["encrypt_and_sign", "sign", "none"]
TIMEOUT = 30.0  # a safety net so a bug hangs a test for at most this long


class Tap:
    """A socket-like wrapper that records writes and can flip a byte of, or hold back, the next write."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent: list[bytes] = []
        self.flip_next = False
        self.hold_next = False
        self.held = b""

    def recv(self, bufsize: int) -> bytes:
        return self.sock.recv(bufsize)

    def sendall(self, data: Any) -> None:
        data = bytes(data)
        self.sent.append(data)
        if self.hold_next:
            self.hold_next, self.held = False, data
            return
        if self.flip_next:
            self.flip_next = False
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:  # settimeout, gettimeout, shutdown, close
        return getattr(self.sock, name)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    server.settimeout(TIMEOUT)
    return client, server


def in_thread(target: Callable[[], Any]) -> Callable[[], Any]:
    """Start ``target`` in a thread; the returned function joins it and returns its result (or raises)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = target()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "thread did not finish"
        if "error" in result:
            raise result["error"]
        return result["value"]

    return join


def handshake_both(
    client_sock: Any,
    server_sock: Any,
    users: NTLMUsers,
    client_options: dict[str, Any] | None = None,
    **common: Any,
) -> tuple[Any, Any]:
    """Both handshakes at once; each result is a NegotiateSocket or the exception that side raised."""
    options = {"protocol": "ntlm", **common}

    def server() -> Any:
        try:
            return NegotiateSocket.server(server_sock, credentials=users.server_credentials(), **options)
        except Exception as exc:
            return exc

    join = in_thread(server)
    try:
        client: Any = NegotiateSocket.client(
            client_sock,
            **{
                "credentials": users.client_credentials(),
                "target": "host/localhost",
                **options,
                **(client_options or {}),
            },
        )
    except Exception as exc:
        client = exc
    return client, join()


@contextmanager
def negotiate_pair(users: NTLMUsers, **options: Any) -> Iterator[tuple[NegotiateSocket, NegotiateSocket]]:
    client_sock, server_sock = tcp_pair()
    client, server = handshake_both(client_sock, server_sock, users, **options)
    assert isinstance(client, NegotiateSocket), client
    assert isinstance(server, NegotiateSocket), server
    with client, server:
        yield client, server


def recv_exactly(sock: NegotiateSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "unexpected EOF"
        data += chunk
    return bytes(data)


def recv_all(sock: NegotiateSocket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(1 << 20):
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("level", LEVELS)
def test_both_directions_at_each_level(level: str, ntlm_users: NTLMUsers) -> None:
    with negotiate_pair(ntlm_users, protection_level=level) as (client, server):
        assert client.session_info.protection_level is ProtectionLevel(level)
        assert server.session_info.peer_identity is not None
        assert server.session_info.peer_identity.lower().endswith("alice")
        client.sendall(b"ping")
        assert recv_exactly(server, 4) == b"ping"
        assert server.send(b"pong!") == 5
        assert recv_exactly(client, 5) == b"pong!"
        client.shutdown(socket.SHUT_WR)
        assert server.recv() == b""
        assert server.recv() == b""  # EOF stays EOF
        server.sendall(b"half-closed")
        assert recv_exactly(client, 11) == b"half-closed"


def test_one_mebibyte_each_way_with_checksums(ntlm_users: NTLMUsers) -> None:
    up, down = os.urandom(1 << 20), os.urandom(1 << 20)
    with negotiate_pair(ntlm_users) as (client, server):

        def send(sock: NegotiateSocket, data: bytes) -> None:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

        joins = [in_thread(lambda: send(client, up)), in_thread(lambda: send(server, down))]
        got_up_join = in_thread(lambda: recv_all(server))
        got_down = recv_all(client)
        got_up = got_up_join()
        for join in joins:
            join()
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()


def test_wrong_password_fails_on_both_ends_with_an_error_frame(ntlm_users: NTLMUsers) -> None:
    client_sock, server_sock = tcp_pair()
    tap = Tap(server_sock)
    client, server = handshake_both(
        client_sock, tap, ntlm_users, client_options={"credentials": ntlm_users.client_credentials(password="bad")}
    )
    assert isinstance(client, HandshakeError), client
    assert client.status == SEC_E_LOGON_DENIED
    assert isinstance(server, AuthenticationError), server
    assert not isinstance(server, HandshakeError)
    assert tap.sent[-1][:5] == b"\x15\x01\x00\x00\x08"  # MS-NNS HandshakeError, 8-byte payload
    assert client_sock.fileno() == -1  # both sockets were closed
    assert server_sock.fileno() == -1


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
def test_tampered_record_raises_integrity_error_then_broken(level: str, ntlm_users: NTLMUsers) -> None:
    client_sock, server_sock = tcp_pair()
    tap = Tap(client_sock)
    client, server = handshake_both(tap, server_sock, ntlm_users, protection_level=level)
    with client, server:
        client.sendall(b"fine")
        assert recv_exactly(server, 4) == b"fine"
        tap.flip_next = True
        client.sendall(b"one bit of this record is flipped")
        with pytest.raises(IntegrityError):
            server.recv()
        with pytest.raises(BrokenStreamError) as broken:
            server.recv()
        assert isinstance(broken.value.__cause__, IntegrityError)
        with pytest.raises(BrokenStreamError):
            server.sendall(b"no")


def test_eof_in_the_middle_of_a_record_is_truncation(ntlm_users: NTLMUsers) -> None:
    client_sock, server_sock = tcp_pair()
    tap = Tap(client_sock)
    client, server = handshake_both(tap, server_sock, ntlm_users)
    with client, server:
        tap.hold_next = True
        client.sendall(b"x" * 100)
        client_sock.sendall(tap.held[:30])
        client_sock.shutdown(socket.SHUT_WR)
        with pytest.raises(TruncatedStreamError):
            server.recv()
        with pytest.raises(BrokenStreamError):
            server.recv()


def framed(seq: int) -> bytes:
    body = hashlib.sha256(str(seq).encode()).digest() * (1 + seq % 9)
    return struct.pack(">II", len(body), seq) + body


def test_reader_thread_and_writer_thread_10k_messages(ntlm_users: NTLMUsers) -> None:
    count = 10_000
    with negotiate_pair(ntlm_users) as (client, server):

        def echo() -> None:
            while data := server.recv(1 << 16):
                server.sendall(data)
            server.shutdown(socket.SHUT_WR)

        def writer() -> None:
            for seq in range(count):
                client.sendall(framed(seq))
            client.shutdown(socket.SHUT_WR)

        echo_join = in_thread(echo)
        writer_join = in_thread(writer)
        stream = client.makefile("rb")
        for seq in range(count):
            size, got_seq = struct.unpack(">II", stream.read(8))
            assert got_seq == seq
            assert struct.pack(">II", size, seq) + stream.read(size) == framed(seq)
        assert stream.read() == b""
        writer_join()
        echo_join()


def test_timeout_then_the_stream_continues(ntlm_users: NTLMUsers) -> None:
    client_sock, server_sock = tcp_pair()
    tap = Tap(client_sock)
    client, server = handshake_both(tap, server_sock, ntlm_users)
    with client, server:
        server.settimeout(0.2)
        assert server.gettimeout() == 0.2
        with pytest.raises(TimeoutError):
            server.recv()
        tap.hold_next = True
        client.sendall(b"arrives in two parts")
        client_sock.sendall(tap.held[:7])  # part of the record: the server buffers it, then times out
        with pytest.raises(TimeoutError):
            server.recv()
        client_sock.sendall(tap.held[7:])
        server.settimeout(TIMEOUT)
        assert recv_exactly(server, 20) == b"arrives in two parts"
        client.sendall(b"next")
        assert recv_exactly(server, 4) == b"next"


def test_makefile_readline_read_write(ntlm_users: NTLMUsers) -> None:
    with negotiate_pair(ntlm_users) as (client, server):
        client.sendall(b"first line\nsecond line\nrest of it")
        client.shutdown(socket.SHUT_WR)
        with server.makefile("rwb") as file:
            assert file.readline() == b"first line\n"
            assert file.readline() == b"second line\n"
            assert file.read(4) == b"rest"
            assert file.read() == b" of it"
            file.write(b"reply one\n")
            file.write(b"reply two\n")
            file.flush()
        assert client.makefile("rb").read(20) == b"reply one\nreply two\n"


def test_shared_crypto_state_with_reader_and_writer_threads(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without ESS one RC4 state and one counter serve both directions, so the peers must alternate
    # (request/response); each side still reads and writes from two threads at once.
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    count = 300
    with negotiate_pair(ntlm_users) as (client, server):
        assert client.session_info.shares_crypto_state
        assert server.session_info.shares_crypto_state
        requests = [os.urandom(1 + i * 53 % 4000) for i in range(count)]
        turn = threading.Semaphore(1)

        def echo() -> None:
            for request in requests:
                server.sendall(hashlib.sha256(recv_exactly(server, len(request))).digest())

        def writer() -> None:
            for request in requests:
                assert turn.acquire(timeout=TIMEOUT)
                client.sendall(request)

        echo_join = in_thread(echo)
        writer_join = in_thread(writer)
        replies = []
        for _ in requests:
            replies.append(recv_exactly(client, 32))
            turn.release()
        writer_join()
        echo_join()
    assert replies == [hashlib.sha256(r).digest() for r in requests]


def test_create_connection_and_use_after_close(ntlm_users: NTLMUsers) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> bytes:
            sock, _ = listener.accept()
            with NegotiateSocket.server(sock, credentials=ntlm_users.server_credentials(), protocol="ntlm") as server:
                data = recv_exactly(server, 5)
                server.sendall(data.upper())
                return data

        join = in_thread(serve)
        with create_connection(
            listener.getsockname(),
            timeout=TIMEOUT,
            protocol="ntlm",
            target="host/localhost",
            credentials=ntlm_users.client_credentials(),
        ) as client:
            client.sendall(b"hello")
            assert recv_exactly(client, 5) == b"HELLO"
        assert join() == b"hello"
    with pytest.raises(StreamClosedError):
        client.sendall(b"after close")
    with pytest.raises(StreamClosedError):
        client.recv()


def test_garbage_during_the_handshake_is_answered_with_an_error_frame(ntlm_users: NTLMUsers) -> None:
    client_sock, server_sock = tcp_pair()
    with client_sock:
        join = in_thread(lambda: NegotiateSocket.server(server_sock, credentials=ntlm_users.server_credentials()))
        client_sock.sendall(b"\x42\x01\x00\x00\x03abc")  # unknown MS-NNS message id
        with pytest.raises(FramingError):
            join()
        reply = client_sock.makefile("rb").read()
    assert reply[:5] == b"\x15\x01\x00\x00\x08"


def test_silent_peer_during_the_handshake_is_a_handshake_timeout(ntlm_users: NTLMUsers) -> None:
    client_sock, server_sock = tcp_pair()
    server_sock.settimeout(0.2)
    with client_sock, pytest.raises(HandshakeTimeoutError):
        NegotiateSocket.server(server_sock, credentials=ntlm_users.server_credentials())
    assert server_sock.fileno() == -1


def test_connection_reset_is_sticky(ntlm_users: NTLMUsers) -> None:
    client_sock, server_sock = tcp_pair()
    client, server = handshake_both(client_sock, server_sock, ntlm_users)
    with client, server:
        client.sendall(b"before the reset")
        assert recv_exactly(server, 16) == b"before the reset"
        # An abortive close: the server's next read fails with ECONNRESET instead of a clean EOF.
        client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client_sock.close()
        with pytest.raises(ConnectionResetError):
            server.recv()
        with pytest.raises(BrokenStreamError) as broken:  # never a silent b"" (clean EOF) afterwards
            server.recv()
        assert isinstance(broken.value.__cause__, ConnectionResetError)


def test_recv_zero_bytes_returns_at_once(ntlm_users: NTLMUsers) -> None:
    with negotiate_pair(ntlm_users) as (client, server):
        assert server.recv(0) == b""  # like socket.recv(0): no wait, no EOF implied
        client.sendall(b"data")
        assert recv_exactly(server, 4) == b"data"
