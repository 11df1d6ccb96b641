#!/usr/bin/env python3
"""Sealed echo over loopback TCP with the blocking API: a server thread and a client, in one process.

The server thread authenticates NTLM clients against an in-memory account (:class:`~negotiate_stream.testing.
NTLMUsers`, no domain controller) with :meth:`NegotiateSocket.server`; the client uses :func:`create_connection`
and reads the echo line by line through ``makefile("rb")``. Exit status 0 when every echo matched.

    python examples/echo_sync.py
    python examples/echo_sync.py --level sign
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading

from negotiate_stream.sync import NegotiateSocket, create_connection
from negotiate_stream.testing import NTLMUsers


def serve_one(listener: socket.socket, users: NTLMUsers, level: str) -> None:
    """Accept one connection, authenticate it, echo until the client half-closes."""
    conn, address = listener.accept()
    with NegotiateSocket.server(
        conn, credentials=users.server_credentials(), protocol="ntlm", protection_level=level
    ) as sock:
        print(f"server: authenticated {sock.peer_identity} from {address[0]}", flush=True)
        while data := sock.recv(65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


def main(level: str) -> int:
    """Run the server thread and one client; return the exit status."""
    with NTLMUsers.generate("alice") as users, socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=serve_one, args=(listener, users, level), daemon=True)
        server.start()
        lines = [f"line {i}: {'negotiate ' * i}\n".encode() for i in range(200)]
        with create_connection(
            listener.getsockname(),
            timeout=30,
            credentials=users.client_credentials(),
            protocol="ntlm",
            protection_level=level,
        ) as client:
            info = client.session_info
            print(f"client: {info.protocol}, {info.protection_level.value}, target {info.peer_identity}")
            reader = client.makefile("rb")
            client.sendall(b"".join(lines))
            client.shutdown(socket.SHUT_WR)
            echoed = [reader.readline() for _ in lines]
            at_eof = reader.read() == b""
        server.join(30)
    matched = sum(a == b for a, b in zip(lines, echoed, strict=True))
    print(f"client: {matched}/{len(lines)} lines echoed, clean EOF: {at_eof}")
    return 0 if matched == len(lines) and at_eof and not server.is_alive() else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=["encrypt_and_sign", "sign", "none"], default="encrypt_and_sign")
    sys.exit(main(parser.parse_args().level))
