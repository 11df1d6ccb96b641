"""Blocking sockets: :class:`NegotiateSocket` wraps a connected socket (or anything with ``recv``/``sendall``).

::

    with create_connection(("server.example.com", 5000), credentials=creds) as sock:
        sock.sendall(b"request")
        reply = sock.recv(65536)

Thread-safety follows the SSPI rule: one encryptor and one decryptor at a time, never two of either. A reader
thread and a writer thread may use one NegotiateSocket at once. Two readers (or two writers) are serialised by a
per-direction lock: each call completes before the next starts, so records never interleave, but which reader
gets which bytes is up to the scheduler, so give each direction one owner. When the session shares one crypto
state for both directions (NTLM without Extended Session Security, :attr:`SessionInfo.shares_crypto_state`) both
directions also take ONE shared lock around every protect/unprotect step. It is never held across a socket wait:
a reader blocked on the socket must not stop the writer from sending the request it waits the reply to. Such a
session must be half-duplex on the wire as well (see :class:`~negotiate_stream.Connection`).

The handshake has a deadline, ``handshake_timeout`` (30 s by default, ``None``: none), over the whole exchange,
as on asyncio and anyio: a peer that drips bytes slower than that is cut off with :class:`HandshakeTimeoutError`
however short each read is (see :mod:`._blocking_handshake`). After the handshake, timeouts come from the socket
(``settimeout``) and raise :class:`TimeoutError` (``socket.timeout``). A timeout while reading loses nothing: the
bytes of a partly received record stay in the Connection's buffer, so the next ``recv`` continues correctly. A
timeout while writing may have sent part of a record, so it breaks the stream.

A peer that goes away is typed: a reset, broken pipe or EOF during the handshake or inside a record raises
:class:`TruncatedStreamError`; a reset or broken pipe at a record boundary or while sending raises its parent
:class:`ConnectionLostError`; the OS error is the ``__cause__``. Errors are sticky: after any failure every later
call raises :class:`BrokenStreamError` chained to it. Buffering, chunked sends and those checks live in the
shared :mod:`._stream_engine`; this module adds the blocking calls, the locks and the socket's timeout rules.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from typing import TYPE_CHECKING, Any, Protocol

from ._blocking_handshake import HandshakeDeadline, run_handshake
from ._connection import Connection
from ._context import ProtectionLevel, SecurityContext
from ._events import SessionInfo
from ._offload import may_block
from ._options import DEFAULT_HANDSHAKE_TIMEOUT, RECEIVE_SIZE
from ._stream_engine import PEER_LOSS_ERRORS, StreamEngine, peer_lost
from .errors import HandshakeTimeoutError, NegotiateError, StreamClosedError

if TYPE_CHECKING:
    from typing_extensions import Buffer, Unpack

    from ._context import ContextOptions

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "NegotiateSocket", "SocketLike", "create_connection"]

# Errors after which a read can simply be retried: the socket consumed nothing.
_RETRYABLE_READ_ERRORS = (TimeoutError, BlockingIOError, InterruptedError)


class SocketLike(Protocol):
    """What NegotiateSocket needs from the wrapped object.

    ``shutdown``, ``close``, ``settimeout`` and ``gettimeout`` are used when present.
    """

    def recv(self, bufsize: int, /) -> bytes:
        """Return up to ``bufsize`` bytes, ``b""`` at EOF."""
        ...

    def sendall(self, data: Buffer, /) -> Any:
        """Send all of ``data``."""
        ...


class NegotiateSocket:
    """A blocking, negotiate-protected socket. Build it with :meth:`client`, :meth:`server` or
    :func:`create_connection`; it owns (and closes) the wrapped socket."""

    def __init__(self, sock: SocketLike, connection: Connection) -> None:
        """Wrap ``sock`` with a Connection; prefer :meth:`client` / :meth:`server`, which also handshake."""
        self._sock = sock
        self._conn = connection
        self._recv_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._engine = StreamEngine(connection, closed_error=StreamClosedError, half_close="shutdown(SHUT_WR)")

    # -- construction and handshake --------------------------------------------------------------------------

    @classmethod
    def client(
        cls,
        sock: SocketLike,
        *,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        context: SecurityContext | None = None,
        **options: Unpack[ContextOptions],
    ) -> NegotiateSocket:
        """Authenticate to the server on the connected ``sock`` and return the protected socket.

        ``options`` build the :class:`SecurityContext` unless ``context`` is given. The whole handshake must end
        within ``handshake_timeout`` seconds (``None``: no limit); the socket's own timeout, if shorter, still
        bounds each read and write, and is restored afterwards. A ``sock`` without ``settimeout``/``gettimeout``
        is checked against the deadline between calls only (a silent peer blocks as long as its ``recv`` does).
        On failure the MS-NNS Error frame (if any) is sent, ``sock`` is closed and the typed error raised:
        :class:`AuthenticationError` (:class:`HandshakeError` when the server rejected us),
        :class:`HandshakeTimeoutError`, :class:`TruncatedStreamError` (the peer closed or reset the connection),
        another :class:`RemoteProtocolError`.
        """
        return cls._open(sock, False, handshake_timeout, context, options)

    @classmethod
    def server(
        cls,
        sock: SocketLike,
        *,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        context: SecurityContext | None = None,
        **options: Unpack[ContextOptions],
    ) -> NegotiateSocket:
        """Authenticate the client on the connected ``sock`` and return the protected socket.

        Fails like :meth:`client`, with the same ``handshake_timeout``: a client that sends its handshake slowly
        (a byte at a time) is cut off at the deadline. A rejected client gets an MS-NNS Error frame before
        ``sock`` is closed.
        """
        return cls._open(sock, True, handshake_timeout, context, options)

    @classmethod
    def _open(
        cls,
        sock: SocketLike,
        server_side: bool,
        handshake_timeout: float | None,
        context: SecurityContext | None,
        options: ContextOptions,
    ) -> NegotiateSocket:
        deadline = HandshakeDeadline(sock, handshake_timeout)
        try:
            try:
                kerberos = may_block(
                    context.requested_protocol if context is not None else options.get("protocol", "negotiate")
                )
                # A client Connection takes its first step at once, and creating a Kerberos context with a
                # password runs a kinit: both may wait on a KDC, so both run under the deadline.
                conn = deadline.step(
                    lambda: Connection(context or SecurityContext.create(server_side, **options)), may_block=kerberos
                )
                info = run_handshake(sock, conn, deadline, kerberos=kerberos)
            finally:
                deadline.restore()
        except TimeoutError as exc:
            _close_quietly(sock)
            if isinstance(exc, NegotiateError):
                raise
            raise HandshakeTimeoutError(  # e.g. a kinit that gave up on its own
                "the handshake timed out: the peer or the KDC is slow, silent or unreachable; check it, or raise "
                "the timeout"
            ) from exc
        except BaseException:
            _close_quietly(sock)
            raise
        self = cls(sock, conn)
        self._engine.establish(info)
        return self

    def _flush_handshake(self) -> None:
        out = self._conn.data_to_send()
        if out:
            self._sock.sendall(out)

    def _read_chunk(self) -> None:
        """Read once from the socket into the Connection (``b""``: the peer closed)."""
        try:
            chunk = self._sock.recv(RECEIVE_SIZE)
        except _RETRYABLE_READ_ERRORS:
            raise  # nothing was consumed: a later call continues where this one stopped
        except PEER_LOSS_ERRORS as exc:
            lost = peer_lost(exc, handshake=self._engine.info is None, buffered=self._conn.buffered)
            self._engine.read_failed(lost)
            raise lost from exc
        except BaseException as exc:
            self._engine.read_failed(exc)
            raise
        self._engine.receive_data(chunk)

    # -- receive side ---------------------------------------------------------------------------------------------

    def recv(self, bufsize: int = 65536) -> bytes:
        """Return 1 to ``bufsize`` verified plaintext bytes; ``b""`` once the peer closed at a record boundary.

        Raises :class:`TimeoutError` when the socket's timeout expires (the stream stays usable),
        :class:`TruncatedStreamError` when the peer closed or reset the connection inside a record,
        :class:`ConnectionLostError` when it reset it at a record boundary, :class:`IntegrityError` for a record
        that fails its check (nothing of it is returned), :class:`BrokenStreamError` after any earlier failure.
        """
        if bufsize < 0:
            raise ValueError("bufsize must not be negative")
        engine = self._engine
        with self._recv_lock:
            engine.check_usable()
            if bufsize == 0:
                return b""
            while (data := engine.read(bufsize)) is None:
                # Handshake bytes, should this socket wrap a Connection whose handshake had not finished.
                self._flush_handshake()
                self._read_chunk()
            return data

    def recv_into(self, buffer: Buffer, nbytes: int = 0) -> int:
        """Receive into a writable ``buffer`` (at most ``nbytes``, default its size); return the count, 0 at EOF."""
        view = memoryview(buffer).cast("B")
        if nbytes < 0 or nbytes > len(view):
            raise ValueError("nbytes must be between 0 and the buffer's size")
        data = self.recv(nbytes or len(view))
        view[: len(data)] = data
        return len(data)

    # -- send side ------------------------------------------------------------------------------------------------

    def sendall(self, data: Buffer) -> None:
        """Protect and send all of ``data`` (records of at most ``session_info.sizes.max_message`` bytes).

        An empty ``data`` sends nothing. If the socket write fails or times out, part of a record may be out:
        the error propagates (a reset or broken pipe as :class:`ConnectionLostError`) and the stream is broken
        (later calls raise :class:`BrokenStreamError`). Raises :class:`StreamClosedError` after
        ``shutdown(SHUT_WR)``.
        """
        with self._send_lock:
            for wire in self._engine.writes(data):
                try:
                    self._sock.sendall(wire)
                except PEER_LOSS_ERRORS as exc:
                    lost = peer_lost(exc)
                    self._engine.write_failed(lost)
                    raise lost from exc
                except BaseException as exc:
                    self._engine.write_failed(exc)  # a timeout too: part of a record may be out
                    raise

    def send(self, data: Buffer) -> int:
        """Send all of ``data`` like :meth:`sendall` (a record is all or nothing); return its length."""
        self.sendall(data)
        return memoryview(data).nbytes

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        """Shut down the wrapped socket (``SHUT_WR`` half-closes: MS-NNS has no close message).

        After ``SHUT_WR`` (or ``SHUT_RDWR``) the peer sees a clean EOF at a record boundary and this side can
        still receive. Raises :class:`NotImplementedError` when the wrapped object has no ``shutdown``.
        """
        shutdown = getattr(self._sock, "shutdown", None)
        if shutdown is None:
            raise NotImplementedError(f"{type(self._sock).__name__} has no shutdown(): it cannot half-close")
        with self._send_lock:
            self._engine.check_usable()
            shutdown(how)
            if how in (socket.SHUT_WR, socket.SHUT_RDWR):
                self._engine.mark_eof_sent()

    def close(self) -> None:
        """Close the stream and the wrapped socket (idempotent)."""
        self._engine.close()
        _close_quietly(self._sock)

    def makefile(self, mode: str = "rb", buffering: int = -1) -> io.BufferedIOBase | io.RawIOBase:
        """Return a binary file over this socket: ``"rb"`` (:class:`io.BufferedReader`), ``"wb"``
        (:class:`io.BufferedWriter`) or ``"rwb"`` (:class:`io.BufferedRWPair`); ``buffering=0`` gives the raw file.

        Reads return ``b""`` at EOF; writes go out when the buffer fills or on ``flush()``. Closing the file
        leaves the socket open.
        """
        if not set(mode) <= {"r", "w", "b"} or "b" not in mode or not set(mode) & {"r", "w"}:
            raise ValueError(f"invalid mode {mode!r}: use 'rb', 'wb' or 'rwb' (binary only)")
        raw = _RawNegotiateIO(self, reading="r" in mode, writing="w" in mode)
        if buffering == 0:
            return raw
        size = io.DEFAULT_BUFFER_SIZE if buffering < 0 else buffering
        if raw.readable() and raw.writable():
            return io.BufferedRWPair(raw, raw, size)
        if raw.writable():
            return io.BufferedWriter(raw, size)
        return io.BufferedReader(raw, size)

    # -- information ------------------------------------------------------------------------------------------

    @property
    def session_info(self) -> SessionInfo:
        """What the handshake negotiated (protocol, protection level, peer identity, ...)."""
        info = self._engine.info
        if info is None:  # pragma: no cover - construction handshakes first
            raise StreamClosedError("no session: the handshake has not completed")
        return info

    @property
    def protocol(self) -> str | None:
        """``"ntlm"`` or ``"kerberos"``."""
        return self.session_info.protocol

    @property
    def peer_identity(self) -> str | None:
        """Server side: the authenticated client (``DOMAIN\\user``); client side: the target SPN."""
        return self.session_info.peer_identity

    @property
    def protection_level(self) -> ProtectionLevel:
        """The negotiated :class:`ProtectionLevel`."""
        return self.session_info.protection_level

    @property
    def mutually_authenticated(self) -> bool:
        """True when the server proved its identity too (Kerberos)."""
        return self.session_info.mutually_authenticated

    @property
    def connection(self) -> Connection:
        """The sans-I/O :class:`Connection` (for inspection; do not drive it directly)."""
        return self._conn

    def settimeout(self, timeout: float | None) -> None:
        """Set the wrapped socket's timeout, used by every later blocking call."""
        self._sock.settimeout(timeout)  # type: ignore[attr-defined]

    def gettimeout(self) -> float | None:
        """Return the wrapped socket's timeout."""
        timeout: float | None = self._sock.gettimeout()  # type: ignore[attr-defined]
        return timeout

    def __enter__(self) -> NegotiateSocket:
        """Return self; the ``with`` block closes the socket at its end."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the socket."""
        self.close()

    def __repr__(self) -> str:
        return f"<NegotiateSocket {self._conn!r}>"


class _RawNegotiateIO(io.RawIOBase):
    """The raw layer under :meth:`NegotiateSocket.makefile`; closing it leaves the socket open."""

    def __init__(self, sock: NegotiateSocket, *, reading: bool, writing: bool) -> None:
        super().__init__()
        self._nsock = sock
        self._reading = reading
        self._writing = writing

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return self._writing

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()
        if not self._reading:
            raise io.UnsupportedOperation("file not opened for reading")
        return self._nsock.recv_into(buffer)

    def write(self, data: Any) -> int:
        self._checkClosed()
        if not self._writing:
            raise io.UnsupportedOperation("file not opened for writing")
        self._nsock.sendall(data)
        return memoryview(data).nbytes


def _close_quietly(sock: object) -> None:
    close = getattr(sock, "close", None)
    if close is not None:
        with contextlib.suppress(OSError):
            close()


def create_connection(
    address: tuple[str, int],
    *,
    timeout: float | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    context: SecurityContext | None = None,
    **options: Unpack[ContextOptions],
) -> NegotiateSocket:
    """Connect over TCP (:func:`socket.create_connection`) and authenticate as a client.

    ``timeout`` bounds the connect and every later blocking call (``None``: block); ``handshake_timeout`` bounds
    the whole handshake after the connect (``None``: no limit). The target defaults to ``host/<host>``. Raises
    the connect :class:`OSError` or what :meth:`NegotiateSocket.client` raises.
    """
    options.setdefault("target", f"host/{address[0]}")
    sock = socket.create_connection(address, timeout=timeout)
    return NegotiateSocket.client(sock, handshake_timeout=handshake_timeout, context=context, **options)
