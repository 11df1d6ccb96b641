"""asyncio: a Protocol that negotiates over any transport, ``start_negotiate`` (like ``loop.start_tls``) and streams.

Three ways in, all thin over :class:`~negotiate_stream.Connection`:

* :class:`NegotiateProtocol` sits between a transport and your own :class:`asyncio.Protocol`, like asyncio's SSL
  protocol: your protocol's ``connection_made`` runs only after the handshake succeeded, with a transport whose
  ``write()`` protects the data (:class:`NegotiateTransport`).
* :func:`start_negotiate` upgrades an existing connection (e.g. after WCF's ``application/negotiate`` preamble).
* :func:`open_connection`, :func:`start_server` and :func:`wrap_streams` give ``StreamReader``/``StreamWriter``
  pairs; ``writer.drain()`` waits while the socket's write buffer is above its high-water mark.

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
from typing import TYPE_CHECKING

from ._asyncio_protocol import NegotiateProtocol, logger
from ._asyncio_transport import NegotiateTransport
from ._context import SecurityContext
from ._offload import connection_or_builder
from ._options import DEFAULT_HANDSHAKE_TIMEOUT
from ._stream_engine import PEER_LOSS_ERRORS, peer_lost
from .errors import NegotiateError, StreamClosedError

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


async def start_negotiate(
    transport: asyncio.BaseTransport,
    app_protocol: asyncio.BaseProtocol,
    *,
    server_side: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    initial_data: bytes = b"",
    call_connection_made: bool = True,
    context: SecurityContext | None = None,
    **options: Unpack[ContextOptions],
) -> NegotiateTransport:
    """Upgrade an existing connection to a negotiate-protected one and return the new transport.

    Like :meth:`asyncio.loop.start_tls`: ``transport``'s protocol is replaced by a :class:`NegotiateProtocol`
    (``transport`` must not be used directly afterwards), the handshake runs, and ``app_protocol`` talks to the
    returned :class:`NegotiateTransport`. Unlike ``start_tls``, ``app_protocol.connection_made(new_transport)`` is
    called once the handshake succeeds (before this returns); pass ``call_connection_made=False`` for an app
    protocol that keeps its plaintext-era state and uses the returned transport itself.

    The security context comes from ``context`` or is built from ``server_side`` and ``options``
    (:class:`ContextOptions`: credentials, target, protocol, protection_level, ...). ``initial_data`` are bytes
    the caller has already read past its plaintext preamble: they are fed to the handshake first. On failure the
    transport is closed and the typed error raised (:class:`AuthenticationError`, :class:`HandshakeError`,
    :class:`HandshakeTimeoutError` after ``handshake_timeout`` seconds, ...); ``app_protocol`` hears nothing.
    """
    assert isinstance(transport, asyncio.Transport)
    if transport.is_closing():
        # Its connection_lost already went to the old protocol: the handshake would wait for nothing.
        raise StreamClosedError("cannot start negotiating: the transport is already closing or closed")
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[NegotiateTransport] = loop.create_future()
    try:
        connection = connection_or_builder(server_side, context, options)
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
    server_side: bool = False,
    limit: int = 2**16,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    context: SecurityContext | None = None,
    **options: Unpack[ContextOptions],
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host``:``port``, run the handshake, and return a (reader, writer) pair over the protected stream.

    Authenticates as the client unless ``server_side`` (a connecting acceptor, for reversed roles). The client's
    target (SPN) defaults to ``host/<host>``. ``writer.drain()`` waits while the socket's write buffer is above its
    high-water mark. ``writer.get_extra_info("negotiate_stream")`` is the :class:`SessionInfo`. Raises the typed
    handshake error (the socket is then closed) - :class:`TruncatedStreamError` when the server closes or resets
    the connection before the handshake completes, even right after accepting it - or the connect error
    (:class:`OSError`, e.g. ``ConnectionRefusedError``); ``limit`` is the StreamReader's buffer limit.
    """
    loop = asyncio.get_running_loop()
    if not server_side:
        options.setdefault("target", f"host/{host}")
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    app = asyncio.StreamReaderProtocol(reader, loop=loop)
    connection = connection_or_builder(server_side, context, options)
    waiter: asyncio.Future[NegotiateTransport] = loop.create_future()
    try:
        transport, _ = await loop.create_connection(
            lambda: NegotiateProtocol(connection, app, waiter=waiter, handshake_timeout=handshake_timeout), host, port
        )
    except PEER_LOSS_ERRORS as exc:  # the server accepted, then reset before asyncio saw the connect complete
        raise peer_lost(exc, handshake=True) from exc
    try:
        app_transport = await waiter
    except BaseException:
        transport.close()
        raise
    return reader, _StreamWriter(app_transport, app, reader, loop)


async def start_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None],
    host: str | None = None,
    port: int = 0,
    *,
    limit: int = 2**16,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    idle_timeout: float | None = None,
    **options: Unpack[ContextOptions],
) -> asyncio.Server:
    """Listen on ``host``:``port``; ``client_connected_cb(reader, writer)`` runs after each handshake succeeds.

    Every connection gets a fresh acceptor context built from ``options``. A failed handshake (bad credentials,
    timeout after ``handshake_timeout`` seconds, a peer that is not MS-NNS) sends the peer an Error frame where
    one applies, is logged as a warning on the ``negotiate_stream`` logger (peer address and error) and closes
    only that connection: the server keeps serving. Returns the :class:`asyncio.Server`.

    ``idle_timeout`` (seconds; default ``None``, no bound) closes an authenticated connection on which no record
    arrived for that long: the handler's ``reader`` then raises :class:`IdleTimeoutError` (a
    :class:`ConnectionLostError`) and its writes :class:`BrokenStreamError`. The clock counts only while the
    reader's buffer has room (a handler that stops reading pauses it) and stops at the client's EOF.
    """
    loop = asyncio.get_running_loop()

    def factory() -> NegotiateProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        app = asyncio.StreamReaderProtocol(
            # The handler gets our writer (typed errors from drain()) instead of the one asyncio made.
            reader,
            lambda r, w: client_connected_cb(r, _StreamWriter(w.transport, app, r, loop)),
            loop=loop,
        )
        waiter: asyncio.Future[NegotiateTransport] = loop.create_future()
        protocol = NegotiateProtocol(
            connection_or_builder(True, None, options),
            app,
            waiter=waiter,
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
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
    """Upgrade an existing (reader, writer) pair; return a new protected pair. Do not use the old pair again.

    Bytes the old reader had already buffered (read past a plaintext preamble, e.g. by ``readline()``) are handed
    to the handshake first, so nothing the peer sent is lost. Runs :func:`start_negotiate` on the writer's
    transport; on failure that transport is closed and the typed error raised.
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
    return new_reader, _StreamWriter(transport, app, new_reader, loop)


class _StreamWriter(asyncio.StreamWriter):
    """The writer of every stream pair made here: its ``drain()`` raises the typed error that ended the stream.

    asyncio's own ``drain()`` raises a bare ``ConnectionResetError("Connection lost")`` when the transport was lost
    while it waited, although the reader already holds the typed error (:class:`ConnectionLostError`,
    :class:`IdleTimeoutError`, ...): that one is raised instead, so one ``except`` clause serves both directions.
    """

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._typed_reader = reader

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark (see :class:`asyncio.StreamWriter`)."""
        try:
            await super().drain()
        except ConnectionResetError:
            error = self._typed_reader.exception()
            if isinstance(error, NegotiateError):
                raise error  # noqa: B904 - already chained to its cause (the OS error)
            raise
