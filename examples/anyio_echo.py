#!/usr/bin/env python3
"""A sealed echo server and client with negotiate_stream's anyio API, in one process, on asyncio or trio.

The server is a :class:`~negotiate_stream.anyio_.NegotiateListener` around an anyio TCP listener; it accepts NTLM
accounts from an in-memory user file (:class:`negotiate_stream.testing.NTLMUsers`, no domain controller needed).
The client connects with :func:`~negotiate_stream.anyio_.connect`, sends a few messages and checks the echo.

    python examples/anyio_echo.py                  # exit status 0 when every echo matched
    python examples/anyio_echo.py --backend trio --level sign
"""

from __future__ import annotations

import argparse
import sys

import anyio
from anyio.abc import SocketAttribute

from negotiate_stream.anyio_ import NegotiateAttribute, NegotiateListener, NegotiateStream, connect
from negotiate_stream.testing import NTLMUsers


async def echo(stream: NegotiateStream) -> None:
    """Echo every byte back until the client half-closes, then close."""
    async with stream:
        print(f"server: {stream.extra(NegotiateAttribute.peer_identity)} connected", flush=True)
        try:
            while True:
                await stream.send(await stream.receive())
        except anyio.EndOfStream:
            pass


async def main(level: str) -> int:
    """Run the server and one client; return the process exit status."""
    with NTLMUsers.generate("alice") as users:
        listener = NegotiateListener(
            await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0),
            credentials=users.server_credentials(),
            protocol="ntlm",
            protection_level=level,
        )
        port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo)
            messages = [b"hello", b"negotiate " * 1000, bytes(range(256)) * 400]
            async with await connect(
                "127.0.0.1",
                port,
                credentials=users.client_credentials(),
                protocol="ntlm",
                target="host/localhost",
                protection_level=level,
            ) as stream:
                info = stream.extra(NegotiateAttribute.session_info)
                print(f"client: authenticated with {info.protocol}, protection {info.protection_level.value}")

                async def send_all() -> None:
                    for message in messages:
                        await stream.send(message)
                    await stream.send_eof()  # MS-NNS has no close message: the peer sees EOF at a record boundary

                tg.start_soon(send_all)
                echoed = bytearray()
                try:
                    while True:
                        echoed += await stream.receive()
                except anyio.EndOfStream:
                    pass
            tg.cancel_scope.cancel()
    expected = b"".join(messages)
    if echoed != expected:
        print(f"client: echo mismatch ({len(echoed)} of {len(expected)} bytes)", file=sys.stderr)
        return 1
    print(f"client: {len(echoed)} bytes echoed intact")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--level", choices=["encrypt_and_sign", "sign", "none"], default="encrypt_and_sign")
    args = parser.parse_args()
    sys.exit(anyio.run(main, args.level, backend=args.backend))
