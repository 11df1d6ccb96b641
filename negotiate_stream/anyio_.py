"""anyio (asyncio and trio): :class:`NegotiateStream` wraps any anyio byte stream in a negotiate context.

::

    async with await connect("server.example.com", 5000, credentials=creds) as stream:
        await stream.send(b"request")
        reply = await stream.receive()

:meth:`NegotiateStream.wrap` runs the MS-NNS handshake before it returns, like
:meth:`anyio.streams.tls.TLSStream.wrap`. :class:`NegotiateListener` wraps any anyio listener and authenticates
every accepted connection; :func:`memory_stream_pair` gives two connected in-memory byte streams for tests.

Concurrency follows the SSPI rule (one encryptor and one decryptor at a time): one :class:`anyio.Lock` per
direction, so one task may send while another receives. Concurrent senders queue in FIFO order (anyio locks are
fair) and a send never interleaves its records with another's; concurrent receivers queue the same way.

When the session shares one cipher state for both directions (NTLM without Extended Session Security,
:attr:`SessionInfo.shares_crypto_state`) both directions also take ONE shared crypto lock, held around each
protect/unprotect step but never across a transport wait: holding it while a receiver waits for the peer would
deadlock the usual "reader task + writer task" client, whose reader waits for the reply to a request the writer
could then never send. Such a session must also be half-duplex (request/response) on the wire, because the cipher
state is in step *across the two peers* too: records crossing on the wire fail the integrity check on both ends.

Errors are sticky: after any failure every later call raises :class:`BrokenStreamError` chained to the first
error. A cancelled :meth:`~NegotiateStream.receive` loses nothing (received bytes stay buffered in the
Connection); a cancelled :meth:`~NegotiateStream.send` may have written part of a record, so it breaks the stream.
Buffering, chunked sends and those checks live in the shared :mod:`._stream_engine`; this module adds the awaiting,
the locks and anyio's cancellation rules.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio import TypedAttributeSet, typed_attribute
from anyio.abc import ByteStream, Listener, SocketAttribute, TaskGroup

from ._connection import Connection
from ._context import ProtectionLevel, SecurityContext
from ._events import SessionInfo
from ._options import DEFAULT_HANDSHAKE_TIMEOUT, RECEIVE_SIZE
from ._stream_engine import StreamEngine, error_frame, handshake_step
from .errors import HandshakeTimeoutError

if TYPE_CHECKING:
    from typing_extensions import Buffer, Unpack

    from ._context import ContextOptions

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "MemoryByteStream",
    "NegotiateAttribute",
    "NegotiateListener",
    "NegotiateStream",
    "connect",
    "memory_stream_pair",
]

logger = logging.getLogger("negotiate_stream")

# How long a failing handshake may spend telling the peer why (the Error frame) before the transport is closed.
_ERROR_FRAME_TIMEOUT = 5.0


class NegotiateAttribute(TypedAttributeSet):
    """Typed attributes of a :class:`NegotiateStream` (``stream.extra(NegotiateAttribute.peer_identity)``)."""

    #: ``"ntlm"`` or ``"kerberos"``.
    protocol: str | None = typed_attribute()
    #: Server side: the authenticated client (``DOMAIN\\user``); client side: the target SPN.
    peer_identity: str | None = typed_attribute()
    #: The negotiated :class:`ProtectionLevel`.
    protection_level: ProtectionLevel = typed_attribute()
    #: True when the server proved its identity too (Kerberos).
    mutually_authenticated: bool = typed_attribute()
    #: Everything the handshake established (:class:`SessionInfo`).
    session_info: SessionInfo = typed_attribute()


class NegotiateStream(ByteStream):
    """A negotiate-protected byte stream over another anyio byte stream; build it with :meth:`wrap`.

    :meth:`receive` returns verified plaintext and raises :class:`anyio.EndOfStream` when the peer closed at a
    record boundary; :meth:`send` protects and writes. Protocol failures raise the typed errors of
    :mod:`negotiate_stream.errors`, and every call after a failure raises :class:`BrokenStreamError`; any call
    after :meth:`aclose` raises :class:`anyio.ClosedResourceError`.
    """

    def __init__(self, transport_stream: ByteStream, connection: Connection, info: SessionInfo) -> None:
        """Wrap an established ``connection``; prefer :meth:`wrap`, which runs the handshake first."""
        self.transport_stream = transport_stream
        self._conn = connection
        self._info = info
        self._receive_lock = anyio.Lock()
        self._send_lock = anyio.Lock()
        self._engine = StreamEngine(
            connection, closed_error=anyio.ClosedResourceError, half_close="send_eof()", info=info
        )

    @classmethod
    async def wrap(
        cls,
        transport_stream: ByteStream,
        *,
        server_side: bool = False,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        context: SecurityContext | None = None,
        **options: Unpack[ContextOptions],
    ) -> NegotiateStream:
        """Authenticate over ``transport_stream`` and return the protected stream.

        ``options`` build the :class:`SecurityContext` unless ``context`` is given. On failure the MS-NNS Error
        frame (if the Connection queued one) is sent, ``transport_stream`` is closed and the typed error raised:
        :class:`AuthenticationError` (:class:`HandshakeError` when the peer rejected us),
        :class:`HandshakeTimeoutError` after ``handshake_timeout`` seconds, :class:`TruncatedStreamError` when
        the peer closed during the handshake, another :class:`RemoteProtocolError` for garbage from the peer.
        """
        try:
            connection = Connection(context or SecurityContext.create(server_side, **options))
        except BaseException:
            await anyio.aclose_forcefully(transport_stream)
            raise
        try:
            with anyio.move_on_after(handshake_timeout) as scope:
                info = await _run_handshake(transport_stream, connection)
            if scope.cancelled_caught:
                raise HandshakeTimeoutError(
                    f"the handshake did not complete within {handshake_timeout} s: the peer is slow, silent or "
                    "does not speak MS-NNS; raise handshake_timeout or check the peer"
                )
        except BaseException:
            await _abort_handshake(transport_stream, connection)
            raise
        return cls(transport_stream, connection, info)

    # -- information ------------------------------------------------------------------------------------------

    @property
    def session_info(self) -> SessionInfo:
        """What the handshake negotiated (protocol, protection level, peer identity, ...)."""
        return self._info

    @property
    def connection(self) -> Connection:
        """The sans-I/O :class:`Connection` (for inspection; do not drive it directly)."""
        return self._conn

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """:class:`NegotiateAttribute` values plus every attribute of the wrapped stream."""
        info = self._info
        return {
            **self.transport_stream.extra_attributes,
            NegotiateAttribute.protocol: lambda: info.protocol,
            NegotiateAttribute.peer_identity: lambda: info.peer_identity,
            NegotiateAttribute.protection_level: lambda: info.protection_level,
            NegotiateAttribute.mutually_authenticated: lambda: info.mutually_authenticated,
            NegotiateAttribute.session_info: lambda: info,
        }

    # -- receive side -----------------------------------------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return 1 to ``max_bytes`` verified plaintext bytes, waiting for them if needed (never ``b""``).

        The rest of a record larger than ``max_bytes`` is kept for the next call. Raises
        :class:`anyio.EndOfStream` once the peer closed at a record boundary, :class:`TruncatedStreamError` if it
        closed inside a record, :class:`IntegrityError` for a record that fails its check (nothing of it is
        returned), :class:`BrokenStreamError` after any earlier failure. A cancelled receive loses nothing: bytes
        already read stay buffered for the next call.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        engine = self._engine
        async with self._receive_lock:
            engine.check_usable()
            while (data := engine.read(max_bytes)) is None:
                try:
                    chunk = await self.transport_stream.receive(RECEIVE_SIZE)
                except anyio.EndOfStream:
                    chunk = b""
                except anyio.get_cancelled_exc_class():
                    raise  # nothing was consumed: the stream stays usable
                except BaseException as exc:
                    engine.read_failed(exc)
                    raise
                engine.receive_data(chunk)
            if not data:
                raise anyio.EndOfStream
            return data

    # -- send side --------------------------------------------------------------------------------------------

    async def send(self, item: Buffer) -> None:
        """Protect and send all of ``item`` (records of at most ``session_info.sizes.max_message`` bytes).

        An empty ``item`` sends nothing. Concurrent senders are served in FIFO order and never interleave
        records: all records of one call go out under the send lock. If the transport send fails or is
        cancelled, part of a record may be out and the peer's sequence state is unknown: the error propagates
        and the stream is broken (later calls raise :class:`BrokenStreamError`). Raises
        :class:`StreamClosedError` after :meth:`send_eof`.
        """
        async with self._send_lock:
            for wire in self._engine.writes(item):
                try:
                    await self.transport_stream.send(wire)
                except BaseException as exc:
                    self._engine.write_failed(exc)  # cancelled too: part of a record may be out
                    raise

    async def send_eof(self) -> None:
        """Half-close: MS-NNS has no close message, so this closes the wrapped stream's sending side.

        Waits for queued sends, then calls the transport's ``send_eof`` (once; later calls do nothing): the peer
        sees a clean EOF at a record boundary (:class:`anyio.EndOfStream`) while this side can still receive.
        Raises :class:`NotImplementedError` when the wrapped stream cannot half-close (e.g. a TLS stream).
        """
        async with self._send_lock:
            self._engine.check_usable()
            if self._engine.eof_sent:
                return
            await self.transport_stream.send_eof()
            self._engine.mark_eof_sent()

    async def aclose(self) -> None:
        """Close this stream and the wrapped stream (idempotent)."""
        if self._engine.close():
            await self.transport_stream.aclose()

    def __repr__(self) -> str:
        return f"<NegotiateStream {self._conn!r} over {self.transport_stream!r}>"


async def _run_handshake(stream: ByteStream, conn: Connection) -> SessionInfo:
    """Drive the handshake of ``conn`` over ``stream`` until it completes (errors propagate)."""
    while True:
        await _send_pending(stream, conn)
        info = handshake_step(conn)
        await _send_pending(stream, conn)  # replies, and the server's final HandshakeDone
        if info is not None:
            return info
        try:
            chunk = await stream.receive(RECEIVE_SIZE)
        except anyio.EndOfStream:
            chunk = b""
        conn.receive_data(chunk)


async def _send_pending(stream: ByteStream, conn: Connection) -> None:
    out = conn.data_to_send()
    if out:
        await stream.send(out)


async def _abort_handshake(stream: ByteStream, conn: Connection) -> None:
    """Tell the peer why (the queued MS-NNS Error frame, if any), then close ``stream``; never raises."""
    out = error_frame(conn)
    with anyio.CancelScope(shield=True):
        if out:
            with anyio.move_on_after(_ERROR_FRAME_TIMEOUT), contextlib.suppress(Exception):
                await stream.send(out)
        with contextlib.suppress(Exception):
            await stream.aclose()


async def connect(
    host: str,
    port: int,
    *,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    context: SecurityContext | None = None,
    **options: Unpack[ContextOptions],
) -> NegotiateStream:
    """Connect over TCP (:func:`anyio.connect_tcp`) and authenticate as a client.

    The target defaults to ``host/<host>``. Raises what :meth:`NegotiateStream.wrap` raises, or the connect
    error (:class:`OSError`).
    """
    options.setdefault("target", f"host/{host}")
    stream = await anyio.connect_tcp(host, port)
    return await NegotiateStream.wrap(stream, handshake_timeout=handshake_timeout, context=context, **options)


class NegotiateListener(Listener[NegotiateStream]):
    """Wrap any anyio byte-stream listener: every accepted connection is authenticated as a server.

    Each handshake runs in the connection's own task with ``handshake_timeout``. A failed (or timed-out)
    handshake is logged on the ``negotiate_stream`` logger as a warning with the peer address and the error
    (never credentials), closes only that connection, and the listener keeps serving.
    """

    def __init__(
        self,
        listener: Listener[Any],
        *,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        **options: Unpack[ContextOptions],
    ) -> None:
        """``options`` build a fresh server :class:`SecurityContext` for every connection."""
        self.listener = listener
        self.handshake_timeout = handshake_timeout
        self._options = options

    async def serve(
        self, handler: Callable[[NegotiateStream], Awaitable[Any]], task_group: TaskGroup | None = None
    ) -> None:
        """Accept connections until cancelled; run ``handler(stream)`` for each one whose handshake succeeds.

        The handler owns the stream (close it when done). Handlers run in ``task_group`` if given, as with the
        wrapped listener's ``serve``.
        """

        async def authenticate(transport_stream: ByteStream) -> None:
            # Read before the handshake: a failed handshake closes the stream, and its address with it.
            peer = transport_stream.extra(SocketAttribute.remote_address, None)
            try:
                stream = await NegotiateStream.wrap(
                    transport_stream, server_side=True, handshake_timeout=self.handshake_timeout, **self._options
                )
            except Exception as exc:
                # A handshake error is the client's problem (or an attack): report it, keep listening.
                logger.warning("negotiate handshake with %s failed: %s: %s", peer, type(exc).__name__, exc)
                return
            await handler(stream)

        await self.listener.serve(authenticate, task_group)

    async def aclose(self) -> None:
        """Close the wrapped listener."""
        await self.listener.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The wrapped listener's attributes (e.g. ``SocketAttribute.local_address``)."""
        return self.listener.extra_attributes


class MemoryByteStream(ByteStream):
    """One end of an in-memory byte stream built on anyio memory object streams (see :func:`memory_stream_pair`).

    Supports :meth:`send_eof` (the peer's :meth:`receive` then raises :class:`anyio.EndOfStream`).
    """

    def __init__(
        self,
        send_stream: anyio.abc.ObjectSendStream[bytes],
        receive_stream: anyio.abc.ObjectReceiveStream[bytes],
    ) -> None:
        """Send chunks on ``send_stream``, read them from ``receive_stream``."""
        self._send_stream = send_stream
        self._receive_stream = receive_stream
        self._leftover = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return 1 to ``max_bytes`` bytes; keeps the rest of a larger chunk for the next call.

        Raises :class:`anyio.EndOfStream` after the peer's :meth:`send_eof` or :meth:`aclose`.
        """
        if not self._leftover:
            self._leftover = await self._receive_stream.receive()
        data, self._leftover = self._leftover[:max_bytes], self._leftover[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        """Queue a copy of ``item`` for the peer (waits while the peer's buffer is full); empty sends nothing.

        Raises :class:`anyio.ClosedResourceError` after :meth:`send_eof`, :class:`anyio.BrokenResourceError`
        when the peer closed.
        """
        if item:
            await self._send_stream.send(bytes(item))

    async def send_eof(self) -> None:
        """Close the sending direction: the peer sees EOF after the bytes already sent."""
        await self._send_stream.aclose()

    async def aclose(self) -> None:
        """Close both directions (idempotent)."""
        await self._send_stream.aclose()
        await self._receive_stream.aclose()


def memory_stream_pair(max_buffer_chunks: float = 16) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Return two connected in-memory byte streams.

    Each direction buffers up to ``max_buffer_chunks`` sends (``0``: a send waits for the peer's receive;
    ``math.inf``: never waits).
    """
    a_send, b_receive = anyio.create_memory_object_stream[bytes](max_buffer_chunks)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](max_buffer_chunks)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)
