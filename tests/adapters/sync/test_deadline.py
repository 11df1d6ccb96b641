"""The blocking handshake's deadline: silent and drip-feeding peers, restored timeouts, context steps that block."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from negotiate_stream import Connection, SecurityContext
from negotiate_stream._blocking_handshake import HandshakeDeadline
from negotiate_stream._offload import THREAD_NAME
from negotiate_stream.errors import HandshakeTimeoutError
from negotiate_stream.sync import NegotiateSocket, create_connection
from negotiate_stream.testing import NTLMUsers
from tests.support.streams import (
    BareTap,
    Worker,
    client_options,
    drain_until_closed,
    negotiated_sockets,
    read_frame,
    recv_exactly,
    server_options,
    tcp_pair,
)

T = TypeVar("T")

DRIP_INTERVAL = 0.5
# Scheduling slack on a busy 2-core machine; the deadline itself is what the tests measure.
SLACK = 0.5


def drip(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send ``data`` one byte per DRIP_INTERVAL until done, stopped, or the peer is gone."""
    for byte in data:
        if stop.wait(DRIP_INTERVAL):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback listening socket, closed after the test."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def test_silent_server_is_cut_off_at_the_deadline(listener: socket.socket, ntlm_users: NTLMUsers) -> None:
    """create_connection against a server that never answers raises HandshakeTimeoutError at handshake_timeout."""
    accepted = Worker(lambda: listener.accept()[0])
    started = time.monotonic()
    with pytest.raises(HandshakeTimeoutError) as excinfo:
        create_connection(listener.getsockname(), handshake_timeout=1.0, **client_options(ntlm_users))
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.0 + SLACK, elapsed
    assert isinstance(excinfo.value, TimeoutError)
    assert "within 1.0 s" in str(excinfo.value)
    with accepted.result() as server_end:
        server_end.settimeout(5)
        negotiate = read_frame(server_end)  # the client's first message went out...
        assert negotiate[0] == 0x16
        assert drain_until_closed(server_end) == b""  # ...then it closed: a timeout queues no Error frame


def test_drip_feeding_server_is_cut_off_at_the_deadline(listener: socket.socket, ntlm_users: NTLMUsers) -> None:
    """A server answering one byte every 0.5 s (each under the 1 s socket timeout) is cut off at 2 s."""
    stop = threading.Event()

    def dripping_server() -> None:
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(10)
            server = Connection(SecurityContext.create(True, **server_options(ntlm_users)))
            server.receive_data(read_frame(sock))
            server.next_event()  # a genuine CHALLENGE, dripped
            drip(sock, server.data_to_send(), stop)

    server_thread = Worker(dripping_server)
    started = time.monotonic()
    try:
        with pytest.raises(HandshakeTimeoutError, match="within 2 s"):
            create_connection(listener.getsockname(), timeout=1, handshake_timeout=2, **client_options(ntlm_users))
        elapsed = time.monotonic() - started
        assert 2.0 <= elapsed < 2.0 + SLACK, elapsed
    finally:
        stop.set()
    server_thread.result()


@pytest.mark.parametrize("settable", [True, False], ids=["socket", "recv-sendall-only"])
def test_drip_feeding_client_cannot_hold_a_server(settable: bool, ntlm_users: NTLMUsers) -> None:
    """A client dripping its first message byte by byte is dropped at the deadline (slowloris), socket closed.

    An object without settimeout is checked between reads, so it is cut off by the first byte after the deadline.
    """
    raw_client, raw_server = tcp_pair()
    raw_server.settimeout(1)
    server_end: Any = raw_server if settable else BareTap(raw_server)
    negotiate = Connection(SecurityContext.create(False, **client_options(ntlm_users))).data_to_send()
    stop = threading.Event()
    dripper = Worker(lambda: drip(raw_client, negotiate, stop))
    started = time.monotonic()
    try:
        with pytest.raises(HandshakeTimeoutError, match="within 2 s"):
            NegotiateSocket.server(server_end, handshake_timeout=2, **server_options(ntlm_users))
        elapsed = time.monotonic() - started
        limit = 2.0 + SLACK + (0 if settable else DRIP_INTERVAL)
        assert 2.0 <= elapsed < limit, elapsed
        assert raw_server.fileno() == -1
    finally:
        stop.set()
    dripper.result()
    with raw_client:
        assert b"\x15\x01\x00" not in drain_until_closed(raw_client)  # closed without an Error frame


@pytest.mark.parametrize("caller_timeout", [None, 7.5], ids=["blocking", "7.5s"])
def test_caller_timeout_is_restored_after_the_handshake(caller_timeout: float | None, ntlm_users: NTLMUsers) -> None:
    """The deadline borrows the socket timeout during the handshake and gives the caller's value back."""
    raw_client, raw_server = tcp_pair()
    raw_client.settimeout(caller_timeout)
    raw_server.settimeout(7.5)
    server = Worker(lambda: NegotiateSocket.server(raw_server, handshake_timeout=20, **server_options(ntlm_users)))
    client = NegotiateSocket.client(raw_client, handshake_timeout=20, **client_options(ntlm_users))
    with client, server.result() as server_sock:
        assert client.gettimeout() == caller_timeout
        assert server_sock.gettimeout() == 7.5
        server_sock.sendall(b"after the handshake")
        client.settimeout(10)
        assert recv_exactly(client, 19) == b"after the handshake"


def test_no_deadline_leaves_the_socket_timeout_alone(ntlm_users: NTLMUsers) -> None:
    """handshake_timeout=None never touches the socket's timeout (the handshake is bounded by it alone)."""
    with negotiated_sockets(ntlm_users, handshake_timeout=None) as (client, server, raw):
        assert raw.gettimeout() == server.gettimeout() == 60.0
        client.sendall(b"ok")
        assert recv_exactly(server, 2) == b"ok"


@pytest.fixture
def stuck_step(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Treat every step as a Kerberos one (it may block); the Event releases steps stuck by the test."""
    # Which real steps may block is the adapters' one rule (_offload.may_block, see test_blocking_steps.py); here
    # every step the handshake takes goes to a worker thread, whatever that rule says for NTLM.
    original = HandshakeDeadline.step

    def step(self: HandshakeDeadline, step: Callable[[], T], *, may_block: bool) -> T:
        return original(self, step, may_block=True)

    monkeypatch.setattr(HandshakeDeadline, "step", step)
    release = threading.Event()
    yield release
    release.set()  # let the abandoned worker threads finish


def block_first_step(monkeypatch: pytest.MonkeyPatch, context: SecurityContext, release: threading.Event) -> None:
    """Make the first step of ``context`` hang like a Kerberos step waiting on a KDC that never answers."""
    original = context.step
    calls = 0

    def step(token: bytes | None = None) -> bytes | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            release.wait()
        return original(token)

    monkeypatch.setattr(context, "step", step)


def handshake_workers() -> set[threading.Thread]:
    """The worker threads currently running a context step."""
    return {t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()}


def test_blocking_first_client_step_is_bounded(
    stuck_step: threading.Event, monkeypatch: pytest.MonkeyPatch, ntlm_users: NTLMUsers
) -> None:
    """A client step stuck on a KDC runs in a worker: HandshakeTimeoutError at the deadline, socket closed."""
    raw_client, raw_server = tcp_pair()
    context = SecurityContext.create(False, **client_options(ntlm_users))
    block_first_step(monkeypatch, context, stuck_step)
    before = handshake_workers()
    started = time.monotonic()
    with raw_server, pytest.raises(HandshakeTimeoutError, match="within 1 s"):
        NegotiateSocket.client(raw_client, context=context, handshake_timeout=1)
    assert 1.0 <= time.monotonic() - started < 1.0 + SLACK
    assert raw_client.fileno() == -1
    assert len(handshake_workers() - before) == 1  # abandoned, still blocked; its late result is dropped


def test_blocking_server_step_is_bounded(
    stuck_step: threading.Event, monkeypatch: pytest.MonkeyPatch, ntlm_users: NTLMUsers
) -> None:
    """A server step stuck on Kerberos is cut off at the deadline even though every read completed."""
    raw_client, raw_server = tcp_pair()
    context = SecurityContext.create(True, **{**server_options(ntlm_users), "protocol": "negotiate"})
    block_first_step(monkeypatch, context, stuck_step)
    with raw_client:
        raw_client.sendall(Connection(SecurityContext.create(False, **client_options(ntlm_users))).data_to_send())
        started = time.monotonic()
        with pytest.raises(HandshakeTimeoutError, match="within 1 s"):
            NegotiateSocket.server(raw_server, context=context, handshake_timeout=1)
        assert 1.0 <= time.monotonic() - started < 1.0 + SLACK
        assert raw_server.fileno() == -1
        stuck_step.set()
        assert drain_until_closed(raw_client) == b""  # nothing from the abandoned step reaches the wire


def test_blocking_steps_still_complete_within_the_deadline(stuck_step: threading.Event, ntlm_users: NTLMUsers) -> None:
    """Steps run in workers (as for Kerberos) still complete a normal handshake, and the data flows."""
    stuck_step.set()
    with negotiated_sockets(ntlm_users, handshake_timeout=10) as (client, server, _):
        client.sendall(b"through worker steps")
        assert recv_exactly(server, 20) == b"through worker steps"
