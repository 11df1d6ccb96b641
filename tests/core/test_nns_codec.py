"""MS-NNS codec: golden bytes, both Error byte orders, the MS-NLMP 4.2.4.4 record, limits from the header alone,
splitting, and the Connection reading handshake messages and records through it in any chunking."""

from __future__ import annotations

import array
import logging
import random

import pytest

from negotiate_stream import Connection, Data, FramingError, SecurityContext
from negotiate_stream._framing import nns
from negotiate_stream._framing.nns import (
    ERROR_PAYLOAD_SIZE,
    HANDSHAKE_HEADER_SIZE,
    MAX_HANDSHAKE_PAYLOAD,
    MAX_PLAINTEXT_PER_RECORD,
    MAX_RECORD_PAYLOAD,
    MIN_RECORD_PAYLOAD,
    RECORD_HEADER_SIZE,
    HandshakeFrame,
    MessageId,
    NNSRecordCodec,
    decode_error_code,
    encode_error,
    encode_handshake,
    parse_handshake,
)
from negotiate_stream.errors import E_FAIL, ERROR_TRUST_FAILURE, SEC_E_INVALID_TOKEN, SEC_E_LOGON_DENIED
from negotiate_stream.testing import NTLMUsers, connection_pair
from tests.support.core import assert_broken_everywhere, data_of, established, feed_pieces

# MS-NLMP 4.2.4.4: "Plaintext" (UTF-16LE) sealed with extended session security, sequence number 0 (DESIGN.md §2).
NLMP_SIGNATURE = bytes.fromhex("01000000 7fb38ec5c55d4976 00000000")
NLMP_CIPHERTEXT = bytes.fromhex("54e50165bf1936dc996020c1811b0f06fb5f")
NLMP_RECORD = bytes.fromhex("22000000") + NLMP_SIGNATURE + NLMP_CIPHERTEXT


def parse_records(wire: bytes | bytearray, codec: NNSRecordCodec | None = None) -> tuple[list[bytes], list[int]]:
    """Parse every complete record of ``wire``; return the payloads and the end offset of each."""
    codec = codec or NNSRecordCodec()
    payloads: list[bytes] = []
    ends: list[int] = []
    position = 0
    while (parsed := codec.parse(wire, position)) is not None:
        payload, position = parsed
        payloads.append(payload)
        ends.append(position)
    return payloads, ends


def parse_handshakes(wire: bytes) -> tuple[list[HandshakeFrame], int]:
    """Parse every complete handshake message of ``wire``; return them and the offset after the last."""
    frames: list[HandshakeFrame] = []
    position = 0
    while (parsed := parse_handshake(wire, position)) is not None:
        frame, position = parsed
        frames.append(frame)
    return frames, position


def cut_points(length: int, seed: int, extra: list[int] | None = None) -> list[int]:
    """Prefix lengths to try: empty and whole, every given boundary +-1, and some random ones."""
    rng = random.Random(seed)
    points = {0, length, *rng.sample(range(length + 1), min(length + 1, 60))}
    for boundary in extra or []:
        points |= {boundary - 1, boundary, boundary + 1}
    return sorted(p for p in points if 0 <= p <= length)


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
    """Handshake messages encode to the exact MS-NNS bytes (id, version 1.0, big-endian size, token)."""
    assert encode_handshake(message_id, payload) == bytes.fromhex(expected)


def test_handshake_in_progress_header_is_big_endian_size() -> None:
    """The 2-byte payload size of a handshake header is big-endian."""
    token = bytes(range(256)) * 2 + b"xyz"  # 515 = 0x0203 bytes
    wire = encode_handshake(MessageId.HANDSHAKE_IN_PROGRESS, token)
    assert wire[:5] == bytes.fromhex("1601000203")
    assert wire[5:] == token


def test_handshake_max_token_and_over_limit() -> None:
    """A 0xFFFF-byte token encodes and parses back; one byte more is refused when encoding."""
    token = b"\xaa" * MAX_HANDSHAKE_PAYLOAD
    wire = encode_handshake(MessageId.HANDSHAKE_IN_PROGRESS, token)
    assert wire[:5] == bytes.fromhex("160100ffff") == b"\x16\x01\x00\xff\xff"
    frame, end = parse_handshake(wire) or (None, 0)
    assert frame == HandshakeFrame(MessageId.HANDSHAKE_IN_PROGRESS, token)
    assert end == len(wire) == 0xFFFF + 5
    with pytest.raises(ValueError, match=r"65536 bytes .*(0xFFFF|65535)"):
        encode_handshake(MessageId.HANDSHAKE_IN_PROGRESS, token + b"!")


@pytest.mark.parametrize("message_id", list(MessageId))
def test_handshake_round_trip(message_id: MessageId) -> None:
    """Every message id round-trips at an offset, with exact types (MessageId, bytes) and the end offset."""
    wire = encode_handshake(message_id, b"token")
    parsed = parse_handshake(b"junk" + wire + b"next", 4)
    assert parsed is not None
    frame, end = parsed
    assert type(frame.message_id) is MessageId and frame.message_id is message_id
    assert type(frame.payload) is bytes and frame.payload == b"token"
    assert end == 4 + len(wire)


def test_consecutive_handshake_messages_parse_in_turn() -> None:
    """Two messages in one buffer parse one after the other; nothing is left after the second."""
    wire = encode_handshake(MessageId.HANDSHAKE_IN_PROGRESS, b"token") + encode_handshake(MessageId.HANDSHAKE_DONE)
    first = parse_handshake(wire)
    assert first == (HandshakeFrame(MessageId.HANDSHAKE_IN_PROGRESS, b"token"), 10)
    assert type(first[0].payload) is bytes
    assert type(first[0].message_id) is MessageId
    assert parse_handshake(wire, 10) == (HandshakeFrame(MessageId.HANDSHAKE_DONE, b""), 15)
    assert parse_handshake(wire, 15) is None


@pytest.mark.parametrize("cut", range(0, 10))
def test_parse_handshake_incomplete_returns_none(cut: int) -> None:
    """Any strict prefix of a valid message parses as "need more bytes"."""
    wire = encode_handshake(MessageId.HANDSHAKE_IN_PROGRESS, b"token")
    assert parse_handshake(wire[:cut]) is None


def test_handshake_messages_parse_the_same_from_any_prefix() -> None:
    """A message is returned exactly when all of its bytes are there, whatever the cut (the parser keeps no state)."""
    frames = [
        HandshakeFrame(MessageId.HANDSHAKE_IN_PROGRESS, b"NTLMSSP\x00\x01" + bytes(30)),
        HandshakeFrame(MessageId.HANDSHAKE_IN_PROGRESS, bytes(range(256)) * 3),
        HandshakeFrame(MessageId.HANDSHAKE_DONE, b""),
        HandshakeFrame(MessageId.HANDSHAKE_ERROR, SEC_E_LOGON_DENIED.to_bytes(8, "big")),
        HandshakeFrame(MessageId.HANDSHAKE_ERROR, SEC_E_LOGON_DENIED.to_bytes(8, "little")),
    ]
    wire = b"".join(encode_handshake(f.message_id, f.payload) for f in frames)
    ends = [sum(HANDSHAKE_HEADER_SIZE + len(f.payload) for f in frames[: i + 1]) for i in range(len(frames))]
    assert parse_handshakes(wire) == (frames, len(wire))
    for cut in range(len(wire) + 1):  # every byte of the stream as the end of what has arrived
        complete = [f for f, end in zip(frames, ends, strict=True) if end <= cut]
        assert parse_handshakes(wire[:cut]) == (complete, ends[len(complete) - 1] if complete else 0)


def test_describe_names_the_message_and_its_size_never_its_bytes() -> None:
    """The handshake trace line names the message id and the token size (or the error code), not the token."""
    token = b"NTLMSSP\x00secret-looking bytes"
    assert HandshakeFrame(MessageId.HANDSHAKE_IN_PROGRESS, token).describe() == (
        f"HANDSHAKE_IN_PROGRESS with a {len(token)}-byte token"
    )
    assert HandshakeFrame(MessageId.HANDSHAKE_DONE, b"").describe() == "HANDSHAKE_DONE with a 0-byte token"
    error, _ = parse_handshake(encode_error(SEC_E_LOGON_DENIED)) or (None, 0)
    assert error is not None and error.describe() == "HANDSHAKE_ERROR (code SEC_E_LOGON_DENIED)"


# -- error frames -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "big_hex", "little_hex"),
    [
        (SEC_E_LOGON_DENIED, "1501000008 00000000 8009030c", "1501000008 0c030980 00000000"),
        (ERROR_TRUST_FAILURE, "1501000008 00000000 000006fe", "1501000008 fe060000 00000000"),
        (E_FAIL, "1501000008 00000000 80004005", "1501000008 05400080 00000000"),
        (SEC_E_INVALID_TOKEN, "1501000008 00000000 80090308", "1501000008 08030980 00000000"),
        (0x12345678, "1501000008 00000000 12345678", "1501000008 78563412 00000000"),
        (0x00000001, "1501000008 00000000 00000001", "1501000008 01000000 00000000"),
    ],
    ids=["SEC_E_LOGON_DENIED", "ERROR_TRUST_FAILURE", "E_FAIL", "SEC_E_INVALID_TOKEN", "unknown", "one"],
)
def test_error_frames_in_both_byte_orders(code: int, big_hex: str, little_hex: str) -> None:
    """Error frames: big-endian in the last 4 of 8 bytes (.NET <= 7, the default) or little-endian in the first 4
    (.NET 8+); both decode to the same code."""
    big = encode_error(code)
    little = encode_error(code, byteorder="little")
    assert big == bytes.fromhex(big_hex)
    assert big == encode_error(code, byteorder="big")
    assert big[5:] == code.to_bytes(8, "big")  # .NET <= 7: big-endian in the last 4 bytes
    assert little == bytes.fromhex(little_hex)
    assert little[5:] == code.to_bytes(4, "little") + bytes(4)  # .NET 8+: little-endian in the first 4
    assert big[:5] == little[:5] == bytes.fromhex("1501000008")
    for wire in (big, little):
        frame, end = parse_handshake(wire)  # type: ignore[misc]
        assert end == 13 == HANDSHAKE_HEADER_SIZE + ERROR_PAYLOAD_SIZE
        assert frame.message_id is MessageId.HANDSHAKE_ERROR
        assert frame.error_code == code
        assert decode_error_code(frame.payload) == code


def test_error_code_known_value_wins_over_other_reading() -> None:
    """Both readings non-zero: the one that is a known status wins, whichever side it is on."""
    payload = (0xDEADBEEF).to_bytes(4, "little") + SEC_E_LOGON_DENIED.to_bytes(4, "big")
    assert decode_error_code(payload) == SEC_E_LOGON_DENIED
    payload = E_FAIL.to_bytes(4, "little") + (0x11223344).to_bytes(4, "big")
    assert decode_error_code(payload) == E_FAIL
    payload = SEC_E_LOGON_DENIED.to_bytes(4, "little") + (0x01020304).to_bytes(4, "big")
    assert decode_error_code(payload) == SEC_E_LOGON_DENIED


def test_error_code_short_payload() -> None:
    """A payload shorter than 4 bytes decodes what is there instead of failing."""
    assert decode_error_code(b"") == 0
    assert decode_error_code(b"\x01\x02") == 0x0102


def test_encode_error_rejects_unknown_byteorder() -> None:
    """Only "big" and "little" are byte orders."""
    with pytest.raises(ValueError, match="byteorder"):
        encode_error(1, byteorder="middle")


# -- data records -------------------------------------------------------------------------------------------------


def test_nlmp_sealed_record_decodes_to_signature_and_ciphertext() -> None:
    """The MS-NLMP 4.2.4.4 sealed record parses to its 16-byte signature + 18 bytes of ciphertext and re-encodes."""
    codec = NNSRecordCodec()
    parsed = codec.parse(NLMP_RECORD)
    assert parsed is not None
    payload, end = parsed
    assert end == len(NLMP_RECORD) == 4 + 0x22
    assert type(payload) is bytes
    assert len(payload) == 34
    assert payload == NLMP_SIGNATURE + NLMP_CIPHERTEXT
    assert payload[:16] == NLMP_SIGNATURE
    assert payload[:4] == b"\x01\x00\x00\x00"  # NTLMSSP_MESSAGE_SIGNATURE version
    assert payload[12:16] == b"\x00\x00\x00\x00"  # sequence number 0
    assert payload[16:] == NLMP_CIPHERTEXT
    assert len(payload[16:]) == 18  # len("Plaintext".encode("utf-16-le"))
    assert codec.locate(NLMP_RECORD) == end  # the in-place reader finds the same record
    # ... and re-encodes byte for byte.
    assert codec.encode_header(len(payload)) + payload == NLMP_RECORD
    assert codec.encode_header(0x22) == b"\x22\x00\x00\x00"


def test_record_header_is_little_endian() -> None:
    """The record length is a uint32 little-endian, 4 bytes."""
    assert NNSRecordCodec.encode_header(0x22) == b"\x22\x00\x00\x00"
    assert NNSRecordCodec.encode_header(0x10000) == b"\x00\x00\x01\x00"
    assert RECORD_HEADER_SIZE == 4 == NNSRecordCodec().header_size


def test_record_codec_parse_incomplete_and_offset() -> None:
    """Every strict prefix of a record is incomplete; a record at an offset parses with its absolute end."""
    codec = NNSRecordCodec()
    for cut in range(len(NLMP_RECORD)):
        assert codec.parse(NLMP_RECORD[:cut]) is None
        assert codec.locate(NLMP_RECORD[:cut]) is None
    assert codec.parse(b"xx" + NLMP_RECORD, 2) == (NLMP_RECORD[4:], 2 + len(NLMP_RECORD))
    assert codec.locate(b"xx" + NLMP_RECORD, 2) == 2 + len(NLMP_RECORD)


def _records(count: int, seed: int) -> tuple[bytes, list[bytes]]:
    rng = random.Random(seed)
    payloads = [NLMP_RECORD[4:], b"\x05" * MIN_RECORD_PAYLOAD, rng.randbytes(MAX_RECORD_PAYLOAD)]
    payloads += [rng.randbytes(rng.choice([5, 6, 17, 300, 4096, MAX_RECORD_PAYLOAD])) for _ in range(count)]
    wire = b"".join(NNSRecordCodec.encode_header(len(p)) + p for p in payloads)
    return wire, payloads


@pytest.mark.parametrize("seed", range(5))
def test_records_parse_the_same_from_any_prefix(seed: int) -> None:
    """Whatever has arrived, the codec returns exactly the records wholly inside it, ending at record boundaries;
    what it holds back is less than one record (header + largest payload)."""
    wire, payloads = _records(12, seed)
    whole, ends = parse_records(wire)
    assert whole == payloads
    assert ends[-1] == len(wire)
    assert all(type(p) is bytes for p in whole)
    for cut in cut_points(len(wire), seed, ends):
        got, got_ends = parse_records(wire[:cut])
        assert got == payloads[: len(got)]
        assert got_ends == ends[: len(got)]  # every end reported is a record boundary
        last_end = got_ends[-1] if got_ends else 0
        held_back = cut - last_end
        assert held_back < RECORD_HEADER_SIZE + MAX_RECORD_PAYLOAD
        if len(got) < len(payloads):
            assert held_back < ends[len(got)] - last_end  # the next record is not complete yet


# -- limits, enforced from the header alone -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "length", [0, 1, 4, MAX_RECORD_PAYLOAD + 1, 0x7FFFFFFF, 0xFFFFFFFF], ids=lambda n: f"len={n:#x}"
)
def test_record_length_limits_enforced_from_the_header(length: int) -> None:
    """A bad record length is refused as soon as its 4th header byte is there, with or without payload after it."""
    codec = NNSRecordCodec()
    header = length.to_bytes(4, "little")
    for cut in range(RECORD_HEADER_SIZE):
        assert codec.locate(header[:cut]) is None
    for wire in (header, header + bytes(100), NLMP_RECORD + header):
        with pytest.raises(FramingError, match=f"announces {length} bytes") as info:
            parse_records(wire)
        assert info.value.status == SEC_E_INVALID_TOKEN == 0x80090308
        assert "MS-NNS data record" in str(info.value) and "valid lengths are 5 to 65536" in str(info.value)


@pytest.mark.parametrize("length", [MIN_RECORD_PAYLOAD, MAX_RECORD_PAYLOAD])
def test_record_length_boundaries_accepted(length: int) -> None:
    """The smallest (5) and largest (65,536) payloads are accepted, and complete only with their last byte."""
    codec = NNSRecordCodec()
    wire = length.to_bytes(4, "little") + b"\x00" * (length - 1) + b"\x01"
    assert codec.parse(wire[:RECORD_HEADER_SIZE]) is None
    assert codec.parse(wire[:-1]) is None
    assert codec.parse(wire) == (b"\x00" * (length - 1) + b"\x01", 4 + length)


@pytest.mark.parametrize("message_id", [0x00, 0x01, 0x13, 0x17, 0x22, 0x80, 0x99, 0xFF])
def test_unknown_message_id_rejected_at_first_byte(message_id: int) -> None:
    """An unknown message id fails on its first byte, before any more is needed."""
    with pytest.raises(FramingError, match=f"0x{message_id:02X}"):
        parse_handshake(bytes([message_id]))


@pytest.mark.parametrize("version", [(0, 0), (1, 1), (2, 0), (0, 1), (0xFF, 0xFF)])
def test_bad_version_rejected_at_third_byte(version: tuple[int, int]) -> None:
    """A version other than 1.0 fails once its bytes are there, before the size or payload."""
    header = bytes([0x16, *version]) + b"\xff\xff"
    assert parse_handshake(header[:1]) is None
    assert parse_handshake(header[:2]) is None
    for cut in (3, 4, 5):
        with pytest.raises(FramingError, match="version"):
            parse_handshake(header[:cut])


def test_invalid_header_with_payload_in_one_chunk_fails_the_same() -> None:
    """An invalid header fails the same with its whole announced payload behind it."""
    with pytest.raises(FramingError, match="0x17"):
        parse_handshake(b"\x17\x01\x00\xff\xff" + bytes(0xFFFF))


def test_valid_handshake_message_then_garbage() -> None:
    """The message before an invalid header is returned; parsing at the garbage fails."""
    wire = encode_handshake(MessageId.HANDSHAKE_DONE) + b"\x99"
    assert parse_handshake(wire) == (HandshakeFrame(MessageId.HANDSHAKE_DONE, b""), 5)
    with pytest.raises(FramingError, match="0x99"):
        parse_handshake(wire, 5)


# -- the Connection reads through the codec, in any chunking ------------------------------------------------------


def _sent_records(client: Connection, messages: list[bytes]) -> tuple[bytes, list[int]]:
    wire = bytearray()
    ends = []
    for message in messages:
        wire += client.send(message)
        ends.append(len(wire))
    return bytes(wire), ends


MESSAGES = [b"x", b"hello", bytes(range(256)) * 20, b"\xaa" * MAX_PLAINTEXT_PER_RECORD, b"tail"]


@pytest.mark.parametrize("seed", range(3))
def test_connection_reads_records_in_any_chunking(ntlm_users: NTLMUsers, seed: int) -> None:
    """Whole, byte by byte and randomly chunked, a Connection delivers the same records, each one exactly when
    its last byte arrives, holding less than one record while it waits."""
    rng = random.Random(seed)
    for chunking in ("whole", "bytes", "random"):
        client, server = established(ntlm_users, protocol="ntlm", protection_level=rng.choice(["sign", "encrypt"]))
        wire, ends = _sent_records(client, MESSAGES)
        if chunking == "whole":
            pieces = [wire]
        elif chunking == "bytes":
            pieces = [wire[i : i + 1] for i in range(len(wire))]
        else:
            cuts = sorted(rng.sample(range(1, len(wire)), 40))
            pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        delivered_at: list[int] = []
        received = 0
        events = []
        for piece in pieces:
            got, error = feed_pieces(server, [piece], max_buffered=RECORD_HEADER_SIZE + MAX_RECORD_PAYLOAD)
            assert error is None
            received += len(piece)
            delivered_at += [received] * len(got)
            events += got
            assert server.buffered == received - max([0, *(e for e in ends if e <= received)])
        assert [e.data for e in events if isinstance(e, Data)] == MESSAGES
        assert server.buffered == 0
        if chunking == "bytes":
            assert delivered_at == ends


def test_connection_reports_partial_record_as_buffered(ntlm_users: NTLMUsers) -> None:
    """A record missing its last byte is held (buffered) without an event; the byte completes it."""
    client, server = established(ntlm_users)
    first, second = client.send(b"first"), client.send(b"second")
    events, error = feed_pieces(server, [first[:-1]])
    assert (events, error) == ([], None)
    assert server.buffered == len(first) - 1
    events, error = feed_pieces(server, [first[-1:] + second[:3]])
    assert (data_of(events), error) == (b"first", None)
    assert server.buffered == 3


@pytest.mark.parametrize("length", [0, 4, MAX_RECORD_PAYLOAD + 1, 0xFFFFFFFF], ids=lambda n: f"len={n:#x}")
def test_connection_bad_record_length_is_sticky_and_independent_of_chunking(ntlm_users: NTLMUsers, length: int) -> None:
    """Records before a bad length are delivered, then the same FramingError comes whatever the chunking; the
    bytes after it are dropped and every later call raises BrokenStreamError."""
    outcomes = []
    for chunk in (None, 1, 3):
        client, server = established(ntlm_users)
        good = client.send(b"good")
        wire = good + length.to_bytes(4, "little") + bytes(70)
        step = chunk or len(wire)
        events, error = feed_pieces(server, [wire[i : i + step] for i in range(0, len(wire), step)])
        assert isinstance(error, FramingError) and error.status == SEC_E_INVALID_TOKEN
        assert data_of(events) == b"good"
        assert server.buffered <= RECORD_HEADER_SIZE
        assert server.data_to_send() == b""  # no Error frame once established
        assert_broken_everywhere(server, error)
        outcomes.append((data_of(events), str(error)))
    assert outcomes == [outcomes[0]] * 3


@pytest.mark.parametrize(
    "garbage",
    [b"\x17", b"\x00", b"\x16\x02\x00", b"\x16\x01\x01", b"\x17\x01\x00\xff\xff" + bytes(0xFFFF)],
    ids=["id-0x17", "id-0x00", "major-2", "minor-1", "bad-id-with-64k-payload"],
)
def test_connection_rejects_a_bad_handshake_header_before_its_payload(ntlm_users: NTLMUsers, garbage: bytes) -> None:
    """A server fails on the first invalid header byte, keeps nothing of it, and queues an Error frame."""
    server = Connection(SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol="ntlm"))
    events, error = feed_pieces(server, [garbage])
    assert events == []
    assert isinstance(error, FramingError)
    assert server.buffered <= HANDSHAKE_HEADER_SIZE
    assert server.data_to_send() == encode_error(SEC_E_INVALID_TOKEN)
    assert_broken_everywhere(server, error)


def test_connection_handshake_garbage_fails_the_same_in_any_chunking(ntlm_users: NTLMUsers) -> None:
    """A valid first message followed by garbage: the reply, then the same error and Error frame, byte by byte
    or in one piece."""
    outcomes = []
    for chunk in (None, 1):
        client, server = connection_pair(ntlm_users, protocol="ntlm")
        wire = client.data_to_send() + b"\x99" + bytes(10)
        step = chunk or len(wire)
        events, error = feed_pieces(server, [wire[i : i + step] for i in range(0, len(wire), step)])
        assert events == []
        assert isinstance(error, FramingError) and "0x99" in str(error)
        out = server.data_to_send()
        replies, end = parse_handshakes(out)
        assert end == len(out)
        assert [f.message_id for f in replies] == [MessageId.HANDSHAKE_IN_PROGRESS, MessageId.HANDSHAKE_ERROR]
        assert replies[-1].error_code == SEC_E_INVALID_TOKEN
        outcomes.append((str(error), [f.message_id for f in replies]))
    assert outcomes[0] == outcomes[1]


def test_connection_traces_handshake_messages_at_debug(ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture) -> None:
    """The Connection logs each handshake message it sends or receives (id and token size, never token bytes)
    and the session it established, on the ``negotiate_stream`` logger at DEBUG only."""
    with caplog.at_level(logging.INFO, logger="negotiate_stream"):
        established(ntlm_users, protocol="ntlm")
    assert not [r for r in caplog.records if r.name == "negotiate_stream"]
    with caplog.at_level(logging.DEBUG, logger="negotiate_stream"):
        client, server = connection_pair(ntlm_users, protocol="ntlm")
        first = client.data_to_send()
        feed_pieces(server, [first])
        challenge = server.data_to_send()
        feed_pieces(client, [challenge])
        feed_pieces(server, [client.data_to_send()])
        feed_pieces(client, [server.data_to_send()])
    lines = [r.getMessage() for r in caplog.records if r.name == "negotiate_stream"]
    token_size = len(first) - HANDSHAKE_HEADER_SIZE
    assert lines[:2] == [
        f"handshake sent HANDSHAKE_IN_PROGRESS with a {token_size}-byte token",
        f"handshake received HANDSHAKE_IN_PROGRESS with a {token_size}-byte token",
    ]
    assert "handshake sent HANDSHAKE_DONE with a 0-byte token" in lines
    assert any(line.startswith("handshake complete (client side): protocol ntlm") for line in lines)
    assert any(line.startswith("handshake complete (server side): protocol ntlm") for line in lines)
    for token in (first[HANDSHAKE_HEADER_SIZE:], challenge[HANDSHAKE_HEADER_SIZE:]):
        assert not any(token.hex() in line or repr(token) in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="negotiate_stream"):
        client, server = connection_pair(ntlm_users, protocol="ntlm")
        feed_pieces(server, [b"\x99"])
        feed_pieces(client, [server.data_to_send()])
    lines = [r.getMessage() for r in caplog.records if r.name == "negotiate_stream"]
    assert "handshake sent HANDSHAKE_ERROR (code SEC_E_INVALID_TOKEN)" in lines
    assert "handshake received HANDSHAKE_ERROR (code SEC_E_INVALID_TOKEN)" in lines


# -- splitting and encoding ---------------------------------------------------------------------------------------


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
    """Plaintext is split into memoryview slices of at most 0xFC00 bytes (.NET's MaxWriteDataSize)."""
    data = random.Random(size).randbytes(size)
    parts = list(NNSRecordCodec().split(data))
    assert [len(p) for p in parts] == expected
    assert all(isinstance(p, memoryview) for p in parts)
    assert b"".join(parts) == data
    assert MAX_PLAINTEXT_PER_RECORD == 0xFC00 == NNSRecordCodec().max_plaintext


def test_split_plaintext_counts_bytes_of_multibyte_views() -> None:
    """A view with 4-byte items is split by bytes, not items."""
    view = memoryview(array.array("I", range(0x4000)))  # 0x10000 bytes in 0x4000 items
    parts = list(NNSRecordCodec().split(view))
    assert [len(p) for p in parts] == [0xFC00, 0x400]
    assert b"".join(parts) == view.tobytes()


@pytest.mark.parametrize("size", [1, 0xFC00, 0xFC01, 3 * 0xFC00 + 7])
def test_encode_frames_each_protected_chunk(size: int) -> None:
    """encode() protects each 0xFC00 slice and frames it (header, prefix, body): the records parse back to them.

    The body is the caller's slice itself, as NTLM sign-only returns it: the wire must hold a copy, not a view.
    """
    source = bytearray(random.Random(size).randbytes(size))
    data = bytes(source)
    wire = NNSRecordCodec().encode(source, lambda chunk: (b"S" * 16, chunk))
    source[:] = bytes(size)  # the caller reuses its buffer: the wire bytes must not change
    payloads, ends = parse_records(wire)
    assert ends[-1] == len(wire)
    assert [p[:16] for p in payloads] == [b"S" * 16] * len(payloads)
    assert [len(p) - 16 for p in payloads] == [len(c) for c in NNSRecordCodec().split(data)]
    assert b"".join(p[16:] for p in payloads) == data


def test_module_constants() -> None:
    """The MS-NNS limits: payloads 5..65,536, handshake header 5 bytes, error payload 8 bytes."""
    assert nns.MIN_RECORD_PAYLOAD == 5
    assert MAX_RECORD_PAYLOAD == 65536
    assert HANDSHAKE_HEADER_SIZE == 5
    assert ERROR_PAYLOAD_SIZE == 8
    assert MAX_HANDSHAKE_PAYLOAD == 0xFFFF
