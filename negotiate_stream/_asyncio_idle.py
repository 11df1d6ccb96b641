"""The clocks of the asyncio adapter: :class:`IdleTimer` notices an authenticated peer that stopped sending.

Used by :class:`~._asyncio_protocol.NegotiateProtocol` when it is given an ``idle_timeout`` (``start_server``
passes its own): the protocol calls :meth:`IdleTimer.record` for every record it delivers, and the timer calls
back with the :class:`IdleTimeoutError` to report once no record arrived for the whole timeout. The protocol's
handshake deadline reports :func:`handshake_timeout_error`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .errors import HandshakeTimeoutError, IdleTimeoutError

__all__ = ["IdleTimer", "handshake_timeout_error"]


def handshake_timeout_error(timeout: float | None, *, waiting_for_kdc: bool) -> HandshakeTimeoutError:
    """The error of a handshake that missed its deadline (``waiting_for_kdc``: a worker thread still waits)."""
    why = (
        "a worker thread is still waiting for the KDC; check that the KDC is reachable"
        if waiting_for_kdc
        else "the peer is silent or too slow; check that it speaks MS-NNS (NegotiateStream)"
    )
    return HandshakeTimeoutError(f"the handshake did not complete within {timeout} s: {why} or raise handshake_timeout")


class IdleTimer:
    """Call ``on_idle(error)`` once no record arrived for ``timeout`` seconds while the app was reading.

    One loop timer per idle period, not one per record: :meth:`record` only stamps the time (cheap on the hot
    path), and the timer re-arms itself for the time left when it finds a newer stamp. While the app has paused
    reading nothing can arrive, and the peer is not to blame, so the clock restarts when it reads again
    (:meth:`resume`).
    """

    __slots__ = ("_handle", "_last", "_loop", "_on_idle", "paused", "timeout")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float, on_idle: Callable[[IdleTimeoutError], None]
    ) -> None:
        """Prepare the timer; :meth:`start` arms it."""
        self._loop = loop
        self._on_idle = on_idle
        self._handle: asyncio.TimerHandle | None = None
        self._last = 0.0
        #: Seconds without a record before ``on_idle`` is called.
        self.timeout = timeout
        #: True while the app has paused reading (set by :meth:`pause` / :meth:`resume`).
        self.paused = False

    def start(self) -> None:
        """Start the clock now (when the handshake completed)."""
        self._last = self._loop.time()
        self._handle = self._loop.call_at(self._last + self.timeout, self._fire)

    def record(self) -> None:
        """A record arrived: the idle period starts again."""
        self._last = self._loop.time()

    def pause(self) -> None:
        """The app paused reading: stop counting until :meth:`resume`."""
        self.paused = True

    def resume(self) -> None:
        """The app reads again: the idle period starts now."""
        self.paused = False
        self._last = self._loop.time()

    def cancel(self) -> None:
        """Stop for good (the connection closed, or the peer ended its stream)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        now = self._loop.time()
        if self.paused:
            self._last = now
        expires = self._last + self.timeout
        if now < expires:
            self._handle = self._loop.call_at(expires, self._fire)
            return
        self._handle = None
        self._on_idle(
            IdleTimeoutError(
                f"no record arrived from the peer for {self.timeout} s (idle_timeout): the connection was closed; "
                "the peer is silent or gone"
            )
        )
