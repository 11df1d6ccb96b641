"""The plaintext-stream engine shared by the anyio and blocking-socket adapters: no I/O, no waiting.

:class:`StreamEngine` turns an established :class:`~._connection.Connection` into a plaintext byte stream and holds
everything the adapters have in common: leftover plaintext kept between reads, chunked sends, the closed and
sticky-broken checks with their messages, and the moves to the broken state after a transport failure. An adapter
keeps only what differs: the transport, how it waits (``await`` or a blocking call), which read errors consumed
nothing (an anyio cancellation, a socket timeout), and its per-direction locks.

How an adapter drives it (every method returns at once; the adapter does all the I/O):

* **Handshake** (before the engine exists, on the bare Connection): write ``connection.data_to_send()``, call
  :func:`handshake_step`, write ``data_to_send()`` again; stop when it returned a :class:`SessionInfo`, else read a
  chunk (``b""`` at EOF), pass it to ``connection.receive_data`` and repeat. On any failure write
  :func:`error_frame` (best effort: it tells a .NET peer why), then close the transport.
* **Receive side** (under the adapter's receive lock): :meth:`~StreamEngine.check_usable`, then loop on
  :meth:`~StreamEngine.read`. It returns plaintext, ``b""`` at a clean EOF, or ``None``: then read a
  chunk from the transport and pass it to :meth:`~StreamEngine.receive_data` (``b""`` at EOF). A read error that
  consumed nothing may simply propagate (the stream stays usable); any other read error goes to
  :meth:`~StreamEngine.read_failed` before it propagates. Raises :class:`BrokenStreamError`, the adapter's closed
  error, and from :meth:`~StreamEngine.read` the Connection's typed errors (:class:`IntegrityError`,
  :class:`TruncatedStreamError`, ...), after which the stream is broken.
* **Send side** (under the adapter's send lock): write every item of :meth:`~StreamEngine.writes` in order, one
  transport write each, and pass any write failure (cancellation included) to :meth:`~StreamEngine.write_failed`
  before it propagates. :meth:`~StreamEngine.writes` raises what :meth:`~StreamEngine.check_usable` raises, and
  :class:`StreamClosedError` after a half-close. Half-close: :meth:`~StreamEngine.check_usable`, shut the
  transport's sending side, then :meth:`~StreamEngine.mark_eof_sent`.
* **Close**: :meth:`~StreamEngine.close` (true the first time), then close the transport.

Concurrency: the receive-side methods (:meth:`~StreamEngine.read`, :meth:`~StreamEngine.receive_data`,
:meth:`~StreamEngine.read_failed`) must run one caller at a time, and so must the send-side methods
(:meth:`~StreamEngine.writes`, :meth:`~StreamEngine.write_failed`, :meth:`~StreamEngine.mark_eof_sent`); one
receiver and one sender may run at the same time, in two threads if need be. When the session shares one cipher
state for both directions (:attr:`SessionInfo.shares_crypto_state`) the engine itself serialises every protect and
unprotect step with one lock, held only around those synchronous steps and never while the adapter waits on the
transport: a reader waiting for a reply must not stop the writer from sending the request.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ._connection import Connection
from ._events import NEED_DATA, Data, EndOfStream, HandshakeComplete, SessionInfo, State
from ._framing import nns
from .errors import (
    BrokenStreamError,
    ConnectionLostError,
    LocalProtocolError,
    StreamClosedError,
    TruncatedStreamError,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["PEER_LOSS_ERRORS", "RECORDS_PER_WRITE", "StreamEngine", "error_frame", "handshake_step", "peer_lost"]

#: Records protected per transport write: large enough to amortise the write, small enough that a huge send does
#: not hold a second full copy of its data in memory.
RECORDS_PER_WRITE = 16

#: OS errors that mean the peer went away (a reset, a broken pipe, an abort): :func:`peer_lost` types them.
PEER_LOSS_ERRORS: tuple[type[OSError], ...] = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def handshake_step(connection: Connection) -> SessionInfo | None:
    """Parse the received handshake bytes: the session once the handshake completed, ``None`` to read more.

    After calling this you must write ``connection.data_to_send()``, whatever it returned. Raises the
    Connection's typed errors (:class:`AuthenticationError`, :class:`HandshakeError`, :class:`FramingError`,
    :class:`TruncatedStreamError`, ...); the Connection is then broken and :func:`error_frame` holds the Error frame.
    """
    event = connection.next_event()
    if isinstance(event, HandshakeComplete):
        return event.info
    if event is NEED_DATA:
        return None
    raise LocalProtocolError(  # pragma: no cover - Connection reports HandshakeComplete first
        f"unexpected event {event!r} during the handshake"
    )


def error_frame(connection: Connection) -> bytes:
    """Return the MS-NNS Error frame a failed handshake queued for the peer, ``b""`` if there is none.

    Only a failure of the Connection itself (it is then broken) queues an Error frame; after a cancellation or a
    timeout the queue may hold an ordinary handshake message, which would only mislead the peer.
    """
    return connection.data_to_send() if connection.state is State.BROKEN else b""


def peer_lost(exc: BaseException, *, handshake: bool = False, buffered: int = 0) -> ConnectionLostError:
    """The typed error for a transport error ``exc`` of :data:`PEER_LOSS_ERRORS`; raise it ``from exc``.

    ``exc`` may also be anyio's ``BrokenResourceError``, which the anyio adapter gets for a reset or broken pipe.
    :class:`TruncatedStreamError` during the ``handshake`` or with ``buffered`` bytes of a record received (the
    Connection's :attr:`~._connection.Connection.buffered`; pass 0 when sending), else :class:`ConnectionLostError`.
    The type never depends on whether the peer's close came as a FIN (an EOF, which the Connection reports the
    same way) or as an RST. The adapter still marks the stream broken (:meth:`StreamEngine.read_failed` /
    :meth:`~StreamEngine.write_failed`) with the returned error.
    """
    what = f"{type(exc).__name__}: {exc}"
    error: ConnectionLostError
    if handshake:
        error = TruncatedStreamError(
            f"the peer reset the connection during the handshake ({what}): it probably rejected our "
            "authentication without sending an error (check credentials and protection level)"
        )
    elif buffered:
        error = TruncatedStreamError(
            f"the peer reset the connection in the middle of a record ({buffered} bytes of it received, {what}): "
            "the data was truncated"
        )
    else:
        error = ConnectionLostError(f"the peer reset or closed the connection ({what}): open a new connection")
    error.__cause__ = exc
    return error


class StreamEngine:
    """The plaintext stream over an established :class:`Connection`; see the module docstring for the contract.

    ``closed_error`` builds the error raised after :meth:`close` (the adapter's own type, e.g.
    :class:`anyio.ClosedResourceError`); ``half_close`` names the adapter's half-close call in the message raised
    by a send after it. ``info`` is the session when the handshake already completed.
    """

    __slots__ = (
        "_closed",
        "_closed_error",
        "_conn",
        "_crypto_lock",
        "_eof_received",
        "_eof_sent",
        "_half_close",
        "_offset",
        "_plaintext",
        "_write_size",
        "info",
    )

    def __init__(
        self,
        connection: Connection,
        *,
        closed_error: Callable[[str], Exception],
        half_close: str,
        info: SessionInfo | None = None,
    ) -> None:
        """Drive ``connection``; call :meth:`establish` once the handshake completed unless ``info`` is given."""
        self._conn = connection
        self._closed_error = closed_error
        self._half_close = half_close
        self._plaintext = b""
        self._offset = 0
        self._eof_received = False
        self._eof_sent = False
        self._closed = False
        #: The session, once the handshake completed.
        self.info: SessionInfo | None = None
        # Until the session's record size is known, size writes by the largest record MS-NNS allows.
        self._write_size = nns.MAX_PLAINTEXT_PER_RECORD * RECORDS_PER_WRITE
        self._crypto_lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if info is not None:
            self.establish(info)

    def establish(self, info: SessionInfo) -> None:
        """Adopt the negotiated session: its record size and, if it shares one cipher state, the crypto lock."""
        self.info = info
        self._write_size = max(1, info.sizes.max_message) * RECORDS_PER_WRITE
        if info.shares_crypto_state:
            # A threading lock, not an anyio one: it is held only around synchronous Connection calls, which
            # then stay serialised even if a caller moves them to a worker thread.
            self._crypto_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def eof_sent(self) -> bool:
        """True once the adapter half-closed the sending side (:meth:`mark_eof_sent`)."""
        return self._eof_sent

    def check_usable(self) -> None:
        """Refuse use after :meth:`close` and, errors being sticky, any use after a failure.

        Raises ``closed_error`` after :meth:`close`, :class:`BrokenStreamError` chained to the first error once
        the stream is broken.
        """
        if self._closed:
            raise self._closed_error("the stream was closed by this side: open a new connection")
        if self._conn.state is State.BROKEN:
            cause = self._conn.broken_cause
            raise BrokenStreamError(
                f"the stream is broken by an earlier error ({cause!r}); close it and open a new connection"
            ) from cause

    # -- receive side -------------------------------------------------------------------------------------------

    def read(self, max_bytes: int) -> bytes | None:
        """Return 1 to ``max_bytes`` plaintext bytes, ``b""`` at a clean EOF, or ``None`` when it needs more bytes.

        After ``None`` read from the transport and call :meth:`receive_data`, then call this again. The
        rest of a record larger than ``max_bytes`` is kept for the next call. Raises the Connection's typed
        errors for a bad record (nothing of it is returned); the stream is then broken.
        """
        while self._offset >= len(self._plaintext):
            if self._eof_received:
                return b""
            with self._crypto_lock:
                event = self._conn.next_event()
            if isinstance(event, Data):
                self._plaintext, self._offset = event.data, 0
            elif isinstance(event, EndOfStream):
                self._eof_received = True
            elif isinstance(event, HandshakeComplete):
                # Only when an adapter wrapped a Connection whose handshake had not finished.
                self.establish(event.info)
            else:
                return None  # the Connection needs more bytes from the transport
        start = self._offset
        end = min(start + max_bytes, len(self._plaintext))
        self._offset = end
        if start == 0 and end == len(self._plaintext):
            return self._plaintext  # the common case: a whole record, no copy
        return self._plaintext[start:end]

    def receive_data(self, chunk: bytes) -> None:
        """Feed bytes read from the transport (``b""``: the peer closed) to the Connection."""
        self._conn.receive_data(chunk)

    def read_failed(self, exc: BaseException) -> None:
        """Record a transport read failure that may have consumed bytes (a reset, a failed read): break the stream.

        A later read might otherwise return ``b""`` and pass for a clean EOF. A failure caused by our own
        :meth:`close` (a read interrupted by it) leaves the stream closed rather than broken.
        """
        if not self._closed:
            self._conn.mark_broken(exc)

    # -- send side ----------------------------------------------------------------------------------------------

    def writes(self, data: Buffer) -> Iterator[bytes]:
        """Yield the wire bytes of ``data``, one transport write each (``RECORDS_PER_WRITE`` records at most).

        Write each item before asking for the next: records are protected lazily, so a huge send never holds a
        second full copy of its data. An empty ``data`` yields nothing. Raises what :meth:`check_usable` raises,
        :class:`StreamClosedError` after :meth:`mark_eof_sent` (before a sequence number is spent on a record that
        could never be written), and the Connection's typed errors if protecting fails (the stream is then broken).
        """
        view = memoryview(data).cast("B")
        self.check_usable()
        if self._eof_sent:
            raise StreamClosedError(f"cannot send after {self._half_close}: the sending side is closed")
        step = self._write_size
        conn = self._conn
        for start in range(0, len(view), step):
            with self._crypto_lock:
                wire = conn.send(view[start : start + step])
            yield wire  # outside the lock: the adapter waits on the transport now

    def write_failed(self, exc: BaseException) -> None:
        """Record a failed or cancelled transport write: the stream is broken.

        The records' sequence numbers are spent whether or not their bytes left, and part of a record may be out:
        nothing can follow them.
        """
        self._conn.mark_broken(exc)

    def mark_eof_sent(self) -> None:
        """Record that the adapter half-closed the transport's sending side: later sends raise."""
        self._eof_sent = True

    # -- both -----------------------------------------------------------------------------------------------------

    def close(self) -> bool:
        """Mark the stream closed by this side; return True the first time (then close the transport)."""
        first = not self._closed
        self._closed = True
        self._conn.close()
        return first
