"""A reference: the sans-I/O Connection driven by the leanest asyncio Protocols this benchmark can write.

It is not an adapter of the library; it shows what the core plus asyncio can reach on this machine, so an adapter
that falls short of it has overhead of its own (and one that matches it is as fast as the core allows).
"""

from __future__ import annotations

import asyncio
import time

from .._connection import NEED_DATA, Connection, Data
from ..testing import connection_pair, handshake
from ._asyncio_plain import LOCALHOST
from ._core import RECEIVE_BUFFER, WRITE_SIZE, Result, StreamVerifier, mbps, pattern_block
from ._ours import LEVELS
from ._registry import Context

__all__ = ["reference_bulk"]


class _Receiver(asyncio.BufferedProtocol):
    def __init__(self, connection: Connection, verifier: StreamVerifier, done: asyncio.Future[None]) -> None:
        self.connection = connection
        self.verifier = verifier
        self.done = done
        self.buffer = memoryview(bytearray(RECEIVE_BUFFER))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        connection, feed = self.connection, self.verifier.feed
        connection.receive_data(self.buffer[:nbytes])
        while (event := connection.next_event()) is not NEED_DATA:
            if isinstance(event, Data):
                feed(event.data)
        if self.verifier.complete and not self.done.done():
            self.done.set_result(None)


class _Sender(asyncio.Protocol):
    def __init__(self) -> None:
        self.resumed: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None


def reference_bulk(ctx: Context, level: str) -> Result:
    """Bulk transfer through two in-process Connections (handshake done in memory) over a loopback socket."""
    client, server = connection_pair(ctx.users, protection_level=LEVELS[level])
    handshake(client, server)
    total = ctx.config.bulk_bytes

    async def main() -> tuple[float, StreamVerifier]:
        loop = asyncio.get_running_loop()
        block = pattern_block()
        verifier = StreamVerifier(block, total)
        done: asyncio.Future[None] = loop.create_future()
        listener = await loop.create_server(lambda: _Receiver(server, verifier, done), LOCALHOST, 0)
        port = listener.sockets[0].getsockname()[1]
        transport, sender = await loop.create_connection(_Sender, LOCALHOST, port)
        send, write = client.send, transport.write
        started = time.perf_counter()
        for _ in range(total // WRITE_SIZE):
            write(send(block))
            if sender.resumed is not None:
                await sender.resumed
        await done
        seconds = time.perf_counter() - started
        transport.close()
        listener.close()
        await listener.wait_closed()
        return seconds, verifier

    seconds, verifier = asyncio.run(main())
    return Result(
        name=f"reference.connection-protocol.bulk.{level}",
        group="reference",
        kind="bulk",
        level=level,
        value=mbps(verifier.received, seconds),
        nbytes=verifier.received,
        seconds=seconds,
        verified=verifier.ok,
        extra={"note": "Connection + minimal BufferedProtocol (what the core allows)"},
    )
