"""SASL security-layer codec: big-endian records, limits before buffering, RFC 4752 layer messages."""

from __future__ import annotations

import random

import pytest

from negotiate_stream._framing.sasl import (
    DEFAULT_MAX_BUFFER,
    LayerOffer,
    SaslRecordCodec,
    SecurityLayer,
    decode_layer_message,
    encode_layer_message,
    record_decoder,
)
from negotiate_stream.errors import FramingError


def _record(token: bytes) -> bytes:
    return SaslRecordCodec.encode_header(len(token)) + token


def test_header_is_big_endian() -> None:
    assert SaslRecordCodec.encode_header(1) == b"\x00\x00\x00\x01"
    assert SaslRecordCodec.encode_header(0x123456) == b"\x00\x12\x34\x56"
    assert _record(b"abc") == b"\x00\x00\x00\x03abc"


def test_round_trip_whole_and_byte_by_byte() -> None:
    rng = random.Random(7)
    tokens = [rng.randbytes(n) for n in (1, 2, 16, 1000, 70000)]
    wire = b"".join(_record(t) for t in tokens)
    decoder = record_decoder()
    assert decoder.feed(wire) == tokens
    assert decoder.consumed == len(wire)
    assert decoder.buffered == 0
    decoder = record_decoder()
    frames: list[bytes] = []
    for byte in wire:
        frames += decoder.feed(bytes([byte]))
        assert decoder.buffered <= 4 + 70000
    assert frames == tokens
    assert all(type(f) is bytes for f in frames)
    assert decoder.consumed == len(wire)


def test_parse_returns_end_offset_and_none_when_incomplete() -> None:
    codec = SaslRecordCodec()
    wire = _record(b"hello") + _record(b"x")
    assert codec.parse(wire) == (b"hello", 9)
    assert codec.parse(wire, 9) == (b"x", 14)
    assert codec.parse(wire, 14) is None
    for cut in range(9):
        assert codec.parse(wire[:cut]) is None


@pytest.mark.parametrize(
    ("max_payload", "length"),
    [
        (DEFAULT_MAX_BUFFER, 0),
        (DEFAULT_MAX_BUFFER, DEFAULT_MAX_BUFFER + 1),
        (DEFAULT_MAX_BUFFER, 0xFFFFFFFF),
        (100, 101),
    ],
)
def test_zero_and_oversize_rejected_before_buffering(max_payload: int, length: int) -> None:
    decoder = record_decoder(max_payload)
    header = length.to_bytes(4, "big")
    for byte in header[:3]:
        assert decoder.feed(bytes([byte])) == []
    with pytest.raises(FramingError, match=f"announces {length} bytes") as info:
        decoder.feed(header[3:])
    assert info.value.status == 0x80090308
    assert decoder.buffered <= 4


def test_max_payload_boundary_accepted() -> None:
    decoder = record_decoder(100)
    assert decoder.feed(_record(b"\x07" * 100)) == [b"\x07" * 100]


def test_codec_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_payload"):
        SaslRecordCodec(max_payload=0)
    with pytest.raises(ValueError, match="max_payload"):
        SaslRecordCodec(max_payload=1 << 32)
    with pytest.raises(ValueError, match="max_plaintext"):
        SaslRecordCodec(max_plaintext=0)


@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        (LayerOffer(SecurityLayer.NONE, 0), "01000000"),
        (LayerOffer(SecurityLayer.INTEGRITY | SecurityLayer.CONFIDENTIALITY, 0xFFFFFF), "06ffffff"),
        (LayerOffer(SecurityLayer.CONFIDENTIALITY, 0x010000, b"dn:cn=admin"), "04010000" + b"dn:cn=admin".hex()),
        (LayerOffer(SecurityLayer(7), 0x00FC00), "0700fc00"),
    ],
)
def test_layer_message_golden_and_round_trip(offer: LayerOffer, expected: str) -> None:
    encoded = encode_layer_message(offer)
    assert encoded == bytes.fromhex(expected)
    decoded = decode_layer_message(encoded)
    assert decoded == offer
    assert type(decoded.layers) is SecurityLayer
    assert type(decoded.authzid) is bytes


def test_layer_message_ignores_unknown_bits() -> None:
    assert decode_layer_message(b"\xf2\x00\x10\x00") == LayerOffer(SecurityLayer.INTEGRITY, 0x1000)


@pytest.mark.parametrize("message", [b"", b"\x02", b"\x02\x00\x00", b"\x00\xff\xff\xff", b"\xf8\x00\x00\x01"])
def test_invalid_layer_messages(message: bytes) -> None:
    with pytest.raises(FramingError, match="security-layer message"):
        decode_layer_message(message)


@pytest.mark.parametrize(
    "offer",
    [
        LayerOffer(SecurityLayer.INTEGRITY, -1),
        LayerOffer(SecurityLayer.INTEGRITY, 1 << 24),
        LayerOffer(SecurityLayer(0), 1),
    ],
)
def test_encode_layer_message_rejects_out_of_range(offer: LayerOffer) -> None:
    with pytest.raises(ValueError):
        encode_layer_message(offer)
