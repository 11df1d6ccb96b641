"""NegotiateSocket as a socket: makefile, recv_into, recv(0), close, create_connection, minimal socket objects."""

from __future__ import annotations

import socket

import pytest

from negotiate_stream.errors import StreamClosedError
from negotiate_stream.sync import NegotiateSocket, create_connection
from negotiate_stream.testing import NTLMUsers
from tests.support.streams import GUARD_TIMEOUT, BareTap, Worker, negotiated_sockets, recv_exactly


def test_makefile_readline_and_read(ntlm_users: NTLMUsers) -> None:
    """Buffered files read lines and sizes up to EOF; closing a file keeps the socket open; text mode is refused."""
    with negotiated_sockets(ntlm_users) as (client, server, _):
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


def test_makefile_rwb_reads_and_writes_one_file(ntlm_users: NTLMUsers) -> None:
    """One "rwb" file object reads the peer's lines and writes replies on the same socket."""
    with negotiated_sockets(ntlm_users) as (client, server, _):
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


def test_recv_into_shutdown_and_eof(ntlm_users: NTLMUsers) -> None:
    """recv_into fills buffers and views, EOF stays EOF, and sending after shutdown raises StreamClosedError."""
    with negotiated_sockets(ntlm_users) as (client, server, _):
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


def test_recv_zero_bytes_returns_at_once(ntlm_users: NTLMUsers) -> None:
    """recv(0) returns b"" at once, like socket.recv(0), without implying EOF."""
    with negotiated_sockets(ntlm_users) as (client, server, _):
        assert server.recv(0) == b""  # like socket.recv(0): no wait, no EOF implied
        client.sendall(b"data")
        assert recv_exactly(server, 4) == b"data"


def test_close_and_context_manager(ntlm_users: NTLMUsers) -> None:
    """Leaving the with-block closes the wrapped socket; later calls raise StreamClosedError; close is idempotent."""
    with negotiated_sockets(ntlm_users) as (client, server, raw):
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
    """A socket-like object with only recv/sendall/close works; shutdown() raises NotImplementedError."""
    with negotiated_sockets(ntlm_users, wrap=BareTap) as (client, server, _):
        with pytest.raises(NotImplementedError):
            client.shutdown()
        client.sendall(b"works without shutdown")
        assert recv_exactly(server, 22) == b"works without shutdown"


def test_create_connection(ntlm_users: NTLMUsers) -> None:
    """create_connection() connects, authenticates (default target host/<address>) and closes for good."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> tuple[bytes, str | None]:
            conn, _ = listener.accept()
            with NegotiateSocket.server(conn, protocol="ntlm", credentials=ntlm_users.server_credentials()) as sock:
                data = sock.recv(100)  # one record: one recv gets all of it
                sock.sendall(data.upper())
                return data, sock.peer_identity

        server = Worker(serve)
        with create_connection(
            listener.getsockname(), timeout=GUARD_TIMEOUT, protocol="ntlm", credentials=ntlm_users.client_credentials()
        ) as client:
            assert client.peer_identity == "host/127.0.0.1"
            assert client.gettimeout() == GUARD_TIMEOUT
            assert client.protocol == "ntlm" and client.mutually_authenticated is False
            client.sendall(b"shout")
            assert recv_exactly(client, 5) == b"SHOUT"
        assert server.result() == (b"shout", ntlm_users.usernames[0])
    with pytest.raises(StreamClosedError):
        client.sendall(b"after close")
    with pytest.raises(StreamClosedError):
        client.recv()
