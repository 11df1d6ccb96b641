"""The three adapters interoperate: anyio, asyncio (streams) and blocking sockets, over loopback TCP.

Each server echoes until the client half-closes, then half-closes too; each client sends 1 MiB while it reads
the echo (a writer task/thread and a reader task/thread), then compares checksums.
"""

from __future__ import annotations

import asyncio
import os
import socket

import anyio
import pytest
from anyio.abc import SocketAttribute

from negotiate_stream.anyio_ import NegotiateListener, NegotiateStream
from negotiate_stream.asyncio_ import start_server
from negotiate_stream.sync import NegotiateSocket
from negotiate_stream.testing import NTLMUsers
from tests.support.streams import (
    GUARD_TIMEOUT,
    MIB,
    Worker,
    anyio_client,
    asyncio_client,
    digest,
    server_options,
    sync_client,
)

pytestmark = pytest.mark.anyio

FRAMED_LEVELS = ["encrypt_and_sign", "sign"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("level", FRAMED_LEVELS)
async def test_anyio_and_sync_clients_with_an_asyncio_server(level: str, ntlm_users: NTLMUsers) -> None:
    """An asyncio-streams server echoes 1 MiB to an anyio client and a blocking client connected at once."""
    identities: list[str | None] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = writer.get_extra_info("negotiate_stream")
        identities.append(info.peer_identity)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await start_server(echo, "127.0.0.1", 0, **server_options(ntlm_users, level))
    async with server:
        port = server.sockets[0].getsockname()[1]
        upload_a, upload_s = os.urandom(MIB), os.urandom(MIB)
        results: dict[str, tuple[bytes, str | None]] = {}

        async def run_anyio() -> None:
            results["anyio"] = await anyio_client(port, ntlm_users, level, upload_a)

        async def run_sync() -> None:
            results["sync"] = await anyio.to_thread.run_sync(sync_client, port, ntlm_users, level, upload_s)

        async with anyio.create_task_group() as tg:  # both clients at once
            tg.start_soon(run_anyio)
            tg.start_soon(run_sync)
    assert digest(results["anyio"][0]) == digest(upload_a)
    assert digest(results["sync"][0]) == digest(upload_s)
    assert results["anyio"][1] == results["sync"][1] == "host/127.0.0.1"
    assert identities == [ntlm_users.usernames[0]] * 2


@pytest.mark.parametrize("level", FRAMED_LEVELS)
async def test_sync_and_asyncio_clients_with_an_anyio_listener(
    anyio_backend: str, level: str, ntlm_users: NTLMUsers
) -> None:
    """A NegotiateListener (asyncio and trio) echoes 1 MiB to a blocking client and, on asyncio, an asyncio one."""
    identities: list[str | None] = []

    async def echo(stream: NegotiateStream) -> None:
        async with stream:
            identities.append(stream.session_info.peer_identity)
            try:
                while True:
                    await stream.send(await stream.receive())
            except anyio.EndOfStream:
                await stream.send_eof()

    listener = NegotiateListener(
        await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0), **server_options(ntlm_users, level)
    )
    port = listener.extra(SocketAttribute.local_port)
    upload = os.urandom(MIB)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        echoed, target = await anyio.to_thread.run_sync(sync_client, port, ntlm_users, level, upload)
        assert digest(echoed) == digest(upload) and target == "host/127.0.0.1"
        if anyio_backend == "asyncio":  # the asyncio adapter needs an asyncio loop
            echoed, target = await asyncio_client(port, ntlm_users, level, upload)
            assert digest(echoed) == digest(upload) and target == "host/127.0.0.1"
        tg.cancel_scope.cancel()
    assert identities == [ntlm_users.usernames[0]] * (2 if anyio_backend == "asyncio" else 1)


@pytest.mark.parametrize("level", FRAMED_LEVELS)
async def test_anyio_and_asyncio_clients_with_a_sync_server_thread(
    anyio_backend: str, level: str, ntlm_users: NTLMUsers
) -> None:
    """A blocking server thread echoes 1 MiB to an anyio client (asyncio and trio) and, on asyncio, an asyncio one."""
    clients = 2 if anyio_backend == "asyncio" else 1
    identities: list[str | None] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(GUARD_TIMEOUT)

        def serve() -> None:
            for _ in range(clients):
                conn, _ = listener.accept()
                conn.settimeout(GUARD_TIMEOUT)
                with NegotiateSocket.server(conn, **server_options(ntlm_users, level)) as sock:
                    identities.append(sock.peer_identity)
                    while data := sock.recv(65536):
                        sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)

        server = Worker(serve)
        port = listener.getsockname()[1]
        upload = os.urandom(MIB)
        echoed, target = await anyio_client(port, ntlm_users, level, upload)
        assert digest(echoed) == digest(upload) and target == "host/127.0.0.1"
        if anyio_backend == "asyncio":  # the asyncio adapter needs an asyncio loop
            echoed, target = await asyncio_client(port, ntlm_users, level, upload)
            assert digest(echoed) == digest(upload) and target == "host/127.0.0.1"
        await anyio.to_thread.run_sync(server.result)
    assert identities == [ntlm_users.usernames[0]] * clients
