#!/usr/bin/env python3
"""Echo server and client over negotiate_stream's asyncio streams API, in one process, with real NTLM.

The server accepts the accounts of an in-memory NTLM user file (:class:`negotiate_stream.testing.NTLMUsers`: no
domain controller needed) and echoes every byte; the client authenticates as that account, sends a few messages,
checks the echoes and prints the session both sides see. Both ends speak MS-NNS (the wire format of .NET's
``NegotiateStream``) and seal every record.

    python examples/echo_asyncio.py                 # exit status 0 when every echo matched
    python examples/echo_asyncio.py --level sign    # sign-only records (readable on the wire, tamper-proof)
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from negotiate_stream import asyncio_ as nsa
from negotiate_stream.testing import NTLMUsers


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo every byte back until the client half-closes, then close."""
    info = writer.get_extra_info("negotiate_stream")
    print(f"server: {info.peer_identity} authenticated ({info.protocol}, {info.protection_level.value})")
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()  # waits while the client is not reading (flow control)
    finally:
        writer.close()


async def main(level: str) -> int:
    """Start the server, run one client through it, and return the exit status."""
    with NTLMUsers.generate("alice") as users:
        server = await nsa.start_server(
            echo, "127.0.0.1", 0, credentials=users.server_credentials(), protocol="ntlm", protection_level=level
        )
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await nsa.open_connection(
                "127.0.0.1",
                port,
                credentials=users.client_credentials("alice"),
                protocol="ntlm",
                target="host/localhost",
                protection_level=level,
            )
            info = writer.get_extra_info("negotiate_stream")
            print(
                f"client: session {info.protocol}, protection {info.protection_level.value} "
                f"(encrypted {info.is_encrypted}, signed {info.is_signed}), target {info.peer_identity}, "
                f"mutual auth {info.mutually_authenticated}, record overhead {info.sizes.header + info.sizes.trailer} "
                f"bytes, up to {info.sizes.max_message} bytes per record"
            )
            messages = [b"hello", b"negotiate " * 1000, bytes(range(256)) * 400]
            ok = True
            for message in messages:
                writer.write(message)
                echoed = await reader.readexactly(len(message))
                ok = ok and echoed == message
                print(f"client: {len(message):6d} bytes sent, echo {'matches' if echoed == message else 'DIFFERS'}")
            # MS-NNS has no close message: a half-close ends our direction at a record boundary (a clean EOF).
            writer.write_eof()
            ok = ok and await reader.read() == b""
            writer.close()
            await writer.wait_closed()
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--level", choices=["encrypt_and_sign", "sign", "none"], default="encrypt_and_sign")
    sys.exit(asyncio.run(main(parser.parse_args().level)))
