"""The vocabulary of :class:`~negotiate_stream.Connection`: its states, the events it returns, the session info.

Kept apart from the engine so that adapters, the testing helpers and type hints can name them without the
machinery; the package root re-exports every public name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from ._options import Credentials, ImpersonationLevel, ProtectionLevel, StreamSizes

__all__ = [
    "NEED_DATA",
    "Data",
    "EndOfStream",
    "Event",
    "HandshakeComplete",
    "SessionInfo",
    "State",
]


class State(enum.Enum):
    """Connection states; transitions: HANDSHAKING -> ESTABLISHED -> CLOSED, and any state -> BROKEN."""

    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"
    BROKEN = "broken"


class _NeedData:
    """The type of :data:`NEED_DATA` (one instance: compare with ``is``)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`Connection.next_event` when more bytes must be received first.
NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the handshake established; exposed by every adapter."""

    #: ``"ntlm"`` or ``"kerberos"``.
    protocol: str | None
    protection_level: ProtectionLevel
    #: Server side: the authenticated client (``DOMAIN\\user``, ``user@REALM``). Client side: the target SPN.
    peer_identity: str | None
    mutually_authenticated: bool
    is_server: bool
    #: NTLM without Extended Session Security: one cipher state for both directions (one lock for both), and
    #: the application protocol must be strictly request/response (records must never cross on the wire).
    shares_crypto_state: bool
    #: Per-record overhead and the largest plaintext per record.
    sizes: StreamSizes
    framing: str
    #: What the client allowed the server to do with its identity (``NegotiateStream.ImpersonationLevel``):
    #: ``"delegation"`` (Kerberos forwarded the client's ticket), ``"identification"`` (the client allowed only
    #: that) or ``"impersonation"``. The same value on both sides.
    impersonation_level: ImpersonationLevel = "impersonation"
    #: Server side, with ``"delegation"``: the client's forwarded Kerberos ticket as :class:`Credentials` (an
    #: in-process ``MEMORY:`` ticket cache), to pass as ``credentials=`` to the server's own outgoing connections,
    #: which then authenticate as the client. The cache is freed when that object is garbage-collected: keep it (not
    #: a copy) while in use. ``None`` otherwise.
    delegated_credentials: Credentials | None = None

    @property
    def is_encrypted(self) -> bool:
        """True when records are sealed (``NegotiateStream.IsEncrypted``)."""
        return self.protection_level is ProtectionLevel.ENCRYPT_AND_SIGN

    @property
    def is_signed(self) -> bool:
        """True when records carry a signature (``NegotiateStream.IsSigned``)."""
        return self.protection_level is not ProtectionLevel.NONE


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The handshake succeeded; application data may flow."""

    info: SessionInfo


@dataclass(frozen=True, slots=True)
class Data:
    """Verified (and decrypted) application bytes, in order; one event per record."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The peer closed its sending side at a record boundary (a clean end)."""


Event = HandshakeComplete | Data | EndOfStream
