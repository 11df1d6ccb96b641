"""MS-NNS (.NET NegotiateStream) framing: handshake messages and data records.

Pure codec: bytes in, frames out; no sockets, no cryptography.

Handshake message (MS-NNS 2.2.1)::

    +-----------+---------+---------+------------------+----------------+
    | MessageId | Major=1 | Minor=0 | PayloadSize (BE) | Payload ...    |
    |  1 byte   | 1 byte  | 1 byte  | 2 bytes          | <= 0xFFFF      |
    +-----------+---------+---------+------------------+----------------+

Data record (MS-NNS 2.2.2), after a handshake that negotiated signing or sealing::

    +--------------------------+-------------------------------------+
    | PayloadSize (uint32 LE)  | Payload (signature + data/cipher)   |
    +--------------------------+-------------------------------------+

.NET refuses a record whose payload length is <= 4 or > 65,536 and never puts more than 0xFC00 plaintext bytes
into one record; we apply the same limits in both directions.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import KNOWN_STATUS_CODES, FramingError
from ._decoder import FrameDecoder

__all__ = [
    "HANDSHAKE_HEADER_SIZE",
    "MAX_HANDSHAKE_PAYLOAD",
    "MAX_PLAINTEXT_PER_RECORD",
    "MAX_RECORD_PAYLOAD",
    "MIN_RECORD_PAYLOAD",
    "RECORD_HEADER_SIZE",
    "HandshakeFrame",
    "MessageId",
    "NNSRecordCodec",
    "decode_error_code",
    "encode_error",
    "encode_handshake",
    "handshake_decoder",
    "parse_handshake",
    "record_decoder",
    "split_plaintext",
]

HANDSHAKE_HEADER_SIZE = 5
RECORD_HEADER_SIZE = 4
MAX_HANDSHAKE_PAYLOAD = 0xFFFF
#: .NET writes at most this many plaintext bytes per record (NegotiateStream.MaxWriteDataSize).
MAX_PLAINTEXT_PER_RECORD = 0xFC00
#: A record payload must be longer than this (.NET: "length <= 4" is an IOException).
MIN_RECORD_PAYLOAD = 5
#: Largest record payload .NET accepts (NegotiateStream.MaxReadFrameSize).
MAX_RECORD_PAYLOAD = 0x10000
ERROR_PAYLOAD_SIZE = 8

_VERSION = (1, 0)
_HANDSHAKE_HEADER = struct.Struct(">BBBH")
_RECORD_HEADER = struct.Struct("<I")


class MessageId(enum.IntEnum):
    """The first byte of a handshake message."""

    HANDSHAKE_DONE = 0x14
    HANDSHAKE_ERROR = 0x15
    HANDSHAKE_IN_PROGRESS = 0x16


_MESSAGE_IDS = frozenset(int(m) for m in MessageId)


@dataclass(frozen=True, slots=True)
class HandshakeFrame:
    """One decoded handshake message."""

    message_id: MessageId
    payload: bytes

    @property
    def error_code(self) -> int:
        """The error code of a HandshakeError frame (either byte order, see :func:`decode_error_code`)."""
        return decode_error_code(self.payload)


def encode_handshake(message_id: MessageId, payload: bytes = b"") -> bytes:
    """Encode one handshake message; ``payload`` is a security token of at most 0xFFFF bytes."""
    if len(payload) > MAX_HANDSHAKE_PAYLOAD:
        raise ValueError(
            f"handshake token of {len(payload)} bytes exceeds the MS-NNS limit of {MAX_HANDSHAKE_PAYLOAD} bytes"
        )
    return _HANDSHAKE_HEADER.pack(message_id, *_VERSION, len(payload)) + payload


def encode_error(code: int, *, byteorder: str = "big") -> bytes:
    """Encode a HandshakeError frame carrying ``code``.

    .NET Framework and .NET up to 7 write the code big-endian in the last 4 of 8 bytes (and read it the same
    way); .NET 8+ writes it little-endian in the first 4. Big-endian is the default because that is what the
    deployed .NET Framework / Core peers decode.
    """
    if byteorder == "big":
        payload = code.to_bytes(8, "big")
    elif byteorder == "little":
        payload = code.to_bytes(8, "little")
    else:
        raise ValueError("byteorder must be 'big' or 'little'")
    return encode_handshake(MessageId.HANDSHAKE_ERROR, payload)


def decode_error_code(payload: bytes) -> int:
    """Decode the 32-bit error code of a HandshakeError payload written in either byte order.

    A value that is a known SSPI/Windows status in one reading wins; otherwise the big-endian reading is
    preferred unless it is zero.
    """
    if len(payload) < 4:
        return int.from_bytes(payload, "big")
    big = int.from_bytes(payload[-4:], "big")
    little = int.from_bytes(payload[:4], "little")
    if big in KNOWN_STATUS_CODES:
        return big
    if little in KNOWN_STATUS_CODES:
        return little
    return big if big else little


def parse_handshake(buffer: bytes | bytearray | memoryview, start: int = 0) -> tuple[HandshakeFrame, int] | None:
    """Parse one handshake message at ``buffer[start:]``.

    Returns ``(frame, end)`` or ``None`` when more bytes are needed; raises :class:`FramingError` as soon as the
    header is invalid (unknown message id or version), before waiting for the payload.
    """
    available = len(buffer) - start
    if available < 1:
        return None
    message_id = buffer[start]
    if message_id not in _MESSAGE_IDS:
        raise FramingError(
            f"unexpected MS-NNS handshake message id 0x{message_id:02X} (expected 0x14, 0x15 or 0x16): "
            "the peer does not speak .NET NegotiateStream, or the stream is out of step"
        )
    if available >= 3 and (buffer[start + 1], buffer[start + 2]) != _VERSION:
        raise FramingError(f"unsupported MS-NNS version {buffer[start + 1]}.{buffer[start + 2]} (only 1.0 exists)")
    if available < HANDSHAKE_HEADER_SIZE:
        return None
    _, _, _, size = _HANDSHAKE_HEADER.unpack_from(buffer, start)
    end = start + HANDSHAKE_HEADER_SIZE + size
    if len(buffer) < end:
        return None
    payload = bytes(buffer[start + HANDSHAKE_HEADER_SIZE : end])
    return HandshakeFrame(MessageId(message_id), payload), end


class NNSRecordCodec:
    """Data-record framing of MS-NNS: a uint32 little-endian length, then the payload."""

    header_size = RECORD_HEADER_SIZE
    max_plaintext = MAX_PLAINTEXT_PER_RECORD
    min_payload = MIN_RECORD_PAYLOAD
    max_payload = MAX_RECORD_PAYLOAD
    name = "MS-NNS"

    @staticmethod
    def encode_header(length: int) -> bytes:
        """Return the 4-byte header announcing a payload of ``length`` bytes."""
        return _RECORD_HEADER.pack(length)

    def payload_length(self, buffer: bytes | bytearray | memoryview, start: int) -> int:
        """Read and validate the payload length at ``buffer[start:start + 4]`` (caller checks availability)."""
        (length,) = _RECORD_HEADER.unpack_from(buffer, start)
        if length < MIN_RECORD_PAYLOAD or length > MAX_RECORD_PAYLOAD:
            raise FramingError(
                f"MS-NNS data record announces {length} bytes; valid lengths are {MIN_RECORD_PAYLOAD} to "
                f"{MAX_RECORD_PAYLOAD}: the peer is not a NegotiateStream, or the stream is corrupted"
            )
        return int(length)

    def parse(self, buffer: bytes | bytearray | memoryview, start: int = 0) -> tuple[bytes, int] | None:
        """Parse one record at ``buffer[start:]``: ``(payload, end)``, ``None`` if incomplete, or FramingError."""
        if len(buffer) - start < RECORD_HEADER_SIZE:
            return None
        end = start + RECORD_HEADER_SIZE + self.payload_length(buffer, start)
        if len(buffer) < end:
            return None
        return bytes(buffer[start + RECORD_HEADER_SIZE : end]), end


def split_plaintext(
    data: bytes | bytearray | memoryview, limit: int = MAX_PLAINTEXT_PER_RECORD
) -> Iterator[memoryview]:
    """Yield ``data`` in slices of at most ``limit`` bytes (one slice per record); nothing for empty data."""
    view = memoryview(data).cast("B")
    for offset in range(0, len(view), limit):
        yield view[offset : offset + limit]


def handshake_decoder() -> FrameDecoder[HandshakeFrame]:
    """An incremental decoder of handshake messages."""
    return FrameDecoder(parse_handshake)


def record_decoder() -> FrameDecoder[bytes]:
    """An incremental decoder of data records (yields payloads)."""
    return FrameDecoder(NNSRecordCodec().parse)
