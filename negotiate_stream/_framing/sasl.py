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
from ._records import RecordCodec

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "DEFAULT_MAX_PLAINTEXT",
    "LayerOffer",
    "SaslRecordCodec",
    "SecurityLayer",
    "decode_layer_message",
    "encode_layer_message",
]

#: Largest length the 3-byte max-buffer field can express, and the default receive limit.
DEFAULT_MAX_BUFFER = 0xFFFFFF
#: Plaintext per record unless the peer's max buffer is smaller: the MS-NNS chunk, so both framings split alike.
DEFAULT_MAX_PLAINTEXT = 0xFC00
#: A token of zero bytes is a protocol violation (Samba closes the connection).
MIN_TOKEN = 1
#: A generous bound of the wrap overhead (NTLM adds 16 bytes, an RFC 4121 token at most 60).
WRAP_OVERHEAD_BOUND = 64
_RECORD_HEADER = struct.Struct(">I")


class SecurityLayer(enum.IntFlag):
    """RFC 4752 security-layer bits."""

    NONE = 1
    INTEGRITY = 2
    CONFIDENTIALITY = 4


class SaslRecordCodec(RecordCodec):
    """SASL security-layer records: uint32 big-endian length + wrap token (parsed by the shared RecordCodec).

    ``max_payload`` is the largest token this side accepts (our advertised max buffer); ``max_plaintext`` the
    most plaintext we put into one record (bounded by the peer's max buffer minus the wrap overhead).
    """

    _header = _RECORD_HEADER
    name = "SASL"
    _record_noun = "security-layer buffer"
    _limit_note = " (our max buffer)"
    _bad_length_hint = "the peer is not using the negotiated security layer, or the stream is corrupted"

    def __init__(self, max_payload: int = DEFAULT_MAX_BUFFER, max_plaintext: int = DEFAULT_MAX_PLAINTEXT) -> None:
        super().__init__(min_payload=MIN_TOKEN, max_payload=max_payload, max_plaintext=max_plaintext)

    @classmethod
    def for_buffers(cls, max_buffer: int, peer_max_buffer: int) -> SaslRecordCodec:
        """The codec of a session where we accept ``max_buffer`` and the peer accepts ``peer_max_buffer`` bytes.

        Our plaintext per record leaves room for the wrap overhead inside the peer's buffer, and never exceeds
        :data:`DEFAULT_MAX_PLAINTEXT` (what .NET and Windows write per record).
        """
        return cls(max_buffer, max(1, min(DEFAULT_MAX_PLAINTEXT, peer_max_buffer - WRAP_OVERHEAD_BOUND)))


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
