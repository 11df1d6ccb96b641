"""The adapters interoperate: anyio, asyncio and blocking sockets talk to each other over loopback TCP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading

import anyio
import pytest
from anyio.abc import SocketAttribute

from negotiate_stream import asyncio_
from negotiate_stream.anyio_ import NegotiateAttribute, NegotiateListener, NegotiateStream, connect
from negotiate_stream.sync import NegotiateSocket, create_connection
from negotiate_stream.testing import NTLMUsers

pytestmark = pytest.mark.anyio

PAYLOAD = os.urandom(300_000)  # several records
DIGEST = hashlib.sha256(PAYLOAD).digest()


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def receive_exactly(stream: NegotiateStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += await stream.receive(size - len(data))
    return bytes(data)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_anyio_client_with_asyncio_server(ntlm_users: NTLMUsers) -> None:
    identities: list[object] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        identities.append(writer.get_extra_info("peer_identity", None))
        data = await reader.readexactly(len(PAYLOAD))
        writer.write(hashlib.sha256(data).digest())
        await writer.drain()
        writer.close()

    server = await asyncio_.start_server(
        handle, "127.0.0.1", 0, credentials=ntlm_users.server_credentials(), protocol="ntlm"
    )
    async with server:
        port = server.sockets[0].getsockname()[1]
        async with await connect(
            "127.0.0.1", port, protocol="ntlm", target="host/localhost", credentials=ntlm_users.client_credentials()
        ) as stream:
            await stream.send(PAYLOAD)
            assert await receive_exactly(stream, 32) == DIGEST
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
    assert len(identities) == 1


async def test_sync_client_with_anyio_listener(ntlm_users: NTLMUsers) -> None:
    listener = NegotiateListener(
        await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0),
        credentials=ntlm_users.server_credentials(),
        protocol="ntlm",
    )
    port = listener.extra(SocketAttribute.local_port)
    identities: list[str | None] = []

    async def handle(stream: NegotiateStream) -> None:
        async with stream:
            identities.append(stream.extra(NegotiateAttribute.peer_identity))
            await stream.send(hashlib.sha256(await receive_exactly(stream, len(PAYLOAD))).digest())

    def sync_client() -> bytes:
        with create_connection(
            ("127.0.0.1", port),
            timeout=30,
            protocol="ntlm",
            target="host/localhost",
            credentials=ntlm_users.client_credentials(),
        ) as sock:
            sock.sendall(PAYLOAD)
            digest = sock.makefile("rb").read(32)
            assert sock.recv() == b""
            return digest

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        assert await anyio.to_thread.run_sync(sync_client) == DIGEST
        tg.cancel_scope.cancel()
    assert identities and identities[0] is not None and identities[0].lower().endswith("alice")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_client_with_sync_server_thread(ntlm_users: NTLMUsers) -> None:
    result: dict[str, object] = {}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def sync_server() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(30)
            with NegotiateSocket.server(conn, credentials=ntlm_users.server_credentials(), protocol="ntlm") as sock:
                result["identity"] = sock.session_info.peer_identity
                data = sock.makefile("rb").read(len(PAYLOAD))
                sock.sendall(hashlib.sha256(data).digest())
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=sync_server, daemon=True)
    thread.start()
    try:
        reader, writer = await asyncio_.open_connection(
            "127.0.0.1",
            listener.getsockname()[1],
            protocol="ntlm",
            target="host/localhost",
            credentials=ntlm_users.client_credentials(),
        )
        writer.write(PAYLOAD)
        await writer.drain()
        assert await reader.readexactly(32) == DIGEST
        assert await reader.read() == b""
        writer.close()
    finally:
        await anyio.to_thread.run_sync(thread.join, 30)
        listener.close()
    assert "error" not in result, result.get("error")
    assert str(result["identity"]).lower().endswith("alice")
