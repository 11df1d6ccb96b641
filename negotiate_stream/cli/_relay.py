"""Moving plaintext between asyncio streams (echo, two-way relay), bounded by an optional idle timeout on what the
protected client sends, and running a listener until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass

from .._framing import nns
from ..errors import IdleTimeoutError

__all__ = ["RELAY_CHUNK", "Counters", "echo", "relay", "serve_until_stopped"]

#: Bytes read per relay step: four full MS-NNS records, so one write protects and sends several records at once.
RELAY_CHUNK = 4 * nns.MAX_PLAINTEXT_PER_RECORD


@dataclass
class Counters:
    """Bytes relayed in each direction (``up``: towards the protected peer or the forward target)."""

    up: int = 0
    down: int = 0

    def count_up(self, n: int) -> None:
        """Add ``n`` bytes to ``up``."""
        self.up += n

    def count_down(self, n: int) -> None:
        """Add ``n`` bytes to ``down``."""
        self.down += n

    def count_echoed(self, n: int) -> None:
        """Add ``n`` bytes to both: received from the peer and sent back to it."""
        self.up += n
        self.down += n


async def _read(reader: asyncio.StreamReader, idle_timeout: float | None) -> bytes:
    """The next chunk of ``reader`` (``b""`` at EOF); the library's :class:`IdleTimeoutError` if none comes in
    ``idle_timeout`` (one class for "the peer went idle", whichever layer noticed it)."""
    if not idle_timeout:
        return await reader.read(RELAY_CHUNK)
    # A protected reader returns only the plaintext of complete, verified records: a peer that stops halfway
    # through a record (its partial record held by the library) times out here just like a silent one.
    # Cancelling a StreamReader.read() on timeout loses nothing it had buffered, and the connection closes anyway.
    try:
        return await asyncio.wait_for(reader.read(RELAY_CHUNK), idle_timeout)
    except asyncio.TimeoutError:
        raise IdleTimeoutError(f"no data from the client for {idle_timeout:g} s (--idle-timeout)") from None


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    count: Callable[[int], None],
    idle_timeout: float | None = None,
) -> None:
    while data := await _read(reader, idle_timeout):
        writer.write(data)
        count(len(data))
        await writer.drain()
    # Propagate the half-close: the far side sees EOF at a record boundary, a clean end of stream.
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def echo(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counters: Counters, idle_timeout: float | None = None
) -> None:
    """Send everything read back to the same peer until EOF, half-close, then close; counts each byte both ways
    (``counters.up`` as received, ``counters.down`` as sent back).

    With ``idle_timeout`` (seconds), a wait of that long for the next data raises :class:`IdleTimeoutError`.
    """
    try:
        await _pump(reader, writer, counters.count_echoed, idle_timeout)
    finally:
        writer.close()


async def relay(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    counters: Counters,
    idle_timeout: float | None = None,
) -> None:
    """Copy a -> b and b -> a until both directions reached EOF; half-closes are passed on; closes both.

    The first failure in either direction (a tampered record, a reset) stops both and is raised. With
    ``idle_timeout`` (seconds), ``a`` (the protected client) must send data at least that often until it
    half-closes, else :class:`IdleTimeoutError` is raised: what ``b`` sends does not count, so a client that
    stalls mid-record is closed even while the service keeps talking to it.
    """
    tasks = [
        asyncio.ensure_future(_pump(a[0], b[1], counters.count_up, idle_timeout)),
        asyncio.ensure_future(_pump(b[0], a[1], counters.count_down)),
    ]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        for _, writer in (a, b):
            writer.close()


async def serve_until_stopped(server: asyncio.Server, active: set[asyncio.Task[None]]) -> None:
    """Wait for SIGINT or SIGTERM, then stop accepting, cancel the connection handlers in ``active`` and wait
    for them, so that every connection is reported before the command reports that it stopped."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        for task in list(active):
            task.cancel()
        await asyncio.gather(*active, return_exceptions=True)
        await server.wait_closed()
