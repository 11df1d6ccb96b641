"""asyncio streams API over real loopback TCP and real NTLM: open_connection, start_server, wrap_streams.

Covers transfers at every protection level, 64 MiB sealed (with a throughput figure printed, never asserted),
50 concurrent writers, full duplex, the shared-cipher-state case (NTLM without ESS), flow control and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from tests.asyncio_helpers import LEVELS, client_opts, run_guarded, server_opts

from negotiate_stream import asyncio_ as nsa
from negotiate_stream._connection import Connection
from negotiate_stream._context import SecurityContext
from negotiate_stream.errors import IntegrityError
from negotiate_stream.testing import NTLMUsers

T = TypeVar("T")
GUARD = 120.0  # a hung test fails after this long instead of stalling the suite; never a performance check


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh loop, failing after GUARD seconds rather than hanging."""
    return run_guarded(coro, GUARD)


def port_of(server: asyncio.Server) -> int:
    """The port ``server`` listens on."""
    return int(server.sockets[0].getsockname()[1])


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest() * 4096  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


async def send_all(writer: asyncio.StreamWriter, data: bytes, step: int = 1 << 20) -> None:
    """Write ``data`` in ``step``-sized writes, honouring flow control."""
    for start in range(0, len(data), step):
        writer.write(data[start : start + step])
        await writer.drain()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Read until EOF."""
    received = bytearray()
    while chunk := await reader.read(256 * 1024):
        received += chunk
    return bytes(received)


# -- transfers ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_streams_1mib_both_directions(ntlm_users: NTLMUsers, level: str) -> None:
    """Client and server each send 1 MiB (and half-close) while reading the other's: SHA-256 match both ways."""
    upstream, downstream = payload(1 << 20, seed=1), payload(1 << 20, seed=2)
    server_got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send() -> None:
            await send_all(writer, downstream, step=100_000)
            writer.write_eof()

        sent = asyncio.ensure_future(send())
        server_got.append(await read_all(reader))
        await sent
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_opts(ntlm_users, level))
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_opts(ntlm_users, level))
            info = writer.get_extra_info("negotiate_stream")
            assert info.protection_level.value == level
            received = asyncio.ensure_future(read_all(reader))
            await send_all(writer, upstream, step=70_000)
            writer.write_eof()
            assert hashlib.sha256(await received).digest() == hashlib.sha256(downstream).digest()
            writer.close()
            await writer.wait_closed()
        assert hashlib.sha256(server_got[0]).digest() == hashlib.sha256(upstream).digest()

    run(main())


async def _timed_upload(open_pair: Any, size: int) -> float:
    """Send ``size`` bytes to a hashing server; return the seconds until its digest came back (verified)."""
    data = payload(size, seed=64)
    reader, writer = await open_pair()
    start = time.perf_counter()
    await send_all(writer, data)
    writer.write_eof()
    digest = await reader.readexactly(32)
    elapsed = time.perf_counter() - start
    assert digest == hashlib.sha256(data).digest()
    writer.close()
    await writer.wait_closed()
    return elapsed


async def hashing_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Hash everything until EOF, answer the SHA-256, close."""
    digest = hashlib.sha256()
    while chunk := await reader.read(256 * 1024):
        digest.update(chunk)
    writer.write(digest.digest())
    await writer.drain()
    writer.close()


def test_64mib_sealed_transfer_and_throughput_vs_plain(
    ntlm_users: NTLMUsers, capsys: pytest.CaptureFixture[str]
) -> None:
    """64 MiB sealed arrive intact (checksum); the throughput against plain asyncio is printed, not asserted."""
    size = 64 << 20

    async def main() -> tuple[float, float]:
        sealed_server = await nsa.start_server(hashing_handler, "127.0.0.1", 0, **server_opts(ntlm_users))
        plain_server = await asyncio.start_server(hashing_handler, "127.0.0.1", 0)
        async with sealed_server, plain_server:
            sealed = await _timed_upload(
                lambda: nsa.open_connection("127.0.0.1", port_of(sealed_server), **client_opts(ntlm_users)), size
            )
            plain = await _timed_upload(lambda: asyncio.open_connection("127.0.0.1", port_of(plain_server)), size)
        return sealed, plain

    sealed, plain = run(main())
    with capsys.disabled():
        print(
            f"\n64 MiB upload: sealed {sealed:.2f} s = {64 / sealed:.0f} MiB/s, "
            f"plain asyncio {plain:.2f} s = {64 / plain:.0f} MiB/s"
        )


def test_reader_and_writer_in_parallel_full_duplex(ntlm_users: NTLMUsers) -> None:
    """Both ends write 8 MiB while reading 8 MiB at the same time (one encryptor and one decryptor per side
    running concurrently on one context)."""
    size = 8 << 20
    client_data, server_data = payload(size, seed=11), payload(size, seed=12)
    server_got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = asyncio.ensure_future(reader.readexactly(size))
        await send_all(writer, server_data, step=300_000)
        server_got.append(await received)
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_opts(ntlm_users))
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_opts(ntlm_users))
            received = asyncio.ensure_future(reader.readexactly(size))
            await send_all(writer, client_data, step=500_000)
            assert await received == server_data
            writer.close()
            await writer.wait_closed()
        assert server_got == [client_data]

    run(main())


# -- concurrent writers ---------------------------------------------------------------------------------------------

_HEADER = struct.Struct(">HHI")  # writer id, message number, body length


def _message_body(writer_id: int, number: int) -> bytes:
    sizes = (1, 900, 70_000, 64_512, 13, 150_000)  # some span several records
    return payload(sizes[(writer_id + number) % len(sizes)], seed=writer_id * 1000 + number)


async def _concurrent_writers(writer: asyncio.StreamWriter, writers: int, messages: int) -> None:
    async def one_writer(writer_id: int) -> None:
        for number in range(messages):
            body = _message_body(writer_id, number)
            writer.write(_HEADER.pack(writer_id, number, len(body)) + body)  # one write = one message
            await writer.drain()
            if number % 3 == writer_id % 3:
                await asyncio.sleep(0)  # vary the interleaving between tasks

    await asyncio.gather(*(one_writer(index) for index in range(writers)))


async def _check_messages(reader: asyncio.StreamReader, writers: int, messages: int) -> None:
    next_number = [0] * writers
    for _ in range(writers * messages):
        writer_id, number, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        assert writer_id < writers, "a message was split or interleaved: its header is garbage"
        assert number == next_number[writer_id], f"writer {writer_id}: message {number} out of order"
        assert await reader.readexactly(length) == _message_body(writer_id, number)
        next_number[writer_id] += 1
    assert next_number == [messages] * writers


def test_50_concurrent_writers_messages_arrive_intact_and_in_order(ntlm_users: NTLMUsers) -> None:
    """50 tasks write framed messages on one connection (some spanning several records) while the server's 50
    tasks do the same the other way: every message arrives whole, unsplit and in per-writer order."""
    writers, messages = 50, 12

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.gather(_check_messages(reader, writers, messages), _concurrent_writers(writer, writers, messages))
        writer.write(b"ok")
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_opts(ntlm_users))
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_opts(ntlm_users))
            await asyncio.gather(
                _concurrent_writers(writer, writers, messages), _check_messages(reader, writers, messages)
            )
            assert await reader.read() == b"ok"
            writer.close()

    run(main())


# -- NTLM without Extended Session Security: one cipher state for both directions -----------------------------------


def test_shared_crypto_state_request_response_stays_correct(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LM_COMPAT_LEVEL=0 makes pyspnego negotiate NTLM without ESS: both sides report shares_crypto_state, and
    request/response traffic in both directions (with several concurrent writers per turn, multi-record
    messages) stays correct."""
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")  # before either context exists
    rounds, writers = 8, 10
    server_flags: list[bool] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_flags.append(writer.get_extra_info("negotiate_stream").shares_crypto_state)
        for _ in range(rounds):
            await _check_messages(reader, writers, 1)  # the client's whole turn
            await _concurrent_writers(writer, writers, 1)  # then ours
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_opts(ntlm_users))
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_opts(ntlm_users))
            assert writer.get_extra_info("negotiate_stream").shares_crypto_state is True
            for _ in range(rounds):
                await _concurrent_writers(writer, writers, 1)
                await _check_messages(reader, writers, 1)
            assert await reader.read() == b""
            writer.close()

    run(main())
    assert server_flags == [True]


def test_shared_crypto_state_crossing_records_fail_loudly(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ESS, records crossing on the wire desynchronise the shared keystream: both sides must get a typed
    IntegrityError and deliver nothing, never garbage (the documented request/response rule)."""
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")

    class SpeakFirst(asyncio.Protocol):
        def __init__(self) -> None:
            self.data = bytearray()
            self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, nsa.NegotiateTransport)
            assert transport.get_extra_info("negotiate_stream").shares_crypto_state
            transport.write(b"I talk first")  # both ends do: the records cross

        def data_received(self, data: bytes) -> None:
            self.data += data

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set_result(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server_app = SpeakFirst()
        server = await loop.create_server(
            lambda: nsa.NegotiateProtocol(
                Connection(SecurityContext.create(True, **server_opts(ntlm_users))), server_app
            ),
            "127.0.0.1",
            0,
        )
        async with server:
            client_app = SpeakFirst()
            connection = Connection(SecurityContext.create(False, **client_opts(ntlm_users)))
            await loop.create_connection(
                lambda: nsa.NegotiateProtocol(connection, client_app), "127.0.0.1", port_of(server)
            )
            client_exc = await client_app.lost
            server_exc = await server_app.lost
        # Each side protected its first record before verifying the peer's, so both keystreams are off.
        assert isinstance(client_exc, IntegrityError)
        assert isinstance(server_exc, IntegrityError)
        assert client_app.data == b"" and server_app.data == b""

    run(main())


# -- wrap_streams, defaults, flow control, cancellation -------------------------------------------------------------


def test_wrap_streams_after_preamble_with_handshake_bytes_already_buffered(ntlm_users: NTLMUsers) -> None:
    """The server reads a plaintext line with readline() while the client's first handshake message is already
    in the old reader's buffer: wrap_streams hands those bytes to the handshake; both new pairs work."""
    results: list[Any] = []

    async def plain_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"application/negotiate\n"
        # Wait until the client's first handshake message sits in the old reader's buffer too.
        while not reader._buffer:  # type: ignore[attr-defined]
            await asyncio.sleep(0.001)
        results.append(len(reader._buffer))  # type: ignore[attr-defined]
        new_reader, new_writer = await nsa.wrap_streams(reader, writer, server_side=True, **server_opts(ntlm_users))
        results.append(new_writer.get_extra_info("peer_identity"))
        new_writer.write(b"upgraded: " + await new_reader.readexactly(5))
        await new_writer.drain()
        new_writer.close()

    async def main() -> None:
        server = await asyncio.start_server(plain_handler, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(b"application/negotiate\n")
            new_reader, new_writer = await nsa.wrap_streams(reader, writer, **client_opts(ntlm_users))
            new_writer.write(b"hello")
            assert await new_reader.read() == b"upgraded: hello"
            new_writer.close()
            await new_writer.wait_closed()

    run(main())
    assert results[0] > 0
    assert results[1] == "NEGOTIATE-TEST\\alice"


def test_open_connection_default_target_is_host_spn(ntlm_users: NTLMUsers) -> None:
    """Without a target, the client authenticates to ``host/<host>``."""

    async def main() -> None:
        server = await nsa.start_server(hashing_handler, "127.0.0.1", 0, **server_opts(ntlm_users))
        async with server:
            options = client_opts(ntlm_users)
            del options["target"]
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **options)
            assert writer.get_extra_info("peer_identity") == "host/127.0.0.1"
            writer.write_eof()
            assert await reader.read() == hashlib.sha256(b"").digest()
            writer.close()

    run(main())


def test_drain_waits_for_a_slow_reader_and_buffers_stay_bounded(ntlm_users: NTLMUsers) -> None:
    """The server does not read: the client's write buffer grows past its high-water mark, drain() waits (and
    stays bounded), and completes once the server reads everything."""
    high = 128 * 1024
    chunk = payload(64 * 1024, seed=5)
    overhead = 64  # record header + signature, generously
    start_reading = asyncio.Event()
    server_got: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_reading.wait()
        server_got.append(len(await read_all(reader)))
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_opts(ntlm_users))
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_opts(ntlm_users))
            transport = writer.transport
            transport.set_write_buffer_limits(high=high)
            sent = 0
            while transport.get_write_buffer_size() <= high:
                writer.write(chunk)
                sent += len(chunk)
                assert sent < 512 * 1024 * 1024, "the socket never filled up"
                await asyncio.sleep(0)
            assert transport.get_write_buffer_size() <= high + len(chunk) + 2 * overhead
            drained = asyncio.ensure_future(writer.drain())
            for _ in range(20):
                await asyncio.sleep(0)
            assert not drained.done(), "drain() returned while the peer was not reading"
            start_reading.set()
            await drained
            writer.write_eof()
            await reader.read()
            writer.close()
            await writer.wait_closed()
            assert server_got == [sent]

    run(main())


def test_cancelled_drain_leaves_the_stream_consistent(ntlm_users: NTLMUsers) -> None:
    """A write cannot be cancelled half-way (write() is synchronous); cancelling a waiting drain() loses nothing
    and the records stay whole: the peer receives every byte of every write in order."""
    chunk = payload(200_000, seed=6)
    start_reading = asyncio.Event()

    async def gated_hashing_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_reading.wait()
        await hashing_handler(reader, writer)

    async def main() -> None:
        server = await nsa.start_server(gated_hashing_handler, "127.0.0.1", 0, **server_opts(ntlm_users))
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_opts(ntlm_users))
            expected = hashlib.sha256()
            cancelled = writes = 0
            while cancelled < 5:
                writer.write(chunk)
                expected.update(chunk)
                writes += 1
                assert writes < 5000, "drain() never had to wait"
                drain = asyncio.ensure_future(writer.drain())
                await asyncio.sleep(0)
                if not drain.done():
                    drain.cancel()
                    cancelled += 1
                with contextlib.suppress(asyncio.CancelledError):
                    await drain
            start_reading.set()
            writer.write(b"tail")
            expected.update(b"tail")
            writer.write_eof()
            assert await reader.readexactly(32) == expected.digest()
            writer.close()

    run(main())
