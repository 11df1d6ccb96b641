"""The Protocol adapter's receive path: records verified in place in the receive buffer shared by a loop's
connections, only a partial record kept per connection, and no extra loop work per small message."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from negotiate_stream import AuthenticationError, Connection, ProtectionLevel, SecurityContext, State
from negotiate_stream import _asyncio_protocol as nsa_protocol
from negotiate_stream import _asyncio_transport as nsa_transport
from negotiate_stream import asyncio_ as nsa
from negotiate_stream._framing.nns import MAX_PLAINTEXT_PER_RECORD
from negotiate_stream.testing import NTLMUsers, connection_pair
from tests.support.aio import Collector, client_options, negotiator, port_of, run, server_options
from tests.support.core import drain

SEALED = ProtectionLevel.ENCRYPT_AND_SIGN
PING = bytes(range(64))


class WireTransport(asyncio.Transport):
    """A transport driven by hand: it collects what the protocol writes and remembers pause/resume/close."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closing = False

    def write(self, data: Any) -> None:
        """Collect ``data``."""
        self.written += data

    def take(self) -> bytes:
        """Return (and forget) what was written."""
        out = bytes(self.written)
        self.written.clear()
        return out

    def is_closing(self) -> bool:
        """Whether close() or abort() was called."""
        return self.closing

    def close(self) -> None:
        """Remember the close."""
        self.closing = True

    def abort(self) -> None:
        """Remember the abort."""
        self.closing = True

    def pause_reading(self) -> None:
        """Remember the pause."""
        self.reading = False

    def resume_reading(self) -> None:
        """Remember the resume."""
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """No socket behind this transport."""
        return default


def feed(protocol: nsa.NegotiateProtocol, data: bytes) -> None:
    """Deliver ``data`` the way a socket transport does: into the protocol's buffer, then ``buffer_updated``.

    The buffer is then overwritten, as the next read (of any connection of the loop) would: whatever the
    Connection did not copy out of it is lost.
    """
    while data:
        buffer = protocol.get_buffer(-1)
        count = min(len(buffer), len(data))
        buffer[:count] = data[:count]
        protocol.buffer_updated(count)
        buffer[:count] = b"\xaa" * count
        data = data[count:]


async def established(
    users: NTLMUsers, app: asyncio.BaseProtocol, **protocol_options: Any
) -> tuple[Connection, nsa.NegotiateProtocol, WireTransport]:
    """A server NegotiateProtocol on a :class:`WireTransport`, authenticated by an in-memory client Connection."""
    client, server = connection_pair(users, protection_level=SEALED)
    protocol = nsa.NegotiateProtocol(server, app, handshake_timeout=None, **protocol_options)
    transport = WireTransport()
    protocol.connection_made(transport)
    while protocol.app_transport is None:
        feed(protocol, client.data_to_send())
        client.receive_data(transport.take())
        drain(client)
    assert client.state is State.ESTABLISHED
    return client, protocol, transport


def held(protocol: nsa.NegotiateProtocol) -> tuple[int, int]:
    """(bytes the protocol's Connection holds, the memory of its own receive buffer)."""
    connection = protocol.connection
    return connection.buffered, sys.getsizeof(connection._received.data)


@pytest.mark.parametrize("piece", [1, 100, 5000, 0x10000 + 7])
def test_records_are_read_in_place_and_only_a_partial_record_is_kept(ntlm_users: NTLMUsers, piece: int) -> None:
    """Whatever the reads, the protocol's Connection keeps only the record still arriving, and every byte the app
    gets survives the reuse of the shared receive buffer."""

    async def main() -> None:
        app = Collector()
        client, protocol, _transport = await established(ntlm_users, app)
        sizes = [1, 64, 64, 3000, MAX_PLAINTEXT_PER_RECORD + 1] if piece > 1 else [1, 64, 64, 300]
        messages = [bytes([n]) * size for n, size in enumerate(sizes * 3)]
        wire = b"".join(client.send(message) for message in messages)
        for offset in range(0, len(wire), piece):
            feed(protocol, wire[offset : offset + piece])
            buffered, memory = held(protocol)
            assert buffered <= MAX_PLAINTEXT_PER_RECORD + 64  # less than one record
            assert memory <= 2 * buffered + 128
        assert bytes(app.data) == b"".join(messages)
        assert held(protocol)[0] == 0

    run(main())


@pytest.mark.parametrize("crowded", [True, False], ids=["crowded-loop", "few-connections"])
def test_reads_stop_at_record_boundaries_on_a_crowded_loop(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, crowded: bool
) -> None:
    """On a loop serving many connections, with a stream of data waiting (as in a socket's kernel queue), each read
    takes about one record frame, and a read that ended inside a record is followed by one that completes it: what
    the app has not asked for stays in the kernel, and no partial record outlives the next read. With few
    connections every read may fill the whole shared buffer (fewer callbacks for a bulk transfer)."""
    for module in (nsa_transport, nsa_protocol):  # where it is defined, and where the per-read check reads it
        monkeypatch.setattr(module, "CROWDED", 0 if crowded else 1_000_000)

    async def main() -> None:
        app = Collector()
        client, protocol, _transport = await established(ntlm_users, app)
        before = protocol.get_buffer(-1)
        if not crowded:
            records = [bytes([n]) * MAX_PLAINTEXT_PER_RECORD for n in range(8)]
            feed(protocol, b"".join(client.send(record) for record in records))
            assert len(protocol.get_buffer(-1)) == len(before.obj)  # the whole shared buffer, every read
            assert bytes(app.data) == b"".join(records)
            return
        messages = [bytes([n]) * MAX_PLAINTEXT_PER_RECORD for n in range(4)] + [b"tail" * 300] * 3
        wire = b"".join(client.send(message) for message in messages)
        position, sizes, partial_reads = 0, [], 0
        while position < len(wire):
            buffer = protocol.get_buffer(-1)
            assert buffer.obj is before.obj  # still the loop's shared buffer, only cut shorter
            count = min(len(buffer), len(wire) - position)
            buffer[:count] = wire[position : position + count]
            protocol.buffer_updated(count)
            position += count
            sizes.append(count)
            pending = protocol.connection.buffered
            assert pending < 0x10000 + 4  # less than one record frame, never records the app did not read
            partial_reads = partial_reads + 1 if pending else 0
            assert partial_reads <= 1  # the next read completes the record begun
        assert bytes(app.data) == b"".join(messages)
        assert max(sizes) < 2 * (0x10000 + 4) < len(before.obj)  # the shared buffer is larger: the reads were cut

    run(main())


def test_the_loop_counts_its_established_connections_until_they_are_lost(ntlm_users: NTLMUsers) -> None:
    """Each established connection (either end) counts towards a crowded loop until its transport is lost, whether
    it closed cleanly or was aborted; failed handshakes never count."""

    async def main() -> None:
        shared = nsa_transport.receive_buffer()
        start = shared.established
        server_ends: list[Any] = []  # kept referenced: a StreamWriter closes its transport when collected
        server = await nsa.start_server(
            lambda r, w: server_ends.append(w), "127.0.0.1", 0, **server_options(ntlm_users)
        )
        async with server:
            pairs = [await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))]
            pairs.append(await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users)))
            for _ in range(50):  # the server ends count once their handshake completed there too
                if shared.established == start + 4:
                    break
                await asyncio.sleep(0.01)
            assert shared.established == start + 4
            pairs[0][1].close()
            pairs[1][1].transport.abort()
            await pairs[0][1].wait_closed()
            for writer in server_ends:  # the server ends see the client's EOF or reset; their app closes them
                writer.close()
            for _ in range(50):
                if shared.established == start:
                    break
                await asyncio.sleep(0.01)
            assert shared.established == start
            with pytest.raises(AuthenticationError):  # no connection is established, nothing is counted
                await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users, password="x"))
            await asyncio.sleep(0.05)  # the server side's failure too
            assert shared.established == start

    run(main())


def test_connections_of_one_loop_share_one_receive_buffer(ntlm_users: NTLMUsers) -> None:
    """Two connections read into the same memory, alternately, and each app gets its own bytes."""

    async def main() -> None:
        apps = [Collector(), Collector()]
        ends = [await established(ntlm_users, app) for app in apps]
        assert ends[0][1].get_buffer(-1).obj is ends[1][1].get_buffer(-1).obj
        sent: list[list[bytes]] = [[], []]
        for round_number in range(50):
            for side, (client, protocol, _transport) in enumerate(ends):
                message = bytes([side, round_number]) * (1 + round_number * 37)
                sent[side].append(message)
                wire = client.send(message)
                feed(protocol, wire[:-5])  # the rest arrives with the next read of this connection
                feed(protocol, wire[-5:])
        assert [bytes(app.data) for app in apps] == [b"".join(messages) for messages in sent]

    run(main())


def test_records_behind_a_pause_are_kept_and_delivered_in_order(ntlm_users: NTLMUsers) -> None:
    """An app that pauses after the first record of a read gets the others, in order, once it resumes."""

    class PausesOnce(Collector):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.chunks == 1:
                assert self.transport is not None
                self.transport.pause_reading()

    async def main() -> None:
        app = PausesOnce()
        client, protocol, transport = await established(ntlm_users, app)
        messages = [bytes([n]) * 100 for n in range(5)]
        wire = b"".join(client.send(message) for message in messages)
        feed(protocol, wire[:-10])
        assert bytes(app.data) == messages[0] and not transport.reading
        feed(protocol, wire[-10:])  # a read already in flight when the app paused
        assert bytes(app.data) == messages[0]
        assert app.transport is not None
        app.transport.resume_reading()
        await asyncio.sleep(0)
        assert bytes(app.data) == b"".join(messages) and transport.reading

    run(main())


def test_the_idle_timer_is_not_rearmed_per_record(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an idle bound, records only stamp the time: no loop timer is scheduled (or cancelled) per record."""

    async def main() -> None:
        app = Collector()
        client, protocol, _transport = await established(ntlm_users, app, idle_timeout=30.0)
        loop = asyncio.get_running_loop()
        scheduled: list[float] = []
        original = loop.call_at

        def call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            scheduled.append(when)
            return original(when, callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_at", call_at)
        for _ in range(200):
            feed(protocol, client.send(PING))
        assert scheduled == [] and len(app.data) == 200 * len(PING)

    run(main())


class Pinger(asyncio.Protocol):
    """Sends the next 64-byte ping from the callback that received the previous echo."""

    def __init__(self, rounds: int) -> None:
        self.left = rounds
        self.pending = bytearray()
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.verified = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while len(self.pending) >= len(PING):
            self.verified = self.verified and self.pending[: len(PING)] == PING
            del self.pending[: len(PING)]
            self.left -= 1
            if self.left:
                self.transport.write(PING)
            elif not self.done.done():
                self.done.set_result(self.verified)


class Echo(asyncio.Protocol):
    """Writes back whatever arrives."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign", "none"])
def test_small_message_ping_pong_needs_no_extra_loop_callbacks(
    ntlm_users: NTLMUsers, level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over loopback, 64-byte round trips work at every level, and no callback is scheduled per message (each
    record is handled inside the read callback that brought it)."""
    rounds = 300

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: negotiator(True, Echo(), server_options(ntlm_users, level)), "127.0.0.1", 0
        )
        async with server:
            pinger = Pinger(rounds)
            waiter: asyncio.Future[nsa.NegotiateTransport] = loop.create_future()
            context = SecurityContext.client(**client_options(ntlm_users, level))
            protocol = nsa.NegotiateProtocol(Connection(context), pinger, waiter=waiter)
            transport, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", port_of(server))
            await waiter
            scheduled: list[Any] = []
            original = loop.call_soon

            def call_soon(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
                scheduled.append(callback)
                return original(callback, *args, **kwargs)

            monkeypatch.setattr(loop, "call_soon", call_soon)
            pinger.transport.write(PING)
            assert await pinger.done
            assert len(scheduled) <= 1  # the future's completion; never a hop per message
            monkeypatch.setattr(loop, "call_soon", original)
            transport.close()

    run(main())
