"""NegotiateStream (anyio): the behaviour matrix on asyncio and trio, over loopback TCP and in-memory pipes.

Real NTLM on both ends (NTLMUsers). A relay between the two ends records the wire and can tamper with or
truncate the next record, so the tests see exactly what a peer (or an attacker) would.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream, SocketAttribute

from negotiate_stream import ProtectionLevel
from negotiate_stream.anyio_ import NegotiateAttribute, NegotiateListener, NegotiateStream, connect, memory_stream_pair
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

LEVELS = ["encrypt_and_sign", "sign", "none"]
MIB = 1 << 20


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["tcp", "memory"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- plumbing -----------------------------------------------------------------------------------------------------


@asynccontextmanager
async def plain_pair(transport: str, max_buffer_chunks: int = 16) -> AsyncIterator[tuple[ByteStream, ByteStream]]:
    """Two connected unprotected byte streams: loopback TCP or memory_stream_pair()."""
    if transport == "memory":
        a, b = memory_stream_pair(max_buffer_chunks)
        try:
            yield a, b
        finally:
            await a.aclose()
            await b.aclose()
        return
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as multi:
        listener = multi.listeners[0]
        client = await anyio.connect_tcp("127.0.0.1", listener.extra(SocketAttribute.local_port))
        server = await listener.accept()
        async with client, server:
            yield client, server


class Relay:
    """Forwards bytes between the two ends, records them, and can damage the next client->server record."""

    def __init__(self) -> None:
        self.wire = {"to_server": bytearray(), "to_client": bytearray()}
        #: ``"tamper"`` flips the last byte of the next client record; ``"truncate"`` forwards all but its last
        #: 5 bytes, then half-closes towards the server.
        self.action: str | None = None

    async def pump(self, source: ByteStream, sink: ByteStream, direction: str) -> None:
        pending = bytearray()
        while True:
            try:
                chunk = await source.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                with suppress(Exception):
                    await sink.send_eof()
                return
            self.wire[direction] += chunk
            if direction != "to_server" or self.action is None:
                await sink.send(chunk)
                continue
            pending += chunk
            if len(pending) < 4 or len(pending) < 4 + struct.unpack_from("<I", pending)[0]:
                continue  # wait for the whole record before damaging it
            end = 4 + struct.unpack_from("<I", pending)[0]
            record, rest = bytes(pending[:end]), bytes(pending[end:])
            pending.clear()
            action, self.action = self.action, None
            if action == "tamper":
                await sink.send(record[:-1] + bytes([record[-1] ^ 0x01]) + rest)
            else:
                await sink.send(record[:-5])
                await sink.send_eof()
                return


@asynccontextmanager
async def wired(
    transport: str, relay: Relay | None = None, max_buffer_chunks: int = 16
) -> AsyncIterator[tuple[ByteStream, ByteStream]]:
    """(client end, server end), with ``relay`` in between when given."""
    async with plain_pair(transport, max_buffer_chunks) as (client_end, relay_in):
        if relay is None:
            yield client_end, relay_in
            return
        async with (
            plain_pair(transport, max_buffer_chunks) as (relay_out, server_end),
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(relay.pump, relay_in, relay_out, "to_server")
            tg.start_soon(relay.pump, relay_out, relay_in, "to_client")
            yield client_end, server_end
            tg.cancel_scope.cancel()


async def handshake_outcomes(
    client_end: ByteStream,
    server_end: ByteStream,
    users: NTLMUsers,
    *,
    client_password: str | None = None,
    **options: Any,
) -> tuple[NegotiateStream | Exception, NegotiateStream | Exception]:
    """Run both handshakes at once; each result is the stream or the exception that side raised."""
    outcome: dict[str, NegotiateStream | Exception] = {}
    options.setdefault("protocol", "ntlm")

    async def side(name: str, end: ByteStream, **kwargs: Any) -> None:
        try:
            outcome[name] = await NegotiateStream.wrap(end, **options, **kwargs)
        except Exception as exc:
            outcome[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: side("server", server_end, server_side=True, credentials=users.server_credentials()))
        tg.start_soon(
            lambda: side(
                "client", client_end, credentials=users.client_credentials(password=client_password), target="host/x"
            )
        )
    return outcome["client"], outcome["server"]


@asynccontextmanager
async def negotiated(
    transport: str, users: NTLMUsers, relay: Relay | None = None, max_buffer_chunks: int = 16, **options: Any
) -> AsyncIterator[tuple[NegotiateStream, NegotiateStream]]:
    async with wired(transport, relay, max_buffer_chunks) as (client_end, server_end):
        client, server = await handshake_outcomes(client_end, server_end, users, **options)
        assert isinstance(client, NegotiateStream), client
        assert isinstance(server, NegotiateStream), server
        try:
            yield client, server
        finally:
            await client.aclose()
            await server.aclose()


async def receive_exactly(stream: NegotiateStream, size: int, max_bytes: int = 65536) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive(min(max_bytes, size - len(data)))
        assert chunk, "receive() must never return b''"
        data += chunk
    return bytes(data)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def handshake_frames(wire: bytes) -> list[tuple[int, bytes]]:
    """Split MS-NNS handshake messages: id, major, minor, uint16 BE length, payload."""
    frames, pos = [], 0
    while pos + 5 <= len(wire):
        size = int.from_bytes(wire[pos + 3 : pos + 5], "big")
        frames.append((wire[pos], wire[pos + 5 : pos + 5 + size]))
        pos += 5 + size
    return frames


# -- the matrix ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_one_mebibyte_each_way_at_once(transport: str, level: str, ntlm_users: NTLMUsers) -> None:
    relay = Relay()
    upload, download = os.urandom(MIB), os.urandom(MIB)
    received: dict[str, bytes] = {}
    async with negotiated(transport, ntlm_users, relay, protection_level=level) as (client, server):
        for stream in (client, server):
            assert stream.session_info.protection_level is ProtectionLevel(level)
            assert stream.extra(NegotiateAttribute.protection_level) is ProtectionLevel(level)

        async def collect(name: str, stream: NegotiateStream) -> None:
            received[name] = await receive_exactly(stream, MIB)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, "server", server)
            tg.start_soon(collect, "client", client)
            tg.start_soon(client.send, upload)
            tg.start_soon(server.send, download)
    assert digest(received["server"]) == digest(upload)
    assert digest(received["client"]) == digest(download)
    # The level is visible on the wire: only sealing hides the plaintext.
    sample = upload[MIB // 2 : MIB // 2 + 64]
    assert (sample in relay.wire["to_server"]) is (level != "encrypt_and_sign")
    if level != "none":  # framed: 4-byte length + payload per record, more than one record per MiB
        assert len(relay.wire["to_server"]) > MIB + 16 * (MIB // 0xFC00)


async def test_wrong_password_fails_both_ends_with_an_error_frame(transport: str, ntlm_users: NTLMUsers) -> None:
    relay = Relay()
    async with wired(transport, relay) as (client_end, server_end):
        client, server = await handshake_outcomes(client_end, server_end, ntlm_users, client_password="wrong")
        # Let the relay deliver the server's last bytes and EOF before inspecting the wire.
        with pytest.raises((anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)):
            await client_end.receive()
    assert isinstance(client, HandshakeError), client
    assert client.status == SEC_E_LOGON_DENIED
    assert isinstance(server, AuthenticationError) and not isinstance(server, HandshakeError), server
    frames = handshake_frames(bytes(relay.wire["to_client"]))
    assert [message_id for message_id, _ in frames] == [0x16, 0x15]
    assert len(frames[-1][1]) == 8
    assert SEC_E_LOGON_DENIED in {int.from_bytes(frames[-1][1][4:], "big"), int.from_bytes(frames[-1][1][4:], "little")}


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
async def test_tampered_record_delivers_nothing_and_breaks_the_stream(
    transport: str, level: str, ntlm_users: NTLMUsers
) -> None:
    relay = Relay()
    async with negotiated(transport, ntlm_users, relay, protection_level=level) as (client, server):
        await client.send(b"intact")
        assert await server.receive() == b"intact"
        relay.action = "tamper"
        await client.send(b"tampered" * 100)
        with pytest.raises(IntegrityError):
            await server.receive()
        with pytest.raises(BrokenStreamError) as excinfo:
            await server.receive()
        assert isinstance(excinfo.value.__cause__, IntegrityError)
        with pytest.raises(BrokenStreamError):
            await server.send(b"reply")
        with pytest.raises(BrokenStreamError):
            await server.send_eof()


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
async def test_eof_inside_a_record_is_truncation(transport: str, level: str, ntlm_users: NTLMUsers) -> None:
    relay = Relay()
    async with negotiated(transport, ntlm_users, relay, protection_level=level) as (client, server):
        await client.send(b"whole")
        assert await server.receive() == b"whole"
        relay.action = "truncate"
        await client.send(b"cut short" * 50)
        with pytest.raises(TruncatedStreamError):
            await server.receive()
        with pytest.raises(BrokenStreamError):
            await server.receive()


@pytest.mark.parametrize("level", LEVELS)
async def test_send_eof_is_a_clean_end_and_the_other_direction_still_works(
    transport: str, level: str, ntlm_users: NTLMUsers
) -> None:
    async with negotiated(transport, ntlm_users, protection_level=level) as (client, server):
        await client.send(b"last words")
        await client.send_eof()
        await client.send_eof()  # idempotent
        with pytest.raises(StreamClosedError):
            await client.send(b"too late")
        assert await receive_exactly(server, 10) == b"last words"
        for _ in range(2):
            with pytest.raises(anyio.EndOfStream):
                await server.receive()
        await server.send(b"reply after the half-close")
        assert await receive_exactly(client, 26) == b"reply after the half-close"


async def test_concurrent_senders_never_interleave(transport: str, ntlm_users: NTLMUsers) -> None:
    # Each message spans more records than one transport write carries, so a send is several writes.
    senders, size = 4, 20 * 0xFC00 + 17
    async with (
        negotiated(transport, ntlm_users, max_buffer_chunks=1) as (client, server),
        anyio.create_task_group() as tg,
    ):
        for marker in range(senders):
            tg.start_soon(client.send, bytes([marker]) * size)
        data = await receive_exactly(server, senders * size)
    messages = [data[i : i + size] for i in range(0, len(data), size)]
    assert all(message == message[:1] * size for message in messages)
    assert sorted(message[0] for message in messages) == list(range(senders))


async def test_receive_keeps_the_rest_of_a_large_record(transport: str, ntlm_users: NTLMUsers) -> None:
    payload = os.urandom(0xFC00)
    async with negotiated(transport, ntlm_users) as (client, server):
        await client.send(payload)
        pieces = []
        while sum(map(len, pieces)) < len(payload):
            piece = await server.receive(1000)
            assert 1 <= len(piece) <= 1000
            pieces.append(piece)
        assert b"".join(pieces) == payload
        with pytest.raises(ValueError):
            await server.receive(0)


async def test_cancelled_receive_mid_record_leaves_the_stream_usable(transport: str, ntlm_users: NTLMUsers) -> None:
    async with negotiated(transport, ntlm_users) as (client, server):
        wire = client.connection.send(b"split record" * 10)  # driven by hand to deliver half a record
        await client.transport_stream.send(wire[:10])
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.receive)
            await anyio.wait_all_tasks_blocked()  # the receive waits for the rest of the record
            tg.cancel_scope.cancel()
        await client.transport_stream.send(wire[10:])
        assert await receive_exactly(server, 120) == b"split record" * 10
        await client.send(b"and more")
        assert await receive_exactly(server, 8) == b"and more"


async def test_cancelled_send_breaks_the_stream(transport: str, ntlm_users: NTLMUsers) -> None:
    async with negotiated(transport, ntlm_users, max_buffer_chunks=0) as (client, _server):
        async with anyio.create_task_group() as tg:
            # Nobody reads on the server, so the transport write blocks with part of the data out.
            tg.start_soon(client.send, b"x" * (64 * MIB if transport == "tcp" else 100))
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        with anyio.fail_after(30):  # a regression must fail, not hang; nothing is timed
            with pytest.raises(BrokenStreamError):
                await client.send(b"next")
            with pytest.raises(BrokenStreamError):
                await client.receive()


async def test_use_after_close(transport: str, ntlm_users: NTLMUsers) -> None:
    async with negotiated(transport, ntlm_users) as (client, _server):
        await client.aclose()
        await client.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await client.send(b"x")
        with pytest.raises(anyio.ClosedResourceError):
            await client.receive()


async def test_peer_close_is_end_of_stream(transport: str, ntlm_users: NTLMUsers) -> None:
    async with negotiated(transport, ntlm_users) as (client, server):
        await client.send(b"bye")
        await client.aclose()
        assert await server.receive() == b"bye"
        with pytest.raises(anyio.EndOfStream):
            await server.receive()


async def test_typed_attributes_include_the_wrapped_stream(transport: str, ntlm_users: NTLMUsers) -> None:
    async with negotiated(transport, ntlm_users) as (client, server):
        assert server.extra(NegotiateAttribute.protocol) == "ntlm"
        assert server.extra(NegotiateAttribute.peer_identity) == ntlm_users.usernames[0]
        assert client.extra(NegotiateAttribute.peer_identity) == "host/x"
        assert client.extra(NegotiateAttribute.mutually_authenticated) is False
        assert server.extra(NegotiateAttribute.session_info).is_server is True
        assert client.extra(NegotiateAttribute.session_info) is client.session_info
        address = server.extra(SocketAttribute.remote_address, None)
        if transport == "tcp":
            assert address == client.extra(SocketAttribute.local_address)
        else:
            assert address is None


async def test_handshake_timeout_closes_the_transport(transport: str, ntlm_users: NTLMUsers) -> None:
    async with wired(transport) as (client_end, server_end):
        with pytest.raises(HandshakeTimeoutError):
            await NegotiateStream.wrap(
                server_end, server_side=True, handshake_timeout=0.2, credentials=ntlm_users.server_credentials()
            )
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await client_end.receive()


async def test_handshake_with_a_peer_that_hangs_up(transport: str, ntlm_users: NTLMUsers) -> None:
    async with wired(transport) as (client_end, server_end):
        await client_end.send_eof()
        with pytest.raises(TruncatedStreamError):
            await NegotiateStream.wrap(server_end, server_side=True, credentials=ntlm_users.server_credentials())


async def test_shared_crypto_state_request_response(
    transport: str, ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")  # pyspnego then negotiates NTLM without ESS
    with anyio.fail_after(60):  # turns a deadlock into a failure; nothing is timed
        async with negotiated(transport, ntlm_users) as (client, server):
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


# -- listener and connect() (TCP) ----------------------------------------------------------------------------------


async def test_listener_logs_a_failed_handshake_and_keeps_serving(
    ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="negotiate_stream")
    wrong_password = "not-the-password-" + os.urandom(4).hex()
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = tcp.extra(SocketAttribute.local_port)
    listener = NegotiateListener(
        tcp, handshake_timeout=0.5, credentials=ntlm_users.server_credentials(), protocol="ntlm"
    )
    served: list[str | None] = []

    async def echo(stream: NegotiateStream) -> None:
        async with stream:
            served.append(stream.extra(NegotiateAttribute.peer_identity))
            await stream.send(await stream.receive())

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        with pytest.raises(HandshakeError):
            await connect(
                "127.0.0.1", port, protocol="ntlm", credentials=ntlm_users.client_credentials(password=wrong_password)
            )
        silent = await anyio.connect_tcp("127.0.0.1", port)
        async with silent:  # never speaks: the listener's handshake timeout closes it
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await silent.receive()
        async with await connect(
            "127.0.0.1", port, protocol="ntlm", credentials=ntlm_users.client_credentials()
        ) as stream:
            assert stream.session_info.peer_identity == "host/127.0.0.1"  # connect()'s default target
            await stream.send(b"still serving")
            assert await receive_exactly(stream, 13) == b"still serving"
        tg.cancel_scope.cancel()
    assert served == [ntlm_users.usernames[0]]
    warnings = [r for r in caplog.records if r.name == "negotiate_stream" and r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    messages = [r.getMessage() for r in warnings]
    assert all("127.0.0.1" in m for m in messages)
    assert any("AuthenticationError" in m for m in messages)
    assert any("HandshakeTimeoutError" in m for m in messages)
    assert not any(wrong_password in m or ntlm_users.password(ntlm_users.usernames[0]) in m for m in messages)
