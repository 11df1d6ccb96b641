"""SASL security-layer codec (RFC 4422 section 3.7): big-endian records, limits from the header alone, the
Connection reading them in any chunking, and the RFC 4752 layer negotiation message."""

from __future__ import annotations

import random

import pytest

from negotiate_stream import Connection, Data, FramingError, HandshakeComplete
from negotiate_stream._framing.sasl import (
    DEFAULT_MAX_BUFFER,
    DEFAULT_MAX_PLAINTEXT,
    WRAP_OVERHEAD_BOUND,
    LayerOffer,
    SaslRecordCodec,
    SecurityLayer,
    decode_layer_message,
    encode_layer_message,
)
from negotiate_stream.errors import SEC_E_INVALID_TOKEN
from negotiate_stream.testing import NTLMUsers
from tests.support.core import (
    assert_broken_everywhere,
    context_handshake,
    context_pair,
    data_of,
    drain,
    feed_pieces,
)


def _record(token: bytes) -> bytes:
    return SaslRecordCodec.encode_header(len(token)) + token


def _parse_all(wire: bytes, codec: SaslRecordCodec) -> tuple[list[bytes], int]:
    tokens: list[bytes] = []
    position = 0
    while (parsed := codec.parse(wire, position)) is not None:
        token, position = parsed
        tokens.append(token)
    return tokens, position


def _sasl_pair(users: NTLMUsers, **options: int) -> tuple[Connection, Connection]:
    """Client and server Connections with SASL framing over NTLM contexts established out of band."""
    client_ctx, server_ctx = context_pair(users)
    context_handshake(client_ctx, server_ctx)
    return Connection(client_ctx, framing="sasl", **options), Connection(server_ctx, framing="sasl", **options)


# -- records ------------------------------------------------------------------------------------------------------


def test_header_is_big_endian() -> None:
    """The token length is a uint32 big-endian."""
    assert SaslRecordCodec.encode_header(1) == b"\x00\x00\x00\x01"
    assert SaslRecordCodec.encode_header(0x22) == b"\x00\x00\x00\x22"
    assert SaslRecordCodec.encode_header(0x123456) == b"\x00\x12\x34\x56"
    assert SaslRecordCodec.encode_header(0x01020304) == b"\x01\x02\x03\x04"
    assert _record(b"abc") == b"\x00\x00\x00\x03abc"
    assert SaslRecordCodec().header_size == 4


def test_round_trip_from_any_prefix() -> None:
    """Tokens of 1 byte to 70,000 parse back as bytes; every prefix of the stream yields exactly the records
    wholly inside it, and holds back less than one record."""
    rng = random.Random(99)
    tokens = [rng.randbytes(n) for n in (1, 2, 16, 1000, 70000)] + [b"x", bytes(range(256)), b"\x00" * 70000]
    tokens += [rng.randbytes(rng.randrange(1, 500)) for _ in range(15)]
    wire = b"".join(_record(t) for t in tokens)
    codec = SaslRecordCodec()
    got, end = _parse_all(wire, codec)
    assert got == tokens
    assert all(type(t) is bytes for t in got)
    assert end == len(wire)
    ends = [sum(4 + len(t) for t in tokens[: i + 1]) for i in range(len(tokens))]
    cuts = {0, len(wire), *rng.sample(range(len(wire)), 40)} | {e + d for e in ends for d in (-1, 0, 1)}
    for cut in sorted(c for c in cuts if 0 <= c <= len(wire)):
        got, end = _parse_all(wire[:cut], codec)
        assert got == tokens[: len(got)]
        assert end == (ends[len(got) - 1] if got else 0)
        assert cut - end < 4 + 70000


def test_parse_returns_end_offset_and_none_when_incomplete() -> None:
    """parse() gives (token, end) at any offset and None for any strict prefix."""
    codec = SaslRecordCodec()
    wire = _record(b"hello") + _record(b"x")
    assert codec.parse(wire) == (b"hello", 9)
    assert codec.parse(wire, 9) == (b"x", 14)
    assert codec.parse(wire, 14) is None
    assert codec.parse(b"ab" + wire, 2) == (b"hello", 11)
    assert codec.locate(b"ab" + wire, 2) == 11
    for cut in range(9):
        assert codec.parse(wire[:cut]) is None


@pytest.mark.parametrize(
    ("max_payload", "length"),
    [
        (DEFAULT_MAX_BUFFER, 0),
        (DEFAULT_MAX_BUFFER, DEFAULT_MAX_BUFFER + 1),
        (DEFAULT_MAX_BUFFER, 0xFFFFFFFF),
        (100, 101),
        (1, 0xFFFFFFFF),
    ],
)
def test_zero_and_oversize_rejected_before_buffering(max_payload: int, length: int) -> None:
    """A zero or oversize length fails once the 4th header byte is there, before any payload."""
    codec = SaslRecordCodec(max_payload)
    header = length.to_bytes(4, "big")
    for cut in range(4):
        assert codec.locate(header[:cut]) is None
    for wire in (header, header + bytes(50), _record(b"k") + header):
        with pytest.raises(FramingError, match=f"announces {length} bytes") as info:
            _parse_all(wire, codec)
        assert info.value.status == SEC_E_INVALID_TOKEN == 0x80090308
        assert f"valid lengths are 1 to {max_payload} (our max buffer)" in str(info.value)


def test_max_payload_boundary_accepted() -> None:
    """A token of exactly max_payload bytes is accepted."""
    codec = SaslRecordCodec(100)
    assert codec.parse(_record(b"\x07" * 100)) == (b"\x07" * 100, 104)
    assert codec.parse(_record(b"m" * 100)[:-1]) is None


def test_codec_rejects_bad_limits() -> None:
    """max_payload must be 1..2**32-1 and max_plaintext positive."""
    for bad in (0, 1 << 32):
        with pytest.raises(ValueError, match="max_payload"):
            SaslRecordCodec(bad)
        with pytest.raises(ValueError, match="max_payload"):
            SaslRecordCodec(max_payload=bad)
    with pytest.raises(ValueError, match="max_plaintext"):
        SaslRecordCodec(10, max_plaintext=0)
    with pytest.raises(ValueError, match="max_plaintext"):
        SaslRecordCodec(max_plaintext=0)


def test_default_max_buffer() -> None:
    """We accept 0xFFFFFF-byte tokens by default (the largest the 3-byte field can announce)."""
    assert DEFAULT_MAX_BUFFER == 0xFFFFFF
    assert SaslRecordCodec().max_payload == 0xFFFFFF
    assert SaslRecordCodec().max_plaintext == DEFAULT_MAX_PLAINTEXT == 0xFC00


@pytest.mark.parametrize(
    ("peer_max_buffer", "max_plaintext"),
    [(DEFAULT_MAX_BUFFER, 0xFC00), (0xFC00 + WRAP_OVERHEAD_BOUND, 0xFC00), (1000, 1000 - 64), (10, 1)],
)
def test_for_buffers_leaves_room_for_the_wrap_overhead(peer_max_buffer: int, max_plaintext: int) -> None:
    """Our plaintext per record fits the peer's max buffer after the wrap overhead, at most 0xFC00, at least 1."""
    codec = SaslRecordCodec.for_buffers(5000, peer_max_buffer)
    assert codec.max_payload == 5000
    assert codec.max_plaintext == max_plaintext


def test_split_at_a_custom_limit() -> None:
    """split() slices any buffer (here a bytearray) at the codec's max_plaintext."""
    assert [bytes(c) for c in SaslRecordCodec(max_plaintext=3).split(bytearray(b"abcdefg"))] == [b"abc", b"def", b"g"]


# -- the Connection reads SASL records through the codec ------------------------------------------------------------


def test_connection_reads_sasl_records_one_byte_at_a_time(ntlm_users: NTLMUsers) -> None:
    """Byte by byte, a SASL Connection delivers each record exactly when its last byte arrives."""
    client, server = _sasl_pair(ntlm_users)
    assert [type(e) for e in drain(server)] == [HandshakeComplete]
    messages = [b"x", b"bind request", bytes(range(256)) * 300]  # the last one spans two records
    wire = b"".join(client.send(m) for m in messages)
    delivered_at = []
    events = []
    for index in range(len(wire)):
        got, error = feed_pieces(server, [wire[index : index + 1]], max_buffered=4 + DEFAULT_MAX_BUFFER)
        assert error is None
        delivered_at += [index + 1] * len(got)
        events += got
    assert data_of(events) == b"".join(messages)
    ends = []
    position = 0
    codec = SaslRecordCodec()
    while (end := codec.locate(wire, position)) is not None:
        ends.append(end)
        position = end
    assert delivered_at == ends
    assert server.buffered == 0


@pytest.mark.parametrize(("max_buffer", "length"), [(DEFAULT_MAX_BUFFER, 0), (1000, 1001), (1000, 0xFFFFFFFF)])
def test_connection_refuses_a_bad_length_the_same_in_any_chunking(
    ntlm_users: NTLMUsers, max_buffer: int, length: int
) -> None:
    """Records before a zero or over-max-buffer length are delivered, then the same sticky FramingError, whether
    the bytes come whole or one at a time."""
    outcomes = []
    for chunk in (None, 1):
        client, server = _sasl_pair(ntlm_users, sasl_max_buffer=max_buffer)
        assert [type(e) for e in drain(server)] == [HandshakeComplete]
        wire = client.send(b"fine") + length.to_bytes(4, "big") + bytes(20)
        step = chunk or len(wire)
        events, error = feed_pieces(server, [wire[i : i + step] for i in range(0, len(wire), step)])
        assert isinstance(error, FramingError) and f"announces {length} bytes" in str(error)
        assert [e.data for e in events if isinstance(e, Data)] == [b"fine"]
        assert server.buffered <= 4
        assert_broken_everywhere(server, error)
        outcomes.append(str(error))
    assert outcomes[0] == outcomes[1]


# -- RFC 4752 layer message -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        (LayerOffer(SecurityLayer.NONE, 0), "01000000"),
        (LayerOffer(SecurityLayer.INTEGRITY | SecurityLayer.CONFIDENTIALITY, 0x010203), "06010203"),
        (LayerOffer(SecurityLayer.INTEGRITY | SecurityLayer.CONFIDENTIALITY, 0xFFFFFF), "06ffffff"),
        (LayerOffer(SecurityLayer.INTEGRITY, 0xFFFFFF), "02ffffff"),
        (LayerOffer(SecurityLayer.CONFIDENTIALITY, 0x010000, b"dn:cn=admin"), "04010000" + b"dn:cn=admin".hex()),
        (LayerOffer(SecurityLayer.NONE, 0, b"dn:cn=alice"), "01000000" + b"dn:cn=alice".hex()),
        (LayerOffer(SecurityLayer(7), 0x00FC00), "0700fc00"),
    ],
)
def test_layer_message_golden_and_round_trip(offer: LayerOffer, expected: str) -> None:
    """Layer bitmask + 3-byte big-endian max buffer (+ authzid) encode exactly and decode back with exact types."""
    encoded = encode_layer_message(offer)
    assert encoded == bytes.fromhex(expected)
    decoded = decode_layer_message(encoded)
    assert decoded == offer
    assert type(decoded.layers) is SecurityLayer
    assert type(decoded.authzid) is bytes
    assert bool(decoded.layers & SecurityLayer.CONFIDENTIALITY) is bool(offer.layers & SecurityLayer.CONFIDENTIALITY)
    assert bool(decoded.layers & SecurityLayer.NONE) is bool(offer.layers & SecurityLayer.NONE)


@pytest.mark.parametrize(
    ("message", "layers", "max_buffer"),
    [(b"\xf2\x00\x10\x00", SecurityLayer.INTEGRITY, 0x1000), (b"\xfa\x00\x00\x10", SecurityLayer.INTEGRITY, 0x10)],
)
def test_layer_message_ignores_unknown_bits(message: bytes, layers: SecurityLayer, max_buffer: int) -> None:
    """Bits above the three known layers are ignored."""
    assert decode_layer_message(message) == LayerOffer(layers, max_buffer)


@pytest.mark.parametrize(
    "message",
    [b"", b"\x02", b"\x02\x00\x00", b"\x00\x00\x10\x00", b"\x00\xff\xff\xff", b"\xf8\x00\x10\x00", b"\xf8\x00\x00\x01"],
)
def test_invalid_layer_messages(message: bytes) -> None:
    """Fewer than 4 bytes, or no known layer bit, is a FramingError."""
    with pytest.raises(FramingError, match="security-layer message"):
        decode_layer_message(message)


@pytest.mark.parametrize(
    "offer",
    [
        LayerOffer(SecurityLayer.INTEGRITY, -1),
        LayerOffer(SecurityLayer.INTEGRITY, 1 << 24),
        LayerOffer(SecurityLayer(0), 1),
        LayerOffer(SecurityLayer(0), 10),
    ],
)
def test_encode_layer_message_rejects_out_of_range(offer: LayerOffer) -> None:
    """A max buffer outside 3 bytes, or no layer at all, cannot be encoded."""
    with pytest.raises(ValueError):
        encode_layer_message(offer)
