"""NegotiateStream (anyio) moving data: both directions at each level, bulk, large records, concurrency."""

from __future__ import annotations

import hashlib
import os
import struct

import anyio
import pytest
from anyio.abc import SocketAttribute

from negotiate_stream import ProtectionLevel
from negotiate_stream.anyio_ import MemoryByteStream, NegotiateAttribute, NegotiateStream, memory_stream_pair
from negotiate_stream.errors import StreamClosedError
from negotiate_stream.testing import NTLMUsers
from tests.support.streams import (
    LEVELS,
    MIB,
    Relay,
    client_options,
    digest,
    negotiated_streams,
    receive_all,
    receive_exactly,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("level", LEVELS)
async def test_both_directions_then_half_close(transport: str, level: str, ntlm_users: NTLMUsers) -> None:
    """Data flows both ways at each level; send_eof is an idempotent, clean, one-way end."""
    async with negotiated_streams(transport, ntlm_users, level=level) as (client, server):
        await client.send(b"ping")
        assert await receive_exactly(server, 4) == b"ping"
        await server.send(b"pong!")
        assert await receive_exactly(client, 5) == b"pong!"
        await client.send(b"")  # an empty send writes nothing: the next bytes the server sees are "last words"
        await client.send(b"last words")
        await client.send_eof()
        await client.send_eof()  # idempotent
        with pytest.raises(StreamClosedError):
            await client.send(b"too late")
        assert await receive_exactly(server, 10) == b"last words"
        for _ in range(2):  # EOF stays EOF
            with pytest.raises(anyio.EndOfStream):
                await server.receive()
        await server.send(b"reply after the half-close")  # half-close: the other direction keeps working
        assert await receive_exactly(client, 26) == b"reply after the half-close"


@pytest.mark.parametrize("level", LEVELS)
async def test_typed_attributes_include_the_wrapped_stream(transport: str, level: str, ntlm_users: NTLMUsers) -> None:
    """Every NegotiateAttribute is set from the handshake and the wrapped stream's attributes show through."""
    async with negotiated_streams(transport, ntlm_users, level=level) as (client, server):
        for stream in (client, server):
            assert stream.session_info.protection_level is ProtectionLevel(level)
            assert stream.extra(NegotiateAttribute.protection_level) is ProtectionLevel(level)
        assert server.extra(NegotiateAttribute.protocol) == "ntlm"
        peer = server.extra(NegotiateAttribute.peer_identity)
        assert peer == ntlm_users.usernames[0]
        assert peer.lower().endswith("alice")
        assert client.extra(NegotiateAttribute.peer_identity) == client_options(ntlm_users)["target"]
        assert client.extra(NegotiateAttribute.mutually_authenticated) is False
        assert server.extra(NegotiateAttribute.session_info).is_server is True
        assert client.extra(NegotiateAttribute.session_info) is client.session_info
        address = server.extra(SocketAttribute.remote_address, None)
        if transport == "tcp":
            assert address == client.extra(SocketAttribute.local_address)
            assert address[0] == "127.0.0.1"
        else:
            assert address is None


@pytest.mark.parametrize("level", LEVELS)
async def test_one_mebibyte_each_way_at_once(transport: str, level: str, ntlm_users: NTLMUsers) -> None:
    """1 MiB each way at the same time, each ended by send_eof, arrives intact; only sealing hides plaintext."""
    relay = Relay()
    upload, download = os.urandom(MIB), os.urandom(MIB)
    received: dict[str, bytes] = {}
    async with negotiated_streams(transport, ntlm_users, relay, level=level) as (client, server):
        for stream in (client, server):
            assert stream.session_info.protection_level is ProtectionLevel(level)
            assert stream.extra(NegotiateAttribute.protection_level) is ProtectionLevel(level)

        async def send(stream: NegotiateStream, data: bytes) -> None:
            await stream.send(data)
            await stream.send_eof()

        async def collect(name: str, stream: NegotiateStream) -> None:
            received[name] = await receive_all(stream)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, "server", server)
            tg.start_soon(collect, "client", client)
            tg.start_soon(send, client, upload)
            tg.start_soon(send, server, download)
    assert digest(received["server"]) == digest(upload)
    assert digest(received["client"]) == digest(download)
    # The level is visible on the wire: only sealing hides the plaintext.
    sample = upload[MIB // 2 : MIB // 2 + 64]
    assert (sample in relay.wire["to_server"]) is (level != "encrypt_and_sign")
    if level != "none":  # framed: 4-byte length + payload per record, more than one record per MiB
        assert len(relay.wire["to_server"]) > MIB + 16 * (MIB // 0xFC00)


async def test_receive_keeps_the_rest_of_a_large_record(transport: str, ntlm_users: NTLMUsers) -> None:
    """receive(n) returns at most n bytes of a verified record and keeps the rest for later calls."""
    payload = os.urandom(0xFC00)  # one full record
    async with negotiated_streams(transport, ntlm_users) as (client, server):
        await client.send(payload)
        # The whole record is verified before any of it is returned, so a small receive gets exactly its size.
        pieces = [await server.receive(7)]
        assert pieces[0] == payload[:7]
        while sum(map(len, pieces)) < len(payload):
            piece = await server.receive(1000)
            assert 1 <= len(piece) <= 1000
            pieces.append(piece)
        assert b"".join(pieces) == payload
        with pytest.raises(ValueError):
            await server.receive(0)


def message(task: int, seq: int) -> bytes:
    """A self-describing message: header (length, task, seq) + deterministic body, a few larger than a record."""
    size = 70_000 if (task * 50 + seq) % 97 == 0 else 1 + (task * 7919 + seq * 104729) % 3000
    body = hashlib.sha256(f"{task}:{seq}".encode()).digest() * (size // 32 + 1)
    return struct.pack(">III", size, task, seq) + body[:size]


async def test_concurrent_senders_keep_each_task_in_order(transport: str, ntlm_users: NTLMUsers) -> None:
    """20 tasks sending 50 messages each on one stream: no message is torn, each task's order is kept."""
    tasks, per_task = 20, 50
    async with negotiated_streams(transport, ntlm_users) as (client, server):

        async def sender(task: int) -> None:
            for seq in range(per_task):
                await client.send(message(task, seq))

        async def senders() -> None:
            async with anyio.create_task_group() as tg:
                for task in range(tasks):
                    tg.start_soon(sender, task)
            await client.send_eof()

        async with anyio.create_task_group() as tg:
            tg.start_soon(senders)
            data = await receive_all(server)
    next_seq = [0] * tasks
    pos = 0
    while pos < len(data):
        size, task, seq = struct.unpack_from(">III", data, pos)
        assert data[pos : pos + 12 + size] == message(task, seq), f"message corrupted or interleaved at {pos}"
        assert seq == next_seq[task], "messages of one task arrived out of order"
        next_seq[task] += 1
        pos += 12 + size
    assert next_seq == [per_task] * tasks


async def test_concurrent_multi_write_sends_never_interleave(transport: str, ntlm_users: NTLMUsers) -> None:
    """Concurrent sends that each take many transport writes (backpressure) arrive whole, one after another."""
    # Each message spans more records than one transport write carries, so a send is several writes.
    senders, size = 4, 20 * 0xFC00 + 17
    async with (
        negotiated_streams(transport, ntlm_users, max_buffer_chunks=1) as (client, server),
        anyio.create_task_group() as tg,
    ):
        for marker in range(senders):
            tg.start_soon(client.send, bytes([marker]) * size)
        data = await receive_exactly(server, senders * size)
    messages = [data[i : i + size] for i in range(0, len(data), size)]
    assert all(message == message[:1] * size for message in messages)
    assert sorted(message[0] for message in messages) == list(range(senders))


async def test_shared_crypto_state_reader_and_writer_tasks_on_both_ends(
    transport: str, ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ESS (one RC4 state for both directions) separate reader and writer tasks on each end stay in step."""
    # Without ESS both directions share ONE RC4 state and ONE sequence counter (pyspnego, MS-NLMP), so the two
    # peers must protect/unprotect in the same global order: the wire has to be half-duplex (request/response).
    # Each side still runs a separate reader task and writer task at the same time, which is what the shared
    # crypto lock is for.
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")  # pyspnego then negotiates NTLM without ESS
    count = 100
    async with negotiated_streams(transport, ntlm_users) as (client, server):
        assert client.session_info.shares_crypto_state
        assert server.session_info.shares_crypto_state
        requests = [os.urandom(1 + i * 37 % 5000) for i in range(count)]
        replies: list[bytes] = []

        async def echo_server() -> None:
            to_writer, from_reader = anyio.create_memory_object_stream[bytes](1)

            async def reader() -> None:
                async with to_writer:
                    for request in requests:
                        await to_writer.send(await receive_exactly(server, len(request)))

            async def writer() -> None:
                async with from_reader:
                    async for request in from_reader:
                        await server.send(hashlib.sha256(request).digest() + request[:50])

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                tg.start_soon(writer)

        async def client_side() -> None:
            turn = anyio.Semaphore(1)

            async def writer() -> None:
                for request in requests:
                    await turn.acquire()  # the reply to the previous request has arrived
                    await client.send(request)

            async def reader() -> None:
                for request in requests:
                    replies.append(await receive_exactly(client, 32 + min(len(request), 50)))
                    turn.release()

            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                tg.start_soon(reader)

        async with anyio.create_task_group() as tg:
            tg.start_soon(echo_server)
            tg.start_soon(client_side)
    assert replies == [hashlib.sha256(r).digest() + r[:50] for r in requests]


async def test_shared_crypto_state_multi_record_request_response(
    transport: str, ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ESS, requests spanning several records get their replies while a reader task waits meanwhile."""
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")  # pyspnego then negotiates NTLM without ESS
    with anyio.fail_after(60):  # turns a deadlock into a failure; nothing is timed
        async with negotiated_streams(transport, ntlm_users) as (client, server):
            assert client.session_info.shares_crypto_state and server.session_info.shares_crypto_state
            replies = anyio.create_memory_object_stream[bytes](1)

            async def echo() -> None:
                # Half-duplex, as such a session must be: read the whole request (length-prefixed), then reply.
                while True:
                    try:
                        request = bytearray(await server.receive())
                    except anyio.EndOfStream:
                        await server.send_eof()
                        return
                    while len(request) < 4 + int.from_bytes(request[:4], "big"):
                        request += await server.receive()
                    await server.send(bytes(request[4:][::-1]))

            async def read_replies() -> None:
                # A reader task waiting for replies while the main task sends: the shared lock must not be held
                # across the wait, or this deadlocks.
                async with replies[0]:
                    while True:
                        try:
                            await replies[0].send(await client.receive())
                        except anyio.EndOfStream:
                            return

            async with anyio.create_task_group() as tg, replies[1]:
                tg.start_soon(echo)
                tg.start_soon(read_replies)
                for size in (1, 100, 0xFC00, 0xFC00 + 1, 200_000):
                    request = os.urandom(size)
                    await client.send(size.to_bytes(4, "big") + request)
                    reply = bytearray()
                    while len(reply) < size:
                        reply += await replies[1].receive()
                    assert bytes(reply) == request[::-1]
                await client.send_eof()


async def test_memory_stream_pair_basics() -> None:
    """memory_stream_pair() is a two-way byte stream: partial receives, send_eof, the other direction."""
    a, b = memory_stream_pair()
    assert isinstance(a, MemoryByteStream)
    await a.send(b"hello world")
    assert await b.receive(5) == b"hello"
    assert await b.receive() == b" world"
    await a.send_eof()
    with pytest.raises(anyio.EndOfStream):
        await b.receive()
    await b.send(b"back")
    assert await a.receive() == b"back"
    await a.aclose()
    await b.aclose()
