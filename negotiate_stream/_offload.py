"""Security-context work that may block, run in a worker thread: the one rule and the one thread for all adapters.

Creating a Kerberos (or SPNEGO-with-Kerberos) context may run a kinit, and each handshake step may fetch a service
ticket: both wait on a KDC, for up to half a minute when it does not answer. :func:`may_block` is the one decision
of whether that can happen; pure NTLM never leaves the process, so its work stays on the caller's thread, where it
is cheaper. Work that may block runs in a worker thread while the handshake deadline keeps running: the async
adapters wait on the loop (:func:`start_thread` for callback code, :func:`run_in_thread` for anyio tasks), the
blocking adapter joins it with the time left (:func:`wait_for_thread`).

Each call gets its own *daemon* thread rather than a pool worker: a thread stuck in a KDC must neither hold back
the loop's shutdown (asyncio's default executor is joined by ``asyncio.run``) nor the interpreter's exit. When the
waiter gave up (deadline, cancellation, closed loop) the late outcome is dropped: on a loop it is handed over with
a thread-safe call, and a loop that has closed meanwhile simply refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

from ._connection import Connection
from ._context import SecurityContext
from ._spnego.build import kerberos_import_error

if TYPE_CHECKING:
    from ._options import ContextOptions

__all__ = [
    "THREAD_NAME",
    "Outcome",
    "connection_or_builder",
    "may_block",
    "run_in_thread",
    "start_thread",
    "wait_for_thread",
]

#: The name of every worker thread started here (tests wait for abandoned ones by it).
THREAD_NAME = "negotiate_stream context"

T = TypeVar("T")

#: Hands a callback to the loop from another thread: ``loop.call_soon_threadsafe`` or trio's ``run_sync_soon``.
Scheduler = Callable[[Callable[[], None]], object]


def may_block(protocol: str) -> bool:
    """Whether creating or stepping a context for ``protocol`` may wait on the network (a KDC).

    True when Kerberos can be attempted: ``"kerberos"``, or ``"negotiate"`` with the ``kerberos`` extra installed
    (pyspnego then tries Kerberos first, kinit included, before it falls back to NTLM). ``"ntlm"``, and
    ``"negotiate"`` without the extra, never leave the process: those stay on the caller's thread. Every adapter
    (asyncio, anyio, blocking sockets) asks this one function.
    """
    return protocol in ("negotiate", "kerberos") and kerberos_import_error() is None


def connection_or_builder(
    server_side: bool, context: SecurityContext | None, options: ContextOptions
) -> Connection | Callable[[], Connection]:
    """The adapters' Connection: built now, or a function that builds it in a worker thread if that :func:`may_block`.

    A client Connection runs its context's first step as it is built, so even a ready ``context`` may reach a KDC
    then. Errors of an immediate build propagate (a bad option fails before any I/O).
    """
    protocol = context.requested_protocol if context is not None else options.get("protocol", "negotiate")

    def build() -> Connection:
        return Connection(context or SecurityContext.create(server_side, **options))

    return build if may_block(protocol) else build()


class Outcome(Generic[T]):
    """What a call in a worker thread produced: its value, or the exception it raised."""

    __slots__ = ("_error", "_value")

    def __init__(self, value: T | None = None, error: BaseException | None = None) -> None:
        self._value = value
        self._error = error

    def unwrap(self) -> T:
        """Return the value, or raise the exception (with the worker's traceback)."""
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # None only for a function that returned None


def start_thread(call: Callable[[], T], deliver: Callable[[Outcome[T]], None], schedule: Scheduler) -> None:
    """Run ``call()`` in a new daemon thread, then ``deliver`` its :class:`Outcome` via ``schedule``.

    With a loop's thread-safe ``call soon`` as ``schedule``, ``deliver`` runs on the loop thread, and never once
    the loop has closed (the outcome is then dropped: nobody waits for it any more). It must itself check whether
    its caller still wants the result.
    """

    def work() -> None:
        try:
            outcome: Outcome[T] = Outcome(call())
        except BaseException as exc:  # everything goes to the waiter: an exception here would be "unhandled"
            outcome = Outcome(error=exc)
        # The loop closed (asyncio) or the run finished (trio) while we worked: nobody waits, drop the outcome.
        with contextlib.suppress(RuntimeError):
            schedule(lambda: deliver(outcome))

    threading.Thread(target=work, name=THREAD_NAME, daemon=True).start()


def wait_for_thread(call: Callable[[], T], timeout: float) -> Outcome[T] | None:
    """Run ``call()`` in a worker thread (as :func:`start_thread`) and block up to ``timeout`` seconds for it.

    Returns its :class:`Outcome`, or ``None`` if it is still running: the thread is then abandoned, and what it
    returns or raises later is dropped. For blocking code, which has no loop to hand the outcome to.
    """
    done = threading.Event()
    outcomes: list[Outcome[T]] = []

    def deliver(outcome: Outcome[T]) -> None:
        outcomes.append(outcome)
        done.set()

    # No loop to schedule on: the worker delivers in its own thread, and the Event hands the outcome over.
    start_thread(call, deliver, lambda callback: callback())
    return outcomes[0] if done.wait(timeout) else None


async def run_in_thread(call: Callable[[], T]) -> T:
    """Return ``call()`` run in a worker thread, from an anyio task (asyncio or trio backend).

    Cancelling the waiting task (a deadline, a cancel scope) abandons the thread: the task resumes at once, and
    whatever the thread returns or raises later is dropped. ``call`` must therefore not own anything the task
    goes on using, or the task must stop using it after a cancellation.
    """
    done = anyio.Event()
    outcomes: list[Outcome[T]] = []

    def deliver(outcome: Outcome[T]) -> None:
        outcomes.append(outcome)
        done.set()

    start_thread(call, deliver, _scheduler())
    await done.wait()
    return outcomes[0].unwrap()


def _scheduler() -> Scheduler:
    """The running loop's thread-safe ``call soon``, for the anyio backend in use."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # no asyncio loop in this thread: the other anyio backend, trio, is running
        import trio  # only imported when trio runs (it is an optional backend)

        return trio.lowlevel.current_trio_token().run_sync_soon
