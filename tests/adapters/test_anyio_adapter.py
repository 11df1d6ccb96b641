"""NegotiateStream (anyio) on both backends, over real loopback TCP and over in-memory streams, real NTLM."""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from anyio.abc import ByteStream, SocketAttribute

from negotiate_stream import ProtectionLevel
from negotiate_stream.anyio_ import (
    MemoryByteStream,
    NegotiateAttribute,
    NegotiateListener,
    NegotiateStream,
    connect,
    memory_stream_pair,
)
from negotiate_stream.errors import (
    SEC_E_LOGON_DENIED,
    AuthenticationError,
    BrokenStreamError,
    HandshakeError,
    HandshakeTimeoutError,
    IntegrityError,
    StreamClosedError,
    TruncatedStreamError,
)
from negotiate_stream.testing import NTLMUsers

pytestmark = pytest.mark.anyio

KINDS = ["tcp", "memory"]
LEVELS = ["encrypt_and_sign", "sign", "none"]


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def raw_pair(kind: str, max_buffer_chunks: int = 16) -> AsyncIterator[tuple[ByteStream, ByteStream]]:
    """Two connected plain byte streams: loopback TCP or in-memory."""
    if kind == "memory":
        a, b = memory_stream_pair(max_buffer_chunks)
        try:
            yield a, b
        finally:
            await a.aclose()
            await b.aclose()
        return
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as multi:
        listener = multi.listeners[0]
        port = listener.extra(SocketAttribute.local_port)
        client = await anyio.connect_tcp("127.0.0.1", port)
        server = await listener.accept()
        async with client, server:
            yield client, server


async def handshake_both(
    raw_client: ByteStream,
    raw_server: ByteStream,
    users: NTLMUsers,
    *,
    client_options: dict[str, Any] | None = None,
    server_options: dict[str, Any] | None = None,
    **common: Any,
) -> tuple[Any, Any]:
    """Run both handshakes concurrently; each result is a NegotiateStream or the exception that side raised."""
    results: dict[str, Any] = {}
    options = {"protocol": "ntlm", **common}

    async def run(name: str, raw: ByteStream, **kwargs: Any) -> None:
        try:
            results[name] = await NegotiateStream.wrap(raw, **options, **kwargs)
        except Exception as exc:
            results[name] = exc

    server_kwargs = {"server_side": True, "credentials": users.server_credentials(), **(server_options or {})}
    client_kwargs = {
        "credentials": users.client_credentials(),
        "target": "host/localhost",
        **(client_options or {}),
    }
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run("server", raw_server, **server_kwargs))
        tg.start_soon(lambda: run("client", raw_client, **client_kwargs))
    return results["client"], results["server"]


@asynccontextmanager
async def negotiate_pair(
    kind: str, users: NTLMUsers, max_buffer_chunks: int = 16, **options: Any
) -> AsyncIterator[tuple[NegotiateStream, NegotiateStream]]:
    async with raw_pair(kind, max_buffer_chunks) as (raw_client, raw_server):
        client, server = await handshake_both(raw_client, raw_server, users, **options)
        assert isinstance(client, NegotiateStream), client
        assert isinstance(server, NegotiateStream), server
        yield client, server


async def receive_exactly(stream: NegotiateStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += await stream.receive(size - len(data))
    return bytes(data)


async def receive_all(stream: NegotiateStream) -> bytes:
    data = bytearray()
    while True:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return bytes(data)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kind", KINDS)
async def test_both_directions_at_each_level(kind: str, level: str, ntlm_users: NTLMUsers) -> None:
    async with negotiate_pair(kind, ntlm_users, protection_level=level) as (client, server):
        assert client.session_info.protection_level is ProtectionLevel(level)
        assert server.extra(NegotiateAttribute.protection_level) is ProtectionLevel(level)
        assert server.extra(NegotiateAttribute.protocol) == "ntlm"
        assert server.extra(NegotiateAttribute.peer_identity).lower().endswith("alice")
        assert client.extra(NegotiateAttribute.session_info) is client.session_info
        assert client.extra(NegotiateAttribute.mutually_authenticated) is False
        if kind == "tcp":  # the wrapped stream's attributes show through
            assert server.extra(SocketAttribute.remote_address)[0] == "127.0.0.1"
        await client.send(b"ping")
        assert await receive_exactly(server, 4) == b"ping"
        await server.send(b"pong!")
        assert await receive_exactly(client, 5) == b"pong!"
        await client.send(b"")  # an empty send writes nothing
        await client.send_eof()
        await client.send_eof()  # idempotent
        with pytest.raises(StreamClosedError):
            await client.send(b"after send_eof")
        with pytest.raises(anyio.EndOfStream):
            await server.receive()
        with pytest.raises(anyio.EndOfStream):  # EOF stays EOF
            await server.receive()
        await server.send(b"still open")  # half-close: the other direction keeps working
        assert await receive_exactly(client, 10) == b"still open"


@pytest.mark.parametrize("kind", KINDS)
async def test_one_mebibyte_each_way_with_checksums(kind: str, ntlm_users: NTLMUsers) -> None:
    up, down = os.urandom(1 << 20), os.urandom(1 << 20)
    received: dict[str, bytes] = {}
    async with negotiate_pair(kind, ntlm_users) as (client, server):

        async def pump(name: str, sender: NegotiateStream, receiver: NegotiateStream, data: bytes) -> None:
            async def send() -> None:
                await sender.send(data)
                await sender.send_eof()

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                received[name] = await receive_all(receiver)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, "up", client, server, up)
            tg.start_soon(pump, "down", server, client, down)
    assert hashlib.sha256(received["up"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(received["down"]).digest() == hashlib.sha256(down).digest()


async def test_receive_keeps_the_rest_of_a_large_record(ntlm_users: NTLMUsers) -> None:
    payload = os.urandom(50_000)
    async with negotiate_pair("memory", ntlm_users) as (client, server):
        await client.send(payload)
        parts = [await server.receive(7)]
        parts.append(await receive_exactly(server, len(payload) - 7))
    assert parts[0] == payload[:7]
    assert b"".join(parts) == payload


class RecordingStream(ByteStream):
    """Passes everything through and records what was sent."""

    def __init__(self, inner: ByteStream) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        self.sent.append(bytes(item))
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_wrong_password_fails_on_both_ends_with_an_error_frame(kind: str, ntlm_users: NTLMUsers) -> None:
    async with raw_pair(kind) as (raw_client, raw_server):
        recorder = RecordingStream(raw_server)
        client, server = await handshake_both(
            raw_client,
            recorder,
            ntlm_users,
            client_options={"credentials": ntlm_users.client_credentials(password="wrong password")},
        )
    assert isinstance(client, HandshakeError), client
    assert client.status == SEC_E_LOGON_DENIED
    assert isinstance(server, AuthenticationError), server
    assert not isinstance(server, HandshakeError)
    # The server's last write is the MS-NNS HandshakeError frame: id 0x15, version 1.0, 8-byte payload.
    assert recorder.sent[-1][:5] == b"\x15\x01\x00\x00\x08"
    assert len(recorder.sent[-1]) == 13


class TamperingRelay:
    """Forwards bytes both ways between two raw streams; flips one byte of the next client->server chunk on demand."""

    def __init__(self) -> None:
        self.tamper_next = False
        self.tampered = anyio.Event()

    async def forward(self, source: ByteStream, sink: ByteStream, tamper: bool) -> None:
        try:
            while True:
                chunk = bytearray(await source.receive())
                if tamper and self.tamper_next:
                    chunk[-1] ^= 0x01
                    self.tamper_next = False
                    self.tampered.set()
                await sink.send(bytes(chunk))
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
@pytest.mark.parametrize("kind", KINDS)
async def test_tampered_record_raises_integrity_error_then_broken(kind: str, level: str, ntlm_users: NTLMUsers) -> None:
    relay = TamperingRelay()
    async with (
        raw_pair(kind) as (raw_client, relay_a),
        raw_pair(kind) as (relay_b, raw_server),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(relay.forward, relay_a, relay_b, True)
        tg.start_soon(relay.forward, relay_b, relay_a, False)
        client, server = await handshake_both(raw_client, raw_server, ntlm_users, protection_level=level)
        await client.send(b"first record is fine")
        assert await receive_exactly(server, 20) == b"first record is fine"
        relay.tamper_next = True
        await client.send(b"this record gets one bit flipped")
        await relay.tampered.wait()
        with pytest.raises(IntegrityError):
            await server.receive()
        with pytest.raises(BrokenStreamError) as broken:
            await server.receive()
        assert isinstance(broken.value.__cause__, IntegrityError)
        with pytest.raises(BrokenStreamError):
            await server.send(b"no")
        with pytest.raises(BrokenStreamError):
            await server.send_eof()
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("kind", KINDS)
async def test_eof_in_the_middle_of_a_record_is_truncation(kind: str, ntlm_users: NTLMUsers) -> None:
    async with negotiate_pair(kind, ntlm_users) as (client, server):
        wire = client.connection.send(b"x" * 100)
        await client.transport_stream.send(wire[:30])
        await client.transport_stream.send_eof()
        with pytest.raises(TruncatedStreamError):
            await server.receive()
        with pytest.raises(BrokenStreamError) as broken:
            await server.receive()
        assert isinstance(broken.value.__cause__, TruncatedStreamError)


def message(task: int, seq: int) -> bytes:
    """A self-describing message: header (length, task, seq) + deterministic body, a few larger than a record."""
    size = 70_000 if (task * 50 + seq) % 97 == 0 else 1 + (task * 7919 + seq * 104729) % 3000
    body = hashlib.sha256(f"{task}:{seq}".encode()).digest() * (size // 32 + 1)
    return struct.pack(">III", size, task, seq) + body[:size]


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_senders_never_interleave(kind: str, ntlm_users: NTLMUsers) -> None:
    tasks, per_task = 20, 50
    async with negotiate_pair(kind, ntlm_users) as (client, server):

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


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_receive_keeps_the_stream_usable(kind: str, ntlm_users: NTLMUsers) -> None:
    async with negotiate_pair(kind, ntlm_users) as (client, server):
        wire = client.connection.send(b"split across a cancellation")
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def receive_then_fail() -> None:
                    await server.receive()
                    pytest.fail("receive returned although no complete record was sent")

                tg.start_soon(receive_then_fail)
                await client.transport_stream.send(wire[:10])  # half a record: it stays in the Connection
                await wait_all_tasks_blocked()
                await anyio.sleep(0.01)
                scope.cancel()
        assert scope.cancelled_caught
        await client.transport_stream.send(wire[10:])
        assert await receive_exactly(server, 27) == b"split across a cancellation"
        await client.send(b"and later records")
        assert await receive_exactly(server, 17) == b"and later records"


@pytest.mark.parametrize("kind", KINDS)
async def test_send_cancelled_mid_transfer_breaks_the_stream(kind: str, ntlm_users: NTLMUsers) -> None:
    # The server never reads: a big send blocks in the transport (memory: no buffer at all).
    big = b"\x00" * (32 << 20 if kind == "tcp" else 1 << 20)
    async with negotiate_pair(kind, ntlm_users, max_buffer_chunks=0) as (client, _server):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.send, big)
                await wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        with anyio.fail_after(10):  # a regression must fail, not hang
            with pytest.raises(BrokenStreamError):
                await client.send(b"more")
            with pytest.raises(BrokenStreamError):
                await client.receive()


@pytest.mark.parametrize("kind", KINDS)
async def test_shared_crypto_state_with_concurrent_reader_and_writer_tasks(
    kind: str, ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without ESS both directions share ONE RC4 state and ONE sequence counter (pyspnego, MS-NLMP), so the two
    # peers must protect/unprotect in the same global order: the wire has to be half-duplex (request/response).
    # Each side still runs a separate reader task and writer task at the same time, which is what the shared
    # crypto lock is for.
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")  # pyspnego then negotiates NTLM without ESS
    count = 100
    async with negotiate_pair(kind, ntlm_users) as (client, server):
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


@pytest.mark.parametrize("kind", KINDS)
async def test_handshake_timeout(kind: str, ntlm_users: NTLMUsers) -> None:
    async with raw_pair(kind) as (_silent_client, raw_server):
        with pytest.raises(HandshakeTimeoutError):
            await NegotiateStream.wrap(
                raw_server, server_side=True, handshake_timeout=0.2, credentials=ntlm_users.server_credentials()
            )
        with pytest.raises(anyio.ClosedResourceError):  # the transport was closed
            await raw_server.send(b"x")


async def test_use_after_aclose_raises_closed(ntlm_users: NTLMUsers) -> None:
    async with negotiate_pair("memory", ntlm_users) as (client, server):
        await client.aclose()
        await client.aclose()  # idempotent
        with pytest.raises(anyio.ClosedResourceError):
            await client.send(b"x")
        with pytest.raises(anyio.ClosedResourceError):
            await client.receive()
        with pytest.raises(anyio.EndOfStream):  # the peer sees a clean end
            await server.receive()


async def test_listener_survives_a_failed_handshake(ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="negotiate_stream")
    listener = NegotiateListener(
        await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0),
        handshake_timeout=10,
        credentials=ntlm_users.server_credentials(),
        protocol="ntlm",
    )
    port = listener.extra(SocketAttribute.local_port)
    identities: list[str | None] = []

    async def echo(stream: NegotiateStream) -> None:
        async with stream:
            identities.append(stream.extra(NegotiateAttribute.peer_identity))
            try:
                while True:
                    await stream.send(await stream.receive())
            except anyio.EndOfStream:
                pass

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        with pytest.raises(HandshakeError):
            await connect(
                "127.0.0.1",
                port,
                protocol="ntlm",
                target="host/localhost",
                credentials=ntlm_users.client_credentials(password="not it"),
            )
        async with await connect(
            "127.0.0.1", port, protocol="ntlm", target="host/localhost", credentials=ntlm_users.client_credentials()
        ) as stream:
            await stream.send(b"hello listener")
            assert await receive_exactly(stream, 14) == b"hello listener"
        tg.cancel_scope.cancel()
    failures = [r for r in caplog.records if r.name == "negotiate_stream" and r.levelno == logging.WARNING]
    assert len(failures) == 1
    assert "127.0.0.1" in failures[0].getMessage()
    assert ntlm_users.password("alice") not in failures[0].getMessage()
    assert len(identities) == 1


async def test_memory_stream_pair_basics() -> None:
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
