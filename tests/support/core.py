"""Tests of the sans-I/O core (codecs, SecurityContext, Connection), shared helpers.

Helpers here drive real pyspnego NTLM contexts through :mod:`negotiate_stream.testing`; nothing is mocked.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, TypeVar

import pytest

from negotiate_stream import (
    NEED_DATA,
    BrokenStreamError,
    Connection,
    Data,
    EndOfStream,
    Event,
    HandshakeComplete,
    HandshakeError,
    NegotiateError,
    SecurityContext,
    State,
)
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake


def _gssapi_importable() -> bool:
    # The same test pyspnego makes before it offers Kerberos: the module must import, not merely be on disk.
    try:
        importlib.import_module("gssapi")
    except ImportError:
        return False
    return True


#: Whether python-gssapi (the ``kerberos`` extra) is installed, i.e. whether Kerberos can run at all.
HAS_GSSAPI = _gssapi_importable()

#: Why a ``kerberos``-marked test is skipped on a machine without python-gssapi.
GSSAPI_MISSING = "needs the 'kerberos' extra (python-gssapi): pip install 'negotiate-stream[kerberos]'"

#: Marker for a case that only means something when Kerberos can run (a fresh install has no python-gssapi):
#: tests/conftest.py skips it with :data:`GSSAPI_MISSING` there, and ``.ci/run`` selects every such test with
#: ``-m kerberos`` again once the interop peers (python-gssapi included) are installed.
requires_gssapi = pytest.mark.kerberos


def drain(conn: Connection) -> list[Event]:
    """Call ``next_event()`` until NEED_DATA or EndOfStream; return the events (errors propagate)."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        assert isinstance(event, HandshakeComplete | Data | EndOfStream), event
        events.append(event)
        if isinstance(event, EndOfStream):
            return events


def feed(conn: Connection, wire: bytes, chunk: int | None = None) -> list[Event]:
    """Feed ``wire`` to ``conn`` in chunks of ``chunk`` bytes (all at once if None), draining after each chunk."""
    events: list[Event] = []
    step = chunk or max(1, len(wire))
    for offset in range(0, len(wire), step):
        conn.receive_data(wire[offset : offset + step])
        events += drain(conn)
    return events


def data_of(events: Iterable[Event]) -> bytes:
    """Concatenate the plaintext of the Data events."""
    return b"".join(e.data for e in events if isinstance(e, Data))


def pump_handshake(
    client: Connection, server: Connection, chunk: int | None = None
) -> tuple[list[bytes], list[bytes], list[Event], list[Event]]:
    """Run the handshake, feeding each flight in ``chunk``-byte pieces; return both sides' flights and events."""
    client_flights: list[bytes] = []
    server_flights: list[bytes] = []
    client_events: list[Event] = []
    server_events: list[Event] = []
    for _ in range(16):
        out = client.data_to_send()
        if out:
            client_flights.append(out)
            server_events += feed(server, out, chunk)
        out = server.data_to_send()
        if out:
            server_flights.append(out)
            client_events += feed(client, out, chunk)
        if client.state is State.ESTABLISHED and server.state is State.ESTABLISHED:
            return client_flights, server_flights, client_events, server_events
    raise AssertionError("handshake did not converge")


def assert_broken_everywhere(conn: Connection, cause: BaseException) -> None:
    """``conn`` is BROKEN by ``cause``: every later call raises BrokenStreamError chained to it, and keeps doing so."""
    assert conn.state is State.BROKEN
    assert conn.broken_cause is cause
    for _ in range(2):  # twice: the broken state is sticky
        for call in (
            conn.next_event,
            lambda: conn.receive_data(b"x"),
            lambda: conn.receive_data(b""),
            lambda: conn.send(b"x"),
        ):
            with pytest.raises(BrokenStreamError, match="broken by an earlier error") as info:
                call()
            assert info.value.__cause__ is cause
    conn.close()  # closing a broken connection keeps it broken
    assert conn.state is State.BROKEN


E = TypeVar("E", bound=NegotiateError)


def refused_handshake(
    client: Connection, server: Connection, error: type[E], status: int, *, match: str | None = None
) -> E:
    """The server refuses the handshake with ``error`` (``status``, its text matching ``match``) and queues an
    Error frame that the client reads as a :class:`HandshakeError` with the same status; returns the server's error."""
    with pytest.raises(error, match=match) as refused:
        handshake(client, server)
    assert refused.value.status == status
    client.receive_data(server.data_to_send())
    with pytest.raises(HandshakeError) as reported:
        client.next_event()
    assert reported.value.status == status
    return refused.value


def context_pair(
    users: NTLMUsers,
    *,
    client_options: dict[str, Any] | None = None,
    server_options: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[SecurityContext, SecurityContext]:
    """A client and a server SecurityContext (protocol ``ntlm`` unless given), like ``connection_pair``."""
    common: dict[str, Any] = {"protocol": "ntlm", **options}
    client = SecurityContext.client(**{"credentials": users.client_credentials(), **common, **(client_options or {})})
    server = SecurityContext.server(**{"credentials": users.server_credentials(), **common, **(server_options or {})})
    return client, server


def context_handshake(client: SecurityContext, server: SecurityContext) -> list[bytes]:
    """Step both contexts to completion (errors propagate); return every token the client produced, in order."""
    client_tokens: list[bytes] = []
    token = client.step(None)
    for _ in range(8):
        if token is not None:
            client_tokens.append(token)
            token = server.step(token)
        if token is not None:
            token = client.step(token)
        if client.complete and server.complete and token is None:
            return client_tokens
    raise AssertionError("handshake did not converge")


def established(users: NTLMUsers, **options: Any) -> tuple[Connection, Connection]:
    """A client and server Connection after a completed in-memory handshake."""
    client, server = connection_pair(users, **options)
    handshake(client, server)
    # handshake() leaves the HandshakeComplete events consumed; nothing else may be pending.
    assert client.data_to_send() == b"" and server.data_to_send() == b""
    return client, server


def feed_pieces(
    conn: Connection, pieces: Iterable[bytes], *, eof: bool = False, max_buffered: int | None = None
) -> tuple[list[Event], Exception | None]:
    """Feed each piece with one ``receive_data`` (then EOF if ``eof``), draining after each; stop at the first error.

    Returns the events and the NegotiateError that broke the stream (None if it did not break); any other exception
    fails the test. The error is sticky: the next call raises BrokenStreamError chained to it. With
    ``max_buffered``, every wait for more data holds fewer bytes than that (at most one partial frame).
    """
    from negotiate_stream import NegotiateError

    events: list[Event] = []
    try:
        for piece in [*pieces, b""] if eof else pieces:
            conn.receive_data(piece)
            # One event at a time (not drain()): the events before an error are part of the outcome.
            while (event := conn.next_event()) is not NEED_DATA:
                assert isinstance(event, HandshakeComplete | Data | EndOfStream), event
                events.append(event)
                if isinstance(event, EndOfStream):
                    break
            assert max_buffered is None or conn.buffered < max_buffered
    except NegotiateError as exc:
        assert conn.state is State.BROKEN and conn.broken_cause is exc
        with pytest.raises(BrokenStreamError) as again:
            conn.next_event()
        assert again.value.__cause__ is exc
        return events, exc
    return events, None
