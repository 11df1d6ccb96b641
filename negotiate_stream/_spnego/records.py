"""Per-record protection on the negotiated mechanism (part of the pyspnego border, see :mod:`.._spnego`).

Once a pyspnego context is complete, :func:`record_functions` chooses the two functions that protect and
unprotect each record, so the hot path of :class:`~negotiate_stream._context.SecurityContext` never branches on
the level or the mechanism. For NTLM they run on our own cipher when :func:`.ntlm_takeover.take_over` moved the
records off pyspnego (the *fast path*, same bytes on the wire), else on pyspnego. The other helpers read the
negotiated flags and sizes off the pyspnego context. The functions raise pyspnego's own exceptions (or our
:class:`~negotiate_stream.errors.IntegrityError` / :class:`~negotiate_stream.errors.ContextExpiredError`); the caller
translates the former with :mod:`.translate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, cast

import spnego
from spnego import ContextReq
from spnego._ntlm import NTLMProxy

from .._options import Framing, ProtectionLevel
from ..errors import IntegrityError, LocalProtocolError, NegotiateError

if TYPE_CHECKING:
    from .ntlm_takeover import NTLMFastPath

__all__ = [
    "NTLM_SIGNATURE_SIZE",
    "Buffer",
    "ProtectFunction",
    "RecordFunction",
    "header_size",
    "is_mutually_authenticated",
    "mechanism",
    "negotiated_level",
    "no_protection",
    "not_ready",
    "ntlm_sign_layout",
    "record_functions",
    "refusal",
    "refused",
    "shares_crypto_state",
    "unwrap_message",
    "wrap_message",
]

#: What protect() and unprotect() read: any contiguous bytes-like object.
Buffer = bytes | bytearray | memoryview
#: One direction's per-record function: plaintext -> payload, or payload -> plaintext.
RecordFunction = Callable[[Buffer], bytes]
#: The sending side's record function: plaintext -> the payload in two parts, ``prefix + body`` (e.g. signature and
#: ciphertext), so that the framing joins its header and both in one copy instead of concatenating twice. ``body``
#: may be the plaintext buffer itself (NTLM sign-only); it is read before the caller's buffer can change.
ProtectFunction = Callable[[Buffer], tuple[bytes, Buffer]]

#: An NTLM signature: version 1, 8-byte checksum, 4-byte sequence number (MS-NLMP 2.2.2.9).
NTLM_SIGNATURE_SIZE = 16
_NTLM_ESS_FLAG = 0x00080000  # NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY


def ntlm_sign_layout(protocol: str | None, seal_sign_only: bool | None, framing: Framing) -> bool:
    """Whether records at level SIGN use the Windows NTLM sign-only layout (signature + plaintext), not a wrap token.

    ``seal_sign_only`` is the context's ``ntlm_seal_sign_only``; ``None`` (auto) follows the framing. Windows and
    Samba treat NTLM sign as seal when the context is used LDAP-style (Samba's ``force_wrap_seal`` under
    ``GENSEC_FEATURE_LDAP_STYLE``, checked against a Samba DC), so SASL framing seals; .NET's NegotiateStream on
    Windows signs only, so MS-NNS keeps the Windows layout. Kerberos always uses its RFC 4121 tokens.
    """
    if seal_sign_only is None:
        seal_sign_only = framing == "sasl"
    return protocol == "ntlm" and not seal_sign_only


def not_ready(data: Buffer) -> NoReturn:
    """The record function of a context whose handshake is not complete: refuses every record."""
    raise LocalProtocolError("the security context is not established yet: finish the handshake first")


def no_protection(data: Buffer) -> NoReturn:
    """The record function at protection level none, where data travels unwrapped: refuses every record."""
    raise LocalProtocolError("protection level is 'none': data is not wrapped, send it as is")


def refusal(error: NegotiateError) -> IntegrityError:
    """The error for any incoming record or wrapped message after ``error`` (a context never recovers from one)."""
    return IntegrityError(f"the security context already rejected a record ({error}); open a new connection")


def refused(error: NegotiateError) -> RecordFunction:
    """An unprotect function that refuses everything after ``error``."""

    def refuse(payload: Buffer) -> NoReturn:
        raise refusal(error)

    return refuse


def mechanism(ctx: spnego.ContextProxy) -> Any:
    """The pyspnego proxy of the negotiated mechanism (NTLMProxy or GSSAPIProxy), skipping SPNEGO's wrapper.

    Only a NegotiateProxy's ``_context`` is the chosen mechanism's proxy; a GSSAPIProxy's ``_context`` is the
    raw python-gssapi context, whose wrap() returns another type, so it is never unwrapped.
    """
    inner = getattr(ctx, "_context", None)
    return inner if isinstance(inner, spnego.ContextProxy) else ctx


def negotiated_level(ctx: spnego.ContextProxy) -> ProtectionLevel:
    """The protection level the complete context's flags provide."""
    attr = ctx.context_attr
    if attr & ContextReq.confidentiality:
        return ProtectionLevel.ENCRYPT_AND_SIGN
    if attr & ContextReq.integrity:
        return ProtectionLevel.SIGN
    return ProtectionLevel.NONE


def is_mutually_authenticated(ctx: spnego.ContextProxy) -> bool:
    """True when the complete context proved the server's identity too (Kerberos; NTLM never does)."""
    return bool(ctx.complete and ctx.context_attr & ContextReq.mutual_auth)


def shares_crypto_state(ctx: spnego.ContextProxy) -> bool:
    """True for an NTLM context without Extended Session Security: one RC4 state and counter for both directions.

    The negotiated NTLM flags are private to pyspnego's NTLMProxy; if they are missing, ESS (the default of
    Windows, .NET and pyspnego) is assumed.
    """
    inner = mechanism(ctx)
    return not int(getattr(inner, "_context_attr", _NTLM_ESS_FLAG)) & _NTLM_ESS_FLAG


def header_size(ctx: spnego.ContextProxy) -> int:
    """Bytes of signature or token header before each record's data."""
    try:
        return int(ctx.query_message_sizes().header)
    except Exception:  # e.g. python-gssapi without its IOV extension cannot measure a token: assume NTLM's size
        return NTLM_SIGNATURE_SIZE


def wrap_message(ctx: spnego.ContextProxy, message: bytes, encrypt: bool, fast: NTLMFastPath | None = None) -> bytes:
    """A GSS wrap token for one message outside the record stream (sealed only if ``encrypt``).

    With ``fast`` (the context's records were taken over) the token comes from its outgoing cipher, which shares
    the sequence number and keystream with the records: pyspnego's NTLM ``wrap`` seals whatever ``encrypt`` says,
    so sealing gives the same bytes it would have.
    """
    if fast is not None:
        return fast.outgoing.seal(message)
    return bytes(mechanism(ctx).wrap(message, encrypt).data)


def unwrap_message(ctx: spnego.ContextProxy, token: bytes, fast: NTLMFastPath | None = None) -> bytes:
    """Verify (and decrypt, if sealed) one wrap token; returns the message (on ``fast``'s incoming cipher if given)."""
    if fast is not None:
        return fast.incoming.unseal(token)
    return bytes(mechanism(ctx).unwrap(token).data)


def _fast_functions(
    fast: NTLMFastPath, level: ProtectionLevel, *, ntlm_sign_layout: bool
) -> tuple[ProtectFunction, RecordFunction]:
    """``(protect, unprotect)`` on the taken-over NTLM ciphers: the same layouts and bytes as the pyspnego ones."""
    if level is ProtectionLevel.SIGN and ntlm_sign_layout:
        sign, verify = fast.outgoing.sign, fast.incoming.verify

        def protect(data: Buffer) -> tuple[bytes, Buffer]:
            return sign(data), data

        def unprotect(payload: Buffer) -> bytes:
            if len(payload) < NTLM_SIGNATURE_SIZE:  # the same refusal (and message) as the pyspnego path's
                raise IntegrityError("signed record shorter than its 16-byte NTLM signature")
            with memoryview(payload) as view:
                data = view[NTLM_SIGNATURE_SIZE:]
                verify(data, view[:NTLM_SIGNATURE_SIZE])
                return bytes(data)  # the one copy: the caller's buffer is reused after this call

        return protect, unprotect

    # ENCRYPT_AND_SIGN, and SIGN in the sealed layout: pyspnego's wrap() seals in both cases. The cipher's
    # methods are the record functions themselves (no wrapper call per record). After a failure the incoming
    # cipher would raise BrokenStreamError, but SecurityContext never calls it again (its refusals are sticky).
    return fast.outgoing.seal_parts, fast.incoming.unseal


def record_functions(
    ctx: spnego.ContextProxy,
    level: ProtectionLevel,
    *,
    ntlm_sign_layout: bool,
    fast: NTLMFastPath | None = None,
) -> tuple[ProtectFunction, RecordFunction] | None:
    """``(protect, unprotect)`` for records at ``level`` on the complete context; ``None`` at level NONE.

    ``ntlm_sign_layout`` selects, at level SIGN, the Windows NTLM sign-only layout (16-byte signature + plaintext)
    instead of a wrap token (:func:`ntlm_sign_layout` decides it). ``fast`` is the context's taken-over NTLM
    ciphers, if any (:func:`.ntlm_takeover.take_over`): then they do the records.
    """
    if level is ProtectionLevel.NONE:
        return None
    if fast is not None:
        return _fast_functions(fast, level, ntlm_sign_layout=ntlm_sign_layout)
    inner = mechanism(ctx)
    # pyspnego's own NTLM code (RC4 and HMAC from cryptography/hashlib) reads any buffer, so records go in as
    # memoryviews of the caller's buffers, uncopied; python-gssapi (Kerberos) takes bytes only.
    wrap: Callable[[Buffer, bool], Any]
    unwrap: Callable[[Buffer], Any]
    if isinstance(inner, NTLMProxy):
        wrap, unwrap = cast(Any, inner.wrap), cast(Any, inner.unwrap)  # typed as bytes, reads any buffer
    else:
        gss_wrap, gss_unwrap = inner.wrap, inner.unwrap

        def gss_wrap_bytes(data: Buffer, encrypt: bool) -> Any:
            return gss_wrap(bytes(data), encrypt)

        def gss_unwrap_bytes(payload: Buffer) -> Any:
            return gss_unwrap(bytes(payload))

        wrap, unwrap = gss_wrap_bytes, gss_unwrap_bytes

    if level is ProtectionLevel.ENCRYPT_AND_SIGN:

        def protect(data: Buffer) -> tuple[bytes, Buffer]:
            return b"", bytes(wrap(data, True).data)

        def unprotect(payload: Buffer) -> bytes:
            result = unwrap(payload)
            if not result.encrypted:
                raise IntegrityError("received an unencrypted record on an encrypted stream (downgrade attempt)")
            return bytes(result.data)

    elif level is ProtectionLevel.SIGN and ntlm_sign_layout:
        # pyspnego's NTLM wrap(encrypt=False) still seals: sign-only is signature + plaintext, as in .NET.
        sign, verify = cast(Any, inner.sign), cast(Any, inner.verify)  # typed as bytes, read any buffer

        def protect(data: Buffer) -> tuple[bytes, Buffer]:
            return bytes(sign(data)), data

        def unprotect(payload: Buffer) -> bytes:
            if len(payload) < NTLM_SIGNATURE_SIZE:
                raise IntegrityError("signed record shorter than its 16-byte NTLM signature")
            with memoryview(payload) as view:
                data = view[NTLM_SIGNATURE_SIZE:]
                verify(data, bytes(view[:NTLM_SIGNATURE_SIZE]))
                return bytes(data)  # the one copy: the caller's buffer is reused after this call

    elif level is ProtectionLevel.SIGN:
        # Kerberos: RFC 4121 integrity-only tokens. NTLM in the sealed layout: pyspnego's wrap() seals,
        # which is what gss-ntlmssp (.NET on Linux/macOS) and LDAP-style NTLM (Windows, Samba) send at Sign.

        def protect(data: Buffer) -> tuple[bytes, Buffer]:
            return b"", bytes(wrap(data, False).data)

        def unprotect(payload: Buffer) -> bytes:
            # Sealed records are accepted too: MIT Kerberos always sets the confidentiality flag, so a
            # .NET "Sign" peer on Linux seals.
            return bytes(unwrap(payload).data)

    else:
        return None
    return protect, unprotect
