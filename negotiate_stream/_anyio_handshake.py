"""The anyio adapter's handshake (asyncio and trio): one deadline over the context's creation, steps and I/O.

:func:`negotiate` is what :meth:`negotiate_stream.anyio_.NegotiateStream.wrap` runs. The deadline starts before
the security context is built: building a Kerberos client context may run a kinit against a KDC, and each step of
a context that may pick Kerberos may fetch a ticket, so that work runs in a worker thread
(:func:`._offload.run_in_thread`) while the deadline keeps running on the loop. When the deadline passes first,
the thread is abandoned with the Connection it holds: nothing touches that Connection again (no Error frame is
read from it), and the thread's late result is dropped. Pure NTLM stays on the loop thread (:func:`may_block`).

A peer that vanishes during the handshake - an EOF, a reset, a broken pipe (anyio's ``BrokenResourceError``) -
is a :class:`TruncatedStreamError`, whichever way its close arrived; the transport error is its ``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import anyio
from anyio.abc import ByteStream

from ._connection import Connection
from ._context import SecurityContext
from ._events import SessionInfo
from ._offload import connection_or_builder, may_block, run_in_thread
from ._options import RECEIVE_SIZE
from ._stream_engine import PEER_LOSS_ERRORS, error_frame, handshake_step, peer_lost
from .errors import HandshakeTimeoutError

if TYPE_CHECKING:
    from ._options import ContextOptions

__all__ = ["PEER_LOSS", "negotiate"]

T = TypeVar("T")

#: What an anyio transport raises when the peer went away: anyio's own error, or the OS error of a raw stream.
PEER_LOSS: tuple[type[BaseException], ...] = (anyio.BrokenResourceError, *PEER_LOSS_ERRORS)

# How long a failing handshake may spend telling the peer why (the Error frame) before the transport is closed.
_ERROR_FRAME_TIMEOUT = 5.0


async def negotiate(
    stream: ByteStream,
    *,
    server_side: bool,
    handshake_timeout: float | None,
    context: SecurityContext | None,
    options: ContextOptions,
) -> tuple[Connection, SessionInfo]:
    """Authenticate over ``stream`` within ``handshake_timeout`` seconds; return the Connection and its session.

    The Connection is built from ``context``, else from ``server_side`` and ``options``. On failure the MS-NNS
    Error frame (if the Connection queued one) is sent, ``stream`` is closed and the typed error raised.
    """
    run = _Handshake(stream)
    try:
        with anyio.move_on_after(handshake_timeout) as scope:
            info = await run.run(server_side, context, options)
        if scope.cancelled_caught:
            why = (
                "a worker thread is still waiting for the KDC; check that the KDC is reachable or raise "
                "handshake_timeout"
                if run.in_thread
                else "the peer is slow, silent or does not speak MS-NNS; raise handshake_timeout or check the peer"
            )
            raise HandshakeTimeoutError(f"the handshake did not complete within {handshake_timeout} s: {why}")
    except BaseException:
        await run.abort()
        raise
    assert run.connection is not None
    return run.connection, info


class _Handshake:
    """One handshake over ``stream``: the Connection once built, and whether a worker thread holds it now."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.connection: Connection | None = None
        #: A worker thread holds the Connection (set until it reports back; still set once abandoned).
        self.in_thread = False

    async def run(self, server_side: bool, context: SecurityContext | None, options: ContextOptions) -> SessionInfo:
        made = connection_or_builder(server_side, context, options)
        conn = self.connection = made if isinstance(made, Connection) else await self._in_thread(made)
        kerberos = may_block(conn.context.requested_protocol)
        while True:
            await self._send_pending(conn)
            # Only a step with bytes to parse reaches the context; once the session is NTLM none can block.
            if kerberos and conn.buffered and conn.context.negotiated_protocol != "ntlm":
                info = await self._in_thread(lambda: handshake_step(conn))
            else:
                info = handshake_step(conn)
            await self._send_pending(conn)  # replies, and the server's final HandshakeDone
            if info is not None:
                return info
            try:
                chunk = await self.stream.receive(RECEIVE_SIZE)
            except anyio.EndOfStream:
                chunk = b""
            except PEER_LOSS as exc:
                raise peer_lost(exc, handshake=True) from exc
            conn.receive_data(chunk)

    async def _in_thread(self, call: Callable[[], T]) -> T:
        self.in_thread = True
        try:
            result = await run_in_thread(call)
        except anyio.get_cancelled_exc_class():
            raise  # abandoned: the thread may still be inside the Connection, so in_thread stays set
        except BaseException:
            self.in_thread = False
            raise
        self.in_thread = False
        return result

    async def _send_pending(self, conn: Connection) -> None:
        out = conn.data_to_send()
        if out:
            try:
                await self.stream.send(out)
            except PEER_LOSS as exc:
                raise peer_lost(exc, handshake=True) from exc

    async def abort(self) -> None:
        """Tell the peer why (the queued MS-NNS Error frame, if any), then close the stream; never raises."""
        conn = self.connection
        out = error_frame(conn) if conn is not None and not self.in_thread else b""
        with anyio.CancelScope(shield=True):
            if out:
                with anyio.move_on_after(_ERROR_FRAME_TIMEOUT), contextlib.suppress(Exception):
                    await self.stream.send(out)
            with contextlib.suppress(Exception):
                await self.stream.aclose()
