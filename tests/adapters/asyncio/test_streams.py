"""Streams API over real loopback TCP and real NTLM: open_connection, start_server, wrap_streams.

Covers transfers at every protection level, 64 MiB sealed (with a throughput figure printed, never asserted),
50 concurrent writers, full duplex, the shared-cipher-state case (NTLM without ESS), flow control and close.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from typing import Any

import pytest

from negotiate_stream import asyncio_ as nsa
from negotiate_stream.errors import IntegrityError, StreamClosedError
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import (
    LEVELS,
    client_options,
    connect_app,
    digest,
    negotiator,
    open_client,
    payload,
    port_of,
    run,
    serve_app,
    server_options,
    start_echo_server,
    writer_to_paused_app,
)

# Streams tests move more data than most: a longer hang guard (never a performance check).
GUARD = 120.0


async def send_all(writer: asyncio.StreamWriter, data: bytes, step: int = 1 << 20) -> None:
    """Write ``data`` in ``step``-sized writes, honouring flow control."""
    for start in range(0, len(data), step):
        writer.write(data[start : start + step])
        await writer.drain()


async def send_then_eof(writer: asyncio.StreamWriter, data: bytes, step: int = 1 << 20) -> None:
    """:func:`send_all`, then half-close (``write_eof``)."""
    await send_all(writer, data, step)
    writer.write_eof()


async def echo_back(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    """Send ``data`` in 1 MiB writes, then EOF, while reading the echo until the peer's EOF; return the echo."""
    sender = asyncio.ensure_future(send_then_eof(writer, data))
    received = await reader.read()
    await sender
    return received


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Read until EOF."""
    received = bytearray()
    while chunk := await reader.read(256 * 1024):
        received += chunk
    return bytes(received)


async def hashing_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Hash everything until EOF, answer the SHA-256, close."""
    hashed = hashlib.sha256()
    while chunk := await reader.read(256 * 1024):
        hashed.update(chunk)
    writer.write(hashed.digest())
    await writer.drain()
    writer.close()


# -- transfers ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_streams_1mib_both_directions(ntlm_users: NTLMUsers, level: str) -> None:
    """Both ends send 1 MiB and half-close while reading: SHA-256 match both ways; both ends see the session."""
    upstream, downstream = payload(1 << 20, seed=1), payload(1 << 20, seed=2)
    server_got: list[bytes] = []
    seen: dict[str, Any] = {}
    handled = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["identity"] = writer.get_extra_info("peer_identity")
        seen["level"] = writer.get_extra_info("protection_level")

        sent = asyncio.ensure_future(send_then_eof(writer, downstream, step=100_000))
        server_got.append(await read_all(reader))
        await sent
        writer.close()
        handled.set()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users, level))
        async with server:
            reader, writer = await open_client(server, ntlm_users, level)
            info = writer.get_extra_info("negotiate_stream")
            assert info.protection_level.value == level
            assert writer.get_extra_info("peername")[0] == "127.0.0.1"  # falls back to the socket's extras
            received = asyncio.ensure_future(read_all(reader))
            await send_then_eof(writer, upstream, step=70_000)
            assert digest(await received) == digest(downstream)
            # The server may still be reading our upstream when its downstream is complete: wait for the handler.
            await handled.wait()
            writer.close()
            await writer.wait_closed()
        assert digest(server_got[0]) == digest(upstream)

    run(main(), GUARD)
    assert seen["identity"] == "NEGOTIATE-TEST\\alice"
    assert seen["level"].value == level


def test_reader_and_writer_in_parallel_full_duplex(ntlm_users: NTLMUsers) -> None:
    """Both ends write 8 MiB while reading 8 MiB (one encryptor and one decryptor per side at the same time)."""
    size = 8 << 20
    client_data, server_data = payload(size, seed=11), payload(size, seed=12)
    server_got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = asyncio.ensure_future(reader.readexactly(size))
        await send_all(writer, server_data, step=300_000)
        server_got.append(await received)
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            reader, writer = await open_client(server, ntlm_users)
            received = asyncio.ensure_future(reader.readexactly(size))
            await send_all(writer, client_data, step=500_000)
            assert await received == server_data
            writer.close()
            await writer.wait_closed()
        assert server_got == [client_data]

    run(main(), GUARD)


async def _echo_transfer(users: NTLMUsers, size: int, level: str = "encrypt_and_sign") -> tuple[bytes, bytes]:
    """Send ``size`` bytes through an echo server while reading the echo in parallel."""
    data = payload(size, 7)
    server = await start_echo_server(users, level)
    async with server:
        reader, writer = await open_client(server, users, level)
        received = await echo_back(reader, writer, data)
        writer.close()
        await writer.wait_closed()
    return data, received


async def _plain_echo_transfer(size: int) -> float:
    """The same echo over plain asyncio streams (the throughput reference); return the seconds it took."""
    data = payload(size, 7)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(256 * 1024):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        received = await echo_back(reader, writer, data)
        elapsed = time.perf_counter() - start
        writer.close()
    assert digest(received) == digest(data)
    return elapsed


def test_64mib_sealed_echo_and_throughput(ntlm_users: NTLMUsers, capsys: pytest.CaptureFixture[str]) -> None:
    """64 MiB through a sealed echo come back intact; sealed vs plain throughput is printed, never asserted."""
    size = 64 << 20

    async def main() -> tuple[float, float]:
        start = time.perf_counter()
        data, received = await _echo_transfer(ntlm_users, size)
        sealed = time.perf_counter() - start
        assert len(received) == len(data)
        assert digest(received) == digest(data)
        plain = await _plain_echo_transfer(size)
        return sealed, plain

    sealed, plain = run(main(), timeout=300)
    with capsys.disabled():
        print(
            f"\n64 MiB echo (both directions): sealed {sealed:.2f} s = {2 * 64 / sealed:.0f} MiB/s moved, "
            f"plain asyncio {plain:.2f} s = {2 * 64 / plain:.0f} MiB/s"
        )


# -- concurrent writers ---------------------------------------------------------------------------------------------

_HEADER = struct.Struct(">HHI")  # writer id, message number, body length


def _message_body(writer_id: int, number: int) -> bytes:
    sizes = (1, 900, 70_000, 64_512, 13, 150_000)  # some span several records
    return payload(sizes[(writer_id + number) % len(sizes)], seed=writer_id * 1000 + number)


async def _concurrent_writers(writer: asyncio.StreamWriter, writers: int, messages: int) -> None:
    """``writers`` tasks each write ``messages`` framed messages on one connection (one write per message)."""

    async def one_writer(writer_id: int) -> None:
        for number in range(messages):
            body = _message_body(writer_id, number)
            writer.write(_HEADER.pack(writer_id, number, len(body)) + body)  # one write = one message
            await writer.drain()
            if number % 3 == writer_id % 3:
                await asyncio.sleep(0)  # vary the interleaving between tasks

    await asyncio.gather(*(one_writer(index) for index in range(writers)))


async def _check_messages(reader: asyncio.StreamReader, writers: int, messages: int) -> None:
    """Read what :func:`_concurrent_writers` wrote: every message whole, in per-writer order."""
    next_number = [0] * writers
    for _ in range(writers * messages):
        writer_id, number, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        assert writer_id < writers, "a message was split or interleaved: its header is garbage"
        assert number == next_number[writer_id], f"writer {writer_id}: message {number} out of order"
        assert await reader.readexactly(length) == _message_body(writer_id, number)
        next_number[writer_id] += 1
    assert next_number == [messages] * writers


def test_50_concurrent_writers_messages_arrive_intact_and_in_order(ntlm_users: NTLMUsers) -> None:
    """50 tasks per end write multi-record messages both ways: every message arrives whole, in per-writer order."""
    writers, messages = 50, 12

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.gather(_check_messages(reader, writers, messages), _concurrent_writers(writer, writers, messages))
        writer.write(b"ok")
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            reader, writer = await open_client(server, ntlm_users)
            await asyncio.gather(
                _concurrent_writers(writer, writers, messages), _check_messages(reader, writers, messages)
            )
            assert await reader.read() == b"ok"
            writer.close()

    run(main(), GUARD)


def _small_message(writer_id: int, seq: int) -> bytes:
    body = payload(100 + (writer_id * 997 + seq * 131) % 3000, writer_id * 1000 + seq)
    return struct.pack("!HHI", writer_id, seq, len(body)) + body


def test_50_concurrent_writers_each_write_is_one_record(ntlm_users: NTLMUsers) -> None:
    """50 writer tasks on one connection: each small write reaches data_received as exactly one whole chunk."""
    writers, per_writer = 50, 20
    chunks: list[bytes] = []

    class Sink(asyncio.Protocol):
        def __init__(self) -> None:
            self.finished = asyncio.Event()

        def data_received(self, data: bytes) -> None:
            chunks.append(data)
            if len(chunks) == writers * per_writer:
                self.finished.set()

    sinks: list[Sink] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def factory() -> nsa.NegotiateProtocol:
            sinks.append(Sink())
            return negotiator(True, sinks[-1], server_options(ntlm_users))

        server = await loop.create_server(factory, "127.0.0.1", 0)
        async with server:
            _reader, writer = await open_client(server, ntlm_users)

            async def write_all(writer_id: int) -> None:
                for seq in range(per_writer):
                    writer.write(_small_message(writer_id, seq))
                    if seq % 3 == 0:
                        await writer.drain()
                    else:
                        await asyncio.sleep(0)

            await asyncio.gather(*(write_all(i) for i in range(writers)))
            await sinks[0].finished.wait()
            writer.close()
            await writer.wait_closed()

    run(main(), GUARD)
    next_seq = [0] * writers
    for chunk in chunks:  # one data_received per record == per write: unsplit and not merged
        writer_id, seq, length = struct.unpack_from("!HHI", chunk)
        assert len(chunk) == 8 + length
        assert chunk == _small_message(writer_id, seq)
        assert seq == next_seq[writer_id]  # FIFO per writer
        next_seq[writer_id] += 1
    assert next_seq == [per_writer] * writers


# -- NTLM without Extended Session Security: one cipher state for both directions -----------------------------------


def test_shared_crypto_state_request_response_stays_correct(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ESS both sides report shares_crypto_state; turn-taking traffic with concurrent writers stays correct."""
    # LM_COMPAT_LEVEL=0 makes pyspnego negotiate NTLM without ESS; it must be set before either context exists.
    # One cipher state for both directions means the *wire* must be half-duplex: each turn is one side's
    # concurrent writers (multi-record messages), then the other side's.
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    rounds, writers = 8, 10
    server_flags: list[bool] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_flags.append(writer.get_extra_info("negotiate_stream").shares_crypto_state)
        for _ in range(rounds):
            await _check_messages(reader, writers, 1)  # the client's whole turn
            await _concurrent_writers(writer, writers, 1)  # then ours
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            reader, writer = await open_client(server, ntlm_users)
            assert writer.get_extra_info("negotiate_stream").shares_crypto_state is True
            for _ in range(rounds):
                await _concurrent_writers(writer, writers, 1)
                await _check_messages(reader, writers, 1)
            assert await reader.read() == b""
            writer.close()

    run(main(), GUARD)
    assert server_flags == [True]


def test_shared_crypto_state_crossing_records_fail_loudly(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ESS, records crossing on the wire give both sides IntegrityError and deliver nothing, never garbage."""
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
        server_app = SpeakFirst()
        server = await serve_app(ntlm_users, server_app)
        async with server:
            client_app = SpeakFirst()
            await connect_app(port_of(server), ntlm_users, client_app)
            client_exc = await client_app.lost
            server_exc = await server_app.lost
        # Each side protected its first record before verifying the peer's, so both keystreams are off.
        assert isinstance(client_exc, IntegrityError)
        assert isinstance(server_exc, IntegrityError)
        assert client_app.data == b"" and server_app.data == b""

    run(main(), GUARD)


# -- wrap_streams and defaults ----------------------------------------------------------------------------------------


def test_wrap_streams_after_preamble_with_handshake_bytes_already_buffered(ntlm_users: NTLMUsers) -> None:
    """wrap_streams hands bytes already in the old reader's buffer to the handshake; both new pairs work."""
    results: list[Any] = []

    async def plain_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"application/negotiate\n"
        # Wait until the client's first handshake message sits in the old reader's buffer too.
        while not reader._buffer:  # type: ignore[attr-defined]
            await asyncio.sleep(0.001)
        results.append(len(reader._buffer))  # type: ignore[attr-defined]
        new_reader, new_writer = await nsa.wrap_streams(reader, writer, server_side=True, **server_options(ntlm_users))
        results.append(new_writer.get_extra_info("peer_identity"))
        new_writer.write(b"upgraded: " + await new_reader.readexactly(5))
        await new_writer.drain()
        new_writer.close()

    async def main() -> None:
        server = await asyncio.start_server(plain_handler, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(b"application/negotiate\n")
            new_reader, new_writer = await nsa.wrap_streams(reader, writer, **client_options(ntlm_users))
            assert new_writer.get_extra_info("negotiate_stream").is_encrypted
            new_writer.write(b"hello")
            assert await new_reader.read() == b"upgraded: hello"
            new_writer.close()
            await new_writer.wait_closed()

    run(main(), GUARD)
    assert results[0] > 0
    assert results[1] == "NEGOTIATE-TEST\\alice"


def test_open_connection_default_target_is_host_spn(ntlm_users: NTLMUsers) -> None:
    """Without a target, the client authenticates to ``host/<host>``."""

    async def main() -> None:
        server = await nsa.start_server(hashing_handler, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            options = client_options(ntlm_users)
            del options["target"]
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **options)
            assert writer.get_extra_info("peer_identity") == "host/127.0.0.1"
            writer.write_eof()
            assert await reader.read() == hashlib.sha256(b"").digest()
            writer.close()

    run(main(), GUARD)


# -- flow control and close -----------------------------------------------------------------------------------------


def test_drain_waits_for_a_paused_reader_and_buffers_stay_bounded(ntlm_users: NTLMUsers) -> None:
    """A paused reader makes drain() wait with the write buffer bounded; after resuming, every byte arrives."""
    chunk = payload(256 * 1024, 13)
    total_chunks = 64

    async def main() -> None:
        async with writer_to_paused_app(ntlm_users) as (app, server_transport, writer):
            assert not server_transport.is_reading()
            writer.transport.set_write_buffer_limits(high=128 * 1024)
            _low, high = writer.transport.get_write_buffer_limits()
            assert high == 128 * 1024
            max_buffered = 0
            written = 0
            drain = asyncio.ensure_future(asyncio.sleep(0))
            for _ in range(total_chunks):
                writer.write(chunk)
                written += 1
                max_buffered = max(max_buffered, writer.transport.get_write_buffer_size())
                drain = asyncio.ensure_future(writer.drain())
                done, _ = await asyncio.wait({drain}, timeout=0.2)
                if not done:
                    break  # drain() is waiting: the peer is not reading
            assert not drain.done(), "drain() never waited although the peer stopped reading"
            assert written < total_chunks
            # Bounded: at most the high-water mark plus one write's records (each record adds a 20-byte header+sig).
            assert max_buffered <= high + len(chunk) + 4096
            server_transport.resume_reading()
            await drain
            for _ in range(total_chunks - written):
                writer.write(chunk)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
            assert await app.lost is None
        assert digest(app.data) == digest(chunk * total_chunks)

    run(main(), GUARD)


def test_close_and_wait_closed_after_echo_is_clean(ntlm_users: NTLMUsers) -> None:
    """close() + wait_closed() after an echo raise nothing; later writes raise StreamClosedError."""

    async def main() -> None:
        server = await start_echo_server(ntlm_users)
        async with server:
            reader, writer = await open_client(server, ntlm_users)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()
            assert writer.is_closing()
            with pytest.raises(StreamClosedError):
                writer.write(b"late")

    run(main(), GUARD)
