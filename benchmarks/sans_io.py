"""The sans-I/O core without an adapter: two Connections in memory, and one behind the leanest asyncio Protocols.

* ``ours.connection-in-memory.*``: Connection.send fed straight into the peer's receive_data (no sockets), and
  the MS-NNS handshake of two Connections in memory. The gap to the crypto floor is the core's own overhead
  (framing, copies, events); the gap from here to an adapter is the adapter's.
* ``reference.connection-protocol.*``: a Connection driven by a minimal BufferedProtocol over loopback. It is not
  an adapter of the library; it shows what the core plus asyncio can reach on this machine, so an adapter that
  falls short of it has overhead of its own (and one that matches it is as fast as the core allows).
"""

from __future__ import annotations

import asyncio
import time

from negotiate_stream import NEED_DATA, Connection, Data, ProtectionLevel
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake

from .config import LOCALHOST, WRITE_SIZE
from .protocols import BufferedSink, Source
from .registry import LEVELS, Context, Scenario, per_level
from .results import BulkOutcome, Result, best_rate, bulk_result, handshake_result
from .verify import StreamVerifier, pattern_block

__all__ = ["connection_bulk", "handshake_connection", "in_memory_scenarios", "reference_bulk", "reference_scenarios"]


def _established(users: NTLMUsers, level_name: str) -> tuple[Connection, Connection]:
    client, server = connection_pair(users, protection_level=LEVELS[level_name])
    handshake(client, server)
    return client, server


def connection_bulk(ctx: Context, level_name: str) -> Result:
    """The sans-I/O engine alone: Connection.send of 64 KiB writes fed straight into the peer's receive_data."""
    client, server = _established(ctx.users, level_name)
    block = pattern_block()
    verifier = StreamVerifier(block, ctx.config.bulk_bytes)
    send, receive_data, next_event, feed = client.send, server.receive_data, server.next_event, verifier.feed
    started = time.perf_counter()
    for _ in range(ctx.config.bulk_bytes // WRITE_SIZE):
        receive_data(send(block))
        while (event := next_event()) is not NEED_DATA:
            if isinstance(event, Data):
                feed(event.data)
    seconds = time.perf_counter() - started
    outcome = BulkOutcome(verifier.received, seconds, verifier.ok)
    return bulk_result(
        f"ours.connection-in-memory.bulk.{level_name}",
        "ours",
        level_name,
        outcome,
        note="sans-I/O Connection pair, no sockets",
    )


def _connection_handshake_once(users: NTLMUsers) -> bool:
    client, server = connection_pair(users, protection_level=ProtectionLevel.ENCRYPT_AND_SIGN)
    _client_info, server_info = handshake(client, server)
    return server_info.peer_identity is not None


def handshake_connection(ctx: Context) -> Result:
    """Handshakes/s of two in-memory sans-I/O Connections (MS-NNS handshake framing, no sockets)."""
    users = ctx.users
    _connection_handshake_once(users)
    rate, seconds, ok = best_rate(ctx.config.handshakes, lambda: _connection_handshake_once(users))
    return handshake_result("ours.connection-in-memory.handshake", "ours", rate, seconds, ok)


class _ConnectionSink(BufferedSink):
    """A BufferedSink whose bytes go through the receiving Connection; the verifier sees the plaintext."""

    def __init__(self, connection: Connection, verifier: StreamVerifier, done: asyncio.Future[None]) -> None:
        super().__init__(verifier, done)
        self.connection = connection

    def buffer_updated(self, nbytes: int) -> None:
        connection, feed = self.connection, self.verifier.feed
        connection.receive_data(self.buffer[:nbytes])
        while (event := connection.next_event()) is not NEED_DATA:
            if isinstance(event, Data):
                feed(event.data)
        self.check_complete()


def reference_bulk(ctx: Context, level: str) -> Result:
    """Bulk transfer through two in-process Connections (handshake done in memory) over a loopback socket."""
    client, server = _established(ctx.users, level)
    total = ctx.config.bulk_bytes

    async def main() -> BulkOutcome:
        loop = asyncio.get_running_loop()
        block = pattern_block()
        verifier = StreamVerifier(block, total)
        done: asyncio.Future[None] = loop.create_future()
        listener = await loop.create_server(lambda: _ConnectionSink(server, verifier, done), LOCALHOST, 0)
        port = listener.sockets[0].getsockname()[1]
        transport, sender = await loop.create_connection(Source, LOCALHOST, port)
        send, write = client.send, transport.write
        started = time.perf_counter()
        await sender.write_pattern(lambda data: write(send(data)), block, total)
        await done
        seconds = time.perf_counter() - started
        transport.close()
        listener.close()
        await listener.wait_closed()
        return BulkOutcome(verifier.received, seconds, verifier.ok)

    return bulk_result(
        f"reference.connection-protocol.bulk.{level}",
        "reference",
        level,
        asyncio.run(main()),
        note="Connection + minimal BufferedProtocol (what the core allows)",
    )


def in_memory_scenarios() -> list[Scenario]:
    """The in-memory Connection scenarios, in report order."""
    return [
        *per_level("ours.connection-in-memory.bulk.{level}", "ours", "bulk", connection_bulk),
        Scenario("ours.connection-in-memory.handshake", "ours", "handshake", "sealed", handshake_connection),
    ]


def reference_scenarios() -> list[Scenario]:
    """The Connection-behind-a-minimal-Protocol references, in report order."""
    return per_level("reference.connection-protocol.bulk.{level}", "reference", "bulk", reference_bulk, "level")
