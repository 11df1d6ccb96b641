"""The three adapters interoperate: anyio, asyncio (Protocol/streams) and blocking sockets, over loopback TCP.

Each server echoes until the client half-closes, then half-closes too; each client sends 1 MiB while it reads
the echo (a writer task/thread and a reader task/thread), then compares checksums.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute

from negotiate_stream import ProtectionLevel
from negotiate_stream.anyio_ import NegotiateListener, NegotiateStream, connect
from negotiate_stream.asyncio_ import open_connection, start_server
from negotiate_stream.sync import NegotiateSocket, create_connection
from negotiate_stream.testing import NTLMUsers

pytestmark = pytest.mark.anyio

MIB = 1 << 20
LEVELS = ["encrypt_and_sign", "sign"]


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- clients --------------------------------------------------------------------------------------------------------


async def anyio_client(port: int, users: NTLMUsers, level: str, payload: bytes) -> tuple[bytes, str | None]:
    async with await connect(
        "127.0.0.1", port, protocol="ntlm", protection_level=level, credentials=users.client_credentials()
    ) as stream:
        assert stream.session_info.protection_level is ProtectionLevel(level)

        async def write() -> None:
            await stream.send(payload)
            await stream.send_eof()

        echoed = bytearray()
        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            while True:
                try:
                    echoed += await stream.receive()
                except anyio.EndOfStream:
                    break
        return bytes(echoed), stream.session_info.peer_identity


def sync_client(port: int, users: NTLMUsers, level: str, payload: bytes) -> tuple[bytes, str | None]:
    with create_connection(
        ("127.0.0.1", port), timeout=60, protocol="ntlm", protection_level=level, credentials=users.client_credentials()
    ) as sock:
        assert sock.protection_level is ProtectionLevel(level)

        def write() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write)
        writer.start()
        echoed = bytearray()
        while data := sock.recv(65536):
            echoed += data
        writer.join()
        return bytes(echoed), sock.peer_identity


async def asyncio_client(port: int, users: NTLMUsers, level: str, payload: bytes) -> tuple[bytes, Any]:
    reader, writer = await open_connection(
        "127.0.0.1", port, protocol="ntlm", protection_level=level, credentials=users.client_credentials()
    )

    async def write() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.ensure_future(write())
    echoed = await reader.read()  # until EOF
    await sender
    info = writer.get_extra_info("negotiate_stream")
    writer.close()
    return echoed, info.peer_identity if info is not None else None


# -- tests ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("level", LEVELS)
async def test_anyio_and_sync_clients_with_an_asyncio_server(level: str, ntlm_users: NTLMUsers) -> None:
    identities: list[str | None] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = writer.get_extra_info("negotiate_stream")
        identities.append(info.peer_identity)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await start_server(
        echo, "127.0.0.1", 0, protocol="ntlm", protection_level=level, credentials=ntlm_users.server_credentials()
    )
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


@pytest.mark.parametrize("level", LEVELS)
async def test_sync_and_asyncio_clients_with_an_anyio_listener(
    anyio_backend: str, level: str, ntlm_users: NTLMUsers
) -> None:
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
        await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0),
        protocol="ntlm",
        protection_level=level,
        credentials=ntlm_users.server_credentials(),
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


@pytest.mark.parametrize("level", LEVELS)
async def test_anyio_client_with_a_sync_server_thread(level: str, ntlm_users: NTLMUsers) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(60)
        served: dict[str, Any] = {}

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(60)
            with NegotiateSocket.server(
                conn, protocol="ntlm", protection_level=level, credentials=ntlm_users.server_credentials()
            ) as sock:
                served["identity"] = sock.peer_identity
                while data := sock.recv(65536):
                    sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        upload = os.urandom(MIB)
        echoed, target = await anyio_client(listener.getsockname()[1], ntlm_users, level, upload)
        await anyio.to_thread.run_sync(thread.join, 60)
    assert digest(echoed) == digest(upload) and target == "host/127.0.0.1"
    assert served["identity"] == ntlm_users.usernames[0]
