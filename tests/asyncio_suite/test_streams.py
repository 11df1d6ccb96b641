"""Streams API (open_connection / start_server / wrap_streams) over real loopback TCP and real NTLM."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from negotiate_stream import asyncio_ as nsa
from negotiate_stream.errors import BrokenStreamError, IntegrityError, StreamClosedError
from negotiate_stream.testing import NTLMUsers

from tests.support.aio import (
    LEVELS,
    TamperingProxy,
    client_options,
    digest,
    payload,
    port_of,
    run,
    server_options,
    start_echo_server,
)


@pytest.mark.parametrize("level", LEVELS)
def test_both_directions_1mib(ntlm_users: NTLMUsers, level: str) -> None:
    """Client -> server and server -> client, 1 MiB each, checksums match; the server sees who connected."""
    upload, download = payload(1 << 20, 1), payload(1 << 20, 2)
    seen: dict[str, object] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["identity"] = writer.get_extra_info("peer_identity")
        seen["level"] = writer.get_extra_info("protection_level")
        seen["upload"] = digest(await reader.read())  # until the client's half-close
        writer.write(download)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users, level))
        async with server:
            reader, writer = await nsa.open_connection(
                "127.0.0.1", port_of(server), **client_options(ntlm_users, level)
            )
            assert writer.get_extra_info("negotiate_stream").protection_level.value == level
            assert writer.get_extra_info("peername")[0] == "127.0.0.1"  # falls back to the socket's extras
            writer.write(upload)
            await writer.drain()
            writer.write_eof()
            received = await reader.read()
            writer.close()
            await writer.wait_closed()
        assert digest(received) == digest(download)
        assert seen["upload"] == digest(upload)
        assert seen["identity"] == "NEGOTIATE-TEST\\alice"
        assert seen["level"].value == level  # type: ignore[attr-defined]

    run(main())


async def _echo_transfer(users: NTLMUsers, size: int, level: str = "encrypt_and_sign") -> tuple[bytes, bytes]:
    """Send ``size`` bytes through an echo server while reading the echo in parallel."""
    data = payload(size, 7)
    server = await start_echo_server(users, level)
    async with server:
        reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(users, level))

        async def send() -> None:
            view = memoryview(data)
            for offset in range(0, len(view), 1 << 20):
                writer.write(view[offset : offset + (1 << 20)])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        received = await reader.read()
        await sender
        writer.close()
        await writer.wait_closed()
    return data, received


def test_reader_and_writer_in_parallel_8mib(ntlm_users: NTLMUsers) -> None:
    """Writing and reading run at the same time on one connection (one encryptor, one decryptor)."""
    data, received = run(_echo_transfer(ntlm_users, 8 << 20))
    assert len(received) == len(data)
    assert digest(received) == digest(data)


async def _plain_echo_transfer(size: int) -> float:
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

        async def send() -> None:
            for offset in range(0, len(data), 1 << 20):
                writer.write(data[offset : offset + (1 << 20)])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        received = await reader.read()
        await sender
        elapsed = time.perf_counter() - start
        writer.close()
    assert digest(received) == digest(data)
    return elapsed


def test_64mib_sealed_echo_and_throughput(ntlm_users: NTLMUsers, capsys: pytest.CaptureFixture[str]) -> None:
    """64 MiB through a sealed echo, checksums match; prints (never asserts) sealed vs plain throughput."""
    size = 64 << 20

    async def main() -> tuple[float, float]:
        start = time.perf_counter()
        data, received = await _echo_transfer(ntlm_users, size)
        sealed = time.perf_counter() - start
        assert digest(received) == digest(data)
        plain = await _plain_echo_transfer(size)
        return sealed, plain

    sealed, plain = run(main(), timeout=300)
    with capsys.disabled():
        print(
            f"\n64 MiB echo (both directions): sealed {sealed:.2f} s = {2 * 64 / sealed:.0f} MiB/s moved, "
            f"plain asyncio {plain:.2f} s = {2 * 64 / plain:.0f} MiB/s"
        )


def _message(writer_id: int, seq: int) -> bytes:
    body = payload(100 + (writer_id * 997 + seq * 131) % 3000, writer_id * 1000 + seq)
    return struct.pack("!HHI", writer_id, seq, len(body)) + body


def _concurrent_writers(users: NTLMUsers, writers: int, per_writer: int) -> None:
    """``writers`` tasks write messages on one connection; every data_received chunk is exactly one message."""
    chunks: list[bytes] = []
    done = asyncio.Event

    class Sink(asyncio.Protocol):
        def __init__(self) -> None:
            self.finished = done()

        def data_received(self, data: bytes) -> None:
            chunks.append(data)
            if len(chunks) == writers * per_writer:
                self.finished.set()

    sink_holder: list[Sink] = []

    async def main() -> None:
        from negotiate_stream._connection import Connection
        from negotiate_stream._context import SecurityContext

        loop = asyncio.get_running_loop()

        def factory() -> nsa.NegotiateProtocol:
            sink = Sink()
            sink_holder.append(sink)
            return nsa.NegotiateProtocol(Connection(SecurityContext.create(True, **server_options(users))), sink)

        server = await loop.create_server(factory, "127.0.0.1", 0)
        async with server:
            _reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(users))

            async def write_all(writer_id: int) -> None:
                for seq in range(per_writer):
                    writer.write(_message(writer_id, seq))
                    if seq % 3 == 0:
                        await writer.drain()
                    else:
                        await asyncio.sleep(0)

            await asyncio.gather(*(write_all(i) for i in range(writers)))
            await sink_holder[0].finished.wait()
            writer.close()
            await writer.wait_closed()

    run(main())
    next_seq = [0] * writers
    for chunk in chunks:  # one data_received per record == per write: unsplit and not merged
        writer_id, seq, length = struct.unpack_from("!HHI", chunk)
        assert len(chunk) == 8 + length
        assert chunk == _message(writer_id, seq)
        assert seq == next_seq[writer_id]  # FIFO per writer
        next_seq[writer_id] += 1
    assert next_seq == [per_writer] * writers


def test_50_concurrent_writers_messages_intact(ntlm_users: NTLMUsers) -> None:
    """50 writer tasks on one connection: each message arrives whole, unsplit, in per-writer order."""
    _concurrent_writers(ntlm_users, 50, 20)


def test_shared_crypto_state_concurrent_writers(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    """NTLM without ESS (one RC4 state for both directions): concurrent writers and big replies stay correct.

    One cipher state for both directions also means the *wire* must be half-duplex: a record sealed by one side
    while a record from the other is in flight desynchronises both states (IntegrityError). So each round here is
    request (10 concurrent writer tasks) then reply (the server echoes the whole round).
    """
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    infos: list[object] = []
    round_size = 10 * 100_000

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        infos.append(writer.get_extra_info("negotiate_stream"))
        while True:
            try:
                request = await reader.readexactly(round_size)
            except asyncio.IncompleteReadError:
                break
            writer.write(request)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await nsa.start_server(handler, "127.0.0.1", 0, **server_options(ntlm_users))
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            infos.append(writer.get_extra_info("negotiate_stream"))
            for round_number in range(5):
                sent: list[bytes] = []

                async def write_one(index: int, round_number: int = round_number, sent: list[bytes] = sent) -> None:
                    await asyncio.sleep(0)
                    chunk = payload(100_000, round_number * 100 + index)
                    sent.append(chunk)  # the write below is synchronous: append order is wire order
                    writer.write(chunk)
                    await writer.drain()

                await asyncio.gather(*(write_one(i) for i in range(10)))
                echoed = await reader.readexactly(round_size)
                assert digest(echoed) == digest(b"".join(sent))
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()

    run(main())
    assert len(infos) == 2
    assert all(info.shares_crypto_state for info in infos)  # type: ignore[attr-defined]


def test_wrap_streams_after_plaintext_preamble(ntlm_users: NTLMUsers) -> None:
    """An existing plain (reader, writer) pair on both ends is upgraded; bytes read past the preamble count."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        assert line == b"application/negotiate\n"
        await asyncio.sleep(0.05)  # let the client's first token land in the old reader's buffer
        sreader, swriter = await nsa.wrap_streams(reader, writer, server_side=True, **server_options(ntlm_users))
        swriter.write(b"server says: " + await sreader.readexactly(5))
        await swriter.drain()
        swriter.close()

    async def main() -> bytes:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(b"application/negotiate\n")
            creader, cwriter = await nsa.wrap_streams(reader, writer, **client_options(ntlm_users))
            assert cwriter.get_extra_info("negotiate_stream").is_encrypted
            cwriter.write(b"hello")
            answer = await creader.read()
            cwriter.close()
            await cwriter.wait_closed()
            return answer

    assert run(main()) == b"server says: hello"


def test_close_and_wait_closed_after_echo_is_clean(ntlm_users: NTLMUsers) -> None:
    """close() + wait_closed() after an echo raise nothing; later writes raise StreamClosedError."""

    async def main() -> None:
        server = await start_echo_server(ntlm_users)
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()
            assert writer.is_closing()
            with pytest.raises(StreamClosedError):
                writer.write(b"late")

    run(main())


def test_write_after_failure_raises_broken(ntlm_users: NTLMUsers) -> None:
    """After a tampered record broke the stream, the reader raises IntegrityError and writes raise Broken."""

    def flip(record: bytearray) -> bytearray:
        record[-1] ^= 0x01
        return record

    async def main() -> None:
        server = await start_echo_server(ntlm_users)
        proxy = TamperingProxy(port_of(server), flip)
        proxy_port = await proxy.start()
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", proxy_port, **client_options(ntlm_users))
            writer.write(b"x" * 1000)
            with pytest.raises(IntegrityError):
                await reader.read(1)
            with pytest.raises(BrokenStreamError):
                writer.write(b"more")
            writer.close()
        await proxy.close()

    run(main())
