"""The asyncio engine behind :mod:`negotiate_stream.asyncio_`: the protocol that negotiates over a socket transport.

:class:`NegotiateProtocol` is the protocol the socket transport talks to; it drives a :class:`Connection` and
presents a :class:`~._asyncio_transport.NegotiateTransport` to the application's own protocol, the way asyncio's
``SSLProtocol`` presents an SSL transport.

Nothing that may block runs on the loop thread: building a context that may reach a KDC (Kerberos, or SPNEGO
that may pick it) and each of its handshake steps run in a worker thread (:mod:`._offload`) while the handshake
timer keeps running on the loop. Until the thread reports back it owns the Connection: bytes and an EOF that
arrive meanwhile are held, and a handshake that fails meanwhile (timeout, lost transport) never touches the
Connection again, so the thread's late result is dropped unseen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ._asyncio_idle import IdleTimer, handshake_timeout_error
from ._asyncio_transport import CROWDED, NegotiateTransport, deliver, receive_buffer
from ._connection import Connection
from ._events import EndOfStream, Event, HandshakeComplete, SessionInfo, State, _NeedData
from ._offload import Outcome, may_block, start_thread
from ._options import DEFAULT_HANDSHAKE_TIMEOUT
from ._stream_engine import PEER_LOSS_ERRORS, peer_lost
from .errors import IdleTimeoutError, LocalProtocolError, NegotiateError, TruncatedStreamError

__all__ = ["NegotiateProtocol", "logger"]

# Failed handshakes are reported here by start_server (the handshake trace itself is the Connection's).
logger = logging.getLogger("negotiate_stream")
# A module constant: an Enum member lookup costs ~70 ns on Python 3.11, and this one is on every record's path.
_ESTABLISHED = State.ESTABLISHED


class NegotiateProtocol(asyncio.BufferedProtocol):
    """Run a :class:`Connection` over a transport on behalf of an application protocol.

    Pass it as the protocol of ``loop.create_connection`` / ``loop.create_server`` (or let
    :func:`~negotiate_stream.asyncio_.start_negotiate` install it on an existing transport). It reads into a
    receive buffer shared by the connections of its event loop (records are verified in place: a connection keeps
    a copy of a partial record only), feeds the handshake, and once the handshake succeeds hands the application
    protocol a :class:`NegotiateTransport`; after that every verified record goes to the app's ``data_received``
    (or, for an :class:`asyncio.BufferedProtocol`, into its ``get_buffer()``), and a clean EOF to ``eof_received``.

    ``connection`` is the :class:`Connection` to drive, or a function that builds it: that one is called in a
    worker thread once the transport is connected, inside the handshake deadline (building a Kerberos client
    context may run a kinit against a KDC). Handshake steps that may reach a KDC run in a worker thread too.

    ``waiter`` (optional) receives the :class:`NegotiateTransport` when the handshake succeeds, or the handshake
    error. ``call_connection_made`` decides whether the app protocol's ``connection_made`` is called then. A
    handshake that does not finish within ``handshake_timeout`` seconds (``None``: no limit) fails with
    :class:`HandshakeTimeoutError` and aborts the transport, on time even while a worker thread still waits for a
    KDC. A handshake failure sends the peer an MS-NNS Error frame, closes the transport and fails ``waiter``; the
    app protocol hears nothing. A failure after the handshake (tampering, truncation, ...) closes the transport and
    reaches the app protocol as ``connection_lost(exc)`` with the typed error; nothing unverified is ever passed to
    the app. A reset or broken pipe is typed too: :class:`TruncatedStreamError` during the handshake or inside a
    record, else :class:`ConnectionLostError` (``__cause__``: the OS error).

    ``idle_timeout`` (seconds, ``None``: off) bounds an authenticated connection: when no record arrives for that
    long while the app is reading, the transport is aborted and the app gets ``connection_lost``
    (:class:`IdleTimeoutError`). The clock restarts when the app resumes reading and stops at the peer's EOF.
    """

    def __init__(
        self,
        connection: Connection | Callable[[], Connection],
        app_protocol: asyncio.BaseProtocol,
        *,
        waiter: asyncio.Future[NegotiateTransport] | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        call_connection_made: bool = True,
        initial_data: bytes = b"",
        idle_timeout: float | None = None,
    ) -> None:
        self._conn: Connection | None = None
        self._build: Callable[[], Connection] | None = None
        self._offload = False  # whether handshake steps run in a worker thread (see _adopt)
        if isinstance(connection, Connection):
            self._adopt(connection)
        else:
            self._build = connection
        self.app_protocol = app_protocol
        self.app_transport: NegotiateTransport | None = None
        self._waiter = waiter
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._call_connection_made = call_connection_made
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: IdleTimer | None = None
        self._app_reading = True
        self._closed = False
        self._lost = False
        self._error: Exception | None = None
        self._keep_open_after_eof = False
        # While a worker thread builds or steps the Connection (_busy) it is the thread's alone: received bytes
        # and an EOF wait here. ``initial_data`` is held the same way until the Connection is ready.
        self._busy = False
        self._held = bytearray(initial_data)
        self._held_eof = False
        # Inner write-buffer state, and whether the app was told: a pause during the handshake is passed on
        # after connection_made, and a resume only follows a pause the app has seen.
        self._inner_write_paused = False
        self._app_write_paused = False

    def _adopt(self, connection: Connection) -> None:
        self._conn, self._build, context = connection, None, connection.context
        # Steps that may reach a KDC run in a worker thread; once a step has shown that the session is NTLM (SPNEGO
        # fell back), the rest run inline: they cannot block.
        self._offload = may_block(context.requested_protocol) and context.negotiated_protocol != "ntlm"

    @property
    def connection(self) -> Connection:
        """The :class:`Connection` driven by this protocol (once built, when the protocol was given a builder)."""
        if self._conn is None:
            raise LocalProtocolError("the Connection is still being built in a worker thread: wait for the handshake")
        return self._conn

    # -- transport callbacks -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the handshake on ``transport`` (a client sends its first token now)."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        loop = self._loop = asyncio.get_running_loop()
        self._shared = receive_buffer()  # this thread's: the one that runs the loop and calls get_buffer
        self._receive_view = self._shared.view
        if self._handshake_timeout is not None:
            self._timer = loop.call_later(self._handshake_timeout, self._on_handshake_timeout)
        if self._build is not None:
            self._busy = True
            start_thread(self._build, self._on_built, loop.call_soon_threadsafe)
        else:
            self._resume()

    def get_buffer(self, sizehint: int) -> memoryview:
        """The loop's shared receive buffer (once established, cut to one record when the loop is crowded)."""
        conn = self._conn
        if self._shared.established <= CROWDED or conn is None or conn.state is not _ESTABLISHED:
            return self._receive_view  # the common case first: an int comparison on every read
        return self._shared.cut_for(conn)

    def buffer_updated(self, nbytes: int) -> None:
        """Process the ``nbytes`` just received (once established, the records are verified in place)."""
        conn = self._conn
        if conn is None or self.app_transport is None or self._busy:
            self._feed(self._receive_view[:nbytes])  # the handshake: copied (a worker thread may parse it later)
        elif conn.state is _ESTABLISHED and self._error is None:  # else failed or closed: late bytes ignored
            conn._lend(self._receive_view[:nbytes])
            try:
                self._deliver_records(conn)
            finally:
                conn._reclaim()  # keeps a partial record (or what the app left unread): the next read reuses it

    def eof_received(self) -> bool | None:
        """Feed EOF: a clean end at a record boundary reaches the app's ``eof_received``, else an error."""
        self._feed(b"")
        # True keeps the transport open for our own writes: the app asked for a half-close in _on_eof, or a worker
        # thread still holds the Connection and the EOF is processed when it reports back.
        return self._keep_open_after_eof or self._busy

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail a pending handshake, or tell the app protocol (with the typed error that closed the stream)."""
        self._lost = True
        self._cancel_timer()
        self._cancel_idle_timer()
        if isinstance(exc, PEER_LOSS_ERRORS):
            exc = self._peer_lost(exc)
        if self.app_transport is None:
            lost = TruncatedStreamError("the peer closed the connection during the handshake (no error frame)")
            self._fail_waiter(exc or self._error or lost)
            return
        self._shared.established -= 1
        if not self._closed:
            self._closed = True
            self.app_protocol.connection_lost(exc if exc is not None else self._error)

    def _peer_lost(self, exc: OSError) -> Exception:
        conn = self._conn
        if conn is None or self._busy or self.app_transport is None:
            return peer_lost(exc, handshake=True)  # a busy Connection is the thread's: not marked broken
        error = peer_lost(exc, buffered=conn.buffered)
        if conn.state is _ESTABLISHED:  # a stream the app closed stays closed (StreamClosedError)
            conn.mark_broken(error)
        return error

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
        if self._busy:  # a worker thread owns the Connection: keep a copy (the receive buffer is reused at once)
            if data:
                self._held += data
            else:
                self._held_eof = True
            return
        conn = self._conn
        if conn is None or self._error is not None or conn.state in (State.BROKEN, State.CLOSED):
            return  # already failed or closed by us: ignore late bytes
        try:
            conn.receive_data(data)  # copies: the receive buffer is reused at once
        except NegotiateError as exc:
            self._fail(exc)
            return
        self._process()

    def _process(self) -> None:
        conn = self._conn
        if conn is None or conn.state in (State.BROKEN, State.CLOSED):
            return  # closed by the app (or failed): late records are dropped, not an error
        if self.app_transport is None:
            if self._offload and conn.buffered:  # only parsing bytes reaches the context
                assert self._loop is not None
                self._busy = True
                start_thread(conn.next_event, self._on_stepped, self._loop.call_soon_threadsafe)
                return
            try:
                while self.app_transport is None and not isinstance(event := conn.next_event(), _NeedData):
                    if isinstance(event, HandshakeComplete):
                        self._flush()
                        self._on_handshake_complete(event.info)
                self._flush()
            except NegotiateError as exc:
                self._fail(exc)
                return
            if self.app_transport is None:
                return
        self._deliver_records(conn)

    def _deliver_records(self, conn: Connection) -> None:
        """Deliver the received records while the app reads and keeps the stream open.

        A stream the app closed from a callback (connection_made, data_received) is no longer ESTABLISHED: records
        still queued are dropped, and the close stays a clean one (``connection_lost(None)``).
        """
        try:
            while self._app_reading and conn.state is _ESTABLISHED:
                event = conn._next_plaintext()
                if not isinstance(event, bytes):
                    if isinstance(event, EndOfStream):
                        self._on_eof()
                    return
                if self._idle_timer is not None:
                    self._idle_timer.record()
                deliver(self.app_protocol, event)
        except NegotiateError as exc:
            self._fail(exc)

    # -- work in a worker thread ---------------------------------------------------------------------------------

    def _on_built(self, outcome: Outcome[Connection]) -> None:
        """The worker thread built the Connection (a client's first token is queued in it), or failed to."""
        self._busy = False
        if self._error is not None or self._lost:
            return  # the handshake already failed (deadline, lost transport): the late Connection is dropped
        try:
            conn = outcome.unwrap()
        except Exception as exc:
            self._fail(exc)
            return
        self._adopt(conn)
        self._resume()

    def _on_stepped(self, outcome: Outcome[Event | _NeedData]) -> None:
        """A handshake step ran in the worker thread: send its replies, then go on with what arrived meanwhile."""
        self._busy = False
        if self._error is not None or self._lost:
            return  # the handshake already failed (deadline, lost transport): the late result is dropped
        conn = self._conn
        assert conn is not None
        try:
            event = outcome.unwrap()
        except Exception as exc:
            self._fail(exc)  # the Connection queued an Error frame for the peer: _fail sends it
            return
        self._offload = conn.context.negotiated_protocol != "ntlm"  # see _adopt
        self._flush()
        if isinstance(event, HandshakeComplete):
            self._on_handshake_complete(event.info)
            self._process()  # records that came with the last handshake message
        self._resume()

    def _resume(self) -> None:
        """Send what the Connection queued, then feed it the bytes (and EOF) held while it was not available."""
        self._flush()
        if self._held:
            held, self._held = bytes(self._held), bytearray()
            self._feed(held)
        if self._held_eof and not self._busy:
            self._held_eof = False
            self._feed(b"")

    # -- outcomes ------------------------------------------------------------------------------------------------

    def _on_handshake_complete(self, info: SessionInfo) -> None:
        self._cancel_timer()
        assert self._transport is not None
        self.app_transport = NegotiateTransport(self, self._transport, info)
        self._shared.established += 1  # until connection_lost
        if self._idle_timeout is not None:
            assert self._loop is not None
            self._idle_timer = IdleTimer(self._loop, self._idle_timeout, self._on_idle)
            self._idle_timer.start()
        if self._call_connection_made:
            self.app_protocol.connection_made(self.app_transport)
        if self._inner_write_paused and not self._app_write_paused:
            self._app_write_paused = True
            self.app_protocol.pause_writing()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self.app_transport)

    def _on_eof(self) -> None:
        self._cancel_idle_timer()  # the peer ended its stream cleanly: there is no record left to wait for
        eof_received = getattr(self.app_protocol, "eof_received", None)  # optional on a plain BaseProtocol
        self._keep_open_after_eof = eof_received is not None and bool(eof_received())
        if not self._keep_open_after_eof and self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        conn = self._conn
        out = conn.data_to_send() if conn is not None else b""
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def _fail(self, exc: Exception, *, abort: bool = False) -> None:
        """A fatal error: tell the peer (Error frame during the handshake), close (or abort), report to the app."""
        if self._error is None:
            self._error = exc
        self._cancel_idle_timer()
        if self._conn is not None and not self._busy:  # a busy Connection is the worker thread's: left alone
            self._conn.mark_broken(exc)
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

    # -- timers --------------------------------------------------------------------------------------------------

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        if self.app_transport is None:
            # Abort, not close: a silent peer must not hold the socket open for a graceful close.
            self._fail(handshake_timeout_error(self._handshake_timeout, waiting_for_kdc=self._busy), abort=True)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_idle(self, error: IdleTimeoutError) -> None:
        self._idle_timer = None
        if self._transport is None or self._transport.is_closing() or self.connection.state is not _ESTABLISHED:
            return  # closed (by the app or a failure) since the timer was armed
        self._fail(error, abort=True)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _set_app_reading(self, reading: bool) -> None:
        if reading == self._app_reading:
            return
        self._app_reading = reading
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._idle_timer is not None:
            (self._idle_timer.resume if reading else self._idle_timer.pause)()
        if reading:
            transport.resume_reading()
            asyncio.get_running_loop().call_soon(self._process)  # deliver records held while paused
        else:
            transport.pause_reading()
