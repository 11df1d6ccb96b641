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

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio import TypedAttributeSet, typed_attribute
from anyio.abc import ByteStream, Listener, SocketAttribute, TaskGroup

from ._anyio_handshake import PEER_LOSS, negotiate
from ._anyio_memory import MemoryByteStream, memory_stream_pair
from ._connection import Connection
from ._context import ProtectionLevel, SecurityContext
from ._events import SessionInfo
from ._options import DEFAULT_HANDSHAKE_TIMEOUT, RECEIVE_SIZE
from ._stream_engine import PEER_LOSS_ERRORS, StreamEngine, peer_lost
from .errors import IdleTimeoutError

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
    after :meth:`aclose` raises :class:`anyio.ClosedResourceError`. A peer that vanishes is typed: a reset or
    broken pipe (anyio's ``BrokenResourceError``, the ``__cause__``) is a :class:`TruncatedStreamError` inside a
    record, else a :class:`ConnectionLostError`.
    """

    def __init__(
        self,
        transport_stream: ByteStream,
        connection: Connection,
        info: SessionInfo,
        *,
        idle_timeout: float | None = None,
    ) -> None:
        """Wrap an established ``connection``; prefer :meth:`wrap`, which runs the handshake first."""
        self.transport_stream = transport_stream
        #: Seconds one :meth:`receive` may wait without a record arriving before it closes the stream and raises
        #: :class:`IdleTimeoutError` (``None``: no bound). The wait between two receive calls is not counted.
        self.idle_timeout = idle_timeout
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
        idle_timeout: float | None = None,
        **options: Unpack[ContextOptions],
    ) -> NegotiateStream:
        """Authenticate over ``transport_stream`` and return the protected stream.

        ``options`` build the :class:`SecurityContext` unless ``context`` is given. On failure the MS-NNS Error
        frame (if the Connection queued one) is sent, ``transport_stream`` is closed and the typed error raised:
        :class:`AuthenticationError` (:class:`HandshakeError` when the peer rejected us),
        :class:`HandshakeTimeoutError` after ``handshake_timeout`` seconds, :class:`TruncatedStreamError` when
        the peer closed or reset the connection during the handshake, another :class:`RemoteProtocolError` for
        garbage from the peer. The deadline covers building the context too: context work that may reach a KDC
        (Kerberos, or Negotiate with the ``kerberos`` extra) runs in a worker thread, never on the event loop.
        ``idle_timeout`` bounds each :meth:`receive` (see :attr:`idle_timeout`).
        """
        connection, info = await negotiate(
            transport_stream,
            server_side=server_side,
            handshake_timeout=handshake_timeout,
            context=context,
            options=options,
        )
        return cls(transport_stream, connection, info, idle_timeout=idle_timeout)

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
        returned), :class:`ConnectionLostError` when the peer reset the connection, :class:`IdleTimeoutError`
        (the stream is then closed) when no record arrived within :attr:`idle_timeout`, :class:`BrokenStreamError`
        after any earlier failure. A cancelled receive loses nothing: bytes already read stay buffered for the
        next call.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        engine = self._engine
        async with self._receive_lock:
            engine.check_usable()
            deadline = None if self.idle_timeout is None else anyio.current_time() + self.idle_timeout
            while (data := engine.read(max_bytes)) is None:
                if deadline is None:
                    engine.receive_data(await self._receive_chunk())
                    continue
                chunk: bytes | None = None
                with anyio.CancelScope(deadline=deadline):  # only a record arriving counts, not part of one
                    chunk = await self._receive_chunk()
                if chunk is None:
                    raise await self._idle_timed_out()
                engine.receive_data(chunk)
            if not data:
                raise anyio.EndOfStream
            return data

    async def _receive_chunk(self) -> bytes:
        """Read from the transport (``b""`` at EOF); a failure that may have consumed bytes breaks the stream."""
        try:
            return await self.transport_stream.receive(RECEIVE_SIZE)
        except anyio.EndOfStream:
            return b""
        except anyio.get_cancelled_exc_class():
            raise  # nothing was consumed: the stream stays usable
        except PEER_LOSS as exc:
            lost = peer_lost(exc, buffered=self._conn.buffered)
            self._engine.read_failed(lost)
            raise lost from exc
        except BaseException as exc:
            self._engine.read_failed(exc)
            raise

    async def _idle_timed_out(self) -> IdleTimeoutError:
        """Break and close the stream after :attr:`idle_timeout`; return the error to raise."""
        error = IdleTimeoutError(
            f"no record arrived from the peer for {self.idle_timeout} s (idle_timeout): the stream was closed; the "
            "peer is silent or gone"
        )
        self._engine.read_failed(error)
        await anyio.aclose_forcefully(self.transport_stream)
        return error

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
                except PEER_LOSS as exc:
                    lost = peer_lost(exc)  # at a record boundary of this side's stream: ConnectionLostError
                    self._engine.write_failed(lost)
                    raise lost from exc
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


async def connect(
    host: str,
    port: int,
    *,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    context: SecurityContext | None = None,
    idle_timeout: float | None = None,
    **options: Unpack[ContextOptions],
) -> NegotiateStream:
    """Connect over TCP (:func:`anyio.connect_tcp`) and authenticate as a client.

    The target defaults to ``host/<host>``. Raises what :meth:`NegotiateStream.wrap` raises, or the connect
    error (:class:`OSError`, e.g. ``ConnectionRefusedError``); a server that resets the connection right after
    accepting it is a :class:`TruncatedStreamError`, as it is once the handshake started.
    """
    options.setdefault("target", f"host/{host}")
    try:
        stream = await anyio.connect_tcp(host, port)
    except OSError as exc:  # anyio reports the OS error of its (last) attempt as the cause
        reset = exc if isinstance(exc, PEER_LOSS_ERRORS) else exc.__cause__
        if isinstance(reset, PEER_LOSS_ERRORS):
            raise peer_lost(reset, handshake=True) from reset
        raise
    return await NegotiateStream.wrap(
        stream, handshake_timeout=handshake_timeout, context=context, idle_timeout=idle_timeout, **options
    )


class NegotiateListener(Listener[NegotiateStream]):
    """Wrap any anyio byte-stream listener: every accepted connection is authenticated as a server.

    Each handshake runs in the connection's own task with ``handshake_timeout``. A failed (or timed-out)
    handshake is logged on the ``negotiate_stream`` logger as a warning with the peer address and the error
    (never credentials), closes only that connection, and the listener keeps serving. ``idle_timeout`` (seconds,
    default ``None``: no bound) becomes every stream's :attr:`NegotiateStream.idle_timeout`: a handler's
    :meth:`~NegotiateStream.receive` that waits that long without a record raises :class:`IdleTimeoutError` and
    closes the connection.
    """

    def __init__(
        self,
        listener: Listener[Any],
        *,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        idle_timeout: float | None = None,
        **options: Unpack[ContextOptions],
    ) -> None:
        """``options`` build a fresh server :class:`SecurityContext` for every connection."""
        self.listener = listener
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
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
                    transport_stream,
                    server_side=True,
                    handshake_timeout=self.handshake_timeout,
                    idle_timeout=self.idle_timeout,
                    **self._options,
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
