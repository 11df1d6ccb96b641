"""Error translation tables: pyspnego (and krb5) exceptions -> :mod:`negotiate_stream.errors`.

Part of the pyspnego border (see :mod:`.._spnego`). Every pyspnego failure crosses into the library through one
of these functions, so each becomes one typed, picklable error carrying its SSPI status, with a message that says
what to do. The status codes mirror what SSPI (and therefore .NET) reports for the same failure.
"""

from __future__ import annotations

import struct

import spnego
import spnego.exceptions as spnego_errors

from ..errors import (
    SEC_E_CONTEXT_EXPIRED,
    SEC_E_LOGON_DENIED,
    SEC_E_NO_AUTHENTICATING_AUTHORITY,
    SEC_E_NO_CREDENTIALS,
    SEC_E_TARGET_UNKNOWN,
    SEC_E_TIME_SKEW,
    AuthenticationError,
    ChannelBindingError,
    ContextExpiredError,
    IntegrityError,
    KerberosUnavailableError,
    MalformedTokenError,
    NegotiateError,
)
from .records import mechanism

__all__ = [
    "MalformedTokenError",
    "creation_error",
    "data_error",
    "deferred_gss_error",
    "handshake_error",
    "kerberos_problem",
    "kerberos_unavailable",
    "pyspnego_text",
    "token_kind",
]

# MIT Kerberos messages that name a configuration problem rather than bad credentials.
_KERBEROS_PROBLEMS = (
    (
        "not found in Kerberos database",
        SEC_E_TARGET_UNKNOWN,
        "the KDC does not know the target service principal: check `target` (service/host, e.g. "
        "HTTP/web.example.com) and that this SPN is registered",
    ),
    (
        "Cannot find KDC",
        SEC_E_NO_AUTHENTICATING_AUTHORITY,
        "no KDC is configured for the realm: check krb5.conf (KRB5_CONFIG) or DNS SRV records",
    ),
    (
        "Cannot contact any KDC",
        SEC_E_NO_AUTHENTICATING_AUTHORITY,
        "the realm's KDC does not answer: check that it runs and is reachable",
    ),
    (
        "Clock skew too great",
        SEC_E_TIME_SKEW,
        "the clocks of this host and the KDC or peer differ too much: synchronise them",
    ),
)

_INSTALL_KERBEROS = (
    "install the kerberos extra with pip install 'negotiate-stream[kerberos]'; building python-gssapi needs the "
    "system Kerberos library libkrb5 and its headers (e.g. Debian/Ubuntu: apt install libkrb5-dev) and a C compiler"
)


def pyspnego_text(exc: BaseException) -> str:
    """The most specific text of a pyspnego exception (its ``message`` names the failing GSSAPI/NTLM step)."""
    return str(getattr(exc, "message", None) or exc)


def kerberos_problem(text: str) -> AuthenticationError | None:
    """The configuration problem an MIT Kerberos message names (unknown SPN, no KDC, clock skew), if any."""
    for marker, status, advice in _KERBEROS_PROBLEMS:
        if marker in text:
            return AuthenticationError(f"Kerberos failed: {advice} ({text})", status=status)
    return None


def kerberos_unavailable(reason: str, *, fallback_disabled: bool = False) -> KerberosUnavailableError:
    """The error for Kerberos that cannot run here because the ``kerberos`` extra is missing (``reason`` says how).

    With ``fallback_disabled`` (``"negotiate"`` that may not fall back to NTLM) the status is
    ``SEC_E_LOGON_DENIED``, the status of a refused NTLM fallback where Kerberos is installed, so code that
    matches on the status sees the same value on every machine.
    """
    if fallback_disabled:
        return KerberosUnavailableError(
            "NTLM fallback is disabled (allow_ntlm_fallback=False), so protocol 'negotiate' can only use Kerberos, "
            f"and Kerberos is not available here ({reason}): {_INSTALL_KERBEROS}; or allow NTLM",
            status=SEC_E_LOGON_DENIED,
        )
    return KerberosUnavailableError(f"Kerberos is not available here ({reason}): {_INSTALL_KERBEROS}")


def creation_error(exc: Exception, *, protocol: str, server_side: bool, principal: str | None) -> NegotiateError | None:
    """Translate a failure to create a pyspnego context; ``None`` if ``exc`` is not a known creation failure."""
    if isinstance(exc, ImportError):  # pyspnego's GSSAPIProxy without python-gssapi
        return kerberos_unavailable(str(exc))
    if isinstance(exc, spnego_errors.SpnegoError | spnego_errors.FeatureMissingError | ValueError):
        return AuthenticationError(
            f"cannot create the {protocol} {'acceptor' if server_side else 'initiator'} context: {pyspnego_text(exc)}",
            status=SEC_E_NO_CREDENTIALS,
        )
    if not type(exc).__module__.startswith("krb5"):
        return None
    # pyspnego's kinit for a password or client keytab raises the krb5 package's own error.
    problem = kerberos_problem(str(exc))
    if problem is not None:
        return problem
    return AuthenticationError(
        f"the Kerberos KDC refused to issue a ticket for {principal!r}: {exc}; check the user principal "
        "(user@REALM), the password or keytab, and that the KDC of the realm is reachable",
        status=SEC_E_LOGON_DENIED,
    )


# The DER encoding (tag 06, length, value) of the mechanism OIDs a GSS-API InitialContextToken can name.
_MECHANISM_OIDS = {
    bytes.fromhex("06062b0601050502"): "SPNEGO",  # 1.3.6.1.5.5.2
    bytes.fromhex("06092a864886f712010202"): "Kerberos",  # 1.2.840.113554.1.2.2 (RFC 4121)
    bytes.fromhex("06092a864882f712010202"): "Kerberos",  # 1.2.840.48018.1.2.2 (Microsoft's alias)
    bytes.fromhex("060a2a864886f71201020203"): "Kerberos",  # 1.2.840.113554.1.2.2.3 (user-to-user)
    bytes.fromhex("06052b05010502"): "Kerberos",  # 1.3.5.1.5.2 (pre-RFC 1964 OID, still accepted by MIT)
}
# First bytes of the messages that travel without the GSS-API header: SPNEGO's NegTokenInit [0] and
# NegTokenResp [1] after the first token, and the Kerberos AP-REQ, AP-REP and KRB-ERROR ([APPLICATION 14, 15,
# 30]) that MIT Kerberos also accepts unwrapped (DCE style).
_BARE_TAGS = {0xA0: "SPNEGO", 0xA1: "SPNEGO", 0x6E: "Kerberos", 0x6F: "Kerberos", 0x7E: "Kerberos"}
_NTLM_SIGNATURE = b"NTLMSSP\x00"


def token_kind(token: bytes) -> str | None:
    """``"SPNEGO"``, ``"NTLM"`` or ``"Kerberos"``: the message ``token`` is framed as, or ``None`` for none of them.

    Looks at the framing only (the NTLM signature, or the GSS-API header and the mechanism OID it names), not at
    whether the message is valid: that is pyspnego's job.
    """
    if token.startswith(_NTLM_SIGNATURE):
        return "NTLM"
    if not token:
        return None
    if token[0] in _BARE_TAGS:
        return _BARE_TAGS[token[0]]
    if token[0] != 0x60 or len(token) < 2:  # [APPLICATION 0] InitialContextToken, RFC 2743 section 3.1
        return None
    # The DER length: one byte below 0x80, else 0x80 + the count of the length bytes that follow.
    start = 2 + (token[1] & 0x7F if token[1] & 0x80 else 0)
    oid_size = token[start + 1] if start + 1 < len(token) else 0
    return _MECHANISM_OIDS.get(token[start : start + 2 + oid_size])


def _not_negotiate(token: bytes, whose: str) -> MalformedTokenError:
    size = f"{len(token)} byte{'' if len(token) == 1 else 's'}"
    return MalformedTokenError(
        f"{whose} handshake token is not a SPNEGO, NTLM or Kerberos message ({size} starting "
        f"{token[:4].hex(' ')}): the peer does not speak Negotiate, or the stream is corrupted"
    )


def handshake_error(exc: BaseException, server_side: bool, token: bytes | None = None) -> NegotiateError:
    """Translate a pyspnego (or token parser) failure during a handshake step.

    ``token`` is the peer's token the failed step was given (``None`` for a client's first step). It tells a token
    that is no Negotiate message at all from a real one that failed, which pyspnego's exception alone cannot:
    pyspnego reads every token that is neither SPNEGO nor NTLM as a Kerberos token, so garbage fails wherever
    Kerberos fails (no python-gssapi, no keytab), and that error would send the operator to the keytab.
    """
    whose = "the client's" if server_side else "the server's"
    kind = token_kind(token) if token is not None else None
    if token is not None and kind is None:
        return _not_negotiate(token, whose)
    if isinstance(exc, spnego_errors.BadBindingsError):
        return ChannelBindingError(
            "channel bindings do not match: the TLS channel seen by the peer is not ours (possible "
            "man-in-the-middle), or one side did not supply bindings"
        )
    if isinstance(exc, spnego_errors.ContextExpiredError | spnego_errors.CredentialsExpiredError):
        return AuthenticationError(
            "the credentials or ticket have expired: renew them (kinit) and connect again",
            status=SEC_E_CONTEXT_EXPIRED,
        )
    if isinstance(exc, spnego_errors.NoCredentialError | spnego_errors.OperationNotAvailableError):
        where = "acceptor credentials (NTLM user file or keytab)" if server_side else "client credentials"
        return AuthenticationError(f"no usable {where}: {pyspnego_text(exc)}", status=SEC_E_NO_CREDENTIALS)
    if isinstance(exc, spnego_errors.BadMechanismError) and isinstance(exc.base_error, ImportError):
        # A real SPNEGO or Kerberos token (garbage was named above) that offers only Kerberos, which pyspnego
        # cannot run here: the missing extra is the cause, not anybody's credentials.
        return kerberos_unavailable(f"the peer offered only Kerberos; {exc.base_error}")
    problem = kerberos_problem(pyspnego_text(exc))
    if problem is not None:
        return problem
    if not isinstance(exc, spnego_errors.SpnegoError) or (
        # pyspnego's SPNEGO parser ran out of bytes: a truncated or corrupted SPNEGO token.
        isinstance(exc, spnego_errors.InvalidTokenError) and isinstance(exc.base_error, struct.error)
    ):
        text = pyspnego_text(exc) if isinstance(exc, spnego_errors.SpnegoError) else f"{type(exc).__name__}: {exc}"
        return MalformedTokenError(
            f"{whose} {kind or 'authentication'} token is malformed ({text}): the peer sent a broken message, or "
            "the two sides are configured with different protocols"
        )
    who = "the client's" if server_side else "our"
    return AuthenticationError(
        f"authentication failed: {who} credentials were rejected or are unknown to the acceptor "
        f"({pyspnego_text(exc)}); check user name, domain and password",
        status=SEC_E_LOGON_DENIED,
    )


def deferred_gss_error(ctx: spnego.ContextProxy) -> BaseException | None:
    """The GSSAPI error hidden behind a failed Kerberos acceptor step, translated by pyspnego, if any.

    pyspnego asks python-gssapi to defer step errors (to return the KRB-ERROR token); a failed accept (bad
    channel bindings, unknown key, replay...) then surfaces as an AttributeError on the half-built context.
    """
    try:
        deferred = getattr(getattr(mechanism(ctx), "_context", None), "_last_err", None)
    except Exception:  # SPNEGO has not chosen a mechanism yet
        return None
    if not isinstance(deferred, Exception):
        return None
    try:
        return spnego_errors.SpnegoError(base_error=deferred)  # picks the subclass (BadBindingsError, ...)
    except ValueError:
        return deferred


def data_error(exc: Exception, what: str) -> NegotiateError:
    """Translate a pyspnego failure while protecting or unprotecting a record (``what`` says which)."""
    if isinstance(exc, spnego_errors.ContextExpiredError):
        return ContextExpiredError("the security context expired: reconnect and authenticate again")
    return IntegrityError(f"{what}: {pyspnego_text(exc)}")
