"""Small blocking helpers for the interop tests, on top of the sync adapter (:class:`NegotiateSocket`).

The peers see exactly what an application using ``negotiate_stream.sync`` would send; the helpers only add
"receive exactly N bytes" and "echo until EOF" loops.
"""

from __future__ import annotations

import socket
from typing import Any

from negotiate_stream import SessionInfo
from negotiate_stream.sync import NegotiateSocket


class BlockingPeer:
    """One authenticated connection over a connected socket (the handshake runs in the constructor)."""

    def __init__(self, sock: socket.socket, *, server_side: bool, **options: Any) -> None:
        opener = NegotiateSocket.server if server_side else NegotiateSocket.client
        self.stream = opener(sock, **options)
        self.info: SessionInfo = self.stream.session_info
        self._pending = bytearray()

    def sendall(self, data: bytes) -> None:
        """Protect and send ``data``."""
        self.stream.sendall(data)

    def recv_exactly(self, size: int) -> bytes:
        """Receive exactly ``size`` plaintext bytes (raises EOFError if the peer closes first)."""
        while len(self._pending) < size:
            chunk = self.stream.recv(1 << 20)
            if not chunk:
                raise EOFError(f"peer closed after {len(self._pending)} of {size} bytes")
            self._pending += chunk
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data

    def echo_until_eof(self) -> int:
        """Send back every chunk received until the peer's clean EOF; return the byte count."""
        total = 0
        while chunk := self.stream.recv(1 << 20):
            self.stream.sendall(chunk)
            total += len(chunk)
        return total

    def close(self) -> None:
        """Close the stream and the socket."""
        self.stream.close()


def connect(port: int, **options: Any) -> BlockingPeer:
    """Connect to 127.0.0.1:port and authenticate as a client."""
    return BlockingPeer(socket.create_connection(("127.0.0.1", port), timeout=30), server_side=False, **options)


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
    return BlockingPeer(conn, server_side=True, **options)
