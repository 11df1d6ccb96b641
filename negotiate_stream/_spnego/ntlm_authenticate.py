"""The fields of an NTLM AUTHENTICATE message that an acceptor's policy reads (a pure parser: no I/O, no crypto).

pyspnego's NTLM acceptor verifies the AUTHENTICATE message but keeps none of it, and it checks channel bindings
only one way (present and matching, or the all-zero value); the acceptor policy (:mod:`.acceptor`) needs the
client's MsvAvChannelBindings and MsvAvTargetName, and the IDENTIFY flag for the impersonation level. They are
read here from the message bytes (MS-NLMP 2.2.1.3, 2.2.2.1, 2.2.2.7)::

    AUTHENTICATE_MESSAGE                         NTLMv2 NtChallengeResponse (more than 24 bytes)
     0  "NTLMSSP\\0"          8                     0  NTProofStr                 16
     8  MessageType = 3       4 (uint32 LE)        16  RespType, HiRespType        2  (1, 1)
    12  LmChallengeResponse   8 (len, max, offset) 18  Reserved                    6
    20  NtChallengeResponse   8 (len, max, offset) 24  TimeStamp                   8
    28  DomainName .. EncryptedRandomSessionKey    32  ChallengeFromClient         8
    60  NegotiateFlags        4 (uint32 LE)        40  Reserved                    4
                                                   44  AV_PAIRs: AvId (uint16 LE), AvLen (uint16 LE), value...
                                                       up to MsvAvEOL (AvId 0)

The pairs are covered by the NTProofStr, so they can be trusted once pyspnego accepted the message; this parser
itself trusts nothing and raises :class:`ValueError` on any inconsistency.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "NTLMSSP_NEGOTIATE_IDENTIFY",
    "NTLM_AUTHENTICATE_PREFIX",
    "NTLMAuthenticate",
    "parse_authenticate",
]

#: The first 12 bytes of every AUTHENTICATE message: the signature and MessageType 3.
NTLM_AUTHENTICATE_PREFIX = b"NTLMSSP\x00\x03\x00\x00\x00"
#: The client allows the server to identify it only, not to impersonate it (``TokenImpersonationLevel
#: .Identification``).
NTLMSSP_NEGOTIATE_IDENTIFY = 0x00100000

_FIELD = struct.Struct("<HHI")  # a message field: length, maximum length, offset from the start of the message
_FLAGS = struct.Struct("<I")
_AV_PAIR = struct.Struct("<HH")
_NT_RESPONSE_FIELD = 20
_FLAGS_OFFSET = 60
_HEADER_SIZE = 64  # everything up to and including NegotiateFlags
_NTLMV1_RESPONSE_SIZE = 24  # an NTLMv1 response is 24 bytes and carries no AV pairs
_AV_PAIRS_OFFSET = 44  # in the NTLMv2 response: NTProofStr (16) + the client challenge header (28)
_MSV_AV_EOL = 0x0000
_MSV_AV_TARGET_NAME = 0x0009
_MSV_AV_CHANNEL_BINDINGS = 0x000A
_CHANNEL_BINDINGS_SIZE = 16  # an MD5 hash
_READ_IDS = frozenset({_MSV_AV_TARGET_NAME, _MSV_AV_CHANNEL_BINDINGS})


@dataclass(frozen=True, slots=True)
class NTLMAuthenticate:
    """What an acceptor's policy reads from the client's AUTHENTICATE message."""

    #: The NegotiateFlags the client chose.
    flags: int
    #: MsvAvTargetName: the service name the client authenticated for (``"HTTP/web.example.com"``); ``None`` when
    #: absent or empty, and for NTLMv1, which has no AV pairs.
    target_name: str | None
    #: MsvAvChannelBindings: the MD5 hash of the client's channel bindings; ``None`` when absent. Sixteen zero
    #: bytes mean "the client supports bindings but has no channel" (MS-NLMP 3.1.5.1.2).
    channel_bindings: bytes | None

    @property
    def identify_only(self) -> bool:
        """True when the client allowed identification only (NTLMSSP_NEGOTIATE_IDENTIFY)."""
        return bool(self.flags & NTLMSSP_NEGOTIATE_IDENTIFY)

    @property
    def proves_channel(self) -> bool:
        """True when the client sent real channel bindings (present and not the all-zero value)."""
        return self.channel_bindings is not None and any(self.channel_bindings)


def parse_authenticate(message: bytes | bytearray | memoryview) -> NTLMAuthenticate:
    """The policy fields of one NTLM AUTHENTICATE message; :class:`ValueError` if it is not a well-formed one."""
    data = bytes(message)
    if len(data) < _HEADER_SIZE or not data.startswith(NTLM_AUTHENTICATE_PREFIX):
        raise ValueError("not an NTLM AUTHENTICATE message")
    (flags,) = _FLAGS.unpack_from(data, _FLAGS_OFFSET)
    size, _, offset = _FIELD.unpack_from(data, _NT_RESPONSE_FIELD)
    if offset + size > len(data):
        raise ValueError("the NtChallengeResponse field points past the end of the message")
    if size <= _NTLMV1_RESPONSE_SIZE:
        return NTLMAuthenticate(flags, target_name=None, channel_bindings=None)
    pairs = _av_pairs(data[offset + _AV_PAIRS_OFFSET : offset + size])
    target = pairs.get(_MSV_AV_TARGET_NAME)
    bindings = pairs.get(_MSV_AV_CHANNEL_BINDINGS)
    if bindings is not None and len(bindings) != _CHANNEL_BINDINGS_SIZE:
        raise ValueError(f"MsvAvChannelBindings is {len(bindings)} bytes, not {_CHANNEL_BINDINGS_SIZE}")
    try:
        target_name = target.decode("utf-16-le") if target else None
    except UnicodeDecodeError:
        raise ValueError("MsvAvTargetName is not UTF-16LE text") from None
    return NTLMAuthenticate(flags, target_name=target_name or None, channel_bindings=bindings)


def _av_pairs(data: bytes) -> dict[int, bytes]:
    """The AV pairs up to MsvAvEOL, by AvId; a repeated target name or bindings pair is refused as ambiguous."""
    pairs: dict[int, bytes] = {}
    pos = 0
    while True:
        if pos + _AV_PAIR.size > len(data):
            raise ValueError("the AV pairs end without MsvAvEOL")
        av_id, av_len = _AV_PAIR.unpack_from(data, pos)
        pos += _AV_PAIR.size
        if av_id == _MSV_AV_EOL:
            return pairs
        if pos + av_len > len(data):
            raise ValueError(f"AV pair {av_id:#06x} runs past the end of the response")
        if av_id in pairs and av_id in _READ_IDS:
            raise ValueError(f"AV pair {av_id:#06x} appears more than once")
        pairs.setdefault(av_id, data[pos : pos + av_len])
        pos += av_len
