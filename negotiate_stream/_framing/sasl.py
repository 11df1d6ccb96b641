"""SASL security-layer framing (RFC 4422 section 3.7) and the RFC 4752 GSSAPI layer negotiation message.

Pure codec: no sockets, no cryptography.

After a SASL bind that negotiated integrity or confidentiality (LDAP GSSAPI / GSS-SPNEGO), every buffer on the
connection is a uint32 **big-endian** length followed by that many bytes of wrap token. A length of zero or above
the receiver's maximum buffer size is a protocol violation (Samba closes the connection); we raise FramingError.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ..errors import FramingError
from ._decoder import FrameDecoder

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "LayerOffer",
    "SaslRecordCodec",
    "SecurityLayer",
    "decode_layer_message",
    "encode_layer_message",
    "record_decoder",
]

#: Largest length the 3-byte max-buffer field can express, and the default receive limit.
DEFAULT_MAX_BUFFER = 0xFFFFFF
_RECORD_HEADER = struct.Struct(">I")


class SecurityLayer(enum.IntFlag):
    """RFC 4752 security-layer bits."""

    NONE = 1
    INTEGRITY = 2
    CONFIDENTIALITY = 4


class SaslRecordCodec:
    """SASL security-layer records: uint32 big-endian length + wrap token.

    ``max_payload`` is the largest token this side accepts (our advertised max buffer); ``max_plaintext`` the
    most plaintext we put into one record (bounded by the peer's max buffer minus the wrap overhead).
    """

    header_size = 4
    min_payload = 1
    name = "SASL"

    def __init__(self, max_payload: int = DEFAULT_MAX_BUFFER, max_plaintext: int = 0xFC00) -> None:
        if not 1 <= max_payload <= 0xFFFFFFFF:
            raise ValueError("max_payload must be between 1 and 2**32 - 1")
        if max_plaintext < 1:
            raise ValueError("max_plaintext must be positive")
        self.max_payload = max_payload
        self.max_plaintext = max_plaintext

    @staticmethod
    def encode_header(length: int) -> bytes:
        """Return the 4-byte header announcing a token of ``length`` bytes."""
        return _RECORD_HEADER.pack(length)

    def payload_length(self, buffer: bytes | bytearray | memoryview, start: int) -> int:
        """Read and validate the token length at ``buffer[start:start + 4]`` (caller checks availability)."""
        (length,) = _RECORD_HEADER.unpack_from(buffer, start)
        if length == 0 or length > self.max_payload:
            raise FramingError(
                f"SASL security-layer buffer announces {length} bytes; valid lengths are 1 to {self.max_payload} "
                "(our max buffer): the peer is not using the negotiated security layer, or the stream is corrupted"
            )
        return int(length)

    def parse(self, buffer: bytes | bytearray | memoryview, start: int = 0) -> tuple[bytes, int] | None:
        """Parse one record at ``buffer[start:]``: ``(token, end)``, ``None`` if incomplete, or FramingError."""
        if len(buffer) - start < 4:
            return None
        end = start + 4 + self.payload_length(buffer, start)
        if len(buffer) < end:
            return None
        return bytes(buffer[start + 4 : end]), end


def record_decoder(max_payload: int = DEFAULT_MAX_BUFFER) -> FrameDecoder[bytes]:
    """An incremental decoder of SASL security-layer records (yields tokens)."""
    return FrameDecoder(SaslRecordCodec(max_payload).parse)


@dataclass(frozen=True, slots=True)
class LayerOffer:
    """The (unwrapped) RFC 4752 security-layer message: supported/chosen layers, max buffer, authzid."""

    layers: SecurityLayer
    max_buffer: int
    authzid: bytes = b""


def encode_layer_message(offer: LayerOffer) -> bytes:
    """Encode the 4-byte layer bitmask + 3-byte max buffer (+ authzid, client only) before wrapping."""
    if not 0 <= offer.max_buffer <= DEFAULT_MAX_BUFFER:
        raise ValueError("max_buffer must fit in 3 bytes (0 to 16777215)")
    if not 0 < int(offer.layers) <= 7:
        raise ValueError("layers must be a non-empty combination of SecurityLayer bits")
    return bytes([int(offer.layers)]) + offer.max_buffer.to_bytes(3, "big") + offer.authzid


def decode_layer_message(message: bytes) -> LayerOffer:
    """Decode an unwrapped RFC 4752 layer message; FramingError if it is shorter than 4 bytes or has no layer."""
    if len(message) < 4:
        raise FramingError(f"SASL GSSAPI security-layer message has {len(message)} bytes; RFC 4752 requires at least 4")
    layers = message[0] & 0x07
    if layers == 0:
        raise FramingError(f"SASL GSSAPI security-layer message offers no known layer (bitmask 0x{message[0]:02X})")
    return LayerOffer(SecurityLayer(layers), int.from_bytes(message[1:4], "big"), bytes(message[4:]))
