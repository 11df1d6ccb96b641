#!/usr/bin/env python3
"""Sealed echo over loopback TCP with the anyio API, on asyncio (default) or trio, in one process.

A :class:`~negotiate_stream.anyio_.NegotiateListener` authenticates NTLM clients against an in-memory account
(:class:`~negotiate_stream.testing.NTLMUsers`, no domain controller); :func:`~negotiate_stream.anyio_.connect`
sends a few messages and checks each echo. Exit status 0 when every echo matched.

    python examples/echo_anyio.py
    python examples/echo_anyio.py --backend trio --level sign
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import anyio
from anyio.abc import SocketAttribute

from negotiate_stream.anyio_ import NegotiateAttribute, NegotiateListener, NegotiateStream, connect
from negotiate_stream.testing import NTLMUsers


async def echo(stream: NegotiateStream) -> None:
    """Send back everything the client sends until it half-closes, then half-close too."""
    async with stream:
        print(f"server: authenticated {stream.extra(NegotiateAttribute.peer_identity)}", flush=True)
        try:
            while True:
                await stream.send(await stream.receive())
        except anyio.EndOfStream:
            await stream.send_eof()


async def receive_exactly(stream: NegotiateStream, size: int) -> bytes:
    """Read exactly ``size`` bytes (a receive returns whatever one record held)."""
    data = bytearray()
    while len(data) < size:
        data += await stream.receive(size - len(data))
    return bytes(data)


async def main(level: str) -> int:
    """Run the server and one client; return the exit status."""
    with NTLMUsers.generate("alice") as users:
        tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        listener = NegotiateListener(
            tcp, credentials=users.server_credentials(), protocol="ntlm", protection_level=level
        )
        port = listener.extra(SocketAttribute.local_port)
        failures = 0
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo)
            async with await connect(
                "127.0.0.1", port, credentials=users.client_credentials(), protocol="ntlm", protection_level=level
            ) as client:
                info = client.session_info
                print(f"client: {info.protocol}, {info.protection_level.value}, target {info.peer_identity}")
                for message in (b"hello", b"negotiate " * 1000, bytes(range(256)) * 4096):
                    # Send from another task: the server echoes while we are still sending.
                    async with anyio.create_task_group() as sender:
                        sender.start_soon(client.send, message)
                        reply = await receive_exactly(client, len(message))
                    ok = reply == message
                    failures += not ok
                    print(
                        f"client: {len(message):>8} bytes sha256 {hashlib.sha256(reply).hexdigest()[:16]} "
                        f"{'ok' if ok else 'MISMATCH'}"
                    )
                await client.send_eof()
                with anyio.fail_after(10):
                    try:
                        await client.receive()
                        failures += 1  # the server must not send anything more
                    except anyio.EndOfStream:
                        pass
            tg.cancel_scope.cancel()
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--level", choices=["encrypt_and_sign", "sign", "none"], default="encrypt_and_sign")
    args = parser.parse_args()
    sys.exit(anyio.run(main, args.level, backend=args.backend))
