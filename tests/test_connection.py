"""Connection in memory (no event loop): NTLM handshakes, data both ways, record splitting, chunked delivery."""

from __future__ import annotations

import array
import random
from typing import Any

import pytest

from negotiate_stream import (
    NEED_DATA,
    Connection,
    Data,
    EndOfStream,
    Event,
    HandshakeComplete,
    LocalProtocolError,
    ProtectionLevel,
    SecurityContext,
    SessionInfo,
    State,
    StreamSizes,
)
from negotiate_stream._framing.nns import MAX_RECORD_PAYLOAD, NNSRecordCodec
from negotiate_stream._framing.sasl import SaslRecordCodec
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake, transfer

LEVELS = ["none", "sign", "encrypt_and_sign"]
PROTOCOLS = ["ntlm", "negotiate"]
SIZES = [0, 1, 0xFC00, 0xFC01, 1 << 20]
SIZE_IDS = ["0", "1", "0xFC00", "0xFC01", "1MiB"]
NTLM_NEGOTIATE = b"NTLMSSP\x00\x01\x00\x00\x00"
NTLM_CHALLENGE = b"NTLMSSP\x00\x02\x00\x00\x00"
NTLM_AUTHENTICATE = b"NTLMSSP\x00\x03\x00\x00\x00"


def drain(conn: Connection) -> list[Event]:
    """Call next_event() until NEED_DATA (or EndOfStream); errors propagate."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        assert isinstance(event, HandshakeComplete | Data | EndOfStream)
        events.append(event)
        if isinstance(event, EndOfStream):
            return events


def feed(conn: Connection, wire: bytes, chunk: int | None = None) -> list[Event]:
    """Deliver ``wire`` in ``chunk``-byte pieces (all at once when None), draining events after each piece."""
    events: list[Event] = []
    step = chunk or max(1, len(wire))
    for offset in range(0, len(wire), step):
        conn.receive_data(wire[offset : offset + step])
        events += drain(conn)
    return events


def data_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


def pump(
    client: Connection, server: Connection, chunk: int | None = None
) -> tuple[list[bytes], list[bytes], list[Event], list[Event]]:
    """Run the handshake with ``chunk``-byte deliveries; return both sides' flights and events."""
    client_flights: list[bytes] = []
    server_flights: list[bytes] = []
    client_events: list[Event] = []
    server_events: list[Event] = []
    for _ in range(10):
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


def record_payloads(wire: bytes) -> list[bytes]:
    """Split MS-NNS data records (asserting the wire is exactly a sequence of whole records)."""
    codec = NNSRecordCodec()
    payloads = []
    position = 0
    while position < len(wire):
        parsed = codec.parse(wire, position)
        assert parsed is not None, "wire ends inside a record"
        payload, position = parsed
        payloads.append(payload)
    return payloads


def established(users: NTLMUsers, **options: Any) -> tuple[Connection, Connection]:
    client, server = connection_pair(users, **options)
    handshake(client, server)
    assert client.data_to_send() == b"" and server.data_to_send() == b""
    return client, server


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("level", LEVELS)
def test_handshake_and_data_both_directions(ntlm_users: NTLMUsers, protocol: str, level: str) -> None:
    client, server = connection_pair(ntlm_users, protocol=protocol, protection_level=level)
    assert client.state is State.HANDSHAKING and server.state is State.HANDSHAKING
    _, _, client_events, server_events = pump(client, server)
    assert [type(e) for e in client_events] == [HandshakeComplete]
    assert [type(e) for e in server_events] == [HandshakeComplete]
    client_info, server_info = client.info, server.info
    assert isinstance(client_info, SessionInfo) and isinstance(server_info, SessionInfo)
    assert client_events[0] == HandshakeComplete(client_info)
    expected_level = ProtectionLevel(level)
    header = 0 if expected_level is ProtectionLevel.NONE else 16
    for info, is_server in ((client_info, False), (server_info, True)):
        assert info.protocol == "ntlm"
        assert info.protection_level is expected_level
        assert info.is_server is is_server
        assert info.mutually_authenticated is False
        assert info.shares_crypto_state is False
        assert info.framing == "nns"
        assert info.sizes == StreamSizes(header=header, trailer=0, max_message=0xFC00)
        assert info.is_encrypted is (expected_level is ProtectionLevel.ENCRYPT_AND_SIGN)
        assert info.is_signed is (expected_level is not ProtectionLevel.NONE)
    assert server_info.peer_identity == "NEGOTIATE-TEST\\alice"
    assert client_info.peer_identity == "host/localhost"
    for i in range(3):
        assert transfer(client, server, b"request %d" % i) == b"request %d" % i
        assert transfer(server, client, b"response %d" % i) == b"response %d" % i


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_write_sizes_split_at_0xfc00(ntlm_users: NTLMUsers, level: str, size: int) -> None:
    client, server = established(ntlm_users, protection_level=level)
    data = random.Random(size).randbytes(size)
    wire = client.send(data)
    payloads = record_payloads(wire)
    expected_records = -(-size // 0xFC00)  # 0 -> 0, 0xFC01 -> 2, 1 MiB -> 17
    assert len(payloads) == expected_records
    assert all(16 < len(p) <= 0xFC00 + 16 <= MAX_RECORD_PAYLOAD for p in payloads)
    assert sum(len(p) - 16 for p in payloads) == size
    if level == "sign":
        assert b"".join(p[16:] for p in payloads) == data
    events = feed(server, wire)
    assert [type(e) for e in events] == [Data] * expected_records
    assert data_of(events) == data
    # and the other direction
    wire = server.send(data)
    assert len(record_payloads(wire)) == expected_records
    assert data_of(feed(client, wire)) == data


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_write_sizes_none_level_is_raw(ntlm_users: NTLMUsers, size: int) -> None:
    client, server = established(ntlm_users, protection_level="none")
    data = random.Random(size).randbytes(size)
    wire = client.send(data)
    assert wire == data
    assert type(wire) is bytes
    assert data_of(feed(server, wire)) == data
    assert server.send(data) == data


def test_none_level_passes_bytes_unchanged_in_any_chunking(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users, protection_level="none")
    data = bytes(range(256)) * 3
    events = feed(server, client.send(data), chunk=7)
    assert all(isinstance(e, Data) for e in events)
    assert data_of(events) == data
    # bytes that look like MS-NNS records or handshake messages are still plain data
    lookalike = b"\x14\x01\x00\x00\x00" + (4).to_bytes(4, "little") + b"\x00" * 8
    assert data_of(feed(client, server.send(lookalike))) == lookalike


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("level", LEVELS)
def test_one_byte_at_a_time(ntlm_users: NTLMUsers, protocol: str, level: str) -> None:
    client, server = connection_pair(ntlm_users, protocol=protocol, protection_level=level)
    _, _, client_events, server_events = pump(client, server, chunk=1)
    assert [type(e) for e in client_events] == [HandshakeComplete]
    assert [type(e) for e in server_events] == [HandshakeComplete]
    message = b"one byte at a time " * 10
    for sender, receiver in ((client, server), (server, client)):
        events = feed(receiver, sender.send(message) + sender.send(message), chunk=1)
        assert data_of(events) == message * 2
        assert receiver.buffered == 0


def test_coalesced_records_in_one_receive(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users)
    messages = [b"message %03d" % i for i in range(100)]
    wire = b"".join(client.send(m) for m in messages)
    server.receive_data(wire)
    events = drain(server)
    assert events == [Data(m) for m in messages]
    assert server.next_event() is NEED_DATA


def test_records_split_across_receives_at_every_offset(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users, protection_level="sign")
    messages = [b"alpha", b"beta" * 50, b"gamma"]
    wire = b"".join(client.send(m) for m in messages)
    received = b""
    for cut in range(0, len(wire), 3):
        # receive everything in two pieces cut at `cut`: one fresh session per cut keeps the counters aligned
        c, s = established(ntlm_users, protection_level="sign")
        w = b"".join(c.send(m) for m in messages)
        events = feed(s, w[:cut]) + feed(s, w[cut:])
        received = data_of(events)
        assert received == b"".join(messages), cut
    assert data_of(feed(server, wire)) == b"".join(messages)


@pytest.mark.parametrize("level", LEVELS)
def test_exact_handshake_wire_shape_ntlm(ntlm_users: NTLMUsers, level: str) -> None:
    client, server = connection_pair(ntlm_users, protection_level=level)
    client_flights, server_flights, _, _ = pump(client, server)
    assert len(client_flights) == 2 and len(server_flights) == 2
    negotiate, authenticate = client_flights
    challenge, done = server_flights
    assert negotiate[:3] == b"\x16\x01\x00"
    assert int.from_bytes(negotiate[3:5], "big") == len(negotiate) - 5
    assert negotiate[5:17] == NTLM_NEGOTIATE
    assert challenge[:3] == b"\x16\x01\x00"
    assert int.from_bytes(challenge[3:5], "big") == len(challenge) - 5
    assert challenge[5:17] == NTLM_CHALLENGE
    # the step that completes the client's context is sent as HandshakeDone
    assert authenticate[:3] == b"\x14\x01\x00"
    assert int.from_bytes(authenticate[3:5], "big") == len(authenticate) - 5
    assert authenticate[5:17] == NTLM_AUTHENTICATE
    # the server always ends with an (here empty) HandshakeDone
    assert done == b"\x14\x01\x00\x00\x00"


def test_exact_handshake_wire_shape_negotiate(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users, protocol="negotiate")
    client_flights, server_flights, _, _ = pump(client, server)
    first = client_flights[0]
    assert first[:3] == b"\x16\x01\x00"
    assert int.from_bytes(first[3:5], "big") == len(first) - 5
    assert first[5] == 0x60  # GSS-API InitialContextToken (SPNEGO NegTokenInit)
    assert NTLM_NEGOTIATE in first
    assert NTLM_AUTHENTICATE in client_flights[-1]
    assert client_flights[-1][:1] in (b"\x14", b"\x16")
    last = server_flights[-1]
    assert last[:3] == b"\x14\x01\x00"
    assert int.from_bytes(last[3:5], "big") == len(last) - 5
    for flight in client_flights + server_flights:
        assert int.from_bytes(flight[3:5], "big") == len(flight) - 5  # one message per flight


@pytest.mark.parametrize("level", LEVELS)
def test_trailing_data_after_handshake_in_same_chunk(ntlm_users: NTLMUsers, level: str) -> None:
    client, server = connection_pair(ntlm_users, protection_level=level)
    server.receive_data(client.data_to_send())
    assert drain(server) == []
    client.receive_data(server.data_to_send())
    assert drain(client) == []
    server.receive_data(client.data_to_send())
    events = drain(server)
    assert [type(e) for e in events] == [HandshakeComplete]
    # the server's final HandshakeDone and its first records arrive in one chunk
    chunk = server.data_to_send() + server.send(b"first") + server.send(b"second")
    client.receive_data(chunk)
    events = drain(client)
    assert [type(e) for e in events[:1]] == [HandshakeComplete]
    assert data_of(events[1:]) == b"firstsecond"
    assert client.state is State.ESTABLISHED
    assert client.buffered == 0


def test_trailing_data_and_eof_in_the_final_chunk(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users)
    server.receive_data(client.data_to_send())
    drain(server)
    client.receive_data(server.data_to_send())
    drain(client)
    server.receive_data(client.data_to_send())
    drain(server)
    client.receive_data(server.data_to_send() + server.send(b"bye"))
    client.receive_data(b"")
    events = drain(client)
    assert [type(e) for e in events] == [HandshakeComplete, Data, EndOfStream]
    assert events[1] == Data(b"bye")


def test_eof_at_record_boundary_is_clean_and_repeats(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users)
    server.receive_data(client.send(b"last words"))
    server.receive_data(b"")
    assert server.next_event() == Data(b"last words")
    assert server.next_event() == EndOfStream()
    assert server.next_event() == EndOfStream()
    assert server.state is State.ESTABLISHED
    # half-close: the server may still answer
    assert transfer(server, client, b"ack") == b"ack"
    with pytest.raises(LocalProtocolError, match="after EOF"):
        server.receive_data(b"more")


def test_eof_none_level(ntlm_users: NTLMUsers) -> None:
    _client, server = established(ntlm_users, protection_level="none")
    server.receive_data(b"raw")
    server.receive_data(b"")
    assert server.next_event() == Data(b"raw")
    assert server.next_event() == EndOfStream()
    assert server.next_event() == EndOfStream()


def test_empty_receive_then_need_data(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users)
    assert server.next_event() is NEED_DATA
    assert server.buffered == 0
    server.receive_data(client.send(b"abc")[:3])
    assert server.next_event() is NEED_DATA
    assert server.buffered == 3


def test_client_has_first_message_ready(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users)
    assert server.data_to_send() == b""
    first = client.data_to_send()
    assert first.startswith(b"\x16\x01\x00")
    assert client.data_to_send() == b""  # data_to_send() forgets what it returned
    assert repr(client) == "<Connection client framing=nns state=handshaking>"
    assert repr(server) == "<Connection server framing=nns state=handshaking>"


def test_half_duplex_without_ess(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    client, server = connection_pair(ntlm_users)
    client_info, server_info = handshake(client, server)
    assert client_info.shares_crypto_state is True
    assert server_info.shares_crypto_state is True
    for i in range(5):
        assert transfer(client, server, b"request %d" % i) == b"request %d" % i
        assert transfer(server, client, b"x" * (0xFC01 + i)) == b"x" * (0xFC01 + i)


def test_close_marks_the_connection_closed(ntlm_users: NTLMUsers) -> None:
    client, _ = established(ntlm_users)
    client.close()
    assert client.state is State.CLOSED
    assert repr(client) == "<Connection client framing=nns state=closed>"


def _complete_contexts(users: NTLMUsers, level: str) -> tuple[SecurityContext, SecurityContext]:
    client = SecurityContext.client(credentials=users.client_credentials(), protocol="ntlm", protection_level=level)
    server = SecurityContext.server(credentials=users.server_credentials(), protocol="ntlm", protection_level=level)
    token = client.step(None)
    while not (client.complete and server.complete):
        reply = server.step(token)
        if not client.complete:
            token = client.step(reply)
    return client, server


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_sasl_framing_round_trip(ntlm_users: NTLMUsers, level: str) -> None:
    client_ctx, server_ctx = _complete_contexts(ntlm_users, level)
    client = Connection(client_ctx, framing="sasl")
    server = Connection(server_ctx, framing="sasl")
    assert isinstance(client.next_event(), HandshakeComplete)
    assert isinstance(server.next_event(), HandshakeComplete)
    assert client.info is not None and client.info.framing == "sasl"
    wire = client.send(b"x" * 0x10000)
    records = []
    codec = SaslRecordCodec()
    position = 0
    while position < len(wire):
        parsed = codec.parse(wire, position)
        assert parsed is not None
        token, position = parsed
        records.append(token)
    assert len(records) == 2
    assert wire[:4] == (len(records[0])).to_bytes(4, "big")
    assert data_of(feed(server, wire, chunk=1000)) == b"x" * 0x10000
    assert data_of(feed(client, server.send(b"reply"))) == b"reply"


def test_sasl_framing_needs_a_complete_context(ntlm_users: NTLMUsers) -> None:
    ctx = SecurityContext.client(credentials=ntlm_users.client_credentials(), protocol="ntlm")
    with pytest.raises(LocalProtocolError, match="established by the SASL bind"):
        Connection(ctx, framing="sasl")


def test_send_counts_bytes_of_multibyte_memoryview(ntlm_users: NTLMUsers) -> None:
    """Regression: send() used len(data) (items) against the 0xFC00-byte limit and produced oversize records."""
    client, server = established(ntlm_users)
    view = memoryview(array.array("Q", range(0xFC00)))  # 0xFC00 items, 8 * 0xFC00 bytes
    wire = client.send(view)
    assert len(record_payloads(wire)) == 8
    assert data_of(feed(server, wire)) == view.tobytes()


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_empty_record_yields_no_event(ntlm_users: NTLMUsers, level: str) -> None:
    client, server = established(ntlm_users, protection_level=level)
    empty = client.context.protect(b"")  # a peer may send a record with no data (Connection.send never does)
    assert len(empty) == 16
    wire = NNSRecordCodec.encode_header(len(empty)) + empty + client.send(b"after")
    assert feed(server, wire) == [Data(b"after")]
    server.receive_data(NNSRecordCodec.encode_header(len(empty)) + client.context.protect(b""))
    assert server.next_event() is NEED_DATA
    assert server.buffered == 0
    assert repr(NEED_DATA) == "NEED_DATA"
