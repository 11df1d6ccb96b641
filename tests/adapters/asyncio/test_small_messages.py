"""The Protocol adapter's receive path: records verified in place in the receive buffer shared by a loop's
connections, only a partial record kept per connection, and no extra loop work per small message."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from negotiate_stream import Connection, ProtectionLevel, SecurityContext, State
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
