"""NegotiateStream (anyio) when things go wrong: bad credentials, damaged records, cancellation, timeouts, close."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from negotiate_stream import errors
from negotiate_stream.anyio_ import NegotiateStream
from negotiate_stream.testing import NTLMUsers
from tests.support.streams import (
    RecordingStream,
    Relay,
    handshake_frames,
    handshake_streams,
    negotiated_streams,
    receive_exactly,
    wired,
)

pytestmark = pytest.mark.anyio


async def each_raises(error: type[Exception], *calls: Callable[[], Awaitable[object]]) -> None:
    """Every one of ``calls``, awaited in turn, raises ``error``."""
    for call in calls:
        with pytest.raises(error):
            await call()


async def test_wrong_password_fails_both_ends_with_an_error_frame(transport: str, ntlm_users: NTLMUsers) -> None:
    """A wrong password: the client gets the server's HandshakeError frame, the server an AuthenticationError."""
    relay = Relay()
    async with wired(transport, relay) as (client_end, server_end):
        recorder = RecordingStream(server_end)
        client, server = await handshake_streams(client_end, recorder, ntlm_users, client_password="wrong")
        # Let the relay deliver the server's last bytes and EOF before inspecting the wire.
        with pytest.raises((anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)):
            await client_end.receive()
    assert isinstance(client, errors.HandshakeError), client
    assert client.status == errors.SEC_E_LOGON_DENIED
    assert isinstance(server, errors.AuthenticationError) and not isinstance(server, errors.HandshakeError), server
    frames = handshake_frames(bytes(relay.wire["to_client"]))
    assert [message_id for message_id, _ in frames] == [0x16, 0x15]
    assert len(frames[-1][1]) == 8
    assert errors.SEC_E_LOGON_DENIED in {
        int.from_bytes(frames[-1][1][4:], "big"),
        int.from_bytes(frames[-1][1][4:], "little"),
    }
    # The server's last write is the whole MS-NNS HandshakeError frame: id 0x15, version 1.0, 8-byte payload.
    assert recorder.sent[-1][:5] == b"\x15\x01\x00\x00\x08"
    assert len(recorder.sent[-1]) == 13


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign"])
@pytest.mark.parametrize(
    ("action", "error"),
    [
        pytest.param("tamper", errors.IntegrityError, id="tampered-record"),
        pytest.param("truncate", errors.TruncatedStreamError, id="eof-inside-a-record"),
    ],
)
async def test_damaged_record_delivers_nothing_and_breaks_the_stream(
    transport: str, level: str, action: str, error: type[Exception], ntlm_users: NTLMUsers
) -> None:
    """A flipped bit (IntegrityError) or EOF mid-record (TruncatedStreamError), then BrokenStreamError caused by it."""
    relay = Relay()
    async with negotiated_streams(transport, ntlm_users, relay, level=level) as (client, server):
        await client.send(b"intact")
        assert await server.receive() == b"intact"
        relay.action = action
        await client.send(b"damaged" * 100)
        with pytest.raises(error):
            await server.receive()
        with pytest.raises(errors.BrokenStreamError) as broken:
            await server.receive()
        assert isinstance(broken.value.__cause__, error)
        await each_raises(errors.BrokenStreamError, lambda: server.send(b"reply"), server.send_eof)


async def test_cancelled_receive_mid_record_keeps_the_stream_usable(transport: str, ntlm_users: NTLMUsers) -> None:
    """Cancelling a receive that holds half a record loses nothing: the record and later ones still arrive."""
    async with negotiated_streams(transport, ntlm_users) as (client, server):
        wire = client.connection.send(b"split across a cancellation")  # driven by hand to deliver half a record
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


async def test_cancelled_send_breaks_the_stream(transport: str, ntlm_users: NTLMUsers) -> None:
    """A send cancelled with part of its data written leaves the stream BROKEN in both directions."""
    # The server never reads: a big send blocks in the transport (memory: no buffer at all).
    big = b"\x00" * (32 << 20 if transport == "tcp" else 1 << 20)
    async with negotiated_streams(transport, ntlm_users, max_buffer_chunks=0) as (client, _server):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.send, big)
                await wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        with anyio.fail_after(10):  # a regression must fail, not hang; nothing is timed
            await each_raises(errors.BrokenStreamError, lambda: client.send(b"more"), client.receive)


async def test_use_after_close(transport: str, ntlm_users: NTLMUsers) -> None:
    """aclose() is idempotent, later calls raise ClosedResourceError, and the peer sees a clean end."""
    async with negotiated_streams(transport, ntlm_users) as (client, server):
        await client.aclose()
        await client.aclose()  # idempotent
        await each_raises(anyio.ClosedResourceError, lambda: client.send(b"x"), client.receive)
        with pytest.raises(anyio.EndOfStream):  # the peer sees a clean end
            await server.receive()


async def test_peer_close_is_end_of_stream(transport: str, ntlm_users: NTLMUsers) -> None:
    """Data sent before the peer's aclose() is delivered, then EndOfStream."""
    async with negotiated_streams(transport, ntlm_users) as (client, server):
        await client.send(b"bye")
        await client.aclose()
        assert await server.receive() == b"bye"
        with pytest.raises(anyio.EndOfStream):
            await server.receive()


async def test_handshake_timeout_closes_the_transport(transport: str, ntlm_users: NTLMUsers) -> None:
    """A silent peer: HandshakeTimeoutError, and the transport is closed on both sides of it."""
    async with wired(transport) as (client_end, server_end):
        with pytest.raises(errors.HandshakeTimeoutError):
            await NegotiateStream.wrap(
                server_end, server_side=True, handshake_timeout=0.2, credentials=ntlm_users.server_credentials()
            )
        with pytest.raises(anyio.ClosedResourceError):  # our end was closed
            await server_end.send(b"x")
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):  # the peer sees it
            await client_end.receive()


async def test_handshake_with_a_peer_that_hangs_up(transport: str, ntlm_users: NTLMUsers) -> None:
    """EOF before the handshake completes is TruncatedStreamError."""
    async with wired(transport) as (client_end, server_end):
        await client_end.send_eof()
        with pytest.raises(errors.TruncatedStreamError):
            await NegotiateStream.wrap(server_end, server_side=True, credentials=ntlm_users.server_credentials())
