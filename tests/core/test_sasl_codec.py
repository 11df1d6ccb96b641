"""SASL security-layer codec (RFC 4422 section 3.7) and the RFC 4752 layer negotiation message."""

from __future__ import annotations

import itertools
import random

import pytest

from negotiate_stream._framing import sasl
from negotiate_stream.errors import SEC_E_INVALID_TOKEN, FramingError


def _record(token: bytes) -> bytes:
    return sasl.SaslRecordCodec.encode_header(len(token)) + token


def test_header_is_big_endian() -> None:
    assert sasl.SaslRecordCodec.encode_header(0x22) == b"\x00\x00\x00\x22"
    assert sasl.SaslRecordCodec.encode_header(0x01020304) == b"\x01\x02\x03\x04"


def test_round_trip_any_chunking() -> None:
    rng = random.Random(99)
    tokens = [b"x", bytes(range(256)), b"\x00" * 70000] + [rng.randbytes(rng.randrange(1, 500)) for _ in range(15)]
    wire = b"".join(_record(t) for t in tokens)
    splits = [list(range(1, len(wire))), []] + [
        sorted(rng.sample(range(1, len(wire)), rng.randrange(1, 40))) for _ in range(5)
    ]
    for cuts in splits:
        decoder = sasl.record_decoder()
        bounds = [0, *cuts, len(wire)]
        got: list[bytes] = []
        for start, end in itertools.pairwise(bounds):
            got += decoder.feed(wire[start:end])
        assert got == tokens
        assert all(type(t) is bytes for t in got)
        assert decoder.consumed == len(wire) and decoder.buffered == 0


def test_parse_at_offset_and_incomplete() -> None:
    codec = sasl.SaslRecordCodec()
    wire = _record(b"hello")
    assert codec.parse(b"ab" + wire, 2) == (b"hello", 2 + len(wire))
    for cut in range(len(wire)):
        assert codec.parse(wire[:cut]) is None


def test_zero_length_rejected_before_buffering() -> None:
    decoder = sasl.record_decoder()
    assert decoder.feed(b"\x00\x00\x00") == []
    with pytest.raises(FramingError, match="announces 0 bytes") as info:
        decoder.feed(b"\x00")
    assert info.value.status == SEC_E_INVALID_TOKEN
    assert decoder.buffered <= 4


@pytest.mark.parametrize(("limit", "length"), [(100, 101), (sasl.DEFAULT_MAX_BUFFER, 0x1000000), (1, 0xFFFFFFFF)])
def test_over_max_buffer_rejected_before_buffering(limit: int, length: int) -> None:
    decoder = sasl.record_decoder(limit)
    header = length.to_bytes(4, "big")
    for byte in header[:3]:
        assert decoder.feed(bytes([byte])) == []
    with pytest.raises(FramingError, match=f"announces {length} bytes"):
        decoder.feed(header[3:])
    assert decoder.buffered <= 4


def test_max_buffer_inclusive() -> None:
    decoder = sasl.record_decoder(100)
    assert decoder.feed(_record(b"m" * 100)) == [b"m" * 100]


@pytest.mark.parametrize("max_payload", [0, 1 << 32])
def test_codec_rejects_bad_limits(max_payload: int) -> None:
    with pytest.raises(ValueError):
        sasl.SaslRecordCodec(max_payload)
    with pytest.raises(ValueError):
        sasl.SaslRecordCodec(10, max_plaintext=0)


def test_default_max_buffer() -> None:
    assert sasl.DEFAULT_MAX_BUFFER == 0xFFFFFF
    assert sasl.SaslRecordCodec().max_payload == 0xFFFFFF


# -- RFC 4752 layer message -----------------------------------------------------------------------------------


def test_layer_message_golden_and_round_trip() -> None:
    offer = sasl.LayerOffer(sasl.SecurityLayer.INTEGRITY | sasl.SecurityLayer.CONFIDENTIALITY, 0x010203)
    wire = sasl.encode_layer_message(offer)
    assert wire == b"\x06\x01\x02\x03"
    decoded = sasl.decode_layer_message(wire)
    assert decoded == offer
    assert decoded.layers & sasl.SecurityLayer.CONFIDENTIALITY
    assert not decoded.layers & sasl.SecurityLayer.NONE


def test_layer_message_with_authzid() -> None:
    offer = sasl.LayerOffer(sasl.SecurityLayer.NONE, 0, b"dn:cn=alice")
    wire = sasl.encode_layer_message(offer)
    assert wire == b"\x01\x00\x00\x00dn:cn=alice"
    assert sasl.decode_layer_message(wire) == offer


def test_layer_message_max_buffer_limits() -> None:
    assert sasl.encode_layer_message(sasl.LayerOffer(sasl.SecurityLayer.INTEGRITY, 0xFFFFFF)) == b"\x02\xff\xff\xff"
    with pytest.raises(ValueError):
        sasl.encode_layer_message(sasl.LayerOffer(sasl.SecurityLayer.INTEGRITY, 0x1000000))
    with pytest.raises(ValueError):
        sasl.encode_layer_message(sasl.LayerOffer(sasl.SecurityLayer.INTEGRITY, -1))
    with pytest.raises(ValueError):
        sasl.encode_layer_message(sasl.LayerOffer(sasl.SecurityLayer(0), 10))


@pytest.mark.parametrize("message", [b"", b"\x02", b"\x02\x00\x00", b"\x00\x00\x10\x00", b"\xf8\x00\x10\x00"])
def test_invalid_layer_messages(message: bytes) -> None:
    with pytest.raises(FramingError, match="security-layer message"):
        sasl.decode_layer_message(message)


def test_unknown_layer_bits_are_ignored() -> None:
    assert sasl.decode_layer_message(b"\xfa\x00\x00\x10").layers == sasl.SecurityLayer.INTEGRITY
