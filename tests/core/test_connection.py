"""Connection in memory: handshake wire shape, data both ways at every level, chunking, SASL framing."""

from __future__ import annotations

from typing import Any

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
    State,
)
from negotiate_stream._framing import nns
from negotiate_stream.testing import NTLMUsers, connection_pair, exchange, handshake, transfer

from tests.support.core import data_of, drain, established, feed, pump_handshake

LEVELS = list(ProtectionLevel)
SIZES = [1, 0xFC00, 0xFC01, 1 << 20]
PROTOCOLS = ["ntlm", "negotiate"]


def _payload(size: int) -> bytes:
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


def _records(wire: bytes) -> list[bytes]:
    decoder = nns.record_decoder()
    payloads = decoder.feed(wire)
    assert decoder.buffered == 0
    return payloads


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("level", LEVELS)
def test_handshake_and_data_both_directions(ntlm_users: NTLMUsers, protocol: str, level: ProtectionLevel) -> None:
    client, server = connection_pair(ntlm_users, protocol=protocol, protection_level=level)
    assert client.state is State.HANDSHAKING and server.state is State.HANDSHAKING
    client_info, server_info = handshake(client, server)
    assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED
    for info, is_server in ((client_info, False), (server_info, True)):
        assert info.protocol == "ntlm"
        assert info.protection_level is level
        assert info.is_server is is_server
        assert info.framing == "nns"
        assert info.mutually_authenticated is False
        assert info.is_encrypted is (level is ProtectionLevel.ENCRYPT_AND_SIGN)
        assert info.is_signed is (level is not ProtectionLevel.NONE)
        assert info.sizes.max_message == 0xFC00
    assert server_info.peer_identity == "NEGOTIATE-TEST\\alice"
    assert client_info.peer_identity == "host/localhost"
    assert transfer(client, server, b"ping") == b"ping"
    assert transfer(server, client, b"pong") == b"pong"
    assert transfer(client, server, b"again") == b"again"


@pytest.mark.parametrize("level", [ProtectionLevel.SIGN, ProtectionLevel.ENCRYPT_AND_SIGN])
@pytest.mark.parametrize("size", SIZES)
def test_write_sizes_both_directions(ntlm_users: NTLMUsers, level: ProtectionLevel, size: int) -> None:
    client, server = established(ntlm_users, protection_level=level)
    data = _payload(size)
    for sender, receiver in ((client, server), (server, client)):
        wire = sender.send(data)
        payloads = _records(wire)
        expected_records = -(-size // 0xFC00)
        assert len(payloads) == expected_records
        assert [len(p) - 16 for p in payloads] == [min(0xFC00, size - i * 0xFC00) for i in range(expected_records)]
        if level is ProtectionLevel.SIGN:
            assert b"".join(p[16:] for p in payloads) == data
        elif size >= 16:
            assert data[:16] not in wire
        events = feed(receiver, wire)
        assert all(isinstance(e, Data) for e in events) and len(events) == expected_records
        assert data_of(events) == data


def test_0xfc01_makes_two_records(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users)
    wire = client.send(_payload(0xFC01))
    assert data_of(feed(server, wire)) == _payload(0xFC01)
    assert int.from_bytes(wire[:4], "little") == 0xFC00 + 16
    second = 4 + 0xFC00 + 16
    assert int.from_bytes(wire[second : second + 4], "little") == 1 + 16
    assert len(wire) == second + 4 + 17


@pytest.mark.parametrize("level", LEVELS)
def test_zero_length_write_sends_nothing(ntlm_users: NTLMUsers, level: ProtectionLevel) -> None:
    client, server = established(ntlm_users, protection_level=level)
    assert client.send(b"") == b""
    assert client.send(memoryview(b"")) == b""
    # The sequence numbers did not move: the next record still verifies.
    assert transfer(client, server, b"after") == b"after"


@pytest.mark.parametrize("level", LEVELS)
def test_whole_handshake_and_data_one_byte_at_a_time(ntlm_users: NTLMUsers, level: ProtectionLevel) -> None:
    client, server = connection_pair(ntlm_users, protocol="negotiate", protection_level=level)
    _, _, client_info, server_info = pump_handshake(client, server, chunk=1)
    assert client_info.protection_level is server_info.protection_level is level
    for sender, receiver in ((client, server), (server, client)):
        data = _payload(300)
        wire = sender.send(data) + sender.send(b"tail")
        events = feed(receiver, wire, chunk=1)
        assert data_of(events) == data + b"tail"
        if level is not ProtectionLevel.NONE:
            assert [e.data for e in events if isinstance(e, Data)] == [data, b"tail"]
        assert receiver.buffered == 0


def test_handshake_complete_is_the_first_event(ntlm_users: NTLMUsers) -> None:
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


def test_many_records_in_one_receive_data(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users)
    messages = [f"message {i}".encode() * (i + 1) for i in range(50)]
    wire = b"".join(client.send(m) for m in messages)
    server.receive_data(wire)
    received = []
    while (event := server.next_event()) is not NEED_DATA:
        assert isinstance(event, Data)
        received.append(event.data)
    assert received == messages
    assert server.buffered == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_handshake_wire_shape(ntlm_users: NTLMUsers, protocol: str) -> None:
    client, server = connection_pair(ntlm_users, protocol=protocol)
    client_flights, server_flights, _, _ = pump_handshake(client, server)
    assert client_flights[0][:3] == b"\x16\x01\x00"
    assert int.from_bytes(client_flights[0][3:5], "big") == len(client_flights[0]) - 5
    assert server_flights[0][:3] == b"\x16\x01\x00"
    assert server_flights[-1][:3] == b"\x14\x01\x00"
    if protocol == "ntlm":
        assert client_flights[0][5:].startswith(b"NTLMSSP\x00\x01\x00\x00\x00")
        assert client_flights[-1][0] == 0x14
        assert client_flights[-1][5:].startswith(b"NTLMSSP\x00\x03\x00\x00\x00")
        # NTLM has no final server token: the server ends with an empty HandshakeDone.
        assert server_flights[-1] == bytes.fromhex("1401000000")
    else:
        assert client_flights[0][5] == 0x60  # SPNEGO NegTokenInit (GSS-API InitialContextToken)


def test_trailing_data_after_handshake_in_same_chunk(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users)
    exchange(client, server)
    exchange(server, client)
    server.receive_data(client.data_to_send())
    events = drain(server)
    assert isinstance(events[0], HandshakeComplete)
    # The server's HandshakeDone and its first record arrive in one chunk.
    wire = server.data_to_send() + server.send(b"first words")
    events = feed(client, wire)
    assert isinstance(events[0], HandshakeComplete)
    assert events[1:] == [Data(b"first words")]


def test_trailing_raw_data_at_level_none(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users, protection_level="none")
    exchange(client, server)
    exchange(server, client)
    server.receive_data(client.data_to_send())
    assert isinstance(drain(server)[0], HandshakeComplete)
    wire = server.data_to_send() + server.send(b"\x00\x00\x00\x00raw")
    events = feed(client, wire)
    assert isinstance(events[0], HandshakeComplete)
    assert data_of(events[1:]) == b"\x00\x00\x00\x00raw"


def test_none_level_sends_raw_bytes(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users, protection_level="none")
    raw = bytes(range(256)) * 300
    assert client.send(raw) == raw
    assert server.send(bytearray(b"x")) == b"x"
    assert data_of(feed(server, raw, chunk=7777)) == raw
    server.receive_data(b"")
    assert server.next_event() == EndOfStream()


def test_eof_at_boundary_is_clean_end_twice(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users)
    server.receive_data(client.send(b"last"))
    server.receive_data(b"")
    assert server.next_event() == Data(b"last")
    assert server.next_event() == EndOfStream()
    assert server.next_event() == EndOfStream()
    # The send side is independent of the peer's EOF.
    assert transfer(server, client, b"still writing") == b"still writing"


def test_close_then_calls_raise(ntlm_users: NTLMUsers) -> None:
    from negotiate_stream import StreamClosedError

    client, _ = established(ntlm_users)
    client.close()
    assert client.state is State.CLOSED
    for call in (lambda: client.send(b"x"), lambda: client.receive_data(b"x"), client.next_event):
        with pytest.raises(StreamClosedError):
            call()


def test_data_after_eof_is_local_error(ntlm_users: NTLMUsers) -> None:
    _, server = established(ntlm_users)
    server.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after EOF"):
        server.receive_data(b"more")


def test_repr(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users)
    assert repr(client) == "<Connection client framing=nns state=handshaking>"
    handshake(client, server)
    assert repr(server) == "<Connection server framing=nns state=established>"


# -- SASL framing over contexts established out of band ------------------------------------------------------


def _completed_contexts(users: NTLMUsers, **options: Any) -> tuple[SecurityContext, SecurityContext]:
    common: dict[str, Any] = {"protocol": "negotiate", **options}
    client = SecurityContext.client(credentials=users.client_credentials(), **common)
    server = SecurityContext.server(credentials=users.server_credentials(), **common)
    token = client.step(None)
    while token is not None:
        token = server.step(token)
        if token is not None:
            token = client.step(token)
    assert client.complete and server.complete
    return client, server


@pytest.mark.parametrize("level", LEVELS)
def test_sasl_framing(ntlm_users: NTLMUsers, level: ProtectionLevel) -> None:
    client_ctx, server_ctx = _completed_contexts(ntlm_users, protection_level=level)
    client = Connection(client_ctx, framing="sasl")
    server = Connection(server_ctx, framing="sasl")
    for conn in (client, server):
        assert conn.data_to_send() == b""
        event = conn.next_event()
        assert isinstance(event, HandshakeComplete) and event.info.framing == "sasl"
        assert conn.state is State.ESTABLISHED
    data = _payload(0xFC01)
    wire = client.send(data)
    if level is ProtectionLevel.NONE:
        assert wire == data
    else:
        first = int.from_bytes(wire[:4], "big")  # SASL lengths are big-endian
        assert 4 + first < len(wire)
        assert data_of(feed(server, wire, chunk=1000)) == data
        reply = server.send(b"bind ok")
        assert int.from_bytes(reply[:4], "big") == len(reply) - 4
        assert data_of(feed(client, reply, chunk=1)) == b"bind ok"
        return
    assert data_of(feed(server, wire)) == data


def test_sasl_needs_completed_context(ntlm_users: NTLMUsers) -> None:
    context = SecurityContext.client(credentials=ntlm_users.client_credentials(), protocol="ntlm")
    with pytest.raises(LocalProtocolError, match="SASL"):
        Connection(context, framing="sasl")


def test_sasl_respects_peer_max_buffer(ntlm_users: NTLMUsers) -> None:
    client_ctx, server_ctx = _completed_contexts(ntlm_users)
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
    context = SecurityContext.server(credentials=ntlm_users.server_credentials())
    with pytest.raises(ValueError):
        Connection(context, framing="tls")  # type: ignore[arg-type]
