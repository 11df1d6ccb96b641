"""A minimal blocking driver of :class:`Connection` over a socket, for interop tests.

It uses the sans-I/O core directly, so a failure seen here is the core's, not an adapter's. The adapter tests
(``test_dotnet.py``) run the same peers through ``negotiate_stream.sync`` / ``negotiate_stream.asyncio_``.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from negotiate_stream._connection import NEED_DATA, Connection, Data, EndOfStream, HandshakeComplete, SessionInfo
from negotiate_stream._context import SecurityContext
from negotiate_stream.errors import NegotiateError


class BlockingPeer:
    """One authenticated NNS connection over a connected socket."""

    def __init__(self, sock: socket.socket, *, server_side: bool, **options: Any) -> None:
        self.sock = sock
        self.connection = Connection(SecurityContext.create(server_side, **options))
        self._pending = bytearray()
        self._eof = False
        self.info: SessionInfo = self._handshake()

    def _flush(self) -> None:
        out = self.connection.data_to_send()
        if out:
            self.sock.sendall(out)

    def _handshake(self) -> SessionInfo:
        try:
            while True:
                event = self.connection.next_event()
                self._flush()
                if event is NEED_DATA:
                    self.connection.receive_data(self.sock.recv(65536))
                elif isinstance(event, HandshakeComplete):
                    self._flush()
                    return event.info
        except NegotiateError:
            # The peer gets our Error frame (if any) before the connection closes.
            with contextlib.suppress(OSError):
                self._flush()
            raise

    def sendall(self, data: bytes) -> None:
        """Protect and send ``data``."""
        self.sock.sendall(self.connection.send(data))

    def _receive_more(self) -> bool:
        while True:
            event = self.connection.next_event()
            if isinstance(event, Data):
                self._pending += event.data
                return True
            if isinstance(event, EndOfStream):
                self._eof = True
                return False
            if event is NEED_DATA:
                self.connection.receive_data(self.sock.recv(1 << 20))

    def recv_exactly(self, size: int) -> bytes:
        """Receive exactly ``size`` plaintext bytes (raises EOFError if the peer closes first)."""
        while len(self._pending) < size:
            if self._eof or not self._receive_more():
                raise EOFError(f"peer closed after {len(self._pending)} of {size} bytes")
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data

    def recv_until_eof(self) -> bytes:
        """Receive everything up to the peer's clean end of stream."""
        while not self._eof and self._receive_more():
            pass
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def echo_until_eof(self) -> int:
        """Send back every chunk received until the peer's clean EOF; return the byte count."""
        total = 0
        while True:
            if self._pending:
                chunk = bytes(self._pending)
                self._pending.clear()
                self.sendall(chunk)
                total += len(chunk)
            if self._eof or not self._receive_more():
                return total

    def close(self) -> None:
        """Close the connection and the socket."""
        self.connection.close()
        self.sock.close()


def connect(port: int, **options: Any) -> BlockingPeer:
    """Connect to 127.0.0.1:port and authenticate as a client."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        return BlockingPeer(sock, server_side=False, **options)
    except BaseException:
        sock.close()
        raise


def listener() -> socket.socket:
    """A listening socket on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.settimeout(60)
    return sock


def accept(sock: socket.socket, **options: Any) -> BlockingPeer:
    """Accept one connection on ``sock`` and authenticate as a server."""
    conn, _ = sock.accept()
    conn.settimeout(30)
    try:
        return BlockingPeer(conn, server_side=True, **options)
    except BaseException:
        conn.close()
        raise
