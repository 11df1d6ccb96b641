"""NegotiateSocket (blocking): real NTLM over loopback TCP, threads, timeouts, makefile, damaged records."""

from __future__ import annotations

import hashlib
import os
import queue
import random
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
    HandshakeError,
    HandshakeTimeoutError,
    IntegrityError,
    StreamClosedError,
    TruncatedStreamError,
)
from negotiate_stream.sync import NegotiateSocket, create_connection
from negotiate_stream.testing import NTLMUsers

LEVELS = ["encrypt_and_sign", "sign", "none"]
MIB = 1 << 20
SAFETY_TIMEOUT = 60.0  # only so that a bug fails a test instead of hanging the suite


class Wire:
    """A socket-like object with only recv/sendall/close: records what is sent, can flip the next record."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = bytearray()
        self.flip_next = False

    def recv(self, bufsize: int) -> bytes:
        return self.sock.recv(bufsize)

    def sendall(self, data: Any) -> None:
        data = bytes(data)
        if self.flip_next:
            self.flip_next = False
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        self.sent += data
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


class Worker(threading.Thread):
    """Run ``target`` in a thread; :meth:`result` joins and returns its value or raises its exception."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self._value: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._target_fn()
        except BaseException as exc:
            self._error = exc

    def result(self) -> Any:
        self.join(SAFETY_TIMEOUT)
        assert not self.is_alive(), "worker thread hung"
        if self._error is not None:
            raise self._error
        return self._value

    def outcome(self) -> Any:
        try:
            return self.result()
        except Exception as exc:
            return exc


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=SAFETY_TIMEOUT)
        server, _ = listener.accept()
    server.settimeout(SAFETY_TIMEOUT)
    return client, server


def handshake_outcomes(
    users: NTLMUsers, client_sock: Any, server_sock: Any, *, client_password: str | None = None, **options: Any
) -> tuple[Any, Any]:
    options.setdefault("protocol", "ntlm")
    server = Worker(lambda: NegotiateSocket.server(server_sock, credentials=users.server_credentials(), **options))
    client = Worker(
        lambda: NegotiateSocket.client(
            client_sock, credentials=users.client_credentials(password=client_password), target="host/x", **options
        )
    )
    return client.outcome(), server.outcome()


@contextmanager
def negotiated(users: NTLMUsers, wrap_client: bool = False, **options: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(client, server, client's raw socket or Wire)."""
    raw_client, raw_server = tcp_pair()
    client_end: Any = Wire(raw_client) if wrap_client else raw_client
    client, server = handshake_outcomes(users, client_end, raw_server, **options)
    assert isinstance(client, NegotiateSocket), client
    assert isinstance(server, NegotiateSocket), server
    with client, server:
        yield client, server, client_end


def recv_exactly(sock: NegotiateSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "unexpected EOF"
        data += chunk
    return bytes(data)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("level", LEVELS)
def test_one_mebibyte_each_way_at_once(level: str, ntlm_users: NTLMUsers) -> None:
    upload, download = os.urandom(MIB), os.urandom(MIB)
    with negotiated(ntlm_users, wrap_client=True, protection_level=level) as (client, server, wire):
        assert client.protection_level is server.protection_level is ProtectionLevel(level)
        assert server.session_info.is_encrypted is (level == "encrypt_and_sign")
        workers = [
            Worker(lambda: client.sendall(upload)),
            Worker(lambda: server.sendall(download)),
            Worker(lambda: recv_exactly(server, MIB)),
            Worker(lambda: recv_exactly(client, MIB)),
        ]
        results = [worker.result() for worker in workers]
    assert digest(results[2]) == digest(upload)
    assert digest(results[3]) == digest(download)
    assert (upload[MIB // 2 : MIB // 2 + 64] in wire.sent) is (level != "encrypt_and_sign")


def test_reader_and_writer_threads_on_one_socket_10k_messages(ntlm_users: NTLMUsers) -> None:
    rng = random.Random(5)
    messages = [os.urandom(rng.randrange(1, 700)) for _ in range(10_000)]
    with negotiated(ntlm_users) as (client, server, _):

        def echo() -> None:
            while data := server.recv(65536):
                server.sendall(data)
            server.shutdown()

        def write() -> None:
            for message in messages:
                client.sendall(struct.pack(">I", len(message)) + message)
            client.shutdown()

        def read() -> list[bytes]:
            received, file = [], client.makefile("rb")
            while header := file.read(4):
                received.append(file.read(struct.unpack(">I", header)[0]))
            return received

        echoer, writer, reader = Worker(echo), Worker(write), Worker(read)
        writer.result()
        received = reader.result()
        echoer.result()
    assert len(received) == len(messages)
    assert digest(b"".join(received)) == digest(b"".join(messages))
    assert received == messages


def test_concurrent_writer_threads_never_interleave(ntlm_users: NTLMUsers) -> None:
    # Each message spans more records than one socket write carries, so a sendall is several writes.
    writers, size = 3, 20 * 0xFC00 + 99
    with negotiated(ntlm_users) as (client, server, _):
        workers = [Worker(lambda marker=marker: client.sendall(bytes([marker]) * size)) for marker in range(writers)]
        data = recv_exactly(server, writers * size)
        for worker in workers:
            worker.result()
    messages = [data[i : i + size] for i in range(0, len(data), size)]
    assert all(message == message[:1] * size for message in messages)
    assert sorted(message[0] for message in messages) == list(range(writers))


def test_wrong_password_fails_both_ends_with_an_error_frame(ntlm_users: NTLMUsers) -> None:
    raw_client, raw_server = tcp_pair()
    server_wire = Wire(raw_server)
    client, server = handshake_outcomes(ntlm_users, raw_client, server_wire, client_password="wrong")
    assert isinstance(client, HandshakeError) and client.status == SEC_E_LOGON_DENIED, client
    assert isinstance(server, AuthenticationError) and not isinstance(server, HandshakeError), server
    error_frame = bytes(server_wire.sent[-13:])
    assert error_frame[:5] == b"\x15\x01\x00\x00\x08"
    assert SEC_E_LOGON_DENIED in {int.from_bytes(error_frame[9:], "big"), int.from_bytes(error_frame[9:], "little")}
    assert raw_client.fileno() == -1 and raw_server.fileno() == -1  # both sides closed their socket


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
def test_tampered_record_delivers_nothing_and_breaks_the_stream(level: str, ntlm_users: NTLMUsers) -> None:
    with negotiated(ntlm_users, wrap_client=True, protection_level=level) as (client, server, wire):
        client.sendall(b"intact")
        assert server.recv(100) == b"intact"
        wire.flip_next = True
        client.sendall(b"tampered" * 100)
        with pytest.raises(IntegrityError):
            server.recv(65536)
        with pytest.raises(BrokenStreamError) as excinfo:
            server.recv(65536)
        assert isinstance(excinfo.value.__cause__, IntegrityError)
        with pytest.raises(BrokenStreamError):
            server.sendall(b"reply")


def test_eof_inside_a_record_is_truncation(ntlm_users: NTLMUsers) -> None:
    with negotiated(ntlm_users) as (client, server, raw):
        wire = client.connection.send(b"cut short" * 50)  # driven by hand to send a partial record
        raw.sendall(wire[:-5])
        raw.shutdown(socket.SHUT_WR)
        with pytest.raises(TruncatedStreamError):
            server.recv(65536)
        with pytest.raises(BrokenStreamError):
            server.recv(65536)


def test_recv_timeout_mid_record_keeps_the_stream_consistent(ntlm_users: NTLMUsers) -> None:
    payload = os.urandom(5000)
    with negotiated(ntlm_users) as (client, server, raw):
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
        assert recv_exactly(server, len(payload)) == payload
        client.sendall(b"next record")  # sequence numbers still in step
        assert recv_exactly(server, 11) == b"next record"


def test_sendall_timeout_breaks_the_stream(ntlm_users: NTLMUsers) -> None:
    with negotiated(ntlm_users) as (client, server, _):
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.sendall(b"x" * (64 * MIB))  # nobody reads: the socket buffer fills mid-record
        with pytest.raises(BrokenStreamError):
            client.sendall(b"more")
        with pytest.raises(BrokenStreamError):
            client.recv(10)
        assert server.recv(10)  # the server got a clean prefix of the stream


def test_handshake_timeout_closes_the_socket(ntlm_users: NTLMUsers) -> None:
    raw_client, raw_server = tcp_pair()
    with raw_client:
        raw_server.settimeout(0.2)
        with pytest.raises(HandshakeTimeoutError) as excinfo:
            NegotiateSocket.server(raw_server, protocol="ntlm", credentials=ntlm_users.server_credentials())
        assert isinstance(excinfo.value, TimeoutError)
        assert raw_server.fileno() == -1
        assert raw_client.recv(10) == b""


def test_makefile_readline_and_read(ntlm_users: NTLMUsers) -> None:
    with negotiated(ntlm_users) as (client, server, _):
        with server.makefile("wb") as out:
            out.write(b"first line\nsecond line\n")
            out.write(b"tail" * 10_000)
        server.shutdown()
        with client.makefile("rb") as reader:
            assert reader.readline() == b"first line\n"
            assert reader.readline() == b"second line\n"
            assert reader.read(8) == b"tailtail"
            assert reader.read() == b"tail" * 9_998
            assert reader.read() == b""
        both = client.makefile("rwb")
        both.write(b"still open after closing the file\n")
        both.flush()
        assert server.makefile("rb").readline() == b"still open after closing the file\n"
        with pytest.raises(ValueError):
            client.makefile("r")


def test_recv_into_shutdown_and_eof(ntlm_users: NTLMUsers) -> None:
    with negotiated(ntlm_users) as (client, server, _):
        client.sendall(b"hello")
        client.shutdown()
        with pytest.raises(StreamClosedError):
            client.sendall(b"after shutdown")
        buffer = bytearray(3)
        assert server.recv_into(buffer) == 3 and buffer == b"hel"
        assert server.recv_into(memoryview(buffer), 2) == 2 and buffer[:2] == b"lo"
        assert server.recv(10) == b""
        assert server.recv(10) == b""  # EOF stays EOF
        assert server.recv_into(buffer) == 0
        server.sendall(b"the other direction still works")
        assert recv_exactly(client, 31) == b"the other direction still works"


def test_close_and_context_manager(ntlm_users: NTLMUsers) -> None:
    with negotiated(ntlm_users) as (client, server, raw):
        with client:
            client.sendall(b"bye")
        assert raw.fileno() == -1
        with pytest.raises(StreamClosedError):
            client.recv(1)
        with pytest.raises(StreamClosedError):
            client.sendall(b"x")
        client.close()  # idempotent
        assert server.recv(10) == b"bye"
        assert server.recv(10) == b""


def test_object_without_shutdown(ntlm_users: NTLMUsers) -> None:
    with negotiated(ntlm_users, wrap_client=True) as (client, server, _):
        with pytest.raises(NotImplementedError):
            client.shutdown()
        client.sendall(b"works without shutdown")
        assert recv_exactly(server, 22) == b"works without shutdown"


def test_create_connection(ntlm_users: NTLMUsers) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> str | None:
            conn, _ = listener.accept()
            with NegotiateSocket.server(conn, protocol="ntlm", credentials=ntlm_users.server_credentials()) as sock:
                sock.sendall(sock.recv(100).upper())
                return sock.peer_identity

        server = Worker(serve)
        with create_connection(
            listener.getsockname(), timeout=SAFETY_TIMEOUT, protocol="ntlm", credentials=ntlm_users.client_credentials()
        ) as client:
            assert client.peer_identity == "host/127.0.0.1"
            assert client.gettimeout() == SAFETY_TIMEOUT
            assert client.protocol == "ntlm" and client.mutually_authenticated is False
            client.sendall(b"shout")
            assert recv_exactly(client, 5) == b"SHOUT"
        assert server.result() == ntlm_users.usernames[0]


def test_shared_crypto_state_request_response(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")  # pyspnego then negotiates NTLM without ESS
    sizes = [1, 100, 0xFC00, 0xFC00 + 1, 200_000]
    with negotiated(ntlm_users) as (client, server, _):
        assert client.session_info.shares_crypto_state and server.session_info.shares_crypto_state

        def echo() -> None:
            # Half-duplex, as such a session must be: read a whole request, then reply.
            reader = server.makefile("rb")
            while header := reader.read(4):
                server.sendall(reader.read(int.from_bytes(header, "big"))[::-1])

        replies: queue.Queue[bytes] = queue.Queue()

        def read_replies() -> None:
            # A reader thread blocked on the socket while the main thread sends: the shared lock must not be
            # held across that wait, or this deadlocks.
            for size in sizes:
                replies.put(recv_exactly(client, size))

        echoer, reader = Worker(echo), Worker(read_replies)
        for size in sizes:
            request = os.urandom(size)
            client.sendall(size.to_bytes(4, "big") + request)
            assert replies.get(timeout=SAFETY_TIMEOUT) == request[::-1]  # reply before the next request
        reader.result()
        client.shutdown()
        echoer.result()
