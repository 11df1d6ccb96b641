"""asyncio: a Protocol that negotiates over any transport, ``start_negotiate`` (like ``loop.start_tls``) and streams.

Three ways in, all thin over :class:`~negotiate_stream.Connection`:

* :class:`NegotiateProtocol` sits between a transport and your own :class:`asyncio.Protocol`, like asyncio's SSL
  protocol: your protocol's ``connection_made`` runs only after the handshake succeeded, with a transport whose
  ``write()`` protects the data (:class:`NegotiateTransport`).
* :func:`start_negotiate` upgrades an existing connection (e.g. after WCF's ``application/negotiate`` preamble).
* :func:`open_connection`, :func:`start_server` and :func:`wrap_streams` give ``StreamReader``/``StreamWriter``
  pairs.

One encryptor and one decryptor at a time, never two of either: on an event loop every ``write()`` protects its
records and hands them to the transport in one synchronous call, so concurrent writers can never interleave
records (each write is atomic at record granularity, in call order) and a write cannot be cancelled half-way;
received records are verified one at a time in arrival order. All protect/unprotect calls run on the loop thread,
so the case where both directions share one cipher state (NTLM without Extended Session Security) needs no
further lock; such sessions must still be strictly request/response on the wire (see
:attr:`SessionInfo.shares_crypto_state`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

from ._connection import Connection, Data, EndOfStream, HandshakeComplete, SessionInfo, State
from ._context import SecurityContext
from ._framing import nns
from .errors import (
    FramingError,
    HandshakeTimeoutError,
    NegotiateError,
    StreamClosedError,
    TruncatedStreamError,
    status_name,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from typing_extensions import Unpack

    from ._context import ContextOptions

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "NegotiateProtocol",
    "NegotiateTransport",
    "open_connection",
    "start_negotiate",
    "start_server",
    "wrap_streams",
]

logger = logging.getLogger("negotiate_stream")

DEFAULT_HANDSHAKE_TIMEOUT = 30.0
_RECEIVE_BUFFER_SIZE = 256 * 1024


_thread_state = threading.local()


def _receive_buffer() -> memoryview:
    """The receive buffer shared by every NegotiateProtocol of this thread's event loop.

    asyncio calls ``get_buffer`` and ``buffer_updated`` back to back in one callback, and
    :meth:`Connection.receive_data` copies what it keeps, so one buffer per thread serves all connections:
    1,000 idle connections cost 22 KiB each instead of 256 KiB (benchmarks/README.md).
    """
    view: memoryview | None = getattr(_thread_state, "view", None)
    if view is None:
        view = _thread_state.view = memoryview(bytearray(_RECEIVE_BUFFER_SIZE))
    return view


class NegotiateTransport(asyncio.Transport):
    """The application's side of a :class:`NegotiateProtocol`: ``write()`` sends protected records.

    ``get_extra_info()`` answers ``"negotiate_stream"`` (the :class:`SessionInfo`), ``"peer_identity"``,
    ``"protection_level"``, ``"negotiated_protocol"`` and ``"mutually_authenticated"``, and falls back to the
    inner transport (``"peername"``, ``"socket"``, ...). Flow control and buffer sizes are the inner transport's
    (its buffer holds wire bytes).
    """

    def __init__(self, protocol: NegotiateProtocol, inner: asyncio.Transport, info: SessionInfo) -> None:
        super().__init__()
        self._neg = protocol
        self._inner = inner
        self._info = info
        self._eof_written = False
        #: A StreamWriter over the inner transport that must outlive us (set by :func:`wrap_streams`).
        self.wrapped_writer: asyncio.StreamWriter | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Negotiate session details, else the inner transport's extra info."""
        info = self._info
        values = {
            "negotiate_stream": info,
            "peer_identity": info.peer_identity,
            "protection_level": info.protection_level,
            "negotiated_protocol": info.protocol,
            "mutually_authenticated": info.mutually_authenticated,
        }
        if name in values:
            return values[name]
        return self._inner.get_extra_info(name, default)

    # -- writing -------------------------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Protect ``data`` and queue its records, in one inner write (records never interleave).

        Raises :class:`StreamClosedError` after :meth:`close` or :meth:`write_eof` and :class:`BrokenStreamError`
        after a failure.
        """
        conn = self._neg.connection
        if conn.state is State.ESTABLISHED:
            # Checked before protecting: a record that cannot be written must not consume a sequence number.
            if self._inner.is_closing():
                raise StreamClosedError("cannot write: the transport is closing")
            if self._eof_written:
                raise StreamClosedError("cannot write after write_eof(): this side already ended its stream")
        wire = conn.send(data)
        if wire:
            self._inner.write(wire)

    def writelines(self, list_of_data: Any) -> None:
        """Write the concatenation of the buffers as one protected write."""
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """Half-close: MS-NNS has no close message, so this shuts down the inner transport's write side.

        The peer sees EOF at a record boundary, which it treats as a clean end of stream. Later writes raise
        :class:`StreamClosedError`; reading continues.
        """
        self._inner.write_eof()
        self._eof_written = True

    def can_write_eof(self) -> bool:
        """Whether the inner transport can half-close."""
        return self._inner.can_write_eof()

    def get_write_buffer_size(self) -> int:
        """Wire bytes queued in the inner transport."""
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The inner transport's (low, high) write-buffer marks."""
        return self._inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the inner transport's write-buffer marks (``pause_writing`` reaches the app protocol)."""
        self._inner.set_write_buffer_limits(high, low)

    # -- reading -------------------------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop delivering data to the protocol and stop reading from the socket."""
        self._neg._set_app_reading(False)

    def resume_reading(self) -> None:
        """Resume delivery (records already received are delivered first)."""
        self._neg._set_app_reading(True)

    def is_reading(self) -> bool:
        """Whether data is being delivered."""
        return self._neg._app_reading

    # -- lifetime ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close: flush queued records, then close the inner transport (``connection_lost(None)`` follows)."""
        self._neg.connection.close()
        self._inner.close()

    def abort(self) -> None:
        """Close at once, dropping queued records."""
        self._neg.connection.close()
        self._inner.abort()

    def is_closing(self) -> bool:
        """Whether the transport is closing or closed."""
        return self._inner.is_closing()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the application protocol."""
        self._neg.app_protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The application protocol."""
        return self._neg.app_protocol


class NegotiateProtocol(asyncio.BufferedProtocol):
    """Runs a :class:`Connection` over a transport on behalf of an application protocol.

    ``waiter`` (optional) receives the :class:`NegotiateTransport` when the handshake succeeds, or the handshake
    error. ``call_connection_made`` decides whether the app protocol's ``connection_made`` is called then (True
    for new connections; False for :func:`start_negotiate`, like ``loop.start_tls``). A handshake that does not
    finish within ``handshake_timeout`` seconds fails with :class:`HandshakeTimeoutError` and closes the
    transport. Failures after the handshake reach the app protocol as ``connection_lost(exc)`` with the typed
    error; nothing unverified is ever passed to ``data_received``.
    """

    def __init__(
        self,
        connection: Connection,
        app_protocol: asyncio.BaseProtocol,
        *,
        waiter: asyncio.Future[NegotiateTransport] | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        call_connection_made: bool = True,
        initial_data: bytes = b"",
    ) -> None:
        self.connection = connection
        self.app_protocol = app_protocol
        self.app_transport: NegotiateTransport | None = None
        self._waiter = waiter
        self._handshake_timeout = handshake_timeout
        self._call_connection_made = call_connection_made
        self._initial_data = initial_data
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._app_reading = True
        self._closed = False
        self._error: Exception | None = None
        self._keep_open_after_eof = False

    # -- transport callbacks -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._handshake_timeout is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._handshake_timeout, self._on_handshake_timeout)
        self._flush()
        if self._initial_data:
            data, self._initial_data = self._initial_data, b""
            self._feed(data)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._feed(_receive_buffer()[:nbytes])

    def eof_received(self) -> bool | None:
        self._feed(b"")
        # True keeps the transport open for our own writes: the app asked for a half-close in _on_eof.
        return self._keep_open_after_eof

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.app_transport is None:
            self._fail_waiter(
                exc
                or self._error
                or TruncatedStreamError("the peer closed the connection during the handshake (no error frame)")
            )
            return
        if not self._closed:
            self._closed = True
            self.app_protocol.connection_lost(exc if exc is not None else self._error)

    def pause_writing(self) -> None:
        if self.app_transport is not None:
            self.app_protocol.pause_writing()

    def resume_writing(self) -> None:
        if self.app_transport is not None:
            self.app_protocol.resume_writing()

    # -- the engine ----------------------------------------------------------------------------------------------

    def _feed(self, data: bytes | memoryview) -> None:
        if self.connection.state in (State.BROKEN, State.CLOSED):
            return  # already failed or closed by us: ignore late bytes
        if self.app_transport is None and data and logger.isEnabledFor(logging.DEBUG):
            _trace_handshake(self.connection, "received", data)
        try:
            self.connection.receive_data(data)
        except NegotiateError as exc:
            self._fail(exc)
            return
        self._process()

    def _process(self) -> None:
        conn = self.connection
        if conn.state in (State.BROKEN, State.CLOSED):
            return  # closed by the app (or failed): late records are dropped, not an error
        try:
            while self._app_reading or self.app_transport is None:
                if self.app_transport is not None and conn.state is not State.ESTABLISHED:
                    # The app closed its transport from a callback (connection_made, data_received): records
                    # still queued are dropped, and the close stays a clean one (connection_lost(None)).
                    return
                event = conn.next_event()
                if isinstance(event, Data):
                    self._deliver(event.data)
                elif isinstance(event, HandshakeComplete):
                    self._flush()
                    self._on_handshake_complete(event.info)
                elif isinstance(event, EndOfStream):
                    self._on_eof()
                    return
                else:
                    break
            self._flush()
        except NegotiateError as exc:
            self._fail(exc)

    def _deliver(self, data: bytes) -> None:
        app = self.app_protocol
        if isinstance(app, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                target = memoryview(app.get_buffer(len(view))).cast("B")
                if not target:
                    raise RuntimeError("the application protocol's get_buffer() returned an empty buffer")
                count = min(len(target), len(view))
                target[:count] = view[:count]
                view = view[count:]
                app.buffer_updated(count)
        else:
            app.data_received(data)  # type: ignore[attr-defined]

    def _on_handshake_complete(self, info: SessionInfo) -> None:
        self._cancel_timer()
        logger.debug(
            "handshake complete (%s side): protocol %s, protection %s (signed %s, encrypted %s), peer %s, "
            "mutual auth %s, one cipher state for both directions %s, record overhead %d bytes, max %d bytes/record",
            "server" if info.is_server else "client",
            info.protocol,
            info.protection_level.value,
            info.is_signed,
            info.is_encrypted,
            info.peer_identity,
            info.mutually_authenticated,
            info.shares_crypto_state,
            info.sizes.header + info.sizes.trailer,
            info.sizes.max_message,
        )
        assert self._transport is not None
        self.app_transport = NegotiateTransport(self, self._transport, info)
        if self._call_connection_made:
            self.app_protocol.connection_made(self.app_transport)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self.app_transport)

    def _on_eof(self) -> None:
        keep_open = False
        eof_received = getattr(self.app_protocol, "eof_received", None)
        if eof_received is not None:
            keep_open = bool(eof_received())
        self._keep_open_after_eof = keep_open
        if not keep_open and self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        out = self.connection.data_to_send()
        if out and logger.isEnabledFor(logging.DEBUG):
            _trace_handshake(self.connection, "sent", out)
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def _fail(self, exc: Exception) -> None:
        """A fatal error: tell the peer (Error frame during the handshake), close, report to the app."""
        if self._error is None:
            self._error = exc
        self.connection.mark_broken(exc)
        self._flush()
        if self.app_transport is None:
            self._fail_waiter(exc)
        if self._transport is not None:
            self._transport.close()  # connection_lost(None) follows: the app sees self._error

    def _fail_waiter(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        if self.app_transport is None:
            exc = HandshakeTimeoutError(
                f"the handshake did not complete within {self._handshake_timeout} s: the peer is silent or too slow"
            )
            self.connection.mark_broken(exc)
            self._error = exc
            self._fail_waiter(exc)
            if self._transport is not None:
                self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set_app_reading(self, reading: bool) -> None:
        if reading == self._app_reading:
            return
        self._app_reading = reading
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if reading:
            transport.resume_reading()
            asyncio.get_running_loop().call_soon(self._process)  # deliver records held while paused
        else:
            transport.pause_reading()


def _trace_handshake(connection: Connection, direction: str, data: bytes | memoryview) -> None:
    """DEBUG-log the MS-NNS handshake messages in ``data``: message ids and token sizes, never token bytes."""
    if connection.framing != "nns":
        return
    parts = []
    position = 0
    try:
        while (parsed := nns.parse_handshake(data, position)) is not None:
            frame, position = parsed
            if frame.message_id is nns.MessageId.HANDSHAKE_ERROR:
                parts.append(f"{frame.message_id.name} (code {status_name(frame.error_code)})")
            else:
                parts.append(f"{frame.message_id.name} with a {len(frame.payload)}-byte token")
    except FramingError:
        parts.append("bytes that are not an MS-NNS handshake message")
    if position < len(data):
        parts.append(f"{len(data) - position} bytes of a partial or following message")
    logger.debug("handshake %s %s", direction, "; ".join(parts))


async def start_negotiate(
    transport: asyncio.BaseTransport,
    app_protocol: asyncio.BaseProtocol,
    *,
    server_side: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    initial_data: bytes = b"",
    call_connection_made: bool = False,
    context: SecurityContext | None = None,
    **options: Unpack[ContextOptions],
) -> NegotiateTransport:
    """Upgrade an existing connection to a negotiate-protected one and return the new transport.

    Mirrors :meth:`asyncio.loop.start_tls`: ``transport`` must not be used afterwards; ``app_protocol`` (by default
    not told via ``connection_made``) talks to the returned transport. ``initial_data`` are bytes the caller has
    already read past its plaintext preamble: they are fed to the handshake first. On failure the transport is
    closed and the typed error raised (:class:`AuthenticationError`, :class:`HandshakeTimeoutError`, ...).
    """
    assert isinstance(transport, asyncio.Transport)
    if transport.is_closing():
        # Its connection_lost already went to the old protocol: the handshake would wait for nothing.
        raise StreamClosedError("cannot start negotiating: the transport is already closing or closed")
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[NegotiateTransport] = loop.create_future()
    try:
        connection = Connection(context or SecurityContext.create(server_side, **options))
    except BaseException:
        transport.close()
        raise
    negotiator = NegotiateProtocol(
        connection,
        app_protocol,
        waiter=waiter,
        handshake_timeout=handshake_timeout,
        call_connection_made=call_connection_made,
        initial_data=initial_data,
    )
    transport.set_protocol(negotiator)
    negotiator.connection_made(transport)
    transport.resume_reading()
    try:
        return await waiter
    except BaseException:
        transport.close()
        raise


async def open_connection(
    host: str,
    port: int,
    *,
    limit: int = 2**16,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    context: SecurityContext | None = None,
    **options: Unpack[ContextOptions],
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, authenticate as a client, and return a (reader, writer) pair over the protected stream.

    The target defaults to ``host/<host>``. ``writer.drain()`` waits while the socket's buffer is full.
    """
    loop = asyncio.get_running_loop()
    options.setdefault("target", f"host/{host}")
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    app = asyncio.StreamReaderProtocol(reader, loop=loop)
    connection = Connection(context or SecurityContext.create(False, **options))
    waiter: asyncio.Future[NegotiateTransport] = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: NegotiateProtocol(connection, app, waiter=waiter, handshake_timeout=handshake_timeout), host, port
    )
    try:
        app_transport = await waiter
    except BaseException:
        transport.close()
        raise
    return reader, asyncio.StreamWriter(app_transport, app, reader, loop)


async def start_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None],
    host: str | None = None,
    port: int = 0,
    *,
    limit: int = 2**16,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    **options: Unpack[ContextOptions],
) -> asyncio.Server:
    """Serve authenticated clients: ``client_connected_cb(reader, writer)`` runs after each handshake succeeds.

    A failed handshake is logged on the ``negotiate_stream`` logger (peer address and error) and closes only
    that connection.
    """
    loop = asyncio.get_running_loop()

    def factory() -> NegotiateProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        app = asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)
        waiter: asyncio.Future[NegotiateTransport] = loop.create_future()
        protocol = NegotiateProtocol(
            Connection(SecurityContext.create(True, **options)), app, waiter=waiter, handshake_timeout=handshake_timeout
        )
        waiter.add_done_callback(lambda fut: _log_handshake_failure(fut, protocol))
        return protocol

    return await loop.create_server(factory, host, port)


def _log_handshake_failure(waiter: asyncio.Future[NegotiateTransport], protocol: NegotiateProtocol) -> None:
    if waiter.cancelled() or waiter.exception() is None:
        return
    peer = protocol._transport.get_extra_info("peername") if protocol._transport is not None else None
    logger.warning("negotiate handshake with %s failed: %s", peer, waiter.exception())


async def wrap_streams(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    server_side: bool = False,
    limit: int = 2**16,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    context: SecurityContext | None = None,
    **options: Unpack[ContextOptions],
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Upgrade an existing (reader, writer) pair; returns a new protected pair. Do not use the old pair again.

    Bytes the old reader had already buffered (read past a plaintext preamble) are handed to the handshake.
    """
    loop = asyncio.get_running_loop()
    # StreamReader has no public way to take back buffered bytes; they belong to the negotiation now.
    pending = bytes(reader._buffer)  # type: ignore[attr-defined]
    reader._buffer.clear()  # type: ignore[attr-defined]
    new_reader = asyncio.StreamReader(limit=limit, loop=loop)
    app = asyncio.StreamReaderProtocol(new_reader, loop=loop)
    transport = await start_negotiate(
        writer.transport,
        app,
        server_side=server_side,
        handshake_timeout=handshake_timeout,
        initial_data=pending,
        call_connection_made=True,
        context=context,
        **options,
    )
    # The old StreamWriter closes the shared socket when it is garbage-collected (StreamWriter.__del__): the new
    # transport keeps it alive for as long as it lives.
    transport.wrapped_writer = writer
    return new_reader, asyncio.StreamWriter(transport, app, new_reader, loop)
