"""asyncio ``start_server(idle_timeout=...)``: an authenticated connection without records for that long is closed.

The handler's reader then raises IdleTimeoutError (a ConnectionLostError and a TimeoutError) and its writes
BrokenStreamError. Records keep the connection alive; a handler that stops reading, or a client that ended its
stream, is not the idle peer's fault and is never cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from negotiate_stream import BrokenStreamError, ConnectionLostError, IdleTimeoutError
from negotiate_stream import asyncio_ as nsa
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import client_options, port_of, run, server_options

IDLE = 0.3

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(users: NTLMUsers, handler: Handler, idle_timeout: float | None = None) -> asyncio.Server:
    """start_server on an ephemeral loopback port with the test account."""
    return await nsa.start_server(handler, "127.0.0.1", 0, idle_timeout=idle_timeout, **server_options(users))


def test_silent_client_is_closed_after_idle_timeout(ntlm_users: NTLMUsers) -> None:
    """No record for idle_timeout: the reader raises IdleTimeoutError, writes raise Broken, the client sees EOF."""

    async def main() -> None:
        outcome: asyncio.Future[tuple[BaseException, float]] = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            start = time.monotonic()
            try:
                await reader.read(100)
            except Exception as exc:
                with pytest.raises(BrokenStreamError) as broken:
                    writer.write(b"too late")
                assert broken.value.__cause__ is exc
                outcome.set_result((exc, time.monotonic() - start))

        server = await serve(ntlm_users, handler, idle_timeout=IDLE)
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            error, waited = await outcome
            assert await reader.read() == b""  # the server closed the connection (at a record boundary)
            writer.close()
        assert isinstance(error, IdleTimeoutError), repr(error)
        assert isinstance(error, ConnectionLostError) and isinstance(error, TimeoutError)
        assert "idle_timeout" in str(error)
        assert IDLE * 0.9 <= waited < IDLE + 1.0

    run(main())


def test_records_keep_the_connection_alive(ntlm_users: NTLMUsers) -> None:
    """A client sending a record every third of the idle timeout is never cut, for many idle periods."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(100):
            writer.write(chunk)
        writer.close()

    async def main() -> None:
        server = await serve(ntlm_users, echo, idle_timeout=IDLE)
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            for i in range(12):  # 12 x 0.1 s = four idle periods
                writer.write(b"%02d" % i)
                assert await reader.readexactly(2) == b"%02d" % i
                await asyncio.sleep(IDLE / 3)
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()

    run(main())


def test_a_handler_that_stops_reading_is_not_cut(ntlm_users: NTLMUsers) -> None:
    """While the reader's buffer is full (reading paused) the idle clock stops; everything arrives afterwards."""
    payload = b"x" * 200_000  # well over the reader's limit: the transport pauses reading

    async def main() -> None:
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def slow_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(IDLE * 3)  # not reading: the client is not to blame
            received.set_result(await reader.read())
            writer.close()

        server = await nsa.start_server(
            slow_handler, "127.0.0.1", 0, limit=4096, idle_timeout=IDLE, **server_options(ntlm_users)
        )
        async with server:
            _, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            writer.write(payload)
            writer.write_eof()
            assert await received == payload
            writer.close()

    run(main())


def test_the_clock_stops_at_the_clients_eof(ntlm_users: NTLMUsers) -> None:
    """A client that ended its stream owes no more records: a handler that replies slowly is not cut."""

    async def slow_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's EOF
        await asyncio.sleep(IDLE * 3)
        writer.write(request[::-1])
        writer.close()

    async def main() -> None:
        server = await serve(ntlm_users, slow_reply, idle_timeout=IDLE)
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            writer.write(b"request")
            writer.write_eof()
            assert await reader.read() == b"tseuqer"
            writer.close()

    run(main())


def test_no_idle_bound_by_default(ntlm_users: NTLMUsers) -> None:
    """Without idle_timeout a client may stay silent for longer than any test bound, and is still served."""

    async def echo_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        writer.close()

    async def main() -> None:
        server = await serve(ntlm_users, echo_one)
        async with server:
            reader, writer = await nsa.open_connection("127.0.0.1", port_of(server), **client_options(ntlm_users))
            await asyncio.sleep(IDLE * 2)
            writer.write(b"late")
            assert await reader.read() == b"late"
            writer.close()

    run(main())
