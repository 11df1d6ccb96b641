"""The asyncio engine behind :mod:`negotiate_stream.asyncio_`: the negotiating protocol and the app's transport.

:class:`NegotiateProtocol` is the protocol the socket transport talks to; it drives a :class:`Connection` and
presents a :class:`NegotiateTransport` to the application's own protocol, the way asyncio's ``SSLProtocol``
presents an SSL transport. Both are re-exported by :mod:`negotiate_stream.asyncio_`, which also holds the
public entry points (``start_negotiate``, ``open_connection``, ``start_server``, ``wrap_streams``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from ._connection import Connection
from ._events import Data, EndOfStream, HandshakeComplete, SessionInfo, State
from ._options import DEFAULT_HANDSHAKE_TIMEOUT, RECEIVE_SIZE
from .errors import HandshakeTimeoutError, NegotiateError, StreamClosedError, TruncatedStreamError

__all__ = ["NegotiateProtocol", "NegotiateTransport"]

# Failed handshakes are reported here by start_server (the handshake trace itself is the Connection's).
logger = logging.getLogger("negotiate_stream")

_thread_state = threading.local()


def _receive_buffer() -> memoryview:
    """The receive buffer shared by every NegotiateProtocol of this thread's event loop.

    asyncio calls ``get_buffer`` and ``buffer_updated`` back to back in one callback, and
    :meth:`Connection.receive_data` copies what it keeps, so one buffer per thread serves all connections:
    1,000 idle connections cost 22 KiB each instead of 256 KiB (benchmarks/README.md).
    """
    view: memoryview | None = getattr(_thread_state, "view", None)
    if view is None:
        view = _thread_state.view = memoryview(bytearray(RECEIVE_SIZE))
    return view


class NegotiateTransport(asyncio.Transport):
    """The application's side of a :class:`NegotiateProtocol`: ``write()`` sends protected records.

    One encryptor and one decryptor at a time, never two of either. On an event loop that rule holds by
    construction: ``write()`` is synchronous, so it protects all the records of one call and hands their wire
    bytes to the inner transport in ONE ``write`` before any other writer can run. Concurrent writers (tasks
    calling ``write()``) therefore never interleave records, each write is atomic at record granularity and kept
    in call order (FIFO), and a write cannot be cancelled half-way (only ``drain()`` can be cancelled, which
    leaves the stream consistent). Received records are verified one at a time, in arrival order, by the
    protocol. All protect/unprotect calls run on the loop thread, so when both directions share one cipher state
    (:attr:`SessionInfo.shares_crypto_state`, NTLM without Extended Session Security) they are serialised by the
    loop thread too - one "lock" for both directions. Such a session must still be strictly request/response on
    the wire: records crossing in flight desynchronise the shared keystream (see :mod:`negotiate_stream._connection`).

    ``get_extra_info()`` answers ``"negotiate_stream"`` (the :class:`SessionInfo`), ``"peer_identity"``,
    ``"protection_level"``, ``"negotiated_protocol"`` and ``"mutually_authenticated"``, and falls back to the
    inner transport (``"peername"``, ``"socket"``, ...). Flow control and buffer sizes are the inner transport's
    (its buffer holds wire bytes, i.e. plaintext plus record overhead).
    """

    def __init__(self, protocol: NegotiateProtocol, inner: asyncio.Transport, info: SessionInfo) -> None:
        super().__init__()
        self._neg = protocol
        self._inner = inner
        self._info = info
        self._eof_written = False
        #: A StreamWriter over the inner transport that must outlive us (set by ``wrap_streams``).
        self.wrapped_writer: asyncio.StreamWriter | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return negotiate session details by name, else the inner transport's extra info ``name``."""
        info = self._info
        if name == "negotiate_stream":
            return info
        if name == "peer_identity":
            return info.peer_identity
        if name == "protection_level":
            return info.protection_level
        if name == "negotiated_protocol":
            return info.protocol
        if name == "mutually_authenticated":
            return info.mutually_authenticated
        return self._inner.get_extra_info(name, default)

    # -- writing -------------------------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Protect ``data`` and queue all of its records with one inner write (records never interleave).

        ``data`` is protected before this returns, so the caller may reuse its buffer at once. An empty write
        sends nothing. Raises :class:`StreamClosedError` after :meth:`close` or :meth:`write_eof`, and
        :class:`BrokenStreamError` after any failure of the stream.
        """
        conn = self._neg.connection
        if conn.state is State.ESTABLISHED:
            # Checked before protecting: a record that cannot be written must not consume a sequence number.
            if self._inner.is_closing():
                raise StreamClosedError("cannot write: the transport is closing; open a new connection")
            if self._eof_written:
                raise StreamClosedError("cannot write after write_eof(): this side already ended its stream")
        wire = conn.send(data)
        if wire:
            # A fresh bytes object per call: nothing handed to the inner transport is ever mutated afterwards.
            self._inner.write(wire)

    def writelines(self, list_of_data: Any) -> None:
        """Write the concatenation of the buffers as one protected write (atomic like :meth:`write`)."""
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """Half-close: MS-NNS has no close message, so shut down the inner transport's write side.

        Records already queued are flushed first. The peer then sees EOF at a record boundary, which it treats
        as a clean end of stream (``eof_received`` / ``reader.read()`` returning ``b""``). Later writes raise
        :class:`StreamClosedError`; reading continues.
        """
        self._inner.write_eof()
        self._eof_written = True

    def can_write_eof(self) -> bool:
        """Return whether the inner transport can half-close (TCP can)."""
        return self._inner.can_write_eof()

    def get_write_buffer_size(self) -> int:
        """Return the wire bytes queued in the inner transport."""
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """Return the inner transport's (low, high) write-buffer marks, in wire bytes."""
        return self._inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the inner transport's write-buffer marks; crossing them calls the app's ``pause/resume_writing``."""
        self._inner.set_write_buffer_limits(high, low)

    # -- reading -------------------------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop delivering data to the protocol and stop reading from the socket until :meth:`resume_reading`."""
        self._neg._set_app_reading(False)

    def resume_reading(self) -> None:
        """Resume delivery; records received before the pause are delivered first, in order."""
        self._neg._set_app_reading(True)

    def is_reading(self) -> bool:
        """Return whether data is being delivered to the protocol."""
        return self._neg._app_reading and not self._inner.is_closing()

    # -- lifetime ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close: flush queued records, then close the inner transport (``connection_lost(None)`` follows)."""
        self._neg.connection.close()
        self._inner.close()

    def abort(self) -> None:
        """Close at once, dropping queued records (``connection_lost(None)`` follows)."""
        self._neg.connection.close()
        self._inner.abort()

    def is_closing(self) -> bool:
        """Return whether the transport is closing or closed."""
        return self._inner.is_closing()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Make ``protocol`` receive the data from now on."""
        self._neg.app_protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """Return the application protocol."""
        return self._neg.app_protocol


class NegotiateProtocol(asyncio.BufferedProtocol):
    """Run a :class:`Connection` over a transport on behalf of an application protocol.

    Pass it as the protocol of ``loop.create_connection`` / ``loop.create_server`` (or let
    :func:`~negotiate_stream.asyncio_.start_negotiate` install it on an existing transport). It reads into a
    reused receive buffer, feeds the handshake, and once the handshake succeeds hands the application protocol a
    :class:`NegotiateTransport`; after that every verified record goes to the app's ``data_received`` (or, for an
    :class:`asyncio.BufferedProtocol`, is copied into its ``get_buffer()``), and a clean EOF to ``eof_received``.

    ``waiter`` (optional) receives the :class:`NegotiateTransport` when the handshake succeeds, or the handshake
    error. ``call_connection_made`` decides whether the app protocol's ``connection_made`` is called then. A
    handshake that does not finish within ``handshake_timeout`` seconds (``None``: no limit) fails with
    :class:`HandshakeTimeoutError` and aborts the transport. A handshake failure sends the peer an MS-NNS Error
    frame, closes the transport and fails ``waiter``; the app protocol hears nothing. A failure after the handshake
    (tampering, truncation, ...) closes the transport and reaches the app protocol as ``connection_lost(exc)``
    with the typed error; nothing unverified is ever passed to the app.
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
        # Inner write-buffer state, and whether the app was told: a pause during the handshake is passed on
        # after connection_made, and a resume only follows a pause the app has seen.
        self._inner_write_paused = False
        self._app_write_paused = False

    # -- transport callbacks -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the handshake on ``transport`` (a client sends its first token now)."""
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
        """Return the reused receive buffer."""
        return _receive_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """Feed the ``nbytes`` just received to the Connection and process the events."""
        self._feed(_receive_buffer()[:nbytes])

    def eof_received(self) -> bool | None:
        """Feed EOF: a clean end at a record boundary reaches the app's ``eof_received``, else an error."""
        self._feed(b"")
        # True keeps the transport open for our own writes: the app asked for a half-close in _on_eof.
        return self._keep_open_after_eof

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail a pending handshake, or tell the app protocol (with the typed error that closed the stream)."""
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
        """Pass the inner transport's pause on to the app protocol (after the handshake)."""
        self._inner_write_paused = True
        if self.app_transport is not None and not self._app_write_paused:
            self._app_write_paused = True
            self.app_protocol.pause_writing()

    def resume_writing(self) -> None:
        """Pass the inner transport's resume on to the app protocol, if it was told to pause."""
        self._inner_write_paused = False
        if self._app_write_paused:
            self._app_write_paused = False
            self.app_protocol.resume_writing()

    # -- the engine ----------------------------------------------------------------------------------------------

    def _feed(self, data: bytes | memoryview) -> None:
        if self.connection.state in (State.BROKEN, State.CLOSED):
            return  # already failed or closed by us: ignore late bytes
        try:
            self.connection.receive_data(data)  # copies: the receive buffer is reused at once
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
        assert self._transport is not None
        self.app_transport = NegotiateTransport(self, self._transport, info)
        if self._call_connection_made:
            self.app_protocol.connection_made(self.app_transport)
        if self._inner_write_paused and not self._app_write_paused:
            self._app_write_paused = True
            self.app_protocol.pause_writing()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self.app_transport)

    def _on_eof(self) -> None:
        eof_received = getattr(self.app_protocol, "eof_received", None)  # optional on a plain BaseProtocol
        self._keep_open_after_eof = eof_received is not None and bool(eof_received())
        if not self._keep_open_after_eof and self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        out = self.connection.data_to_send()
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def _fail(self, exc: Exception, *, abort: bool = False) -> None:
        """A fatal error: tell the peer (Error frame during the handshake), close (or abort), report to the app."""
        if self._error is None:
            self._error = exc
        self.connection.mark_broken(exc)
        self._flush()
        if self.app_transport is None:
            self._fail_waiter(exc)
        if self._transport is None:
            return
        if abort:
            self._transport.abort()
        else:
            self._transport.close()  # connection_lost(None) follows: the app sees self._error

    def _fail_waiter(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        if self.app_transport is None:
            # Abort, not close: a silent peer must not hold the socket open for a graceful close.
            timeout = HandshakeTimeoutError(
                f"the handshake did not complete within {self._handshake_timeout} s: the peer is silent or too "
                "slow; check that it speaks MS-NNS (NegotiateStream) or raise handshake_timeout"
            )
            self._fail(timeout, abort=True)

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
