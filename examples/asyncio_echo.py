#!/usr/bin/env python3
"""A sealed echo server and client with negotiate_stream's asyncio streams API, in one process.

The server accepts NTLM accounts from an in-memory user file (:class:`negotiate_stream.testing.NTLMUsers`, no
domain controller needed); the client authenticates as that account, sends a few messages and checks the echo.
Both ends run the MS-NNS handshake (the wire format of .NET's ``NegotiateStream``) and seal every record.

    python examples/asyncio_echo.py            # exit status 0 when every echo matched
    python examples/asyncio_echo.py --level sign
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from negotiate_stream import asyncio_ as nsa
from negotiate_stream.testing import NTLMUsers


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo every byte back until the client half-closes, then close."""
    print(f"server: {writer.get_extra_info('peer_identity')} connected", flush=True)
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()


async def main(level: str) -> int:
    """Run the server and one client; return the process exit status."""
    with NTLMUsers.generate("alice") as users:
        server = await nsa.start_server(
            echo, "127.0.0.1", 0, credentials=users.server_credentials(), protocol="ntlm", protection_level=level
        )
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await nsa.open_connection(
                "127.0.0.1",
                port,
                credentials=users.client_credentials(),
                protocol="ntlm",
                target="host/localhost",
                protection_level=level,
            )
            info = writer.get_extra_info("negotiate_stream")
            print(f"client: authenticated with {info.protocol}, protection {info.protection_level.value}")
            messages = [b"hello", b"negotiate " * 1000, bytes(range(256)) * 400]
            for message in messages:
                writer.write(message)
            writer.write_eof()  # MS-NNS has no close message: a half-close ends the stream at a record boundary
            echoed = await reader.read()
            writer.close()
            await writer.wait_closed()
    expected = b"".join(messages)
    if echoed != expected:
        print(f"client: echo mismatch ({len(echoed)} of {len(expected)} bytes)", file=sys.stderr)
        return 1
    print(f"client: {len(echoed)} bytes echoed intact")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=["encrypt_and_sign", "sign", "none"], default="encrypt_and_sign")
    sys.exit(asyncio.run(main(parser.parse_args().level)))
