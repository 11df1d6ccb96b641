"""Blocking sockets: :class:`NegotiateSocket` wraps a connected socket (or anything with ``recv``/``sendall``).

::

    with NegotiateSocket.client(socket.create_connection((host, port)), target=f"host/{host}") as sock:
        sock.sendall(b"request")
        reply = sock.recv(65536)

Thread-safety follows the SSPI rule: one encryptor and one decryptor at a time, never two of either. A reader
thread and a writer thread may use one NegotiateSocket at once; two readers (or two writers) are serialised by a
per-direction lock, so a record is never interleaved. When the session shares one crypto state for both
directions (NTLM without Extended Session Security) the two directions share one lock.

Timeouts come from the socket (``settimeout``); a timeout raises :class:`TimeoutError`. A timeout while reading
keeps what was received in the Connection's buffer, so the next ``recv`` continues correctly; a timeout while
writing may have sent part of a record, so it breaks the stream.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from typing import TYPE_CHECKING, Any, Protocol

from ._connection import Connection, Data, EndOfStream, HandshakeComplete, SessionInfo
from ._context import SecurityContext
from .errors import HandshakeTimeoutError, NegotiateError, StreamClosedError

if TYPE_CHECKING:
    from typing_extensions import Buffer, Unpack

    from ._context import ContextOptions

__all__ = ["NegotiateSocket", "SocketLike", "create_connection"]

_RECV_SIZE = 256 * 1024


class SocketLike(Protocol):
    """What NegotiateSocket needs from the wrapped object (``shutdown``/``close`` are used when present)."""

    def recv(self, bufsize: int, /) -> bytes: ...

    def sendall(self, data: Buffer, /) -> Any: ...


class NegotiateSocket:
    """A blocking, negotiate-protected socket. Build it with :meth:`client` or :meth:`server`."""

    def __init__(self, sock: SocketLike, connection: Connection) -> None:
        """Wrap ``sock`` with a Connection; prefer :meth:`client` / :meth:`server`, which also handshake."""
        self._sock = sock
        self._conn = connection
        self._recv_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._plaintext = bytearray()
        self._eof = False
        self._info: SessionInfo | None = None
        # Guards protect/unprotect when both directions share one cipher state (NTLM without ESS); the socket
        # calls stay outside it so a blocked reader never stalls the writer.
        self._crypto_lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()

    # -- construction and handshake --------------------------------------------------------------------------

    @classmethod
    def client(
        cls, sock: SocketLike, *, context: SecurityContext | None = None, **options: Unpack[ContextOptions]
    ) -> NegotiateSocket:
        """Authenticate to the server on ``sock`` and return the protected socket (raises AuthenticationError)."""
        return cls._open(sock, context or SecurityContext.create(False, **options))

    @classmethod
    def server(
        cls, sock: SocketLike, *, context: SecurityContext | None = None, **options: Unpack[ContextOptions]
    ) -> NegotiateSocket:
        """Authenticate the client on ``sock`` and return the protected socket (raises AuthenticationError)."""
        return cls._open(sock, context or SecurityContext.create(True, **options))

    @classmethod
    def _open(cls, sock: SocketLike, context: SecurityContext) -> NegotiateSocket:
        try:
            self = cls(sock, Connection(context))
            self._handshake()
        except TimeoutError as exc:
            _close_quietly(sock)
            if isinstance(exc, NegotiateError):
                raise
            raise HandshakeTimeoutError(
                "the handshake did not complete within the socket's timeout: the peer is slow, silent or does not "
                "speak MS-NNS; raise the timeout (settimeout) or check the peer"
            ) from exc
        except BaseException:
            _close_quietly(sock)
            raise
        return self

    def _handshake(self) -> None:
        try:
            self._flush_handshake()
            while self._info is None:
                self._pump()
                self._flush_handshake()
        except NegotiateError:
            # Any handshake failure (bad credentials, garbage, truncation) queues an MS-NNS Error frame that
            # tells the peer why; failing to deliver it must not hide the real error.
            with contextlib.suppress(OSError):
                self._flush_handshake()
            raise
        if self._info.shares_crypto_state:
            self._crypto_lock = threading.Lock()

    def _flush_handshake(self) -> None:
        out = self._conn.data_to_send()
        if out:
            self._sock.sendall(out)

    def _pump(self) -> None:
        """Receive once and turn what arrived into events (plaintext is buffered)."""
        conn = self._conn
        while True:
            with self._crypto_lock:
                event = conn.next_event()
            if isinstance(event, Data):
                self._plaintext += event.data
                return
            if isinstance(event, HandshakeComplete):
                self._info = event.info
                return
            if isinstance(event, EndOfStream):
                self._eof = True
                return
            self._flush_handshake()
            try:
                chunk = self._sock.recv(_RECV_SIZE)
            except (TimeoutError, BlockingIOError, InterruptedError):
                raise  # nothing was consumed: a later call continues where this one stopped
            except OSError as exc:
                # A reset or failed read: a later recv() might return b"" and pass for a clean EOF; never allow it.
                conn.mark_broken(exc)
                raise
            conn.receive_data(chunk)

    # -- receive side ---------------------------------------------------------------------------------------------

    def recv(self, bufsize: int = 65536) -> bytes:
        """Return up to ``bufsize`` verified plaintext bytes; ``b""`` once the peer closed at a record boundary."""
        if bufsize == 0:
            return b""
        with self._recv_lock:
            while not self._plaintext and not self._eof:
                self._pump()
            data = bytes(self._plaintext[:bufsize])
            del self._plaintext[:bufsize]
            return data

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0) -> int:
        """Like :meth:`socket.socket.recv_into`."""
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view))
        view[: len(data)] = data
        return len(data)

    # -- send side ------------------------------------------------------------------------------------------------

    def sendall(self, data: Buffer) -> None:
        """Protect and send all of ``data`` (records of at most 0xFC00 plaintext bytes)."""
        with self._send_lock:
            with self._crypto_lock:
                wire = self._conn.send(memoryview(data))
            if not wire:
                return
            try:
                self._sock.sendall(wire)
            except BaseException as exc:
                # Part of a record may be out: the peer's sequence state is unknown, so the stream is over.
                self._conn.mark_broken(exc)
                raise

    def send(self, data: Buffer) -> int:
        """Send all of ``data`` (a record is all or nothing); returns its length."""
        self.sendall(data)
        return memoryview(data).nbytes

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        """Half-close: MS-NNS has no close message, so the peer sees EOF at a record boundary (a clean end)."""
        shutdown = getattr(self._sock, "shutdown", None)
        if shutdown is not None:
            shutdown(how)

    def close(self) -> None:
        """Close the stream and the wrapped socket."""
        self._conn.close()
        _close_quietly(self._sock)

    def makefile(self, mode: str = "rb", buffering: int = -1) -> io.BufferedIOBase:
        """A buffered binary file over this socket (``"rb"``, ``"wb"`` or ``"rwb"``)."""
        raw = _RawNegotiateIO(self, mode)
        size = io.DEFAULT_BUFFER_SIZE if buffering < 0 else max(buffering, 1)
        if "r" in mode and "w" in mode:
            return io.BufferedRWPair(raw, raw, size)
        if "w" in mode:
            return io.BufferedWriter(raw, size)
        return io.BufferedReader(raw, size)

    # -- information ------------------------------------------------------------------------------------------

    @property
    def session_info(self) -> SessionInfo:
        """What the handshake negotiated (protocol, protection level, peer identity, ...)."""
        if self._info is None:  # pragma: no cover - construction handshakes first
            raise StreamClosedError("no session: the handshake has not completed")
        return self._info

    def settimeout(self, timeout: float | None) -> None:
        """Set the wrapped socket's timeout (used for every later blocking call)."""
        self._sock.settimeout(timeout)  # type: ignore[attr-defined]

    def gettimeout(self) -> float | None:
        """The wrapped socket's timeout."""
        timeout: float | None = self._sock.gettimeout()  # type: ignore[attr-defined]
        return timeout

    def __enter__(self) -> NegotiateSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NegotiateSocket {self._conn!r}>"


class _RawNegotiateIO(io.RawIOBase):
    """The raw layer under :meth:`NegotiateSocket.makefile`."""

    def __init__(self, sock: NegotiateSocket, mode: str) -> None:
        super().__init__()
        self._nsock = sock
        self._mode = mode

    def readable(self) -> bool:
        return "r" in self._mode

    def writable(self) -> bool:
        return "w" in self._mode

    def readinto(self, buffer: Any) -> int:
        return self._nsock.recv_into(buffer)

    def write(self, data: Any) -> int:
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
    context: SecurityContext | None = None,
    **options: Unpack[ContextOptions],
) -> NegotiateSocket:
    """Connect over TCP and authenticate as a client; the target defaults to ``host/<host>``."""
    options.setdefault("target", f"host/{address[0]}")
    sock = socket.create_connection(address, timeout=timeout)
    return NegotiateSocket.client(sock, context=context, **options)
