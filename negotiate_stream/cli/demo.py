"""``negotiate-stream demo``: a client and a server in one process, over a real loopback TCP connection.

No domain controller is needed: the server accepts a generated NTLM account held in a private temporary file
(:class:`negotiate_stream.testing.NTLMUsers`). The client's socket is wrapped in a tap that records the bytes it
writes, so the demo can show what a protected record looks like on the wire.
"""

from __future__ import annotations

import argparse
import socket
import threading
from typing import Any

from .._framing import nns
from .._options import RECEIVE_SIZE, ProtectionLevel
from ..sync import NegotiateSocket
from ..testing import NTLMUsers

__all__ = ["EPILOG", "SUMMARY", "add_arguments", "run"]

_MESSAGES = (b"hello from the client", b"a second message", b"x" * 70_000)


class _Tap:
    """A socket stand-in that records every byte the wrapped socket sends."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = bytearray()

    def recv(self, bufsize: int) -> bytes:
        return self.sock.recv(bufsize)

    def sendall(self, data: Any) -> None:
        self.sent += data
        self.sock.sendall(data)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


#: The command's line in ``negotiate-stream --help``.
SUMMARY = "authenticate a client to a server in this process and exchange protected messages"
EPILOG = "examples:\n  negotiate-stream demo\n  negotiate-stream demo --protection sign --protocol negotiate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` options."""
    parser.add_argument(
        "--protection",
        default="encrypt_and_sign",
        choices=["none", "sign", "encrypt_and_sign"],
        help="protection level of the data records (default: %(default)s)",
    )
    parser.add_argument(
        "--protocol",
        default="negotiate",
        choices=["negotiate", "ntlm"],
        help="SPNEGO (negotiate) or raw NTLM tokens in the handshake (default: %(default)s)",
    )


def _describe_record(wire: bytes, level: ProtectionLevel) -> list[str]:
    """Annotate the first MS-NNS data record of ``wire`` (the bytes after the handshake)."""
    if level is ProtectionLevel.NONE:
        return [f"  raw bytes (no framing at protection level 'none'): {wire[:32].hex(' ')}"]
    parsed = nns.NNSRecordCodec().parse(wire)
    if parsed is None:
        return ["  (no complete record captured)"]
    payload, _end = parsed
    lines = [
        f"  length (uint32 LE): {wire[:4].hex(' ')}  = {len(payload)} bytes",
        f"  signature         : {payload[:16].hex(' ')}",
        f"    version {payload[:4].hex(' ')} | checksum {payload[4:12].hex(' ')} | seq {payload[12:16].hex(' ')}",
        f"  data              : {payload[16:48].hex(' ')}{' ...' if len(payload) > 48 else ''}",
    ]
    if level is ProtectionLevel.SIGN:
        lines.append(f"  (sign-only: the data is readable: {payload[16:48]!r})")
    return lines


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 on success."""
    level = ProtectionLevel.parse(args.protection)
    options: dict[str, Any] = {"protocol": args.protocol, "protection_level": level}
    with NTLMUsers.generate("alice") as users:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        received: list[bytes] = []
        server_error: list[BaseException] = []
        server_saw: list[str | None] = []

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with NegotiateSocket.server(conn, credentials=users.server_credentials(), **options) as server:
                    server_saw.append(server.session_info.peer_identity)
                    while chunk := server.recv(RECEIVE_SIZE):
                        received.append(chunk)
                        server.sendall(chunk)  # echo
            except BaseException as exc:  # reported by the main thread
                server_error.append(exc)

        thread = threading.Thread(target=serve, name="demo-server")
        thread.start()
        tap = _Tap(socket.create_connection(("127.0.0.1", port)))
        with NegotiateSocket.client(tap, credentials=users.client_credentials(), **options) as client:
            handshake_bytes = len(tap.sent)
            info = client.session_info
            print(f"client: connected to 127.0.0.1:{port} as {users.usernames[0]!r}")
            print(f"  protocol           : {info.protocol}")
            print(f"  protection level   : {info.protection_level.value}")
            print(f"  encrypted / signed : {info.is_encrypted} / {info.is_signed}")
            print(f"  mutual auth        : {info.mutually_authenticated}")
            print(f"  record overhead    : {info.sizes.header} bytes, max {info.sizes.max_message} per record")
            echoed = bytearray()
            for message in _MESSAGES:
                client.sendall(message)
                while len(echoed) < sum(map(len, _MESSAGES[: _MESSAGES.index(message) + 1])):
                    echoed += client.recv(RECEIVE_SIZE)
            print(f"first data record sent by the client ({_MESSAGES[0]!r}):")
            for line in _describe_record(bytes(tap.sent[handshake_bytes:]), level):
                print(line)
            client.shutdown()
        thread.join(10)
        listener.close()
    if server_error:
        raise server_error[0]
    print(f"server: authenticated the client as {server_saw[0]!r}")
    expected = b"".join(_MESSAGES)
    if bytes(echoed) != expected or b"".join(received) != expected:
        print("demo: FAILED: the echoed data differs from what was sent")
        return 1
    print(f"echo ok: {len(_MESSAGES)} messages, {len(expected)} bytes, verified in both directions")
    return 0
