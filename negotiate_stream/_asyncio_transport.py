"""The data path of the asyncio adapter: the app's transport, delivery to the app, the shared receive buffer.

:class:`NegotiateTransport` protects what the application writes: :class:`~._asyncio_protocol.NegotiateProtocol`
(the protocol the socket transport talks to) hands it to the application's own protocol once the handshake
succeeded, the way asyncio's ``SSLProtocol`` presents an SSL transport, and passes it every verified record through
:func:`deliver`. Both classes are re-exported by :mod:`negotiate_stream.asyncio_`, which also holds the public
entry points (``start_negotiate``, ``open_connection``, ``start_server``, ``wrap_streams``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from ._events import SessionInfo, State
from ._options import RECEIVE_SIZE
from .errors import StreamClosedError

if TYPE_CHECKING:
    from ._asyncio_protocol import NegotiateProtocol
    from ._connection import Connection

__all__ = ["CROWDED", "NegotiateTransport", "SharedReceiveBuffer", "deliver", "receive_buffer"]

_thread_state = threading.local()
# A module constant: an Enum member lookup costs ~70 ns on Python 3.11, and this one is on every write's path.
_ESTABLISHED = State.ESTABLISHED


#: Established connections on one loop above which each read takes about one record (see SharedReceiveBuffer).
CROWDED = 16


class SharedReceiveBuffer:
    """The receive buffer shared by the NegotiateProtocols of one thread's event loop, and how many established
    connections read into it (:func:`receive_buffer`).

    asyncio calls ``get_buffer`` and ``buffer_updated`` back to back in one callback, and a Connection parses the
    records in place and copies what it keeps (a partial record) before ``buffer_updated`` returns, so one buffer
    per thread serves all connections: 1,000 idle connections cost ~14 KiB each instead of 256 KiB more.
    """

    __slots__ = ("established", "view")

    def __init__(self) -> None:
        self.view = memoryview(bytearray(RECEIVE_SIZE))
        self.established = 0

    def cut_for(self, connection: Connection) -> memoryview:
        """The buffer cut to the next read of an established ``connection`` on a crowded loop.

        While at most :data:`CROWDED` connections share the loop, a read may fill all of it (a bulk transfer reads
        256 KiB per callback); the protocol checks that itself, on every read. Beyond, each read is cut to about one
        record (``Connection._read_size``): each connection then takes about one record per turn of the loop, a read
        stops at a record boundary, and what the apps have not read yet waits in the kernel instead of in memory
        (1,000 streaming connections: 80 -> 51 KiB RSS per endpoint, benchmarks/README.md).
        """
        return self.view[: connection._read_size()]


def receive_buffer() -> SharedReceiveBuffer:
    """The :class:`SharedReceiveBuffer` of this thread's event loop."""
    shared: SharedReceiveBuffer | None = getattr(_thread_state, "shared", None)
    if shared is None:
        shared = _thread_state.shared = SharedReceiveBuffer()
    return shared


def deliver(app: asyncio.BaseProtocol, data: bytes) -> None:
    """Pass verified plaintext to the application protocol: ``data_received``, or a BufferedProtocol's buffers."""
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
        self._conn = protocol.connection  # built before the handshake completed: fixed from now on
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
        conn = self._conn
        if conn.state is _ESTABLISHED:
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
        self._conn.close()
        self._inner.close()

    def abort(self) -> None:
        """Close at once, dropping queued records (``connection_lost(None)`` follows)."""
        self._conn.close()
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
