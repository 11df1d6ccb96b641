"""Baselines on asyncio: plain loopback TCP and stdlib TLS, with the streams API and with Protocols."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from ._core import RECEIVE_BUFFER, WRITE_SIZE, StreamVerifier, pattern_block
from ._workloads import PING_SIZE, BulkOutcome, PingPongOutcome

__all__ = [
    "StreamsPipe",
    "make_tls_contexts",
    "protocol_bulk",
    "protocol_pingpong",
    "streams_pair",
]

LOCALHOST = "127.0.0.1"


class StreamsPipe:
    """:class:`~._workloads.AsyncPipe` over an asyncio ``(StreamReader, StreamWriter)`` pair."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        """Write and drain."""
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, max_bytes: int) -> bytes:
        """Read up to ``max_bytes``."""
        data: bytes = await self.reader.read(max_bytes)
        return data

    async def aclose(self) -> None:
        """Close the writer."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


Cleanup = Callable[[], Awaitable[None]]


async def streams_pair(
    open_connection: Callable[..., Awaitable[tuple[Any, Any]]] = asyncio.open_connection,
    start_server: Callable[..., Awaitable[asyncio.Server]] = asyncio.start_server,
    client_kwargs: dict[str, Any] | None = None,
    server_kwargs: dict[str, Any] | None = None,
) -> tuple[StreamsPipe, StreamsPipe, Cleanup]:
    """A connected client/server pair made with ``start_server`` + ``open_connection`` (stdlib or ours)."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[StreamsPipe] = loop.create_future()
    finished = asyncio.Event()

    async def handle(reader: Any, writer: Any) -> None:
        accepted.set_result(StreamsPipe(reader, writer))
        await finished.wait()  # some servers close the connection when the handler returns

    server = await start_server(handle, LOCALHOST, 0, **(server_kwargs or {}))
    port = server.sockets[0].getsockname()[1]
    reader, writer = await open_connection(LOCALHOST, port, **(client_kwargs or {}))
    client = StreamsPipe(reader, writer)
    server_end = await asyncio.wait_for(accepted, 30)

    async def cleanup() -> None:
        finished.set()
        await client.aclose()
        await server_end.aclose()
        server.close()
        await server.wait_closed()

    return client, server_end, cleanup


# -- Protocol-level baselines: the fastest plain asyncio code (what our NegotiateProtocol is compared with) -----


class _Sink(asyncio.BufferedProtocol):
    """Receives into one reused buffer and verifies the bulk stream."""

    def __init__(self, verifier: StreamVerifier, done: asyncio.Future[None]) -> None:
        self.verifier = verifier
        self.done = done
        self.buffer = memoryview(bytearray(RECEIVE_BUFFER))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.verifier.feed(self.buffer[:nbytes])
        if self.verifier.complete and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Source(asyncio.Protocol):
    """A sender honouring flow control (pause_writing / resume_writing)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.resumed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None


async def protocol_bulk(total: int, *, ssl_pair: tuple[ssl.SSLContext, ssl.SSLContext] | None = None) -> BulkOutcome:
    """Bulk transfer between a flow-controlled sender Protocol and a BufferedProtocol receiver."""
    loop = asyncio.get_running_loop()
    block = pattern_block()
    verifier = StreamVerifier(block, total)
    done: asyncio.Future[None] = loop.create_future()
    server = await loop.create_server(
        lambda: _Sink(verifier, done), LOCALHOST, 0, ssl=ssl_pair[0] if ssl_pair else None
    )
    port = server.sockets[0].getsockname()[1]
    client_ssl: dict[str, Any] = {"ssl": ssl_pair[1], "server_hostname": "localhost"} if ssl_pair else {}
    transport, source = await loop.create_connection(_Source, LOCALHOST, port, **client_ssl)
    import time

    started = time.perf_counter()
    write = transport.write
    for _ in range(total // WRITE_SIZE):
        write(block)
        if source.resumed is not None:
            await source.resumed
    await done
    seconds = time.perf_counter() - started
    transport.close()
    server.close()
    await server.wait_closed()
    return BulkOutcome(verifier.received, seconds, verifier.ok)


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.pending = bytearray()

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while len(self.pending) >= PING_SIZE:
            self.transport.write(bytes(self.pending[:PING_SIZE]))
            del self.pending[:PING_SIZE]


class _Pinger(asyncio.Protocol):
    """Sends the next ping from the callback that received the previous pong (no task switch per round)."""

    def __init__(self, rounds: int, done: asyncio.Future[bool]) -> None:
        self.left = rounds
        self.done = done
        self.ping = bytes(range(PING_SIZE))
        self.pending = bytearray()
        self.verified = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def start(self) -> None:
        self.transport.write(self.ping)

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while len(self.pending) >= PING_SIZE:
            self.verified = self.verified and self.pending[:PING_SIZE] == self.ping
            del self.pending[:PING_SIZE]
            self.left -= 1
            if self.left:
                self.transport.write(self.ping)
            elif not self.done.done():
                self.done.set_result(self.verified)


async def protocol_pingpong(rounds: int) -> PingPongOutcome:
    """Ping-pong between two plain Protocols, driven from their callbacks."""
    import time

    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, LOCALHOST, 0)
    port = server.sockets[0].getsockname()[1]
    done: asyncio.Future[bool] = loop.create_future()
    transport, pinger = await loop.create_connection(lambda: _Pinger(rounds, done), LOCALHOST, port)
    started = time.perf_counter()
    pinger.start()
    verified = await done
    seconds = time.perf_counter() - started
    transport.close()
    server.close()
    await server.wait_closed()
    return PingPongOutcome(rounds, seconds, verified)


def make_tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server and a client SSLContext for a self-signed ``localhost`` certificate made now with cryptography."""
    import os
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCALHOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        with open(cert_path, "wb") as handle:
            handle.write(cert_pem)
        with open(key_path, "wb") as handle:
            handle.write(key_pem)
        server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cadata=cert_pem.decode("ascii"))
    return server_ctx, client_ctx
