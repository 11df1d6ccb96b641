"""anyio ``idle_timeout`` (NegotiateListener, NegotiateStream): a receive() that waits that long for a record fails.

The stream is then closed: receive() raises IdleTimeoutError (a ConnectionLostError and a TimeoutError), every
later call BrokenStreamError. Only a whole record stops the clock, and time between receive() calls is the
application's, not counted.
"""

from __future__ import annotations

import logging

import anyio
import pytest
from anyio.abc import SocketAttribute

from negotiate_stream import BrokenStreamError, ConnectionLostError, IdleTimeoutError
from negotiate_stream.anyio_ import NegotiateListener, NegotiateStream, connect
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import client_options, server_options
from tests.support.streams import negotiated_streams, receive_exactly

pytestmark = pytest.mark.anyio

IDLE = 0.3


async def test_listener_closes_a_silent_client(ntlm_users: NTLMUsers) -> None:
    """NegotiateListener(idle_timeout=...): the handler's receive() raises IdleTimeoutError; the client sees EOF."""
    errors: list[BaseException] = []
    handled = anyio.Event()

    async def handler(stream: NegotiateStream) -> None:
        assert stream.idle_timeout == IDLE
        async with stream:
            start = anyio.current_time()
            with pytest.raises(IdleTimeoutError) as excinfo:
                await stream.receive()
            assert IDLE * 0.9 <= anyio.current_time() - start < IDLE + 1.0
            errors.append(excinfo.value)
            for call in (stream.receive, lambda: stream.send(b"too late")):
                with pytest.raises(BrokenStreamError) as broken:
                    await call()
                assert broken.value.__cause__ is excinfo.value
        handled.set()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as tcp, anyio.create_task_group() as tg:
        port = tcp.extra(SocketAttribute.local_port)
        tg.start_soon(NegotiateListener(tcp, idle_timeout=IDLE, **server_options(ntlm_users)).serve, handler)
        async with await connect("127.0.0.1", port, **client_options(ntlm_users)) as stream:
            with pytest.raises(anyio.EndOfStream):  # closed by the server, at a record boundary
                await stream.receive()
        await handled.wait()
        tg.cancel_scope.cancel()
    [error] = errors
    assert isinstance(error, ConnectionLostError) and isinstance(error, TimeoutError)
    assert "idle_timeout" in str(error)


async def test_records_keep_the_stream_alive(transport: str, ntlm_users: NTLMUsers) -> None:
    """A peer sending a record every third of the idle timeout is never cut, for many idle periods."""
    async with negotiated_streams(transport, ntlm_users) as (client, server):
        server.idle_timeout = IDLE
        for i in range(12):  # 12 x 0.1 s = four idle periods
            await client.send(b"%02d" % i)
            assert await receive_exactly(server, 2) == b"%02d" % i
            await anyio.sleep(IDLE / 3)


async def test_part_of_a_record_does_not_count(transport: str, ntlm_users: NTLMUsers) -> None:
    """A peer that sends a record but its last bytes, then stalls: IdleTimeoutError (a slowloris is cut too)."""
    async with negotiated_streams(transport, ntlm_users) as (client, server):
        server.idle_timeout = IDLE
        wire = client.connection.send(b"never finished" * 10)  # driven by hand to send a partial record
        await client.transport_stream.send(wire[:-1])
        with pytest.raises(IdleTimeoutError):
            await server.receive()
        assert server.connection.buffered == len(wire) - 1  # it was waiting for the last byte


async def test_time_between_receive_calls_is_not_counted(transport: str, ntlm_users: NTLMUsers) -> None:
    """The bound is on one receive()'s wait: an application busy for longer than it does not cut the peer."""
    async with negotiated_streams(transport, ntlm_users) as (client, server):
        server.idle_timeout = IDLE
        await client.send(b"first")
        assert await receive_exactly(server, 5) == b"first"
        await anyio.sleep(IDLE * 2)  # the application works; the peer is silent meanwhile

        async def reply_soon() -> None:
            await anyio.sleep(IDLE / 3)
            await client.send(b"second")

        async with anyio.create_task_group() as tg:
            tg.start_soon(reply_soon)
            assert await receive_exactly(server, 6) == b"second"


async def test_no_idle_bound_by_default(transport: str, ntlm_users: NTLMUsers) -> None:
    """Without idle_timeout a receive() waits as long as the peer takes."""
    async with negotiated_streams(transport, ntlm_users) as (client, server):
        assert server.idle_timeout is None

        async def late() -> None:
            await anyio.sleep(IDLE * 2)
            await client.send(b"late")

        async with anyio.create_task_group() as tg:
            tg.start_soon(late)
            assert await receive_exactly(server, 4) == b"late"


async def test_wrap_and_connect_accept_idle_timeout(ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture) -> None:
    """connect(idle_timeout=...) bounds the client's receive() the same way (a silent server)."""

    async def silent(stream: NegotiateStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as tcp, anyio.create_task_group() as tg:
        port = tcp.extra(SocketAttribute.local_port)
        tg.start_soon(NegotiateListener(tcp, **server_options(ntlm_users)).serve, silent)
        with caplog.at_level(logging.WARNING, logger="negotiate_stream"):
            async with await connect("127.0.0.1", port, idle_timeout=IDLE, **client_options(ntlm_users)) as stream:
                assert stream.idle_timeout == IDLE
                with pytest.raises(IdleTimeoutError):
                    await stream.receive()
        tg.cancel_scope.cancel()
    assert not [r for r in caplog.records if r.name == "negotiate_stream"]
