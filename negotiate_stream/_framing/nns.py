"""MS-NNS (.NET NegotiateStream) framing: handshake messages and data records.

Pure codec: bytes in, frames out; no sockets, no cryptography.

Handshake message (MS-NNS 2.2.1)::

    +-----------+---------+---------+------------------+----------------+
    | MessageId | Major=1 | Minor=0 | PayloadSize (BE) | Payload ...    |
    |  1 byte   | 1 byte  | 1 byte  | 2 bytes          | <= 0xFFFF      |
    +-----------+---------+---------+------------------+----------------+

HandshakeError payload: 8 bytes holding a 32-bit status code (see :func:`encode_error` for the byte orders).

Data record (MS-NNS 2.2.2), after a handshake that negotiated signing or sealing (parsed by
:class:`~._records.RecordCodec`, shared with SASL)::

    +--------------------------+-------------------------------------+
    | PayloadSize (uint32 LE)  | Payload (signature + data/cipher)   |
    +--------------------------+-------------------------------------+

.NET refuses a record whose payload length is <= 4 or > 65,536 and never puts more than 0xFC00 plaintext bytes
into one record; we apply the same limits in both directions.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Literal

from ..errors import KNOWN_STATUS_CODES, FramingError, status_name
from ._records import Buffer, RecordCodec

__all__ = [
    "ERROR_PAYLOAD_SIZE",
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
    "parse_handshake",
]

_HANDSHAKE_HEADER = struct.Struct(">BBBH")
_RECORD_HEADER = struct.Struct("<I")
HANDSHAKE_HEADER_SIZE = _HANDSHAKE_HEADER.size
RECORD_HEADER_SIZE = _RECORD_HEADER.size
MAX_HANDSHAKE_PAYLOAD = 0xFFFF
#: .NET writes at most this many plaintext bytes per record (NegotiateStream.MaxWriteDataSize).
MAX_PLAINTEXT_PER_RECORD = 0xFC00
#: Smallest record payload .NET accepts (a length <= 4 is an IOException).
MIN_RECORD_PAYLOAD = 5
#: Largest record payload .NET accepts (NegotiateStream.MaxReadFrameSize).
MAX_RECORD_PAYLOAD = 0x10000
#: A HandshakeError message carries an 8-byte payload holding a 32-bit status code.
ERROR_PAYLOAD_SIZE = 8

_VERSION = (1, 0)


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

    def describe(self) -> str:
        """A one-line summary for the handshake trace: the message id and the token size (never token bytes)."""
        if self.message_id is MessageId.HANDSHAKE_ERROR:
            return f"{self.message_id.name} (code {status_name(self.error_code)})"
        return f"{self.message_id.name} with a {len(self.payload)}-byte token"


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
    # Both layouts are the code as one 8-byte integer: big-endian puts it in the last 4 bytes, little-endian in
    # the first 4.
    if byteorder not in ("big", "little"):
        raise ValueError("byteorder must be 'big' or 'little'")
    order: Literal["big", "little"] = "big" if byteorder == "big" else "little"
    return encode_handshake(MessageId.HANDSHAKE_ERROR, code.to_bytes(ERROR_PAYLOAD_SIZE, order))


def decode_error_code(payload: bytes) -> int:
    """Decode the 32-bit error code of a HandshakeError payload written in either byte order.

    A value that is a known SSPI/Windows status in one reading wins; otherwise the big-endian reading is
    preferred unless it is zero.
    """
    if len(payload) < 4:  # shorter than any sender writes: read what is there
        return int.from_bytes(payload, "big")
    big = int.from_bytes(payload[-4:], "big")
    little = int.from_bytes(payload[:4], "little")
    if big in KNOWN_STATUS_CODES:
        return big
    if little in KNOWN_STATUS_CODES:
        return little
    return big if big else little


def parse_handshake(buffer: Buffer, start: int = 0) -> tuple[HandshakeFrame, int] | None:
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


class NNSRecordCodec(RecordCodec):
    """Data-record framing of MS-NNS: a uint32 little-endian length, then 5 to 65,536 bytes of payload."""

    _header = _RECORD_HEADER
    name = "MS-NNS"
    _record_noun = "data record"
    _bad_length_hint = "the peer is not a NegotiateStream, or the stream is corrupted"

    def __init__(self) -> None:
        super().__init__(
            min_payload=MIN_RECORD_PAYLOAD, max_payload=MAX_RECORD_PAYLOAD, max_plaintext=MAX_PLAINTEXT_PER_RECORD
        )
