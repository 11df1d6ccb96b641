"""MS-NNS codec: golden bytes, error codes in both byte orders, incremental decoding, limits, plaintext split."""

from __future__ import annotations

import itertools
import random

import pytest

from negotiate_stream._framing import nns
from negotiate_stream.errors import (
    E_FAIL,
    ERROR_TRUST_FAILURE,
    SEC_E_INVALID_TOKEN,
    SEC_E_LOGON_DENIED,
    FramingError,
)

# MS-NLMP 4.2.4.4: "Plaintext" (UTF-16LE) sealed with extended session security, sequence number 0.
NLMP_SIGNATURE = bytes.fromhex("01000000 7fb38ec5c55d4976 00000000")
NLMP_CIPHERTEXT = bytes.fromhex("54e50165bf1936dc996020c1811b0f06fb5f")
NLMP_RECORD = bytes.fromhex("22000000") + NLMP_SIGNATURE + NLMP_CIPHERTEXT


# -- handshake messages ---------------------------------------------------------------------------------------


def test_handshake_done_empty_golden_bytes() -> None:
    assert nns.encode_handshake(nns.MessageId.HANDSHAKE_DONE, b"") == bytes.fromhex("1401000000")


def test_handshake_in_progress_header_is_big_endian_size() -> None:
    token = bytes(range(256)) * 2 + b"xyz"  # 515 = 0x0203 bytes
    wire = nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, token)
    assert wire[:5] == bytes.fromhex("1601000203")
    assert wire[5:] == token


def test_handshake_max_token_and_over_limit() -> None:
    token = b"\xaa" * 0xFFFF
    wire = nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, token)
    assert wire[:5] == bytes.fromhex("160100ffff")
    frame, end = nns.parse_handshake(wire) or (None, 0)
    assert frame == nns.HandshakeFrame(nns.MessageId.HANDSHAKE_IN_PROGRESS, token)
    assert end == len(wire) == 0xFFFF + 5
    with pytest.raises(ValueError, match=r"0xFFFF|65535"):
        nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, token + b"!")


@pytest.mark.parametrize("message_id", list(nns.MessageId))
def test_handshake_round_trip(message_id: nns.MessageId) -> None:
    wire = nns.encode_handshake(message_id, b"token")
    parsed = nns.parse_handshake(b"junk" + wire + b"next", 4)
    assert parsed is not None
    frame, end = parsed
    assert type(frame.message_id) is nns.MessageId and frame.message_id is message_id
    assert type(frame.payload) is bytes and frame.payload == b"token"
    assert end == 4 + len(wire)


@pytest.mark.parametrize(
    "code", [SEC_E_LOGON_DENIED, ERROR_TRUST_FAILURE, E_FAIL, SEC_E_INVALID_TOKEN, 0x12345678, 0x00000001]
)
def test_error_frame_both_byte_orders_decode_to_same_code(code: int) -> None:
    big = nns.encode_error(code, byteorder="big")
    little = nns.encode_error(code, byteorder="little")
    assert big[:5] == little[:5] == bytes.fromhex("1501000008")
    assert big[5:] == code.to_bytes(8, "big")  # .NET <= 7: big-endian in the last 4 bytes
    assert little[5:] == code.to_bytes(4, "little") + bytes(4)  # .NET 8+: little-endian in the first 4
    for wire in (big, little):
        parsed = nns.parse_handshake(wire)
        assert parsed is not None
        frame, end = parsed
        assert end == 13
        assert frame.message_id is nns.MessageId.HANDSHAKE_ERROR
        assert frame.error_code == code
        assert nns.decode_error_code(frame.payload) == code


def test_error_frame_golden_logon_denied() -> None:
    assert nns.encode_error(SEC_E_LOGON_DENIED) == bytes.fromhex("1501000008 000000008009030c")
    assert nns.encode_error(ERROR_TRUST_FAILURE) == bytes.fromhex("1501000008 00000000000006fe")


def test_error_code_known_value_wins_over_other_reading() -> None:
    # Both readings are non-zero; only the little-endian one is a known status.
    payload = SEC_E_LOGON_DENIED.to_bytes(4, "little") + (0x01020304).to_bytes(4, "big")
    assert nns.decode_error_code(payload) == SEC_E_LOGON_DENIED


def test_encode_error_rejects_bad_byteorder() -> None:
    with pytest.raises(ValueError):
        nns.encode_error(1, byteorder="middle")


# -- data records ---------------------------------------------------------------------------------------------


def test_nlmp_sealed_record_decodes_to_signature_and_ciphertext() -> None:
    assert len(NLMP_RECORD) == 4 + 0x22
    decoder = nns.record_decoder()
    payloads = decoder.feed(NLMP_RECORD)
    assert payloads == [NLMP_SIGNATURE + NLMP_CIPHERTEXT]
    payload = payloads[0]
    assert type(payload) is bytes and len(payload) == 34
    assert payload[:16] == NLMP_SIGNATURE and payload[:4] == b"\x01\x00\x00\x00"
    assert payload[16:] == NLMP_CIPHERTEXT and len(payload[16:]) == 18
    assert decoder.consumed == len(NLMP_RECORD) and decoder.buffered == 0
    # ... and re-encodes byte for byte.
    codec = nns.NNSRecordCodec()
    assert codec.encode_header(len(payload)) + payload == NLMP_RECORD
    assert codec.encode_header(0x22) == b"\x22\x00\x00\x00"


def test_record_codec_parse_incomplete_and_offset() -> None:
    codec = nns.NNSRecordCodec()
    for cut in range(len(NLMP_RECORD)):
        assert codec.parse(NLMP_RECORD[:cut]) is None
    assert codec.parse(b"xx" + NLMP_RECORD, 2) == (NLMP_RECORD[4:], 2 + len(NLMP_RECORD))


def _stream_of_frames() -> tuple[bytes, list[bytes]]:
    rng = random.Random(4242)
    payloads = [NLMP_RECORD[4:], b"\x05" * 5, bytes(rng.randrange(256) for _ in range(0x10000))]
    payloads += [bytes(rng.randrange(256) for _ in range(rng.randrange(5, 300))) for _ in range(20)]
    wire = b"".join(nns.NNSRecordCodec.encode_header(len(p)) + p for p in payloads)
    return wire, payloads


def _chunkings(length: int) -> list[list[int]]:
    """Split points: 1 byte at a time, whole, and several random chunkings."""
    rng = random.Random(7)
    result = [list(range(1, length)), []]
    for _ in range(5):
        result.append(sorted(rng.sample(range(1, length), min(length - 1, rng.randrange(1, 60)))))
    return result


def _feed_split(decoder: nns.FrameDecoder, wire: bytes, cuts: list[int]) -> list:  # type: ignore[type-arg]
    frames = []
    bounds = [0, *cuts, len(wire)]
    for start, end in itertools.pairwise(bounds):
        frames += decoder.feed(wire[start:end])
    return frames


def test_record_decoder_any_chunking_same_frames() -> None:
    wire, payloads = _stream_of_frames()
    for cuts in _chunkings(len(wire)):
        decoder = nns.record_decoder()
        assert _feed_split(decoder, wire, cuts) == payloads
        assert decoder.consumed == len(wire)
        assert decoder.buffered == 0


def test_record_decoder_reports_partial_frame_as_buffered() -> None:
    decoder = nns.record_decoder()
    assert decoder.feed(NLMP_RECORD[:-1]) == []
    assert decoder.buffered == len(NLMP_RECORD) - 1 and decoder.consumed == 0
    assert decoder.feed(NLMP_RECORD[-1:] + NLMP_RECORD[:3]) == [NLMP_RECORD[4:]]
    assert decoder.consumed == len(NLMP_RECORD) and decoder.buffered == 3


def test_handshake_decoder_any_chunking_same_frames() -> None:
    frames = [
        nns.HandshakeFrame(nns.MessageId.HANDSHAKE_IN_PROGRESS, b"NTLMSSP\x00\x01" + bytes(30)),
        nns.HandshakeFrame(nns.MessageId.HANDSHAKE_IN_PROGRESS, bytes(range(256)) * 3),
        nns.HandshakeFrame(nns.MessageId.HANDSHAKE_DONE, b""),
        nns.HandshakeFrame(nns.MessageId.HANDSHAKE_ERROR, SEC_E_LOGON_DENIED.to_bytes(8, "big")),
    ]
    wire = b"".join(nns.encode_handshake(f.message_id, f.payload) for f in frames)
    for cuts in _chunkings(len(wire)):
        decoder = nns.handshake_decoder()
        assert _feed_split(decoder, wire, cuts) == frames
        assert decoder.consumed == len(wire) and decoder.buffered == 0


# -- limits, enforced from the header alone ------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 4, 0x10001, 0xFFFFFFFF])
def test_record_bad_length_rejected_as_header_arrives(length: int) -> None:
    decoder = nns.record_decoder()
    header = length.to_bytes(4, "little")
    for byte in header[:3]:
        assert decoder.feed(bytes([byte])) == []
    with pytest.raises(FramingError, match=f"announces {length} bytes") as info:
        decoder.feed(header[3:])
    assert info.value.status == SEC_E_INVALID_TOKEN
    assert decoder.buffered <= nns.RECORD_HEADER_SIZE


@pytest.mark.parametrize("length", [5, 0x10000])
def test_record_length_limits_inclusive(length: int) -> None:
    decoder = nns.record_decoder()
    payload = b"p" * length
    assert decoder.feed(nns.NNSRecordCodec.encode_header(length)) == []
    assert decoder.buffered == 4
    assert decoder.feed(payload) == [payload]


def test_record_bad_length_in_one_chunk_buffers_nothing_after_error() -> None:
    decoder = nns.record_decoder()
    with pytest.raises(FramingError):
        decoder.feed((0x7FFFFFFF).to_bytes(4, "little"))
    assert decoder.buffered <= nns.RECORD_HEADER_SIZE


@pytest.mark.parametrize("first", [0x00, 0x13, 0x17, 0x01, 0xFF, 0x22])
def test_unknown_message_id_rejected_on_first_byte(first: int) -> None:
    decoder = nns.handshake_decoder()
    with pytest.raises(FramingError, match=f"0x{first:02X}"):
        decoder.feed(bytes([first]))
    assert decoder.buffered <= nns.HANDSHAKE_HEADER_SIZE


@pytest.mark.parametrize("version", [(0, 0), (1, 1), (2, 0), (0, 1)])
def test_bad_version_rejected_on_third_byte(version: tuple[int, int]) -> None:
    decoder = nns.handshake_decoder()
    assert decoder.feed(b"\x16") == []
    assert decoder.feed(bytes([version[0]])) == []
    with pytest.raises(FramingError, match="version"):
        decoder.feed(bytes([version[1]]))
    assert decoder.buffered <= nns.HANDSHAKE_HEADER_SIZE


def test_invalid_header_with_payload_in_one_chunk_is_not_buffered() -> None:
    decoder = nns.handshake_decoder()
    with pytest.raises(FramingError):
        decoder.feed(b"\x17\x01\x00\xff\xff" + bytes(0xFFFF))
    assert decoder.buffered <= nns.HANDSHAKE_HEADER_SIZE


def test_frames_before_invalid_header_count_the_same_in_any_chunking() -> None:
    wire = NLMP_RECORD + (3).to_bytes(4, "little")
    byte_by_byte = nns.record_decoder()
    got: list[bytes] = []
    with pytest.raises(FramingError):
        for index in range(len(wire)):
            got += byte_by_byte.feed(wire[index : index + 1])
    assert got == [NLMP_RECORD[4:]] and byte_by_byte.consumed == len(NLMP_RECORD)
    whole = nns.record_decoder()
    # The good record comes out first; the invalid header's error follows (and sticks) on the next call.
    assert whole.feed(wire) == [NLMP_RECORD[4:]]
    with pytest.raises(FramingError):
        whole.feed(b"")
    with pytest.raises(FramingError):
        whole.feed(b"more")
    assert whole.consumed == byte_by_byte.consumed
    assert whole.buffered == 0


# -- plaintext split ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, []),
        (1, [1]),
        (0xFC00, [0xFC00]),
        (0xFC01, [0xFC00, 1]),
        (1 << 20, [0xFC00] * 16 + [(1 << 20) - 16 * 0xFC00]),
    ],
)
def test_split_plaintext_at_0xfc00(size: int, expected: list[int]) -> None:
    data = bytes(random.Random(size).randrange(256) for _ in range(size)) if size < 70000 else b"ab" * (size // 2)
    chunks = list(nns.split_plaintext(data))
    assert [len(c) for c in chunks] == expected
    assert all(isinstance(c, memoryview) for c in chunks)
    assert b"".join(chunks) == data
    assert nns.MAX_PLAINTEXT_PER_RECORD == 0xFC00


def test_split_plaintext_custom_limit_and_bytearray() -> None:
    assert [bytes(c) for c in nns.split_plaintext(bytearray(b"abcdefg"), 3)] == [b"abc", b"def", b"g"]
