"""Reliability under attack and faults (asyncio): resource limits, cancellation, concurrency stress, soak."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import random
import resource
import struct
import zlib

import pytest

from negotiate_stream import Connection, State
from negotiate_stream import asyncio_ as nsa
from negotiate_stream._context import SecurityContext
from negotiate_stream._framing import nns
from negotiate_stream.errors import FramingError
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import (
    Collector,
    RawPeer,
    client_options,
    connect_app,
    digest,
    open_client,
    other_tasks,
    payload,
    port_of,
    rss_bytes,
    run,
    server_options,
    settle,
    start_echo_server,
    start_raw_server,
    writer_to_paused_app,
)

# -- resource limits ------------------------------------------------------------------------------------------------


def test_4gib_record_header_fails_at_once_without_buffering(ntlm_users: NTLMUsers) -> None:
    """A record header announcing ~4 GiB: FramingError at once; the connection holds only the bytes received."""

    async def huge(peer: RawPeer) -> None:
        peer.writer.write(b"\xff\xff\xff\xff" + b"\0" * 1000)
        await peer.writer.drain()
        await peer.reader.read()  # keep the connection open: the failure must come from the header alone

    async def main() -> None:
        server = await start_raw_server(ntlm_users, huge)
        async with server:
            app = Collector()
            protocol = await connect_app(port_of(server), ntlm_users, app)
            exc = await app.lost
            assert isinstance(exc, FramingError)
            assert protocol.connection.buffered <= 4 + 1000  # nothing waited for the announced 4 GiB
            assert protocol.connection.state is State.BROKEN
            assert app.data == b""

    run(main())


def test_slowloris_handshake_times_out(ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture) -> None:
    """A client trickling a valid-looking handshake (1 byte / 50 ms) is cut off by handshake_timeout=0.5 s."""

    async def main() -> None:
        server = await start_echo_server(ntlm_users, handshake_timeout=0.5)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            first = Connection(SecurityContext.create(False, **client_options(ntlm_users))).data_to_send()
            for byte in first * 10:  # far more bytes than fit in 0.5 s
                if reader.at_eof() or writer.is_closing():
                    break
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    break
                try:
                    if await asyncio.wait_for(reader.read(100), 0.05) == b"":
                        break  # the server closed the connection on us
                except asyncio.TimeoutError:
                    pass
            else:
                pytest.fail("the server let a slowloris client trickle forever")
            writer.close()
            await settle()

    with caplog.at_level(logging.WARNING, logger="negotiate_stream"):
        run(main())
    assert any("did not complete within 0.5 s" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("flood", [200, pytest.param(1000, marks=pytest.mark.slow)])
def test_handshake_flood_keeps_serving(ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture, flood: int) -> None:
    """A flood of garbage or silent connections: a good client is still served, each failure logged, no task leaks."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * flood + 64  # both ends of every connection live in this process
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))

    async def main() -> None:
        before = other_tasks()
        server = await start_echo_server(ntlm_users, handshake_timeout=1.0)
        port = port_of(server)
        rng = random.Random(8)
        raw: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for index in range(flood):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if index % 2 == 0:
                writer.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
            raw.append((reader, writer))
        # The good client, while the flood is in flight.
        reader, writer = await nsa.open_connection("127.0.0.1", port, **client_options(ntlm_users))
        data = payload(200_000, 4)
        writer.write(data)
        writer.write_eof()
        assert digest(await reader.read()) == digest(data)
        writer.close()
        # Every flooding connection is closed by the server (garbage at once, silence after the timeout).
        for flood_reader, flood_writer in raw:
            try:
                while await flood_reader.read(65536):
                    pass
            except ConnectionError:
                pass
            flood_writer.close()
        server.close()
        await server.wait_closed()
        await settle()
        assert other_tasks() == before

    with caplog.at_level(logging.WARNING, logger="negotiate_stream"):
        run(main())
    failures = [r for r in caplog.records if "handshake" in r.getMessage() and "failed" in r.getMessage()]
    assert len(failures) == flood


def test_peer_never_reading_blocks_drain_with_bounded_memory(ntlm_users: NTLMUsers) -> None:
    """The peer stops reading: our writer blocks in drain() well before 64 MiB, and RSS stays bounded."""
    peer_may_read = asyncio.Event
    chunk = payload(1 << 20, 6)
    progress: list[int] = []

    async def main() -> None:
        release = peer_may_read()

        async def lazy(peer: RawPeer) -> None:
            await release.wait()
            total = 0
            while total < len(chunk) * len(progress):
                total += len(await peer.receive(min(1 << 20, len(chunk) * len(progress) - total)))
            progress.append(-total)

        server = await start_raw_server(ntlm_users, lazy)
        async with server:
            _reader, writer = await open_client(server, ntlm_users)
            rss_before = rss_bytes()

            async def write_64mib() -> None:
                for _ in range(64):
                    writer.write(chunk)
                    progress.append(1)
                    await writer.drain()

            task = asyncio.ensure_future(write_64mib())
            stalled_at = -1
            while stalled_at != len(progress):  # wait until the writer stops making progress
                stalled_at = len(progress)
                await asyncio.sleep(0.3)
            assert not task.done(), "64 MiB were accepted although the peer never read"
            growth = rss_bytes() - rss_before
            assert growth < 24 << 20, f"RSS grew by {growth / 2**20:.1f} MiB while the peer was not reading"
            assert writer.transport.get_write_buffer_size() <= 64 * 1024 + len(chunk) + 4096
            task.cancel()  # cancelling drain() leaves the stream consistent: whole writes only
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
            while progress[-1] >= 0:
                await asyncio.sleep(0.01)
            assert -progress[-1] == len(chunk) * (len(progress) - 1)  # every accepted write arrived whole
            writer.close()

    run(main())


def test_half_open_peers_do_not_hang_the_server(ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture) -> None:
    """Peers half-closing before or mid-handshake get an Error frame and a prompt close (despite the 30 s timeout)."""

    async def main() -> None:
        server = await start_echo_server(ntlm_users)
        async with server:
            for index in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
                if index % 2:
                    writer.write(Connection(SecurityContext.create(False, **client_options(ntlm_users))).data_to_send())
                writer.write_eof()
                received = await asyncio.wait_for(reader.read(), 5.0)  # a hang guard, not a timing assertion
                if index % 2:  # the server's challenge, then (our EOF mid-handshake) an Error frame
                    assert received.startswith(bytes([nns.MessageId.HANDSHAKE_IN_PROGRESS]))
                # Either way the last thing the server sends is an Error frame, then it closes.
                parsed = None
                while received:
                    parsed = nns.parse_handshake(received, 0)
                    assert parsed is not None
                    received = received[parsed[1] :]
                assert parsed is not None and parsed[0].message_id is nns.MessageId.HANDSHAKE_ERROR
                writer.close()

    with caplog.at_level(logging.WARNING, logger="negotiate_stream"):
        run(main(), timeout=20)
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 20


# -- cancellation ----------------------------------------------------------------------------------------------------


def test_cancel_open_connection_at_every_step(ntlm_users: NTLMUsers) -> None:
    """open_connection cancelled at any step is either usable or closed, leaks no task; the server keeps serving."""
    # Cancel after 0, 1, 2, ... loop iterations: either it completed (usable) or it raised CancelledError and
    # closed its socket.

    async def main() -> None:
        server = await start_echo_server(ntlm_users)
        async with server:
            before = other_tasks()
            outcomes = {"cancelled": 0, "completed": 0}
            for steps in range(60):
                task = asyncio.ensure_future(open_client(server, ntlm_users))
                for _ in range(steps):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    reader, writer = await task
                except asyncio.CancelledError:
                    outcomes["cancelled"] += 1
                    continue
                outcomes["completed"] += 1
                writer.write(b"still consistent")
                assert await reader.readexactly(16) == b"still consistent"
                writer.close()
                await writer.wait_closed()
            assert outcomes["cancelled"] > 0 and outcomes["completed"] > 0
            await settle()
            assert other_tasks() - before == set(), "tasks leaked by cancelled handshakes"
            reader, writer = await open_client(server, ntlm_users)
            writer.write(b"ok")
            assert await reader.readexactly(2) == b"ok"
            writer.close()
            await writer.wait_closed()
        await settle()
        assert other_tasks() - before == set()

    run(main())


def test_cancel_wrap_streams_mid_handshake_closes_transport(ntlm_users: NTLMUsers) -> None:
    """Cancelling start_negotiate (via wrap_streams) while the peer is silent closes the connection."""
    seen: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())  # until our side closes
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            task = asyncio.ensure_future(nsa.wrap_streams(reader, writer, **client_options(ntlm_users)))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert writer.transport.is_closing()
            while not seen:
                await asyncio.sleep(0.01)

    run(main())
    assert seen[0].startswith(bytes([nns.MessageId.HANDSHAKE_IN_PROGRESS]))


def test_cancelled_drain_leaves_the_stream_consistent(ntlm_users: NTLMUsers) -> None:
    """Cancelling a waiting drain() five times loses nothing: the stream stays open, every byte arrives in order."""
    # write() is synchronous, so a write cannot be cancelled half-way: records stay whole whatever drain() does.
    chunk = payload(200_000, 6)

    async def main() -> None:
        async with writer_to_paused_app(ntlm_users) as (app, server_transport, writer):
            expected = hashlib.sha256()
            cancelled = writes = 0
            while cancelled < 5:
                writer.write(chunk)
                expected.update(chunk)
                writes += 1
                assert writes < 5000, "drain() never had to wait"
                drain = asyncio.ensure_future(writer.drain())
                await asyncio.sleep(0)
                if drain.done():
                    await drain
                    continue
                drain.cancel()
                cancelled += 1
                with pytest.raises(asyncio.CancelledError):
                    await drain
                assert not writer.is_closing()
            server_transport.resume_reading()
            writer.write(b"tail")
            expected.update(b"tail")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            assert await app.lost is None
            assert hashlib.sha256(app.data).hexdigest() == expected.hexdigest()

    run(main())


def test_cancel_read_keeps_stream_consistent(ntlm_users: NTLMUsers) -> None:
    """Cancel a pending read (and a readexactly with partial data): later reads get every byte in order."""

    async def main() -> None:
        server = await start_echo_server(ntlm_users)
        async with server:
            reader, writer = await open_client(server, ntlm_users)
            pending = asyncio.ensure_future(reader.read(100))
            await asyncio.sleep(0.05)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            partial = asyncio.ensure_future(reader.readexactly(10))
            writer.write(b"12345")
            await asyncio.sleep(0.05)
            partial.cancel()
            with pytest.raises(asyncio.CancelledError):
                await partial
            writer.write(b"67890abc")
            assert await reader.readexactly(13) == b"1234567890abc"
            writer.close()
            await writer.wait_closed()

    run(main())


# -- concurrency -----------------------------------------------------------------------------------------------------

_HEADER = struct.Struct("!BIHI")  # writer id, sequence, length, crc32


def _record(writer_id: int, seq: int, rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randrange(1, 1500))
    return _HEADER.pack(writer_id, seq, len(body), zlib.crc32(body)) + body


async def _hammer_reader(reader: asyncio.StreamReader, expected: dict[int, int]) -> int:
    """Parse records until EOF; check order per writer and checksums; return the record count."""
    next_seq = dict.fromkeys(expected, 0)
    count = 0
    while True:
        try:
            header = await reader.readexactly(_HEADER.size)
        except asyncio.IncompleteReadError as exc:
            assert exc.partial == b"", "stream ended inside a record header"
            break
        writer_id, seq, length, crc = _HEADER.unpack(header)
        body = await reader.readexactly(length)
        assert zlib.crc32(body) == crc, f"corrupt record {writer_id}/{seq}"
        assert seq == next_seq[writer_id], f"writer {writer_id}: got {seq}, expected {next_seq[writer_id]}"
        next_seq[writer_id] += 1
        count += 1
    assert next_seq == expected
    return count


async def _hammer_writer(writer: asyncio.StreamWriter, writer_id: int, count: int) -> None:
    rng = random.Random(writer_id)
    for seq in range(count):
        writer.write(_record(writer_id, seq, rng))
        if seq % 16 == 0:
            await writer.drain()
        elif seq % 3 == 0:
            await asyncio.sleep(0)


def _hammer(users: NTLMUsers, total: int, *, duplex: bool) -> None:
    """2 writers per direction (both directions when ``duplex``) and one reader per receiving end."""
    directions = 2 if duplex else 1
    per_writer = total // (2 * directions)
    counts: dict[str, int] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        read = asyncio.ensure_future(_hammer_reader(reader, {1: per_writer, 2: per_writer}))
        if duplex:
            await asyncio.gather(_hammer_writer(writer, 3, per_writer), _hammer_writer(writer, 4, per_writer))
        writer.write_eof()
        counts["server"] = await read
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(users))
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(users))
            read = asyncio.ensure_future(_hammer_reader(reader, {3: per_writer, 4: per_writer} if duplex else {}))
            await asyncio.gather(_hammer_writer(writer, 1, per_writer), _hammer_writer(writer, 2, per_writer))
            writer.write_eof()
            counts["client"] = await read
            writer.close()
            await writer.wait_closed()

    run(main(), timeout=600)
    assert counts["server"] == 2 * per_writer
    assert counts["client"] == (2 * per_writer if duplex else 0)


def test_two_writers_two_readers_20k_records(ntlm_users: NTLMUsers) -> None:
    """2 writers x 2 directions, a reader at each end: 20k records, none interleaved, lost or duplicated."""
    _hammer(ntlm_users, 20_000, duplex=True)


@pytest.mark.slow
def test_two_writers_two_readers_100k_records(ntlm_users: NTLMUsers) -> None:
    """The full 100k-record run of the test above."""
    _hammer(ntlm_users, 100_000, duplex=True)


def test_shared_crypto_state_two_writers(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    """NTLM without ESS: 2 writers hammer one direction (one RC4 state means the wire must be half-duplex)."""
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    _hammer(ntlm_users, 10_000, duplex=False)


# -- soak ------------------------------------------------------------------------------------------------------------


def _soak(users: NTLMUsers, connections: int, concurrency: int = 8) -> tuple[int, int, int]:
    """Echo 1 MiB over ``connections`` sealed connections; return (RSS after warm-up, RSS after, live protocols)."""
    data = payload(1 << 20, 21)
    expected = digest(data)

    async def one(server_port: int) -> None:
        reader, writer = await nsa.open_connection("127.0.0.1", server_port, **client_options(users))
        writer.write(data)
        writer.write_eof()
        received = await reader.read()
        assert len(received) == len(data)
        assert digest(received) == expected
        writer.close()
        await writer.wait_closed()

    async def batch(port: int, count: int) -> None:
        for start in range(0, count, concurrency):
            await asyncio.gather(*(one(port) for _ in range(min(concurrency, count - start))))

    async def main() -> tuple[int, int, int]:
        server = await start_echo_server(users)
        async with server:
            port = port_of(server)
            # Warm-up: the allocator's and the kernel's buffers reach their working size in the first ~100.
            await batch(port, min(100, connections))
            gc.collect()
            before = rss_bytes()
            await batch(port, connections)
            await settle()
        gc.collect()
        alive = sum(isinstance(obj, (nsa.NegotiateProtocol, Connection)) for obj in gc.get_objects())
        return before, rss_bytes(), alive

    return run(main(), timeout=600)


def test_soak_50_connections(ntlm_users: NTLMUsers) -> None:
    """50 sealed connections x 1 MiB through an echo server: every byte back intact, no protocol object kept."""
    _, _, alive = _soak(ntlm_users, 50)
    assert alive == 0


@pytest.mark.slow
def test_soak_1000_connections(ntlm_users: NTLMUsers, capsys: pytest.CaptureFixture[str]) -> None:
    """1,000 sealed connections x 1 MiB: every byte back intact; RSS after ~ before (figures printed)."""
    before, after, alive = _soak(ntlm_users, int(os.environ.get("NEGOTIATE_SOAK_CONNECTIONS", "1000")))
    with capsys.disabled():
        print(f"\nsoak RSS after warm-up {before / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB")
    assert alive == 0
    assert after - before < 32 << 20
