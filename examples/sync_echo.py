#!/usr/bin/env python3
"""A sealed echo server (a thread) and client with negotiate_stream's blocking socket API, in one process.

The server accepts NTLM accounts from an in-memory user file (:class:`negotiate_stream.testing.NTLMUsers`, no
domain controller needed) with :meth:`NegotiateSocket.server`; the client uses :func:`create_connection`, writes
from one thread while reading the echo in another, and checks it.

    python examples/sync_echo.py            # exit status 0 when every echo matched
    python examples/sync_echo.py --level sign
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading

from negotiate_stream.sync import NegotiateSocket, create_connection
from negotiate_stream.testing import NTLMUsers


def serve_one(listener: socket.socket, users: NTLMUsers, level: str) -> None:
    """Accept one client and echo every byte back until it half-closes."""
    conn, _ = listener.accept()
    with NegotiateSocket.server(
        conn, credentials=users.server_credentials(), protocol="ntlm", protection_level=level
    ) as sock:
        print(f"server: {sock.session_info.peer_identity} connected", flush=True)
        while chunk := sock.recv(65536):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)


def main(level: str) -> int:
    """Run the server thread and one client; return the process exit status."""
    messages = [b"hello", b"negotiate " * 1000, bytes(range(256)) * 400]
    with NTLMUsers.generate("alice") as users, socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=serve_one, args=(listener, users, level), daemon=True)
        server.start()
        with create_connection(
            listener.getsockname(),
            timeout=30,
            credentials=users.client_credentials(),
            protocol="ntlm",
            target="host/localhost",
            protection_level=level,
        ) as sock:
            info = sock.session_info
            print(f"client: authenticated with {info.protocol}, protection {info.protection_level.value}")

            def send_all() -> None:
                for message in messages:
                    sock.sendall(message)
                sock.shutdown(socket.SHUT_WR)  # no close message in MS-NNS: EOF at a record boundary ends it

            writer = threading.Thread(target=send_all)
            writer.start()  # one writer thread and one reader thread on one socket is supported
            echoed = sock.makefile("rb").read()
            writer.join()
        server.join(30)
    expected = b"".join(messages)
    if echoed != expected:
        print(f"client: echo mismatch ({len(echoed)} of {len(expected)} bytes)", file=sys.stderr)
        return 1
    print(f"client: {len(echoed)} bytes echoed intact")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=["encrypt_and_sign", "sign", "none"], default="encrypt_and_sign")
    sys.exit(main(parser.parse_args().level))
