"""Connection in memory (no event loop): handshake wire shape, data both ways at every level, record splitting,
chunked delivery, EOF, SASL framing over contexts established out of band."""

from __future__ import annotations

import array

import pytest

from negotiate_stream import (
    NEED_DATA,
    Connection,
    Data,
    EndOfStream,
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
from negotiate_stream.testing import NTLMUsers, connection_pair, exchange, handshake, transfer
from tests.support.core import context_handshake, context_pair, data_of, drain, established, feed, pump_handshake

LEVELS = list(ProtectionLevel)
SIGNED_LEVELS = [ProtectionLevel.SIGN, ProtectionLevel.ENCRYPT_AND_SIGN]
PROTOCOLS = ["ntlm", "negotiate"]
SIZES = [0, 1, 0xFC00, 0xFC01, 1 << 20]
SIZE_IDS = ["0", "1", "0xFC00", "0xFC01", "1MiB"]
NTLM_NEGOTIATE = b"NTLMSSP\x00\x01\x00\x00\x00"
NTLM_CHALLENGE = b"NTLMSSP\x00\x02\x00\x00\x00"
NTLM_AUTHENTICATE = b"NTLMSSP\x00\x03\x00\x00\x00"


def _payload(size: int) -> bytes:
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


def _records(wire: bytes, codec: NNSRecordCodec | SaslRecordCodec | None = None) -> list[bytes]:
    """Split ``wire`` into record payloads, asserting it is exactly a sequence of whole records."""
    codec = codec or NNSRecordCodec()
    payloads = []
    position = 0
    while position < len(wire):
        parsed = codec.parse(wire, position)
        assert parsed is not None, "wire ends inside a record"
        payload, position = parsed
        payloads.append(payload)
    return payloads


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("level", LEVELS)
def test_handshake_and_data_both_directions(ntlm_users: NTLMUsers, protocol: str, level: ProtectionLevel) -> None:
    """A handshake yields one HandshakeComplete per side with the negotiated session facts, then data flows."""
    client, server = connection_pair(ntlm_users, protocol=protocol, protection_level=level)
    assert (client.state, server.state) == (State.HANDSHAKING, State.HANDSHAKING)
    _, _, client_events, server_events = pump_handshake(client, server)
    assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED
    assert [type(e) for e in client_events] == [HandshakeComplete]
    assert [type(e) for e in server_events] == [HandshakeComplete]
    client_info, server_info = client.info, server.info
    assert isinstance(client_info, SessionInfo) and isinstance(server_info, SessionInfo)
    assert client_events[0] == HandshakeComplete(client_info)
    assert server_events[0] == HandshakeComplete(server_info)
    header = 0 if level is ProtectionLevel.NONE else 16
    for info, is_server in ((client_info, False), (server_info, True)):
        assert info.protocol == "ntlm"
        assert info.protection_level is level
        assert info.is_server is is_server
        assert info.framing == "nns"
        assert info.mutually_authenticated is False
        assert info.shares_crypto_state is False
        assert info.is_encrypted is (level is ProtectionLevel.ENCRYPT_AND_SIGN)
        assert info.is_signed is (level is not ProtectionLevel.NONE)
        assert info.sizes == StreamSizes(header=header, trailer=0, max_message=0xFC00)
    assert server_info.peer_identity == "NEGOTIATE-TEST\\alice"
    assert client_info.peer_identity == "host/localhost"
    for i in range(3):
        assert transfer(client, server, b"request %d" % i) == b"request %d" % i
        assert transfer(server, client, b"response %d" % i) == b"response %d" % i


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("level", SIGNED_LEVELS)
def test_write_sizes_split_at_0xfc00(ntlm_users: NTLMUsers, level: ProtectionLevel, size: int) -> None:
    """A write becomes ceil(size / 0xFC00) records of at most 0xFC00 plaintext bytes each, in both directions."""
    client, server = established(ntlm_users, protection_level=level)
    data = _payload(size)
    expected_records = -(-size // 0xFC00)  # 0 -> 0, 0xFC01 -> 2, 1 MiB -> 17
    for sender, receiver in ((client, server), (server, client)):
        wire = sender.send(data)
        payloads = _records(wire)
        assert len(payloads) == expected_records
        assert [len(p) - 16 for p in payloads] == [min(0xFC00, size - i * 0xFC00) for i in range(expected_records)]
        assert all(16 < len(p) <= 0xFC00 + 16 <= MAX_RECORD_PAYLOAD for p in payloads)
        if level is ProtectionLevel.SIGN:
            assert b"".join(p[16:] for p in payloads) == data
        elif size >= 16:
            assert data[:16] not in wire
        events = feed(receiver, wire)
        assert [type(e) for e in events] == [Data] * expected_records
        assert data_of(events) == data


def test_0xfc01_makes_two_records(ntlm_users: NTLMUsers) -> None:
    """0xFC01 bytes travel as a full 0xFC00-byte record and a 1-byte record, with exact LE length headers."""
    client, server = established(ntlm_users)
    wire = client.send(_payload(0xFC01))
    assert data_of(feed(server, wire)) == _payload(0xFC01)
    assert int.from_bytes(wire[:4], "little") == 0xFC00 + 16
    second = 4 + 0xFC00 + 16
    assert int.from_bytes(wire[second : second + 4], "little") == 1 + 16
    assert len(wire) == second + 4 + 17


def test_send_counts_bytes_of_multibyte_memoryview(ntlm_users: NTLMUsers) -> None:
    """Regression: send() used len(data) (items) against the 0xFC00-byte limit and produced oversize records."""
    client, server = established(ntlm_users)
    view = memoryview(array.array("Q", range(0xFC00)))  # 0xFC00 items, 8 * 0xFC00 bytes
    wire = client.send(view)
    assert len(_records(wire)) == 8
    assert data_of(feed(server, wire)) == view.tobytes()


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_write_sizes_none_level_is_raw(ntlm_users: NTLMUsers, size: int) -> None:
    """At protection level none a write of any size is passed through as the same bytes, unframed."""
    client, server = established(ntlm_users, protection_level="none")
    data = _payload(size)
    wire = client.send(data)
    assert wire == data
    assert type(wire) is bytes
    assert data_of(feed(server, wire)) == data
    assert server.send(data) == data


def test_none_level_passes_bytes_unchanged_in_any_chunking(ntlm_users: NTLMUsers) -> None:
    """At level none bytes (even ones that look like MS-NNS frames) arrive unchanged in any chunking, then EOF."""
    client, server = established(ntlm_users, protection_level="none")
    raw = bytes(range(256)) * 300
    assert client.send(raw) == raw
    assert server.send(bytearray(b"x")) == b"x"
    events = feed(server, raw, chunk=7)
    assert all(isinstance(e, Data) for e in events)
    assert data_of(events) == raw
    assert data_of(feed(server, raw, chunk=7777)) == raw
    # Bytes that look like MS-NNS records or handshake messages are still plain data.
    lookalike = b"\x14\x01\x00\x00\x00" + (4).to_bytes(4, "little") + b"\x00" * 8
    assert data_of(feed(client, server.send(lookalike))) == lookalike
    server.receive_data(b"")
    assert server.next_event() == EndOfStream()


@pytest.mark.parametrize("level", LEVELS)
def test_zero_length_write_sends_nothing(ntlm_users: NTLMUsers, level: ProtectionLevel) -> None:
    """An empty write (bytes or memoryview) produces no bytes and does not advance the sequence numbers."""
    client, server = established(ntlm_users, protection_level=level)
    assert client.send(b"") == b""
    assert client.send(memoryview(b"")) == b""
    # The sequence numbers did not move: the next record still verifies.
    assert transfer(client, server, b"after") == b"after"


@pytest.mark.parametrize("level", SIGNED_LEVELS)
def test_empty_record_yields_no_event(ntlm_users: NTLMUsers, level: ProtectionLevel) -> None:
    """A peer's record with no data (Connection.send never writes one) is verified and produces no event."""
    client, server = established(ntlm_users, protection_level=level)
    empty = client.context.protect(b"")
    assert len(empty) == 16
    wire = NNSRecordCodec.encode_header(len(empty)) + empty + client.send(b"after")
    assert feed(server, wire) == [Data(b"after")]
    server.receive_data(NNSRecordCodec.encode_header(len(empty)) + client.context.protect(b""))
    assert server.next_event() is NEED_DATA
    assert server.buffered == 0
    assert repr(NEED_DATA) == "NEED_DATA"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("level", LEVELS)
def test_one_byte_at_a_time(ntlm_users: NTLMUsers, protocol: str, level: ProtectionLevel) -> None:
    """The whole handshake and then records, delivered one byte per receive_data(), give the same events."""
    client, server = connection_pair(ntlm_users, protocol=protocol, protection_level=level)
    _, _, client_events, server_events = pump_handshake(client, server, chunk=1)
    assert [type(e) for e in client_events] == [HandshakeComplete]
    assert [type(e) for e in server_events] == [HandshakeComplete]
    assert client.info is not None and server.info is not None
    assert client.info.protection_level is server.info.protection_level is level
    for sender, receiver in ((client, server), (server, client)):
        data = _payload(300)
        events = feed(receiver, sender.send(data) + sender.send(b"tail"), chunk=1)
        assert data_of(events) == data + b"tail"
        if level is not ProtectionLevel.NONE:
            assert [e.data for e in events if isinstance(e, Data)] == [data, b"tail"]
        assert receiver.buffered == 0


def test_handshake_complete_is_the_first_event(ntlm_users: NTLMUsers) -> None:
    """Intermediate handshake flights produce no event; completion produces exactly one HandshakeComplete."""
    client, server = connection_pair(ntlm_users)
    server.receive_data(client.data_to_send())
    assert drain(server) == []
    client.receive_data(server.data_to_send())
    assert drain(client) == []
    server.receive_data(client.data_to_send())
    events = drain(server)
    assert len(events) == 1 and isinstance(events[0], HandshakeComplete)
    assert events[0].info is server.info
    client.receive_data(server.data_to_send())
    events = drain(client)
    assert len(events) == 1 and isinstance(events[0], HandshakeComplete)
    assert client.next_event() is NEED_DATA


def test_coalesced_records_in_one_receive(ntlm_users: NTLMUsers) -> None:
    """Many records of different sizes in one receive_data() come out as one Data event each, in order."""
    client, server = established(ntlm_users)
    messages = [b"message %03d" % i * (i + 1) for i in range(100)]
    wire = b"".join(client.send(m) for m in messages)
    server.receive_data(wire)
    assert drain(server) == [Data(m) for m in messages]
    assert server.next_event() is NEED_DATA
    assert server.buffered == 0


def test_records_split_across_receives_at_every_offset(ntlm_users: NTLMUsers) -> None:
    """Records cut into two receives at any offset (every third byte) still decode to the same plaintext."""
    client, server = established(ntlm_users, protection_level="sign")
    messages = [b"alpha", b"beta" * 50, b"gamma"]
    wire = b"".join(client.send(m) for m in messages)
    for cut in range(0, len(wire), 3):
        # One fresh session per cut keeps the sequence numbers aligned.
        cut_client, cut_server = established(ntlm_users, protection_level="sign")
        cut_wire = b"".join(cut_client.send(m) for m in messages)
        events = feed(cut_server, cut_wire[:cut]) + feed(cut_server, cut_wire[cut:])
        assert data_of(events) == b"".join(messages), cut
    assert data_of(feed(server, wire)) == b"".join(messages)


@pytest.mark.parametrize("level", LEVELS)
def test_exact_handshake_wire_shape_ntlm(ntlm_users: NTLMUsers, level: str) -> None:
    """Raw NTLM is NEGOTIATE/CHALLENGE in InProgress messages, AUTHENTICATE in Done, and an empty server Done."""
    client, server = connection_pair(ntlm_users, protection_level=level)
    client_flights, server_flights, _, _ = pump_handshake(client, server)
    assert len(client_flights) == 2 and len(server_flights) == 2
    negotiate, authenticate = client_flights
    challenge, done = server_flights
    assert negotiate[:3] == b"\x16\x01\x00"
    assert int.from_bytes(negotiate[3:5], "big") == len(negotiate) - 5
    assert negotiate[5:17] == NTLM_NEGOTIATE
    assert challenge[:3] == b"\x16\x01\x00"
    assert int.from_bytes(challenge[3:5], "big") == len(challenge) - 5
    assert challenge[5:17] == NTLM_CHALLENGE
    # The step that completes the client's context is sent as HandshakeDone.
    assert authenticate[:3] == b"\x14\x01\x00"
    assert int.from_bytes(authenticate[3:5], "big") == len(authenticate) - 5
    assert authenticate[5:17] == NTLM_AUTHENTICATE
    # NTLM has no final server token: the server ends with an empty HandshakeDone.
    assert done == bytes.fromhex("1401000000")


def test_exact_handshake_wire_shape_negotiate(ntlm_users: NTLMUsers) -> None:
    """SPNEGO starts with a GSS-API InitialContextToken, one MS-NNS message per flight, the server ending Done."""
    client, server = connection_pair(ntlm_users, protocol="negotiate")
    client_flights, server_flights, _, _ = pump_handshake(client, server)
    first = client_flights[0]
    assert first[:3] == b"\x16\x01\x00"
    assert int.from_bytes(first[3:5], "big") == len(first) - 5
    assert first[5] == 0x60  # GSS-API InitialContextToken (SPNEGO NegTokenInit)
    assert NTLM_NEGOTIATE in first
    assert server_flights[0][:3] == b"\x16\x01\x00"
    assert NTLM_AUTHENTICATE in client_flights[-1]
    assert client_flights[-1][:1] in (b"\x14", b"\x16")
    last = server_flights[-1]
    assert last[:3] == b"\x14\x01\x00"
    assert int.from_bytes(last[3:5], "big") == len(last) - 5
    for flight in client_flights + server_flights:
        assert int.from_bytes(flight[3:5], "big") == len(flight) - 5  # one message per flight


@pytest.mark.parametrize("level", LEVELS)
def test_trailing_data_after_handshake_in_same_chunk(ntlm_users: NTLMUsers, level: ProtectionLevel) -> None:
    """The server's final HandshakeDone and its first records in one chunk: HandshakeComplete, then the data."""
    client, server = connection_pair(ntlm_users, protection_level=level)
    server.receive_data(client.data_to_send())
    assert drain(server) == []
    client.receive_data(server.data_to_send())
    assert drain(client) == []
    server.receive_data(client.data_to_send())
    assert [type(e) for e in drain(server)] == [HandshakeComplete]
    # The second message looks like a record header: at level none it is still raw data.
    second = b"\x00\x00\x00\x00second"
    client.receive_data(server.data_to_send() + server.send(b"first") + server.send(second))
    events = drain(client)
    assert [type(e) for e in events[:1]] == [HandshakeComplete]
    assert data_of(events[1:]) == b"first" + second
    if level is not ProtectionLevel.NONE:
        assert events[1:] == [Data(b"first"), Data(second)]
    assert client.state is State.ESTABLISHED
    assert client.buffered == 0


def test_trailing_data_and_eof_in_the_final_chunk(ntlm_users: NTLMUsers) -> None:
    """HandshakeDone, a record and EOF arriving together give HandshakeComplete, Data, EndOfStream."""
    client, server = connection_pair(ntlm_users)
    exchange(client, server)
    exchange(server, client)
    server.receive_data(client.data_to_send())
    drain(server)
    client.receive_data(server.data_to_send() + server.send(b"bye"))
    client.receive_data(b"")
    events = drain(client)
    assert [type(e) for e in events] == [HandshakeComplete, Data, EndOfStream]
    assert events[1] == Data(b"bye")


def test_eof_at_record_boundary_is_clean_and_repeats(ntlm_users: NTLMUsers) -> None:
    """EOF after a whole record is EndOfStream (every time); the send side still works; more data is misuse."""
    client, server = established(ntlm_users)
    server.receive_data(client.send(b"last words"))
    server.receive_data(b"")
    assert server.next_event() == Data(b"last words")
    assert server.next_event() == EndOfStream()
    assert server.next_event() == EndOfStream()
    assert server.state is State.ESTABLISHED
    # Half-close: the send side is independent of the peer's EOF.
    assert transfer(server, client, b"ack") == b"ack"
    with pytest.raises(LocalProtocolError, match="after EOF"):
        server.receive_data(b"more")


def test_eof_none_level(ntlm_users: NTLMUsers) -> None:
    """At level none, EOF after raw data is Data then EndOfStream, repeatedly."""
    _client, server = established(ntlm_users, protection_level="none")
    server.receive_data(b"raw")
    server.receive_data(b"")
    assert server.next_event() == Data(b"raw")
    assert server.next_event() == EndOfStream()
    assert server.next_event() == EndOfStream()


def test_empty_receive_then_need_data(ntlm_users: NTLMUsers) -> None:
    """With nothing or only part of a header received, next_event() is NEED_DATA and the bytes stay buffered."""
    client, server = established(ntlm_users)
    assert server.next_event() is NEED_DATA
    assert server.buffered == 0
    server.receive_data(client.send(b"abc")[:3])
    assert server.next_event() is NEED_DATA
    assert server.buffered == 3


def test_client_has_first_message_ready(ntlm_users: NTLMUsers) -> None:
    """A new client has its first handshake message queued, the server nothing; data_to_send() empties the queue."""
    client, server = connection_pair(ntlm_users)
    assert server.data_to_send() == b""
    first = client.data_to_send()
    assert first.startswith(b"\x16\x01\x00")
    assert client.data_to_send() == b""  # data_to_send() forgets what it returned


def test_repr_shows_side_framing_and_state(ntlm_users: NTLMUsers) -> None:
    """repr() names the side, the framing and the state (handshaking, established, closed)."""
    client, server = connection_pair(ntlm_users)
    assert repr(client) == "<Connection client framing=nns state=handshaking>"
    assert repr(server) == "<Connection server framing=nns state=handshaking>"
    handshake(client, server)
    assert repr(server) == "<Connection server framing=nns state=established>"
    client.close()
    assert client.state is State.CLOSED
    assert repr(client) == "<Connection client framing=nns state=closed>"


def test_half_duplex_without_ess(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    """NTLMv1 without ESS (one RC4 state for both directions) still works for alternating traffic."""
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    client, server = connection_pair(ntlm_users)
    client_info, server_info = handshake(client, server)
    assert client_info.shares_crypto_state is True
    assert server_info.shares_crypto_state is True
    for i in range(5):
        assert transfer(client, server, b"request %d" % i) == b"request %d" % i
        assert transfer(server, client, b"x" * (0xFC01 + i)) == b"x" * (0xFC01 + i)


# -- SASL framing over contexts established out of band ------------------------------------------------------


def _completed_contexts(users: NTLMUsers, protocol: str, level: str) -> tuple[SecurityContext, SecurityContext]:
    client, server = context_pair(users, protocol=protocol, protection_level=level)
    context_handshake(client, server)
    return client, server


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("level", LEVELS)
def test_sasl_framing(ntlm_users: NTLMUsers, protocol: str, level: ProtectionLevel) -> None:
    """SASL framing: established at once, big-endian length + wrap token per 0xFC00 chunk, raw at level none."""
    client_ctx, server_ctx = _completed_contexts(ntlm_users, protocol, level)
    client = Connection(client_ctx, framing="sasl")
    server = Connection(server_ctx, framing="sasl")
    for conn in (client, server):
        assert conn.data_to_send() == b""
        event = conn.next_event()
        assert isinstance(event, HandshakeComplete) and event.info.framing == "sasl"
        assert conn.info is event.info
        assert conn.state is State.ESTABLISHED
    data = _payload(0x10000)
    wire = client.send(data)
    if level is ProtectionLevel.NONE:
        assert wire == data
        assert data_of(feed(server, wire)) == data
        return
    tokens = _records(wire, SaslRecordCodec())
    assert len(tokens) == 2
    assert wire[:4] == len(tokens[0]).to_bytes(4, "big")  # SASL lengths are big-endian
    assert data_of(feed(server, wire, chunk=1000)) == data
    reply = server.send(b"bind ok")
    assert int.from_bytes(reply[:4], "big") == len(reply) - 4
    assert data_of(feed(client, reply, chunk=1)) == b"bind ok"


def test_sasl_framing_needs_a_complete_context(ntlm_users: NTLMUsers) -> None:
    """SASL framing refuses a context that the SASL bind has not completed yet."""
    context = SecurityContext.client(credentials=ntlm_users.client_credentials(), protocol="ntlm")
    with pytest.raises(LocalProtocolError, match="established by the SASL bind"):
        Connection(context, framing="sasl")


def test_sasl_respects_peer_max_buffer(ntlm_users: NTLMUsers) -> None:
    """With a peer max buffer of 1000 bytes, no SASL record announces more than 1000 bytes."""
    client_ctx, server_ctx = _completed_contexts(ntlm_users, "negotiate", "encrypt_and_sign")
    client = Connection(client_ctx, framing="sasl", sasl_peer_max_buffer=1000)
    server = Connection(server_ctx, framing="sasl", sasl_max_buffer=1000)
    wire = client.send(b"z" * 5000)
    offset = 0
    while offset < len(wire):
        length = int.from_bytes(wire[offset : offset + 4], "big")
        assert length <= 1000
        offset += 4 + length
    assert data_of(feed(server, wire)) == b"z" * 5000


def test_unknown_framing_rejected(ntlm_users: NTLMUsers) -> None:
    """A framing other than nns or sasl is a ValueError."""
    context = SecurityContext.server(credentials=ntlm_users.server_credentials())
    with pytest.raises(ValueError):
        Connection(context, framing="tls")  # type: ignore[arg-type]
