"""The blocking adapter's handshake, bounded by one monotonic deadline (used by :mod:`negotiate_stream.sync`).

A socket timeout bounds one ``recv`` or ``sendall``, so on its own it cannot stop a peer that drips one byte per
timeout period: every read succeeds and the handshake never ends (a slowloris against a blocking server).
:class:`HandshakeDeadline` bounds the whole handshake instead:

* **Socket I/O.** Before each ``recv``/``sendall`` the wrapped socket's timeout is set to the time left, or to the
  caller's own timeout if that is shorter (it still bounds each operation, as before); the caller's timeout is put
  back when the handshake ends. Either expiry raises :class:`HandshakeTimeoutError`.
* **Objects that are not sockets** (only ``recv``/``sendall``, no ``settimeout``/``gettimeout``): a blocked call
  cannot be interrupted from outside, so the deadline is checked before every call and after every context step.
  A peer that drips bytes is cut off by the first call after the deadline; a silent one blocks as long as the
  object's own ``recv`` does.
* **Context steps.** An NTLM step is local computation and runs inline. A step that may wait on the network
  (Kerberos, or SPNEGO that may pick Kerberos, whose steps and password ``kinit`` talk to a KDC: the adapters'
  one rule, :func:`~negotiate_stream._offload.may_block`) runs in the async adapters' daemon worker thread, joined
  with the time left; on expiry :class:`HandshakeTimeoutError` is raised at once and the thread's late result is
  dropped with it (the Connection it mutates is never used again).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ._events import SessionInfo
from ._offload import wait_for_thread
from ._options import RECEIVE_SIZE
from ._stream_engine import PEER_LOSS_ERRORS, error_frame, handshake_step, peer_lost
from .errors import ConnectionLostError, HandshakeTimeoutError, NegotiateError

if TYPE_CHECKING:
    from ._connection import Connection
    from .sync import SocketLike

__all__ = ["HandshakeDeadline", "run_handshake"]

T = TypeVar("T")

# Longest a failing handshake spends sending the peer its MS-NNS Error frame (as the anyio adapter).
_ERROR_FRAME_TIMEOUT = 5.0


class HandshakeDeadline:
    """The deadline of one handshake over ``sock``: ``limit`` seconds from now (``None``: none).

    Reads the caller's socket timeout now; call :meth:`restore` when the handshake ends, whatever the outcome.
    """

    def __init__(self, sock: SocketLike, limit: float | None) -> None:
        self._limit = limit
        self._expires = None if limit is None else time.monotonic() + limit
        self._settimeout: Callable[[float | None], object] | None = getattr(sock, "settimeout", None)
        gettimeout: Callable[[], float | None] | None = getattr(sock, "gettimeout", None)
        if gettimeout is None:
            self._settimeout = None  # without the caller's value there is nothing to restore: leave it alone
        self._caller_timeout = gettimeout() if self._settimeout is not None and gettimeout is not None else None
        self._armed = self._caller_timeout

    def _left(self) -> float | None:
        """Seconds left; raises :class:`HandshakeTimeoutError` once the deadline has passed."""
        if self._expires is None:
            return None
        left = self._expires - time.monotonic()
        if left <= 0:
            raise self._expired()
        return left

    def _expired(self, *, in_step: bool = False) -> HandshakeTimeoutError:
        why = (
            "a Kerberos step was still waiting for the KDC; check that the KDC is reachable"
            if in_step
            else "the peer is slow, silent or does not speak MS-NNS; check the peer"
        )
        return HandshakeTimeoutError(
            f"the handshake did not complete within {self._limit} s: {why}, or raise handshake_timeout"
        )

    def _arm(self, timeout: float | None) -> None:
        if self._settimeout is not None and timeout != self._armed:
            self._settimeout(timeout)
            self._armed = timeout

    def io(self, operation: Callable[[], T]) -> T:
        """Run one blocking socket call within the deadline; its timeout becomes :class:`HandshakeTimeoutError`."""
        left = self._left()
        caller = self._caller_timeout
        # Only a timeout the deadline armed is the deadline's; an object without settimeout timed out on its own.
        by_deadline = self._settimeout is not None and left is not None and (caller is None or left < caller)
        self._arm(left if by_deadline else caller)
        try:
            return operation()
        except TimeoutError as exc:
            if isinstance(exc, NegotiateError):
                raise
            if by_deadline:
                raise self._expired() from exc
            raise HandshakeTimeoutError(
                "a handshake read or write did not complete within the socket's timeout: the peer is slow, silent "
                "or does not speak MS-NNS; raise the timeout (settimeout) or check the peer"
            ) from exc

    def step(self, step: Callable[[], T], *, may_block: bool) -> T:
        """Run a context step: inline, or if it ``may_block`` (Kerberos) in a worker joined with the time left."""
        left = self._left()
        if not may_block or left is None:
            result = step()
        else:
            outcome = wait_for_thread(step, left)
            if outcome is None:
                # The daemon thread finishes (or stays blocked) on its own; nothing ever reads its result.
                raise self._expired(in_step=True)
            result = outcome.unwrap()
        self._left()  # an object that cannot time out its reads is at least stopped here
        return result

    def send_error_frame(self, sock: SocketLike, frame: bytes) -> None:
        """Best effort: tell the peer why the handshake failed, within a few seconds; never raises OSError."""
        caller = self._caller_timeout
        self._arm(_ERROR_FRAME_TIMEOUT if caller is None else min(caller, _ERROR_FRAME_TIMEOUT))
        with contextlib.suppress(OSError):
            sock.sendall(frame)

    def restore(self) -> None:
        """Give the socket back the caller's timeout (never raises OSError: the socket may be dead)."""
        with contextlib.suppress(OSError):
            self._arm(self._caller_timeout)


def run_handshake(sock: SocketLike, conn: Connection, deadline: HandshakeDeadline, *, kerberos: bool) -> SessionInfo:
    """Drive the handshake of ``conn`` over ``sock`` within ``deadline``; return the negotiated session.

    ``kerberos``: whether steps may block on a KDC (:func:`~negotiate_stream._offload.may_block`). Raises the
    Connection's typed errors (after sending the peer the Error frame they queued), :class:`HandshakeTimeoutError`,
    and :class:`TruncatedStreamError` (``__cause__``: the OS error) when the peer resets the connection. The
    caller closes ``sock`` on failure and calls ``deadline.restore()`` in any case.
    """
    try:
        while True:
            _flush(sock, conn, deadline)
            info = deadline.step(
                lambda: handshake_step(conn), may_block=kerberos and conn.context.negotiated_protocol != "ntlm"
            )
            _flush(sock, conn, deadline)  # replies, and the server's final HandshakeDone
            if info is not None:
                return info
            try:
                chunk = deadline.io(lambda: sock.recv(RECEIVE_SIZE))
            except PEER_LOSS_ERRORS as exc:
                raise _lost(conn, exc) from exc
            conn.receive_data(chunk)
    except HandshakeTimeoutError:
        # No Error frame (as on asyncio and anyio), and the Connection stays untouched: a worker thread may still
        # be inside it.
        raise
    except NegotiateError:
        # A failure of ours (bad credentials, garbage, an EOF) queued an MS-NNS Error frame telling the peer why
        # (a peer that half-closed still reads it); failing to deliver it must not hide the real error. After a
        # reset nothing is queued: the peer is gone.
        out = error_frame(conn)
        if out:
            deadline.send_error_frame(sock, out)
        raise


def _flush(sock: SocketLike, conn: Connection, deadline: HandshakeDeadline) -> None:
    out = conn.data_to_send()
    if out:
        try:
            deadline.io(lambda: sock.sendall(out))
        except PEER_LOSS_ERRORS as exc:
            raise _lost(conn, exc) from exc


def _lost(conn: Connection, exc: OSError) -> ConnectionLostError:
    lost = peer_lost(exc, handshake=True)
    conn.mark_broken(lost)
    return lost
