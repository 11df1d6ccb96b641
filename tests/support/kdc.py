"""A black-hole KDC: a Kerberos realm whose KDC accepts every connection and never answers.

MIT Kerberos retries such a KDC for about half a minute before it gives up (27 s measured for a kinit), which is
what a slow or unreachable KDC does to a real client. The adapters must run that wait in a worker thread and keep
their handshake deadline; the tests in ``tests/adapters/*/test_blocking_steps.py`` prove it with a loop ticker.

The KDC is a UDP socket that never reads and a TCP listener that never accepts (the kernel completes the
connection, nobody answers), both on loopback and named in a generated ``krb5.conf``. Closing it refuses the
datagrams and resets the queued connections, so a kinit still waiting on it fails within seconds: the threads
the tests abandoned finish soon after (:func:`settle_abandoned_threads` on a loop, :func:`join_abandoned_threads`
in blocking code), and their late results are dropped.

:func:`slow_kdc_steps` simulates the other blocking call, a handshake step that waits on a KDC for a ticket (which
needs a real TGT to reproduce), by slowing exactly the steps that could do so.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from negotiate_stream import Credentials, SecurityContext
from negotiate_stream._offload import THREAD_NAME

__all__ = [
    "REALM",
    "TICK",
    "BlackHoleKDC",
    "SlowSteps",
    "black_hole_credentials",
    "black_hole_kdc",
    "join_abandoned_threads",
    "settle_abandoned_threads",
    "slow_kdc_steps",
    "ticker",
]

REALM = "BLACKHOLE.TEST"
#: The loop tickers' period: a stall is a tick that came later than this.
TICK = 0.01


class BlackHoleKDC:
    """The silent KDC of realm :data:`REALM` on loopback, and the ``krb5.conf`` that points there (:attr:`config`)."""

    def __init__(self, directory: Path) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp = socket.create_server(("127.0.0.1", 0), backlog=64)
        udp_port, tcp_port = self.udp.getsockname()[1], self.tcp.getsockname()[1]
        #: The generated krb5.conf: no DNS, the realm's KDC is the black hole (over UDP and over TCP).
        self.config = directory / "krb5.conf"
        self.config.write_text(
            "[libdefaults]\n"
            f" default_realm = {REALM}\n"
            " dns_lookup_kdc = false\n"
            " dns_lookup_realm = false\n"
            "[realms]\n"
            f" {REALM} = {{\n"
            f"  kdc = 127.0.0.1:{udp_port}\n"
            f"  kdc = tcp/127.0.0.1:{tcp_port}\n"
            " }\n"
        )

    def close(self) -> None:
        """Stop swallowing requests: a kinit still waiting on this KDC now fails quickly."""
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def black_hole_kdc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BlackHoleKDC]:
    """A :class:`BlackHoleKDC` for this test, with ``KRB5_CONFIG`` (and a private ticket cache) pointing at it."""
    kdc = BlackHoleKDC(tmp_path)
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.config))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'ccache'}")  # a kinit never touches the user's cache
    try:
        yield kdc
    finally:
        kdc.close()


def black_hole_credentials() -> Credentials:
    """A user of the black-hole realm, with a password: pyspnego runs a kinit for it before the first token."""
    return Credentials(username="alice", password="never-checked", domain=REALM)


async def ticker(stalls: list[float]) -> None:
    """Tick every :data:`TICK` seconds until cancelled, appending how late each tick came (any anyio backend)."""
    last = anyio.current_time()
    while True:
        await anyio.sleep(TICK)
        now = anyio.current_time()
        stalls.append(now - last - TICK)
        last = now


def _alive(name: str) -> bool:
    """Whether a thread called ``name`` is alive."""
    return any(thread.name == name for thread in threading.enumerate())


async def settle_abandoned_threads(name: str = THREAD_NAME, timeout: float = 10.0) -> None:
    """Wait on the loop until no thread called ``name`` is alive (those a timed-out handshake abandoned).

    Then give the loop a moment to process (or drop) their late results, which they handed to it.
    """
    deadline = anyio.current_time() + timeout
    while _alive(name):
        assert anyio.current_time() < deadline, f"a {name!r} thread is still alive after {timeout} s"
        await anyio.sleep(0.02)
    await anyio.sleep(0.1)  # the results were handed to the loop: let those callbacks run


def join_abandoned_threads(name: str = THREAD_NAME, timeout: float = 10.0) -> None:
    """Block until no thread called ``name`` is alive: the blocking twin of :func:`settle_abandoned_threads`.

    A blocking handshake's worker drops its late result itself, so there is nothing to process afterwards.
    """
    deadline = time.monotonic() + timeout
    while _alive(name):
        assert time.monotonic() < deadline, f"a {name!r} thread is still alive after {timeout} s"
        time.sleep(0.02)


class SlowSteps:
    """What :func:`slow_kdc_steps` records: for each slowed step, whether it ran off the loop thread."""

    def __init__(self, loop_thread: threading.Thread) -> None:
        self.loop_thread = loop_thread
        #: Seconds each step that may still pick Kerberos sleeps (as a KDC round trip would).
        self.delay = 0.3
        #: One entry per slowed step: True if it ran on a worker thread.
        self.on_worker: list[bool] = []


@pytest.fixture
def slow_kdc_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowSteps]:
    """Make every context step that may still pick Kerberos sleep :attr:`SlowSteps.delay` first.

    A step of a context that asked for ``"negotiate"`` or ``"kerberos"`` and has not settled on NTLM is one that
    may wait on a KDC in real life (a service ticket); the adapters must run exactly those off the loop thread.
    """
    original = SecurityContext.step
    slow = SlowSteps(threading.current_thread())

    def step(self: SecurityContext, in_token: bytes | None = None) -> bytes | None:
        if self.requested_protocol != "ntlm" and self.negotiated_protocol != "ntlm":
            slow.on_worker.append(threading.current_thread() is not slow.loop_thread)
            time.sleep(slow.delay)
        return original(self, in_token)

    monkeypatch.setattr(SecurityContext, "step", step)
    yield slow
