"""Tests of the sans-I/O core (codecs, SecurityContext, Connection), shared helpers.

Helpers here drive real pyspnego NTLM contexts through :mod:`negotiate_stream.testing`; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from negotiate_stream import NEED_DATA, Connection, Data, EndOfStream, Event, HandshakeComplete, SessionInfo
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake


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
) -> tuple[list[bytes], list[bytes], SessionInfo, SessionInfo]:
    """Run the handshake, feeding each flight in ``chunk``-byte pieces; return both sides' flights and infos."""
    client_flights: list[bytes] = []
    server_flights: list[bytes] = []
    for _ in range(16):
        out = client.data_to_send()
        if out:
            client_flights.append(out)
            feed(server, out, chunk)
        out = server.data_to_send()
        if out:
            server_flights.append(out)
            feed(client, out, chunk)
        if client.info is not None and server.info is not None:
            return client_flights, server_flights, client.info, server.info
    raise AssertionError("handshake did not converge")


def established(users: NTLMUsers, **options: Any) -> tuple[Connection, Connection]:
    """A client and server Connection after a completed in-memory handshake."""
    client, server = connection_pair(users, **options)
    handshake(client, server)
    # handshake() leaves the HandshakeComplete events consumed; nothing else may be pending.
    assert client.data_to_send() == b"" and server.data_to_send() == b""
    return client, server
