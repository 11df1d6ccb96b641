"""anyio (asyncio and trio): nothing that may block runs on the event loop; the deadline holds while a KDC hangs.

The anyio twin of tests/adapters/asyncio/test_blocking_steps.py: a black-hole KDC makes pyspnego's kinit hang, and
``connect`` / ``NegotiateStream.wrap`` must still raise HandshakeTimeoutError on time while a ticker task on the
same loop keeps ticking; the abandoned thread's late result is dropped. Pure NTLM stays on the loop thread.
"""

from __future__ import annotations

import threading
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute

from negotiate_stream import Connection, HandshakeTimeoutError, SecurityContext
from negotiate_stream.anyio_ import NegotiateListener, NegotiateStream, connect
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import client_options, server_options
from tests.support.core import requires_gssapi
from tests.support.kdc import BlackHoleKDC, SlowSteps, black_hole_credentials, settle_abandoned_threads, ticker
from tests.support.streams import plain_pair, receive_exactly

pytestmark = pytest.mark.anyio

#: The deadline the issue measured against (the KDC hangs for ~27 s) and the bound on the caller's wait.
DEADLINE, ON_TIME = 2.0, 3.0
#: The longest the loop may go without running the ticker.
MAX_STALL = 0.1


@requires_gssapi
@pytest.mark.parametrize(
    ("transport", "protocol", "late_result"),
    [
        ("memory", "negotiate", "reaches the loop"),
        ("memory", "kerberos", "meets a closed loop"),
        ("tcp", "negotiate", "meets a closed loop"),
    ],
)
async def test_handshake_deadline_holds_while_the_kdc_hangs(
    transport: str, protocol: str, late_result: str, black_hole_kdc: BlackHoleKDC, anyio_backend: str
) -> None:
    """A kinit hanging on the KDC: HandshakeTimeoutError within 3 s, no loop stall over 100 ms, late result dropped."""
    # The abandoned thread finishes once the KDC closes: its result either reaches the loop (waited for here) or,
    # after the test, a closed loop (asyncio) or a finished run (trio); both are dropped without a trace.

    options: dict[str, Any] = {"credentials": black_hole_credentials(), "protocol": protocol}
    stalls: list[float] = []
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        tg.start_soon(ticker, stalls)
        if transport == "tcp":  # connect(): TCP to a listener that never accepts
            tcp = await stack.enter_async_context(await anyio.create_tcp_listener(local_host="127.0.0.1"))
            port = tcp.extra(SocketAttribute.local_port)
            attempt = connect("127.0.0.1", port, handshake_timeout=DEADLINE, **options)
        else:  # wrap(): over an in-memory pair whose other end only listens
            client_end, server_end = await stack.enter_async_context(plain_pair("memory"))
            attempt = NegotiateStream.wrap(client_end, handshake_timeout=DEADLINE, **options)
        start = time.monotonic()
        with pytest.raises(HandshakeTimeoutError, match="waiting for the KDC"):
            await attempt
        elapsed = time.monotonic() - start
        if late_result == "reaches the loop":  # release the kinit and let the thread's result reach the loop
            black_hole_kdc.close()
            await settle_abandoned_threads()
        if transport == "memory":  # the late context never wrote its first token to the closed stream
            with pytest.raises(anyio.EndOfStream):
                await server_end.receive()
        tg.cancel_scope.cancel()
    print(f"\n{anyio_backend}/{transport}/{protocol}: timeout after {elapsed:.2f} s, worst stall {max(stalls):.4f} s")
    assert DEADLINE <= elapsed < ON_TIME
    assert max(stalls) < MAX_STALL, f"the loop stalled for {max(stalls):.3f} s"


async def echo_once(stream: NegotiateStream) -> None:
    """Echo one message, then close."""
    async with stream:
        await stream.send(await stream.receive())


@requires_gssapi
async def test_slow_negotiate_steps_run_off_the_loop(slow_kdc_steps: SlowSteps, ntlm_users: NTLMUsers) -> None:
    """Negotiate steps that may reach a KDC (here: slowed by 0.3 s) run in worker threads; the session still works."""
    stalls: list[float] = []
    server_side = {**server_options(ntlm_users), "protocol": "negotiate"}
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as tcp, anyio.create_task_group() as tg:
        port = tcp.extra(SocketAttribute.local_port)
        tg.start_soon(ticker, stalls)
        tg.start_soon(NegotiateListener(tcp, **server_side).serve, echo_once)
        async with await connect("127.0.0.1", port, **client_options(ntlm_users, protocol="negotiate")) as stream:
            await stream.send(b"ping")
            assert await receive_exactly(stream, 4) == b"ping"
            assert stream.session_info.protocol == "ntlm"  # no KDC for the test realm
        tg.cancel_scope.cancel()
    assert slow_kdc_steps.on_worker and all(slow_kdc_steps.on_worker), slow_kdc_steps.on_worker
    assert max(stalls) < MAX_STALL, f"the loop stalled for {max(stalls):.3f} s"


async def test_ntlm_steps_stay_on_the_loop_thread(step_threads: set[threading.Thread], ntlm_users: NTLMUsers) -> None:
    """protocol="ntlm" never reaches a KDC: no worker thread, every step on the loop thread (it is cheaper)."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as tcp, anyio.create_task_group() as tg:
        tg.start_soon(NegotiateListener(tcp, **server_options(ntlm_users)).serve, echo_once)
        port = tcp.extra(SocketAttribute.local_port)
        async with await connect("127.0.0.1", port, **client_options(ntlm_users)) as stream:
            await stream.send(b"ping")
            assert await receive_exactly(stream, 4) == b"ping"
        tg.cancel_scope.cancel()
    assert step_threads == {threading.current_thread()}


@requires_gssapi
async def test_a_step_outliving_the_deadline_is_dropped(slow_kdc_steps: SlowSteps, ntlm_users: NTLMUsers) -> None:
    """A server step stuck past handshake_timeout: HandshakeTimeoutError on time; the late step touches nothing."""
    slow_kdc_steps.delay = 1.0
    async with plain_pair("memory") as (client_end, server_end):
        client = Connection(SecurityContext.create(False, **client_options(ntlm_users)))
        await client_end.send(client.data_to_send())  # the server's first step will sleep in its worker thread
        start = anyio.current_time()
        with pytest.raises(HandshakeTimeoutError, match="waiting for the KDC"):
            await NegotiateStream.wrap(
                server_end,
                server_side=True,
                handshake_timeout=0.3,
                **{**server_options(ntlm_users), "protocol": "negotiate"},
            )
        assert anyio.current_time() - start < 0.9
        await settle_abandoned_threads()
        with pytest.raises(anyio.EndOfStream):  # nothing was sent: no Error frame read from a Connection in use
            await client_end.receive()
    assert slow_kdc_steps.on_worker == [True]
