"""Helpers shared by the anyio, blocking-socket and cross-adapter tests: real loopback TCP, real NTLM, real peers.

Nothing is mocked. The wire is observed (and damaged, when a test asks) by relays and recording wrappers that sit
between the two ends, so a test sees exactly what a peer or an attacker would. The peers that vanish (resets at
each handshake step, scripted blocking peers) serve the peer-loss suites of all three adapters.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream, SocketAttribute, SocketListener

from negotiate_stream import Connection, ProtectionLevel, TruncatedStreamError
from negotiate_stream.anyio_ import NegotiateStream, connect, memory_stream_pair
from negotiate_stream.asyncio_ import open_connection
from negotiate_stream.sync import NegotiateSocket, create_connection
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import GUARD_TIMEOUT, LEVELS, client_options, digest, server_options

__all__ = [
    "GUARD_TIMEOUT",
    "LEVELS",
    "MIB",
    "RESET_ERRORS",
    "SERVER_CUTS",
    "BareTap",
    "RecordingStream",
    "Relay",
    "Tap",
    "Worker",
    "anyio_backend",
    "anyio_client",
    "assert_truncated_by_reset",
    "asyncio_client",
    "authenticated_server",
    "client_options",
    "digest",
    "handshake_frames",
    "handshake_sockets",
    "handshake_streams",
    "negotiated_sockets",
    "negotiated_streams",
    "plain_pair",
    "read_frame",
    "receive_all",
    "receive_exactly",
    "recv_all",
    "recv_exactly",
    "reset",
    "scripted_peer",
    "server_options",
    "sync_client",
    "tcp_pair",
    "transport",
    "wired",
]

MIB = 1 << 20


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every anyio test runs on both backends (a test may narrow it with ``parametrize("anyio_backend", ...)``)."""
    return str(request.param)


@pytest.fixture(params=["tcp", "memory"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each anyio stream test runs over loopback TCP and over in-memory pipes (see :func:`plain_pair`)."""
    return str(request.param)


def handshake_frames(wire: bytes) -> list[tuple[int, bytes]]:
    """Split MS-NNS handshake messages: id, major, minor, uint16 BE length, payload."""
    frames, pos = [], 0
    while pos + 5 <= len(wire):
        size = int.from_bytes(wire[pos + 3 : pos + 5], "big")
        frames.append((wire[pos], wire[pos + 5 : pos + 5 + size]))
        pos += 5 + size
    return frames


# -- anyio: plain pairs, relays, handshakes -----------------------------------------------------------------------


@asynccontextmanager
async def plain_pair(transport: str, max_buffer_chunks: int = 16) -> AsyncIterator[tuple[ByteStream, ByteStream]]:
    """Two connected unprotected byte streams: loopback TCP (``"tcp"``) or memory_stream_pair() (``"memory"``)."""
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
        assert isinstance(listener, SocketListener)  # narrows the type: accept() is on SocketListener
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
        """Forward ``source`` to ``sink`` until EOF (then half-close ``sink``), applying :attr:`action`."""
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


class RecordingStream(ByteStream):
    """Passes everything through and records each write, so a test can check write boundaries."""

    def __init__(self, inner: ByteStream) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Receive from the wrapped stream."""
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        """Record ``item``, then send it."""
        self.sent.append(bytes(item))
        await self.inner.send(item)

    async def send_eof(self) -> None:
        """Half-close the wrapped stream."""
        await self.inner.send_eof()

    async def aclose(self) -> None:
        """Close the wrapped stream."""
        await self.inner.aclose()


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


def side_options(
    users: NTLMUsers, *, level: str = "encrypt_and_sign", client_password: str | None = None, **common: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(client, server) handshake options at ``level``; ``common`` goes to both, ``client_password`` to the client."""
    return client_options(users, level, password=client_password, **common), {**server_options(users, level), **common}


async def handshake_streams(
    client_end: ByteStream, server_end: ByteStream, users: NTLMUsers, **options: Any
) -> tuple[NegotiateStream | Exception, NegotiateStream | Exception]:
    """Run both handshakes at once (``options``: see :func:`side_options`); each result is the stream or the error."""
    outcome: dict[str, NegotiateStream | Exception] = {}
    client_kwargs, server_kwargs = side_options(users, **options)

    async def side(name: str, end: ByteStream, **kwargs: Any) -> None:
        try:
            outcome[name] = await NegotiateStream.wrap(end, **kwargs)
        except Exception as exc:
            outcome[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: side("server", server_end, server_side=True, **server_kwargs))
        tg.start_soon(lambda: side("client", client_end, **client_kwargs))
    return outcome["client"], outcome["server"]


@asynccontextmanager
async def negotiated_streams(
    transport: str, users: NTLMUsers, relay: Relay | None = None, max_buffer_chunks: int = 16, **options: Any
) -> AsyncIterator[tuple[NegotiateStream, NegotiateStream]]:
    """An authenticated (client, server) NegotiateStream pair, closed on exit; ``options`` go to the handshake."""
    async with wired(transport, relay, max_buffer_chunks) as (client_end, server_end):
        client, server = await handshake_streams(client_end, server_end, users, **options)
        assert isinstance(client, NegotiateStream), client
        assert isinstance(server, NegotiateStream), server
        try:
            yield client, server
        finally:
            await client.aclose()
            await server.aclose()


async def receive_exactly(stream: NegotiateStream, size: int, max_bytes: int = 65536) -> bytes:
    """Receive exactly ``size`` bytes, ``max_bytes`` at most per call."""
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive(min(max_bytes, size - len(data)))
        assert chunk, "receive() must never return b''"
        data += chunk
    return bytes(data)


async def receive_all(stream: NegotiateStream) -> bytes:
    """Receive until the peer's clean end of stream."""
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive()
        except anyio.EndOfStream:
            return bytes(data)
        assert chunk, "receive() must never return b''"
        data += chunk


# -- blocking sockets: pairs, taps, threads, handshakes -----------------------------------------------------------


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback (client, server) socket pair with guard timeouts."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=GUARD_TIMEOUT)
        server, _ = listener.accept()
    server.settimeout(GUARD_TIMEOUT)
    return client, server


class Tap:
    """A socket wrapper that records every write and can flip the last byte of the next one.

    Everything else (``shutdown``, ``settimeout``, ``close``, ...) is forwarded to the socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes: list[bytes] = []
        self.flip_next = False

    @property
    def sent(self) -> bytes:
        """Everything written so far, as sent on the wire."""
        return b"".join(self.writes)

    def recv(self, bufsize: int) -> bytes:
        """Receive from the socket."""
        return self.sock.recv(bufsize)

    def sendall(self, data: Any) -> None:
        """Send ``data`` (damaged if :attr:`flip_next` is set) and record what went out."""
        data = bytes(data)
        if self.flip_next:
            self.flip_next = False
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        self.writes.append(data)
        self.sock.sendall(data)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class BareTap(Tap):
    """A :class:`Tap` offering only ``recv``/``sendall``/``close``: the least a socket-like object may have."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


class Worker(threading.Thread):
    """Run ``target`` in a daemon thread; :meth:`result` joins and returns its value or raises its exception."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self._value: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        """Run the target, keeping its value or exception."""
        try:
            self._value = self._target_fn()
        except BaseException as exc:
            self._error = exc

    def result(self) -> Any:
        """Join (failing, not hanging, after the guard timeout) and return the value or raise the exception."""
        self.join(GUARD_TIMEOUT)
        assert not self.is_alive(), "worker thread hung"
        if self._error is not None:
            raise self._error
        return self._value

    def outcome(self) -> Any:
        """Like :meth:`result`, but return an exception instead of raising it."""
        try:
            return self.result()
        except Exception as exc:
            return exc


def handshake_sockets(
    users: NTLMUsers, client_sock: Any, server_sock: Any, **options: Any
) -> tuple[NegotiateSocket | Exception, NegotiateSocket | Exception]:
    """Both handshakes at once, each in a thread (``options``: see :func:`side_options`); socket or error for each."""
    client_kwargs, server_kwargs = side_options(users, **options)
    server = Worker(lambda: NegotiateSocket.server(server_sock, **server_kwargs))
    client = Worker(lambda: NegotiateSocket.client(client_sock, **client_kwargs))
    return client.outcome(), server.outcome()


@contextmanager
def negotiated_sockets(
    users: NTLMUsers, wrap: Callable[[socket.socket], Any] | None = None, **options: Any
) -> Iterator[tuple[NegotiateSocket, NegotiateSocket, Any]]:
    """(client, server, the client's raw socket or ``wrap(raw socket)``), authenticated and closed on exit."""
    raw_client, raw_server = tcp_pair()
    client_end: Any = wrap(raw_client) if wrap is not None else raw_client
    client, server = handshake_sockets(users, client_end, raw_server, **options)
    assert isinstance(client, NegotiateSocket), client
    assert isinstance(server, NegotiateSocket), server
    with client, server:
        yield client, server, client_end


def read_frame(sock: socket.socket) -> bytes:
    """Read one whole MS-NNS handshake message (5-byte header, uint16 BE payload size) off a raw socket."""
    header = b""
    while len(header) < 5:
        header += sock.recv(5 - len(header))
    size = int.from_bytes(header[3:5], "big")
    payload = b""
    while len(payload) < size:
        payload += sock.recv(size - len(payload))
    return header + payload


def drain_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer of ``sock`` sends until it closes (a reset counts as closed)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def cut_record_then_reset(server: NegotiateSocket, sock: socket.socket) -> None:
    """Send a whole record and part of a second one, wait for the client's ``go``, then reset the connection."""
    server.sendall(b"whole")
    wire = server.connection.send(b"cut short" * 50)  # driven by hand to send a partial record
    sock.sendall(wire[:-5])
    # Only once the client holds it: an abortive close drops what is still in our send queue (Nagle).
    assert server.recv(2) == b"go"
    reset(sock)


def recv_exactly(sock: NegotiateSocket, size: int) -> bytes:
    """Receive exactly ``size`` bytes; an early EOF fails the test."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "unexpected EOF"
        data += chunk
    return bytes(data)


def recv_all(sock: NegotiateSocket) -> bytes:
    """Receive until the peer's clean EOF."""
    data = bytearray()
    while chunk := sock.recv(MIB):
        data += chunk
    return bytes(data)


# -- peers that vanish: resets at each handshake step, scripted blocking peers (every adapter's peer-loss suite) --

# The OS errors a reset surfaces as: on a read ECONNRESET, on a write EPIPE or ECONNRESET.
RESET_ERRORS = (ConnectionResetError, BrokenPipeError)


def reset(sock: socket.socket) -> None:
    """Abortive close: the peer gets an RST (ECONNRESET / EPIPE) instead of a clean EOF."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_truncated_by_reset(error: BaseException) -> None:
    """``error`` is TruncatedStreamError caused by the OS error of a reset."""
    assert type(error) is TruncatedStreamError, repr(error)
    assert isinstance(error.__cause__, RESET_ERRORS), repr(error.__cause__)


def answer(conn: Connection, frame: bytes) -> bytes:
    """Feed one handshake message to ``conn``; return its reply."""
    conn.receive_data(frame)
    conn.next_event()
    return conn.data_to_send()


def after_authenticate(sock: socket.socket, server: Connection) -> None:
    """Answer NEGOTIATE with a CHALLENGE, then read the client's AUTHENTICATE (and never send HandshakeDone)."""
    sock.sendall(answer(server, read_frame(sock)))
    server.receive_data(read_frame(sock))


# Where a fake server resets a client's handshake: what it does first, given the client's first message.
SERVER_CUTS: dict[str, Callable[[socket.socket, Connection], object]] = {
    "on-accept": lambda sock, server: None,
    "after-negotiate": lambda sock, server: server.receive_data(read_frame(sock)),
    "mid-challenge": lambda sock, server: sock.sendall(answer(server, read_frame(sock))[:20]),
    "after-challenge": lambda sock, server: sock.sendall(answer(server, read_frame(sock))),
    "after-authenticate": after_authenticate,
}


@contextmanager
def scripted_peer(script: Callable[[socket.socket], object]) -> Iterator[tuple[int, Worker]]:
    """A loopback port whose first connection is handed to ``script`` in a thread: (port, that thread)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(GUARD_TIMEOUT)

        def serve() -> object:
            sock, _ = listener.accept()
            sock.settimeout(GUARD_TIMEOUT)
            return script(sock)

        yield listener.getsockname()[1], Worker(serve)


def authenticated_server(
    users: NTLMUsers, then: Callable[[NegotiateSocket, socket.socket], object]
) -> Callable[[socket.socket], object]:
    """A fake server script: an honest handshake (the blocking adapter), then ``then(server, raw socket)``."""

    def script(sock: socket.socket) -> object:
        return then(NegotiateSocket.server(sock, **server_options(users)), sock)

    return script


# -- echo clients of each adapter (the cross-adapter tests' servers echo until EOF) -------------------------------


async def anyio_client(port: int, users: NTLMUsers, level: str, payload: bytes) -> tuple[bytes, str | None]:
    """Send ``payload`` then EOF from an anyio client while reading the echo; return (echo, peer identity)."""
    async with await connect(
        "127.0.0.1", port, protocol="ntlm", protection_level=level, credentials=users.client_credentials()
    ) as stream:
        assert stream.session_info.protection_level is ProtectionLevel(level)

        async def write() -> None:
            await stream.send(payload)
            await stream.send_eof()

        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            echoed = await receive_all(stream)
        return echoed, stream.session_info.peer_identity


def sync_client(port: int, users: NTLMUsers, level: str, payload: bytes) -> tuple[bytes, str | None]:
    """Blocking twin of :func:`anyio_client`: a writer thread sends while this thread reads the echo."""
    with create_connection(
        ("127.0.0.1", port),
        timeout=GUARD_TIMEOUT,
        protocol="ntlm",
        protection_level=level,
        credentials=users.client_credentials(),
    ) as sock:
        assert sock.protection_level is ProtectionLevel(level)

        def write() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        writer = Worker(write)
        echoed = bytearray()
        while data := sock.recv(65536):
            echoed += data
        writer.result()
        return bytes(echoed), sock.peer_identity


async def asyncio_client(port: int, users: NTLMUsers, level: str, payload: bytes) -> tuple[bytes, str | None]:
    """asyncio-streams twin of :func:`anyio_client` (needs a running asyncio loop)."""
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
