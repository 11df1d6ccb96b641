"""MS-NNS codec: golden bytes, both Error byte orders, the MS-NLMP 4.2.4.4 record, chunking, limits, splitting."""

from __future__ import annotations

import random

import pytest

from negotiate_stream._framing import nns
from negotiate_stream._framing.nns import (
    HANDSHAKE_HEADER_SIZE,
    MAX_HANDSHAKE_PAYLOAD,
    MAX_PLAINTEXT_PER_RECORD,
    MAX_RECORD_PAYLOAD,
    RECORD_HEADER_SIZE,
    HandshakeFrame,
    MessageId,
    NNSRecordCodec,
    decode_error_code,
    encode_error,
    encode_handshake,
    handshake_decoder,
    parse_handshake,
    record_decoder,
    split_plaintext,
)
from negotiate_stream.errors import SEC_E_LOGON_DENIED, FramingError

ERROR_TRUST_FAILURE = 0x000006FE
E_FAIL = 0x80004005

# MS-NLMP 4.2.4.4: "Plaintext" (UTF-16LE) sealed with extended session security, sequence number 0 (DESIGN.md §2).
NLMP_SIGNATURE = bytes.fromhex("01000000 7fb38ec5c55d4976 00000000")
NLMP_CIPHERTEXT = bytes.fromhex("54e50165bf1936dc996020c1811b0f06fb5f")
NLMP_RECORD = bytes.fromhex("22000000") + NLMP_SIGNATURE + NLMP_CIPHERTEXT


# -- handshake messages -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_id", "payload", "expected"),
    [
        (MessageId.HANDSHAKE_DONE, b"", "1401000000"),
        (MessageId.HANDSHAKE_IN_PROGRESS, b"\xaa\xbb", "1601000002aabb"),
        (MessageId.HANDSHAKE_ERROR, bytes(8), "15010000080000000000000000"),
        (MessageId.HANDSHAKE_IN_PROGRESS, b"x" * 0x1234, "1601001234" + "78" * 0x1234),
    ],
)
def test_encode_handshake_golden_bytes(message_id: MessageId, payload: bytes, expected: str) -> None:
    assert encode_handshake(message_id, payload) == bytes.fromhex(expected)


def test_handshake_size_field_is_big_endian_and_max_is_0xffff() -> None:
    wire = encode_handshake(MessageId.HANDSHAKE_IN_PROGRESS, b"\x00" * MAX_HANDSHAKE_PAYLOAD)
    assert wire[:5] == b"\x16\x01\x00\xff\xff"
    assert len(wire) == 5 + 0xFFFF
    with pytest.raises(ValueError, match="65536 bytes"):
        encode_handshake(MessageId.HANDSHAKE_IN_PROGRESS, b"\x00" * (MAX_HANDSHAKE_PAYLOAD + 1))


def test_handshake_round_trip() -> None:
    wire = encode_handshake(MessageId.HANDSHAKE_IN_PROGRESS, b"token") + encode_handshake(MessageId.HANDSHAKE_DONE)
    first = parse_handshake(wire)
    assert first == (HandshakeFrame(MessageId.HANDSHAKE_IN_PROGRESS, b"token"), 10)
    assert type(first[0].payload) is bytes
    assert type(first[0].message_id) is MessageId
    assert parse_handshake(wire, 10) == (HandshakeFrame(MessageId.HANDSHAKE_DONE, b""), 15)
    assert parse_handshake(wire, 15) is None


@pytest.mark.parametrize("cut", range(0, 10))
def test_parse_handshake_incomplete_returns_none(cut: int) -> None:
    wire = encode_handshake(MessageId.HANDSHAKE_IN_PROGRESS, b"token")
    assert parse_handshake(wire[:cut]) is None


# -- error frames -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "big_hex", "little_hex"),
    [
        (SEC_E_LOGON_DENIED, "1501000008 00000000 8009030c", "1501000008 0c030980 00000000"),
        (ERROR_TRUST_FAILURE, "1501000008 00000000 000006fe", "1501000008 fe060000 00000000"),
        (E_FAIL, "1501000008 00000000 80004005", "1501000008 05400080 00000000"),
        (0x12345678, "1501000008 00000000 12345678", "1501000008 78563412 00000000"),
    ],
    ids=["SEC_E_LOGON_DENIED", "ERROR_TRUST_FAILURE", "E_FAIL", "unknown"],
)
def test_error_frames_in_both_byte_orders(code: int, big_hex: str, little_hex: str) -> None:
    big = encode_error(code)
    little = encode_error(code, byteorder="little")
    assert big == bytes.fromhex(big_hex)
    assert big == encode_error(code, byteorder="big")
    assert little == bytes.fromhex(little_hex)
    for wire in (big, little):
        frame, end = parse_handshake(wire)  # type: ignore[misc]
        assert end == 13
        assert frame.message_id is MessageId.HANDSHAKE_ERROR
        assert frame.error_code == code
        assert decode_error_code(frame.payload) == code


def test_error_code_known_value_wins_over_other_reading() -> None:
    # Both readings non-zero: the one that is a known status wins, whichever side it is on.
    payload = (0xDEADBEEF).to_bytes(4, "little") + SEC_E_LOGON_DENIED.to_bytes(4, "big")
    assert decode_error_code(payload) == SEC_E_LOGON_DENIED
    payload = E_FAIL.to_bytes(4, "little") + (0x11223344).to_bytes(4, "big")
    assert decode_error_code(payload) == E_FAIL


def test_error_code_short_payload() -> None:
    assert decode_error_code(b"") == 0
    assert decode_error_code(b"\x01\x02") == 0x0102


def test_encode_error_rejects_unknown_byteorder() -> None:
    with pytest.raises(ValueError, match="byteorder"):
        encode_error(1, byteorder="middle")


# -- data records -------------------------------------------------------------------------------------------------


def test_nlmp_sealed_record_decodes_to_signature_and_ciphertext() -> None:
    codec = NNSRecordCodec()
    parsed = codec.parse(NLMP_RECORD)
    assert parsed is not None
    payload, end = parsed
    assert end == len(NLMP_RECORD) == 4 + 0x22
    assert type(payload) is bytes
    assert len(payload) == 34
    assert payload[:16] == NLMP_SIGNATURE
    assert payload[:4] == b"\x01\x00\x00\x00"  # NTLMSSP_MESSAGE_SIGNATURE version
    assert payload[12:16] == b"\x00\x00\x00\x00"  # sequence number 0
    assert payload[16:] == NLMP_CIPHERTEXT
    assert len(payload[16:]) == 18  # len("Plaintext".encode("utf-16-le"))
    assert codec.encode_header(len(payload)) + payload == NLMP_RECORD


def test_record_header_is_little_endian() -> None:
    assert NNSRecordCodec.encode_header(0x22) == b"\x22\x00\x00\x00"
    assert NNSRecordCodec.encode_header(0x10000) == b"\x00\x00\x01\x00"
    assert RECORD_HEADER_SIZE == 4


def _records(count: int, seed: int) -> tuple[bytes, list[bytes]]:
    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.choice([5, 6, 17, 300, 4096, MAX_RECORD_PAYLOAD])) for _ in range(count)]
    wire = b"".join(NNSRecordCodec.encode_header(len(p)) + p for p in payloads)
    return wire, payloads


def _feed_in_chunks(wire: bytes, sizes: list[int]) -> tuple[list[bytes], list[int]]:
    decoder = record_decoder()
    frames: list[bytes] = []
    consumed: list[int] = []
    offset = 0
    for size in sizes:
        got = decoder.feed(wire[offset : offset + size])
        offset += size
        frames += got
        if got:
            consumed.append(decoder.consumed)
        assert decoder.buffered <= RECORD_HEADER_SIZE + MAX_RECORD_PAYLOAD
    assert offset >= len(wire)
    assert decoder.buffered == 0
    return frames, consumed


def test_record_decoder_one_byte_at_a_time() -> None:
    wire = NLMP_RECORD * 3
    frames, _ = _feed_in_chunks(wire, [1] * len(wire))
    assert frames == [NLMP_RECORD[4:]] * 3


@pytest.mark.parametrize("seed", range(5))
def test_record_decoder_random_chunkings_yield_same_frames_and_consumed(seed: int) -> None:
    wire, payloads = _records(12, seed)
    ends = []
    position = 0
    for payload in payloads:
        position += 4 + len(payload)
        ends.append(position)
    whole, consumed_whole = _feed_in_chunks(wire, [len(wire)])
    assert whole == payloads
    assert consumed_whole == [len(wire)]
    rng = random.Random(seed)
    sizes: list[int] = []
    while sum(sizes) < len(wire):
        sizes.append(rng.choice([1, 2, 3, 4, 5, 7, 100, 5000, 70000]))
    frames, consumed = _feed_in_chunks(wire, sizes)
    assert frames == payloads
    # Every reported `consumed` is a record boundary, and the last one is the whole stream.
    assert set(consumed) <= set(ends)
    assert consumed[-1] == len(wire)
    # Byte by byte: one frame per feed, `consumed` hits every boundary in order.
    frames, consumed = _feed_in_chunks(wire, [1] * len(wire))
    assert frames == payloads
    assert consumed == ends


@pytest.mark.parametrize(
    "length", [0, 1, 4, MAX_RECORD_PAYLOAD + 1, 0x7FFFFFFF, 0xFFFFFFFF], ids=lambda n: f"len={n:#x}"
)
def test_record_length_limits_enforced_from_the_header(length: int) -> None:
    decoder = record_decoder()
    header = length.to_bytes(4, "little")
    for byte in header[:3]:
        assert decoder.feed(bytes([byte])) == []
    with pytest.raises(FramingError, match=f"announces {length} bytes") as info:
        decoder.feed(header[3:])
    assert info.value.status == 0x80090308  # SEC_E_INVALID_TOKEN
    assert decoder.buffered <= RECORD_HEADER_SIZE
    assert decoder.consumed == 0


@pytest.mark.parametrize("length", [5, MAX_RECORD_PAYLOAD])
def test_record_length_boundaries_accepted(length: int) -> None:
    decoder = record_decoder()
    assert decoder.feed(length.to_bytes(4, "little")) == []
    assert decoder.buffered == 4
    assert decoder.feed(b"\x00" * (length - 1)) == []
    assert decoder.feed(b"\x01") == [b"\x00" * (length - 1) + b"\x01"]
    assert decoder.consumed == 4 + length


def test_handshake_decoder_one_byte_at_a_time_and_chunked() -> None:
    wire = (
        encode_handshake(MessageId.HANDSHAKE_IN_PROGRESS, b"negotiate")
        + encode_handshake(MessageId.HANDSHAKE_DONE, b"")
        + encode_error(SEC_E_LOGON_DENIED, byteorder="little")
    )
    expected = [
        HandshakeFrame(MessageId.HANDSHAKE_IN_PROGRESS, b"negotiate"),
        HandshakeFrame(MessageId.HANDSHAKE_DONE, b""),
        HandshakeFrame(MessageId.HANDSHAKE_ERROR, SEC_E_LOGON_DENIED.to_bytes(8, "little")),
    ]
    decoder = handshake_decoder()
    frames: list[HandshakeFrame] = []
    consumed = []
    for byte in wire:
        got = decoder.feed(bytes([byte]))
        frames += got
        if got:
            consumed.append(decoder.consumed)
    assert frames == expected
    assert consumed == [14, 19, 32]
    decoder = handshake_decoder()
    assert decoder.feed(wire) == expected
    assert decoder.consumed == len(wire)
    assert decoder.buffered == 0


@pytest.mark.parametrize("message_id", [0x00, 0x13, 0x17, 0x80, 0xFF])
def test_unknown_message_id_rejected_at_first_byte(message_id: int) -> None:
    decoder = handshake_decoder()
    with pytest.raises(FramingError, match=f"0x{message_id:02X}"):
        decoder.feed(bytes([message_id]))
    assert decoder.buffered <= HANDSHAKE_HEADER_SIZE
    assert decoder.consumed == 0


@pytest.mark.parametrize("version", [(0, 0), (1, 1), (2, 0), (0xFF, 0xFF)])
def test_bad_version_rejected_before_payload(version: tuple[int, int]) -> None:
    header = bytes([0x16, *version]) + b"\xff\xff"
    decoder = handshake_decoder()
    with pytest.raises(FramingError, match="version"):
        for byte in header:
            decoder.feed(bytes([byte]))
    assert decoder.buffered <= HANDSHAKE_HEADER_SIZE


def test_handshake_decoder_valid_frame_then_garbage_in_one_chunk() -> None:
    """The frame before an invalid header is returned; the error follows on the next call and stays."""
    decoder = handshake_decoder()
    assert decoder.feed(encode_handshake(MessageId.HANDSHAKE_DONE) + b"\x99") == [
        HandshakeFrame(MessageId.HANDSHAKE_DONE, b"")
    ]
    assert decoder.consumed == 5
    assert decoder.buffered == 0
    with pytest.raises(FramingError, match="0x99") as first:
        decoder.feed(b"")
    with pytest.raises(FramingError) as again:
        decoder.feed(encode_handshake(MessageId.HANDSHAKE_DONE))
    assert again.value is first.value
    assert decoder.consumed == 5


def test_frames_before_an_invalid_header_do_not_depend_on_chunking() -> None:
    good = NLMP_RECORD
    bad = (0).to_bytes(4, "little")
    byte_by_byte = record_decoder()
    frames_small: list[bytes] = []
    with pytest.raises(FramingError):
        for byte in good + bad:
            frames_small += byte_by_byte.feed(bytes([byte]))
    assert frames_small == [good[4:]]
    assert byte_by_byte.consumed == len(good)
    at_once = record_decoder()
    frames_big = at_once.feed(good + bad)
    with pytest.raises(FramingError):
        at_once.feed(b"")
    assert frames_big == frames_small
    assert at_once.consumed == byte_by_byte.consumed
    assert at_once.buffered == 0  # nothing past a bad header is kept


# -- splitting ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, []),
        (1, [1]),
        (0xFC00, [0xFC00]),
        (0xFC01, [0xFC00, 1]),
        (1 << 20, [0xFC00] * 16 + [(1 << 20) - 16 * 0xFC00]),
    ],
    ids=["0", "1", "0xFC00", "0xFC01", "1MiB"],
)
def test_split_plaintext_at_0xfc00(size: int, expected: list[int]) -> None:
    data = random.Random(size).randbytes(size)
    parts = list(split_plaintext(data))
    assert [len(p) for p in parts] == expected
    assert all(isinstance(p, memoryview) for p in parts)
    assert b"".join(parts) == data
    assert MAX_PLAINTEXT_PER_RECORD == 0xFC00


def test_split_plaintext_counts_bytes_of_multibyte_views() -> None:
    import array

    view = memoryview(array.array("I", range(0x4000)))  # 0x10000 bytes in 0x4000 items
    parts = list(split_plaintext(view))
    assert [len(p) for p in parts] == [0xFC00, 0x400]
    assert b"".join(parts) == view.tobytes()


def test_module_constants() -> None:
    assert nns.MIN_RECORD_PAYLOAD == 5
    assert MAX_RECORD_PAYLOAD == 65536
    assert HANDSHAKE_HEADER_SIZE == 5
